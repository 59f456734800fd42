"""The calibration grid of the audit's statistics (issue 25, SPEC §5), printed as a Markdown table.

For every cell of fairness.calibration.GRID (group sizes x spread ratio x shape), simulated per-case
tables with equal true group means: the false-alarm rate of the gap test at 5 % (SD's and SER's are
the same test), the coverage of the group-mean and best-minus-worst intervals, and the power at the
minimum detectable gap each null table printed (its own spreads), planted in the least favourable
layout. Trains nothing; about a minute at the default 4000 replicates on 2 cores.

    python bench/calibration.py                          # the table in docs/statistics.md
    python bench/calibration.py --replicates 1000 --shapes normal,skewed,heavy
    python bench/calibration.py --kits                   # issue 42's KiTS-like designs (each tail too)
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairness.calibration import SHAPES, calibrate, design  # noqa: E402

# issue 42: kidney 1 - Beta(1.3, 28) with 3 % failures, tumor 0 in 15 % of cases; large unbalanced
# groups, tiny groups whose values tie, sex x age cells of 1-10
KITS_DESIGNS = [((500, 40), "kits_kidney"), ((2000, 60), "kits_kidney"), ((33, 17), "kits_kidney"),
                ((12, 8), "kits_kidney"), ((33, 17), "kits_tumor"), ((12, 8), "kits_tumor"), ((30, 3), "kits_tumor"),
                ((30, 2), "kits_tumor"), ((10, 7, 5, 3, 8, 4, 2, 1), "kits_kidney"),
                ((10, 7, 5, 3, 8, 4, 2, 1), "kits_tumor"), ((6, 5, 7, 4), "kits_kidney")]


def kits(args) -> None:
    print("| sizes | shape | false alarms (5 %) | large group better / smaller better | power at printed MDG "
          "| median MDG (points) | gap CI covers | group-mean CI covers |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    start = time.time()
    for sizes, shape in KITS_DESIGNS:
        reps = args.replicates if sum(sizes) < 200 else max(200, args.replicates // (2 if sum(sizes) < 1000 else 4))
        r = calibrate(design(sizes, 1, shape), reps, seed=args.seed)
        tails = f"{100 * r['high']:.1f} / {100 * r['low']:.1f}" if "high" in r else "-"
        print(f"| {'+'.join(map(str, sizes))} | {shape} | {100 * r['false_alarm']:.1f} % | {tails} | "
              f"{100 * r['power']:.1f} % | {100 * r['mdg']:.1f} | {100 * r['gap_cover']:.1f} % | "
              f"{100 * r['mean_cover']:.1f} % |", flush=True)
    print(f"\n{args.replicates} replicates per cell ({max(200, args.replicates // 2)} at 500 + 40, "
          f"{max(200, args.replicates // 4)} at 2000 + 60), seed {args.seed}, {time.time() - start:.0f} s")
    tumor_with_nan(args)


def tumor_with_nan(args) -> None:
    """The bimodal tumor with a point mass at 0 and NaN (5 % of cases not scored: empty in both),
    through the audit's own code path table by table (NaN cases dropped per table)."""
    import numpy as np
    import pandas as pd

    from fairness.calibration import _kits_raw
    from fairness.significance import group_gap_test

    rng = np.random.default_rng(args.seed)
    rejected, tables = 0, max(400, args.replicates // 2)
    for _ in range(tables):
        values = _kits_raw(rng, 50, "kits_tumor")
        values[rng.random(50) < 0.05] = np.nan
        frame = pd.DataFrame({"g": ["a"] * 33 + ["b"] * 17, "tumor": values})
        rejected += group_gap_test(frame, "g", metric="tumor", n_perm=999, seed=int(rng.integers(1 << 30)))["gap_p"] < 0.05
    print(f"\ntumor with 0 in 15 % and NaN in 5 % of cases, 33 + 17, through group_gap_test: false alarms "
          f"{100 * rejected / tables:.1f} % of {tables} tables")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=4000, help="simulated tables per cell (default 4000)")
    parser.add_argument("--shapes", default="normal,skewed", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kits", action="store_true", help="issue 42's KiTS-like designs instead of the grid")
    args = parser.parse_args(argv)
    if args.kits:
        kits(args)
        return 0
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
