"""The calibration grid of the recipe-level tests (issue 41, SPEC §5a), printed as Markdown tables.

For every cell of fairness.calibration_recipes.GRID (seeds per method x groups x seed spread x shape),
simulated per-case tables of two recipes' runs with the variance components measured on the kept
evidence runs (seeds 1.4 points on the mean and 1.1 on the gap, case x seed 3.4, case 7.6):

    A/A false alarms   two recipes of one law: share of tables whose Δ has p < 0.05, per statistic
    power              a true Δ equal to the detectable Δ its A/A twin printed, planted (with a base
                       gap of 15 points for SD and the worst group), found in its direction
    coverage           a true Δ of the median printed detectable with a recipe-by-case interaction
                       of 3 points: share of 95 % intervals that hold it
    the recipe's gap   one recipe, no group effect: share whose own gap is beyond noise; and the
                       coverage of a planted 5-point gap

Trains nothing. --compare-variance adds the measurement behind the default (Welch across seeds):
the same A/A tables with one recipe's seeds 3x as spread, tested with the between-seed variance
of each side, pooled over the pair, or pooled over a table of six recipes (with and without a
Bartlett pre-test); and the two-level bootstrap (seeds, then cases within groups).

    python bench/calibration_recipes.py                         # the tables of docs/statistics.md
    python bench/calibration_recipes.py --replicates 500 --seeds 5
    python bench/calibration_recipes.py --compare-variance
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairness.calibration_recipes import GRID, RecipeDesign, calibrate_recipes, draw_cases, draw_runs  # noqa: E402
from fairness.recipe import STATISTICS, run_statistics  # noqa: E402

POWER_COLUMNS = ("mean", "sd", "worst", "gap")


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def grid(args) -> None:
    print("| seeds | groups | seed spread | shape | false alarms: mean / SD / SER / worst / gap | power at the printed "
          "detectable: mean / SD / worst / gap | coverage: mean / SD / worst / gap | median detectable mean / SD "
          "(points) | recipe gap: false alarms / coverage |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    start = time.time()
    for seeds, sizes, spread, shape in GRID:
        if args.seeds and seeds not in args.seeds:
            continue
        r = calibrate_recipes(RecipeDesign(seeds, sizes, spread, shape), args.replicates, seed=args.seed)
        fa = " / ".join(pct(r["false_alarm"][s]) for s in STATISTICS)
        power = " / ".join(pct(r["power"].get(s)) for s in POWER_COLUMNS)
        cover = " / ".join(pct(r["cover"].get(s)) for s in POWER_COLUMNS)
        print(f"| {seeds} | {'+'.join(map(str, sizes))} | x{spread:g} | {shape} | {fa} | {power} | {cover} | "
              f"{100 * r['detectable']['mean']:.1f} / {100 * r['detectable']['sd']:.2f} | "
              f"{pct(r['gap_false_alarm'])} / {pct(r['gap_cover'])} |", flush=True)
    se = 100 * (0.05 * 0.95 / args.replicates) ** 0.5
    print(f"\n{args.replicates} replicates per cell, seed {args.seed}, {time.time() - start:.0f} s (Monte Carlo SE of a "
          f"5 % rate: {se:.2f} points, of an 80 % rate: {100 * (0.8 * 0.2 / args.replicates) ** 0.5:.2f})")


def two_level_bootstrap(a: np.ndarray, b: np.ndarray, codes: np.ndarray, k: int, rng, n_boot: int = 400,
                        level: float = 0.95) -> dict:
    """Percentile intervals of Δ = mean_r T_B - mean_r T_A from resampling each recipe's runs, then the
    cases within groups (the same cases for every run); tables (T, R, n) at once, in chunks."""
    tables, runs_a, _ = a.shape
    runs_b = b.shape[1]
    out = {s: np.empty((tables, 2)) for s in STATISTICS}
    for start in range(0, tables, 50):
        sl = slice(start, min(tables, start + 50))
        t = sl.stop - sl.start
        # the cases within groups, the same draw for every run (columns in group order)
        case_index = np.concatenate([np.flatnonzero(codes == g)[rng.integers(0, (codes == g).sum(),
                                                                            (n_boot, (codes == g).sum()))]
                                     for g in range(k)], axis=1)                                     # (B, n)
        pick_a = rng.integers(0, runs_a, (n_boot, runs_a))
        pick_b = rng.integers(0, runs_b, (n_boot, runs_b))
        sorted_codes = np.concatenate([codes[codes == g] for g in range(k)])
        oh = np.eye(k)[sorted_codes]
        delta = {s: np.empty((t, n_boot)) for s in STATISTICS}
        for bi in range(n_boot):
            va = a[sl][:, pick_a[bi]][:, :, case_index[bi]]
            vb = b[sl][:, pick_b[bi]][:, :, case_index[bi]]
            sa, sb = run_statistics(va, oh), run_statistics(vb, oh)
            for s in STATISTICS:
                delta[s][:, bi] = sb[s].mean(axis=-1) - sa[s].mean(axis=-1)
        for s in STATISTICS:
            out[s][sl] = np.nanpercentile(delta[s], [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=1).T
    return out


def compare_variance(args) -> None:
    print("| seeds | test | A/A false alarms, equal seed spreads: mean / SD / gap | one recipe 3x as spread: mean / "
          "SD / gap | median detectable mean (points) |")
    print("| --- | --- | --- | --- | --- |")
    for seeds in args.seeds or (2, 3, 5, 10):
        cell = RecipeDesign(seeds, (28, 20), 1.0, "kits")
        for label, kw in (("Welch across seeds (own)", {}), ("pooled over the pair", {"seed_variance": "pair"}),
                          ("pooled over a table of 6", {"seed_variance": "table", "others": 4}),
                          ("pooled over 6 if Bartlett p >= 0.10", {"seed_variance": "table", "others": 4,
                                                                   "homogeneity": 0.10})):
            same = calibrate_recipes(cell, args.replicates, seed=args.seed, **kw)
            noisy = calibrate_recipes(cell, args.replicates, seed=args.seed, b_spread=3.0, **kw)
            print(f"| {seeds} | {label} | " + " / ".join(pct(same["false_alarm"][s]) for s in ("mean", "sd", "gap"))
                  + " | " + " / ".join(pct(noisy["false_alarm"][s]) for s in ("mean", "sd", "gap"))
                  + f" | {100 * same['detectable']['mean']:.1f} |", flush=True)
        rng = np.random.default_rng(args.seed)
        tables = min(args.replicates, 400)
        cases = draw_cases(rng, cell, tables)
        a, b = draw_runs(rng, cell, cases, seeds), draw_runs(rng, cell, cases, seeds)
        intervals = two_level_bootstrap(a, b, cell.codes, 2, rng)
        rates = [np.mean((intervals[s][:, 0] > 0) | (intervals[s][:, 1] < 0)) for s in ("mean", "sd", "gap")]
        print(f"| {seeds} | two-level bootstrap ({tables} tables) | " + " / ".join(pct(r) for r in rates) + " | - | - |",
              flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=2000, help="simulated tables per cell (default 2000)")
    parser.add_argument("--seeds", type=int, nargs="+", help="only the cells with these seeds per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-variance", action="store_true",
                        help="the measurement behind Welch across seeds: pooled variances and the two-level bootstrap")
    args = parser.parse_args(argv)
    if args.compare_variance:
        compare_variance(args)
    else:
        grid(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
