"""Failure discovery on per-case tables of known truth: recovery of planted subgroups, false confirmations.

The real KiTS19 metadata (210 records, $KITS19_DIR or ../shared/kits19) gives the features.
Per-case mean Dice is drawn around 85 with an 8-point spread. A planted failing subgroup is a
random rule of two conditions on different fields, each with its threshold at a random case's
value (or a random category), and it is `--drop` points lower. Recovery means the top confirmed
slice has Jaccard >= 0.6 with the planted members; it is given by the planted slice's share of the
cohort. False confirmations are counted on null tables (no plant), normal and skewed (Dice's long
lower tail, with ties at 1). Trains nothing; about 0.12 s per audit on 2 cores.

    python bench/discovery.py                       # the table in docs/discovery.md
    python bench/discovery.py --plants 400 --nulls 2000
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairness.calibration import discovery_recovery, false_confirmations  # noqa: E402
from fairness.features import case_features  # noqa: E402


def kits_features() -> pd.DataFrame:
    for folder in (os.environ.get("KITS19_DIR"), ROOT.parent / "shared" / "kits19"):
        if folder and (Path(folder) / "kits.json").is_file():
            metadata = {e["case_id"]: e for e in json.loads((Path(folder) / "kits.json").read_text())}
            return case_features(pd.DataFrame({"case_id": sorted(metadata)}), metadata, families=("metadata",))
    raise SystemExit("error: the KiTS19 metadata (kits.json) was not found: set $KITS19_DIR")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plants", type=int, default=100, help="planted rules per size band (default 100)")
    parser.add_argument("--nulls", type=int, default=1000, help="null tables per shape (default 1000)")
    parser.add_argument("--drop", type=float, default=15.0, help="the planted subgroup's drop in points (15)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    features = kits_features()
    ids = features.index.to_numpy()
    n = len(ids)
    start = time.time()
    print(f"{n} cases, {features.shape[1]} metadata features; plants {args.drop:g} points on an 8-point spread\n")
    print("| planted slice | plants | a slice confirmed | top confirmed slice Jaccard >= 0.6 | median Jaccard |")
    print("| --- | --- | --- | --- | --- |")
    for low, high in ((0.05, 0.10), (0.10, 0.20), (0.20, 0.30)):
        found_any, recovered, jaccards = discovery_recovery(features, args.plants, seed=args.seed, drop=args.drop / 100,
                                                            low=int(np.ceil(low * n)), high=int(high * n))
        print(f"| {100 * low:.0f}-{100 * high:.0f} % of the cohort | {args.plants} | {100 * found_any:.0f} % "
              f"| {100 * recovered:.0f} % | {np.median(jaccards):.2f} |", flush=True)
    print("\n| null tables | tables | a slice confirmed (at most 5 %) |")
    print("| --- | --- | --- |")
    for name, shape in (("normal, 8-point spread", "normal"), ("skewed: a long lower tail, ties at 1", "skewed")):
        rate = false_confirmations(features, args.nulls, seed=args.seed + 1, shape=shape)
        print(f"| {name} | {args.nulls} | {100 * rate:.1f} % |", flush=True)
    print(f"\n({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
