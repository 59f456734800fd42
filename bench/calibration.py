"""The calibration grid of the audit's statistics (issue 25, SPEC §5), printed as a Markdown table.

For every cell of fairness.calibration.GRID (group sizes x spread ratio x shape), simulated per-case
tables with equal true group means: the false-alarm rate of the gap test at 5 % (SD's and SER's are
the same test), the coverage of the group-mean and best-minus-worst intervals, and the power at the
minimum detectable gap each null table printed (its own spreads), planted in the least favourable
layout. Trains nothing; about a minute at the default 4000 replicates on 2 cores.

    python bench/calibration.py                          # the table in docs/statistics.md
    python bench/calibration.py --replicates 1000 --shapes normal,skewed,heavy
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairness.calibration import SHAPES, calibrate, design  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=4000, help="simulated tables per cell (default 4000)")
    parser.add_argument("--shapes", default="normal,skewed", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        parser.error(f"--shapes: unknown {bad}; valid: {', '.join(SHAPES)}")
    print("| sizes | spread ratio | shape | false alarms (5 %) | power at printed MDG | median MDG (points) "
          "| gap CI covers | group-mean CI covers |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    start = time.time()
    for sizes in ((20, 20), (30, 8), (12, 8), (6, 5, 7, 4)):
        for ratio in (1, 3, 5):
            for shape in shapes:
                r = calibrate(design(sizes, ratio, shape), args.replicates, seed=args.seed)
                print(f"| {'+'.join(map(str, sizes))} | {ratio} | {shape} | {100 * r['false_alarm']:.1f} % "
                      f"| {100 * r['power']:.1f} % | {100 * r['mdg']:.1f} | {100 * r['gap_cover']:.1f} % "
                      f"| {100 * r['mean_cover']:.1f} % |", flush=True)
    print(f"\n{args.replicates} replicates per cell, seed {args.seed}, {time.time() - start:.0f} s "
          f"(Monte Carlo SE of a 5 % rate: {100 * (0.05 * 0.95 / args.replicates) ** 0.5:.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
