"""Our surface metrics (fairness/surface.py) against MONAI's on the same masks and spacing.

    pip install -r bench/requirements.txt        # MONAI (bench only)
    python bench/surface_metrics.py              # hand cases + 12 real KiTS19 label maps, perturbed
    python bench/surface_metrics.py --cases 30 --tolerance 1.0

Per case and KiTS19 region (kidney = label > 0, tumor = label 2) it computes NSD at --tolerance
mm, HD95 and ASSD with ours (fairness.surface.kits_case_surface) and with MONAI's
SurfaceDiceMetric (class_thresholds=[tol], use_subvoxels=False), HausdorffDistanceMetric
(percentile=95) and SurfaceDistanceMetric (symmetric=True), each given the case's true
(z, y, x) spacing, and prints the largest absolute differences, the cases where one gives a
number and the other NaN / inf (the empty-mask conventions), and the time each takes.

Cases:
    hand    concentric spheres of radii 10 and 12 mm at (3, 0.8, 0.8) mm; a box moved one slice
            along z at (4, 0.9, 0.9) mm; a tumor-free prediction of a case with a tumor
    real    the --cases smallest real KiTS19 label maps ($KITS19_DIR or ../shared/kits19), each
            against itself perturbed five ways: moved one slice along z, moved two voxels along x,
            eroded by one voxel (6-neighbour cross), its tumor dilated by one voxel, its tumor
            removed (one empty mask). MONAI is given the box around both masks plus 2 voxels (its
            own crop=True does the same; the distance transforms are exact inside it), so its
            cost is comparable to ours.
Writes OUT/surface_vs_monai.csv (one row per case, region and metric).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.nifti import read_volume  # noqa: E402
from fairness.surface import kits_case_surface  # noqa: E402

REGIONS = {"kidney": lambda labels: labels > 0, "tumor": lambda labels: labels == 2}


def monai_metrics(pred: np.ndarray, ref: np.ndarray, spacing, tolerance: float) -> dict:
    """MONAI's NSD, HD95 and ASSD of both regions: {"nsd_kidney": ..., ...} (NaN / inf as MONAI gives)."""
    import torch
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric

    def onehot(labels):   # channel 0 background (ignored), then the two regions (they overlap: fine,
        chans = [labels == 0] + [fn(labels) for fn in REGIONS.values()]   # channels are independent)
        return torch.from_numpy(np.stack(chans)[None].astype(np.float32))

    p, r = onehot(pred), onehot(ref)
    spacing = [float(s) for s in spacing]
    nsd = SurfaceDiceMetric(class_thresholds=[tolerance, tolerance], include_background=False,
                            use_subvoxels=False)(p, r, spacing=spacing)
    hd = HausdorffDistanceMetric(include_background=False, percentile=95)(p, r, spacing=spacing)
    asd = SurfaceDistanceMetric(include_background=False, symmetric=True)(p, r, spacing=spacing)
    out = {}
    for j, region in enumerate(REGIONS):
        out[f"nsd_{region}"] = float(nsd[0, j])
        out[f"hd95_{region}"] = float(hd[0, j])
        out[f"assd_{region}"] = float(asd[0, j])
    return out


