"""The audit of one very large cohort: wall time and peak memory of a group report (issue 26).

An nnU-Net summary.json can list 10^5 cases. The resampling draws (bootstrap intervals, the
noise-alone bootstrap, CVaR intervals) are made in blocks (fairness.stats.draw_chunks), so memory
does not grow as draws x cases. This bench builds a synthetic per-case table of N cases, two groups
with unequal spreads, and times `fairness.report.group_report` with the CLI's default draws,
printing the peak resident memory of the process. Trains nothing, reads no file.

    python bench/large_audit.py                       # 10^5 cases, n_boot 2000, n_perm 5000
    python bench/large_audit.py --cases 20000 --n-boot 500
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairness.report import group_report  # noqa: E402


def cohort(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sex = np.where(rng.random(n) < 0.6, "male", "female")
    spread = np.where(sex == "male", 0.05, 0.12)
    kidney = np.clip(rng.normal(0.9, spread), 0, 1)
    tumor = np.clip(rng.normal(0.7, 2 * spread), 0, 1)
    return pd.DataFrame({"case_id": [f"case_{i:06d}" for i in range(n)], "kidney": kidney, "tumor": tumor,
                         "mean": (kidney + tumor) / 2, "sex": sex,
                         "kidney_ml": rng.lognormal(5, 0.3, n), "tumor_ml": rng.lognormal(3, 1, n),
                         "bmi_kg_m2": rng.normal(28, 5, n)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--n-perm", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    per_case = cohort(args.cases, args.seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    report = group_report(per_case, "sex", order=["male", "female"], n_boot=args.n_boot, n_perm=args.n_perm)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux -> GiB
    sig = report.audit.significance
    print(f"{args.cases:,} cases, n_boot {args.n_boot}, n_perm {args.n_perm}: {seconds:.1f} s, peak memory "
          f"{peak:.2f} GiB (table built: {before:.2f} GiB); gap {sig['gap']:.4f} (mean Dice), p {sig['gap_p']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