def crop_pair(pred: np.ndarray, ref: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    both = (pred > 0) | (ref > 0)
    if not both.any():
        return pred, ref
    box = tuple(slice(max(int(s.start) - margin, 0), min(int(s.stop) + margin, n))
                for s, n in zip(ndimage.find_objects(both.astype(np.uint8))[0], both.shape))
    return pred[box], ref[box]


def sphere(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm ** 2


def hand_cases():
    sp = (3.0, 0.8, 0.8)
    shape = (16, 48, 48)
    centre = (24.0, 19.2, 19.2)
    ref = sphere(shape, sp, centre, 12.0).astype(np.uint8) + sphere(shape, sp, centre, 6.0).astype(np.uint8)
    pred = sphere(shape, sp, centre, 10.0).astype(np.uint8) + sphere(shape, sp, centre, 6.0).astype(np.uint8)
    yield "spheres r12 vs r10", pred, ref, sp
    sp = (4.0, 0.9, 0.9)
    box = np.zeros((12, 20, 24), np.uint8)
    box[3:9, 5:14, 6:16] = 1
    box[4:7, 7:11, 8:12] = 2
    yield "box moved one slice", np.roll(box, 1, axis=0), box, sp
    yield "tumor missed", np.where(box == 2, 1, box).astype(np.uint8), box, sp


def perturbations(ref: np.ndarray):
    cross = ndimage.generate_binary_structure(3, 1)
    yield "z+1", np.roll(ref, 1, axis=0)
    yield "x+2", np.roll(ref, 2, axis=2)
    eroded = ndimage.binary_erosion(ref > 0, structure=cross)
    yield "eroded", np.where(eroded, ref, 0).astype(np.uint8)
    grown = ndimage.binary_dilation(ref == 2, structure=cross) & (ref > 0)
    yield "tumor dilated", np.where(grown, 2, ref).astype(np.uint8)
    yield "tumor removed", np.where(ref == 2, 1, ref).astype(np.uint8)


def real_cases(kits: Path, n: int):
    sizes = []
    for case in sorted(p for p in kits.glob("case_*") if (p / "segmentation.nii.gz").is_file()):
        import nibabel as nib
        sizes.append((int(np.prod(nib.load(case / "segmentation.nii.gz").header.get_data_shape())), case))
    for _, case in sorted(sizes)[:n]:
        vol = read_volume(case / "segmentation.nii.gz", where=case.name)
        ref = vol.array.astype(np.uint8)
        for name, pred in perturbations(ref):
            yield f"{case.name} {name}", pred, ref, vol.spacing


def compare(cases, tolerance: float) -> pd.DataFrame:
    rows = []
    for name, pred, ref, spacing in cases:
        t0 = time.perf_counter()
        ours = kits_case_surface(pred, ref, spacing, tolerance_mm=tolerance)
        t1 = time.perf_counter()
        theirs = monai_metrics(*crop_pair(pred, ref), spacing, tolerance)
        t2 = time.perf_counter()
        for key, value in theirs.items():
            metric, region = key.split("_")
            rows.append({"case": name, "region": region, "metric": metric, "ours": ours[key], "monai": value,
                         "ours_s": t1 - t0, "monai_s": t2 - t1})
        print(f"{name:<32} ours {t1 - t0:5.2f} s  MONAI {t2 - t1:5.2f} s", flush=True)
    return pd.DataFrame(rows)


def report(table: pd.DataFrame) -> None:
    both = table[np.isfinite(table["ours"]) & np.isfinite(table["monai"])]
    diff = (both["ours"] - both["monai"]).abs()
    print(f"\n{len(table)} values ({table['case'].nunique()} cases x 2 regions x 3 metrics); "
          f"{len(both)} finite in both")
    for metric, part in both.assign(diff=diff).groupby("metric"):
        worst = part.loc[part["diff"].idxmax()]
        unit = "" if metric == "nsd" else " mm"
        print(f"  {metric:<5} largest |ours - MONAI| {worst['diff']:.2e}{unit} ({worst['case']}, {worst['region']}: "
              f"ours {worst['ours']:.4f}, MONAI {worst['monai']:.4f}); median {part['diff'].median():.1e}")
    odd = table[np.isfinite(table["ours"]) != np.isfinite(table["monai"])]
    nan_both = table[~np.isfinite(table["ours"]) & ~np.isfinite(table["monai"])]
    print(f"  not finite in both: {len(nan_both)}; finite in one only: {len(odd)}")
    for _, row in odd.iterrows():
        print(f"    {row['case']}, {row['region']} {row['metric']}: ours {row['ours']}, MONAI {row['monai']}")
    for _, row in nan_both.drop_duplicates(["region", "metric", "ours", "monai"]).iterrows():
        print(f"    e.g. {row['case']}, {row['region']} {row['metric']}: ours {row['ours']}, MONAI {row['monai']}")
    print(f"  time per case: ours median {table.groupby('case')['ours_s'].first().median():.2f} s, "
          f"MONAI median {table.groupby('case')['monai_s'].first().median():.2f} s (MONAI on the cropped box)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kits", type=Path, default=Path(os.environ.get("KITS19_DIR", ROOT.parent / "shared" / "kits19")))
    p.add_argument("--cases", type=int, default=12, help="real label maps, the smallest first (12)")
    p.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (2, our default)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "surface_metrics")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")   # MONAI's deprecation and empty-mask warnings: the report says it
    try:
        import monai  # noqa: F401
    except ImportError:
        sys.exit("error: MONAI is not installed: pip install -r bench/requirements.txt")
    cases = list(hand_cases())
    if args.kits.is_dir():
        cases = [*cases, *real_cases(args.kits, args.cases)]
    else:
        print(f"note: no KiTS19 folder at {args.kits}: hand cases only")
    table = compare(cases, args.tolerance)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "surface_vs_monai.csv", index=False)
    report(table)
    print(f"\nper-value table -> {args.out / 'surface_vs_monai.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
