"""Bench: training-patch throughput on one core, ours against the same pipeline built from MONAI.

Augmentation must not starve a GPU. The bench builds one realistic preprocessed case and measures
patches per second at the study's patch size (80 x 160 x 160) on one core (--threads 1:
torch.set_num_threads and the OMP/MKL/OpenBLAS env), each pipeline in a fresh process:

    ours    data.patches.PatchDataset.__getitem__ with the study's augmentations (SPEC §1): read
            the window from the memory-mapped cache, virtual pad, pos/neg
            crop 1 : 1 from the cached class locations, then data.augment.Augmenter (zoom
            0.9-1.2 p .15, Gaussian noise std .01 p .15, Gaussian smoothing sigma (0.5, 1.15)
            p .15, intensity scale +-0.3 p .15, flip p .5 per axis);
    ours, augment_on device
            train.augment_on: device: the loader's part alone (read, crop, draw the sample's
            augmentation plan), and then, timed apart, the plan applied to the same samples on this
            CPU (data.augment.apply_plan), the part a GPU takes over; with the cores either path
            needs to feed 10, 50 and 100 patches/s;
    MONAI   the same steps from MONAI transforms (the study's own tools), on the same case held
            in memory as numpy arrays (image (1, Z, Y, X) float32, labels (1, Z, Y, X) uint8):
            SpatialPadd(80, 160, 160) -> RandCropByPosNegLabeld(pos 1, neg 1, 1 sample) ->
            RandZoomd(0.9, 1.2, p .15, trilinear / nearest, keep_size) -> RandGaussianNoised(p .15,
            std .01) -> RandGaussianSmoothd(sigma_x/y/z (0.5, 1.15), p .15) ->
            RandScaleIntensityd(factors .3, p .15) -> RandFlipd(axis 0 / 1 / 2, p .5 each);
            twice: (a) as written, RandCropByPosNegLabeld finding the foreground / background
            voxels of the whole case on every call, and (b) with those indices computed once
            beforehand by FgBgToIndicesd (what a CacheDataset does; not timed), MONAI's fastest form.

The target is ours >= 2x the faster MONAI form, (b). Both pipelines draw their own random
numbers, so which transforms fire differs a little between them: the bench counts the firings of
each (printed) and also gives the throughput expected from the per-transform timings, which does
not depend on the draws. Per-transform timings: every transform forced to p = 1, alone, on
cropped patches (for ours also the crop, with the time spent in the cache reader it calls per item,
data.preprocessing.load_arrays, or load_preprocessed, which also parses the properties JSON).

The case: a CT synthesised (data.synthetic.write_cohort_from_labels) around a real KiTS19 label
map, the median case by resampled size (case_00059, 738 x 512 x 512 at 0.5 x 0.79 x 0.79 mm ->
~115 x 208 x 240 after the body crop and resampling), preprocessed with the default settings
(data.preprocessing.run_preprocessing). Without the KiTS19 label maps ($KITS19_DIR or
../shared/kits19), or with --procedural, a procedural case (data.synthetic.plan_procedural_case)
is used instead, its spacing scaled up so that it preprocesses to ~115 x 175 x 240, near case_00059.
Making the case is not part of any figure (its time is printed on its own line).

Every pipeline runs --repeat times (default 3), interleaved, each in a fresh process, on the same
samples every time; the fastest run is reported. The bench warns when other processes competed
for the CPUs meanwhile, since the figures are then disturbed.

Needs the bench requirements (pip install -r bench/requirements.txt: monai; never the project's).

Usage (from the repo root):
    python bench/augment.py                                   # median KiTS19 case, one core
    python bench/augment.py --workdir /tmp/fk_aug --keep      # keep the case; a rerun reuses it
    python bench/augment.py --samples 100 --repeat 1 --parts 0   # quick: no per-transform table
    python bench/augment.py --case case_00002 --json augment.json
    python bench/augment.py --procedural                      # no KiTS19 needed
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import BUSY_WARN_CORES, cpu_seconds, emit, run_step, thread_env, verdict, write_json  # noqa: E402

THROUGHPUT_TARGET = 2.0   # ours / MONAI patches per second
BENCH_FORMAT = 1          # bump when the workdir's contents change meaning (a kept workdir is then redone)
PROCEDURAL_TARGET = (115, 210, 240)   # aimed-at preprocessed size (after the body crop) of the fallback case
FIRINGS = ("zoom", "noise", "smooth", "scale", "flip z", "flip y", "flip x")


# ----------------------------------------------------------------------------------------------
# helpers shared by parent and children





def kits_dir() -> Path | None:
    env = os.environ.get("KITS19_DIR")
    path = Path(env) if env else (REPO / ".." / "shared" / "kits19").resolve()
    return path if (path / "kits.json").is_file() else None


def median_case(root: Path, target_spacing) -> tuple[str, dict[str, list[int]]]:
    """The median case by resampled voxel count (shape x spacing / target), from the NIfTI headers only."""
    import nibabel as nib
    sizes = {}
    for p in sorted(root.glob("case_*/segmentation.nii.gz")):
        img = nib.load(str(p))
        sizes[p.parent.name] = [int(round(s * float(z) / t))
                                for s, z, t in zip(img.shape, img.header.get_zooms(), target_spacing)]
    if not sizes:
        raise SystemExit(f"error: no case_XXXXX/segmentation.nii.gz under {root}")
    ranked = sorted(sizes, key=lambda c: (math.prod(sizes[c]), c))
    return ranked[len(ranked) // 2], sizes




def _setup_threads(threads: int):
    import torch
    torch.set_num_threads(threads)
    return torch


def _timed_loop(fn, items, warmup: int) -> tuple[list[float], float, float]:
    """Call fn on every item after `warmup` untimed calls; (per-call seconds, wall seconds, CPU seconds)."""
    for item in items[:warmup]:
        fn(item)
    times = []
    c0, t0 = cpu_seconds(), time.perf_counter()
    for item in items[warmup:]:
        t = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t)
    return times, time.perf_counter() - t0, cpu_seconds() - c0


def _summary(times: list[float], wall: float, cpu: float) -> dict:
    import numpy as np
    arr = np.asarray(times)
    return {"samples": len(times), "seconds": wall, "cpu_seconds": cpu, "patches_per_s": len(times) / wall,
            "mean_ms": 1e3 * float(arr.mean()), "median_ms": 1e3 * float(np.median(arr)),
            "p90_ms": 1e3 * float(np.percentile(arr, 90)), "max_ms": 1e3 * float(arr.max())}


# ----------------------------------------------------------------------------------------------
# children: each runs in its own process; prints one RESULT_TAG line

def child_prepare(work: Path, case_id: str, kits: str | None, seed: int) -> None:
    """The raw case (synthetic CT) and its preprocessed cache, with the default settings."""
    import numpy as np
    from data.preprocessing import PreprocessSettings, run_preprocessing
    raw, cache = work / "raw", work / "cache"
    settings = PreprocessSettings()
    t0 = time.perf_counter()
    if kits:
        from data.synthetic import write_cohort_from_labels
        done, failures = write_cohort_from_labels(kits, raw, only=[case_id], seed=seed, progress=False)
        if failures or case_id not in done:
            raise SystemExit(f"error: synthesis failed: {'; '.join(str(f) for f in failures)}")
        source = f"CT synthesised around the real KiTS19 label map of {case_id} ({kits})"
    else:
        from data.nifti import kits_affine, write_volume
        from data.synthetic import plan_procedural_case, synthesize_ct
        from data.preprocessing import body_box
        case = plan_procedural_case(0, seed=seed)
        labels = case.labels()
        # Upscale: the same voxels over a larger field of view (larger spacing), so that the body-cropped
        # case resamples to about PROCEDURAL_TARGET. The body box depends on the spacing, hence a few
        # rounds; the synthetic body's front-to-back size is set in mm (~280 mm), so y ends near 175.
        spacing = tuple(case.spacing)
        for _ in range(3):
            ct = synthesize_ct(labels, spacing, bmi=case.bmi, rng=np.random.default_rng([seed, 0, 1]))
            extent = [b - a for a, b in body_box(ct, labels, settings.body_threshold_hu)]
            spacing = tuple(t * ts / n for t, ts, n in zip(PROCEDURAL_TARGET, settings.target_spacing, extent))
        ct = synthesize_ct(labels, spacing, bmi=case.bmi, rng=np.random.default_rng([seed, 0, 1]))
        case_id = case.case_id
        affine = kits_affine(spacing)
        write_volume(raw / case_id / "imaging.nii.gz", ct, affine=affine, spacing=spacing)
        write_volume(raw / case_id / "segmentation.nii.gz", labels, affine=affine, spacing=spacing)
        meta = dict(case.metadata)
        meta["voxel_spacing"] = {"x_spacing": spacing[2], "y_spacing": spacing[1], "z_spacing": spacing[0]}
        (raw / "kits.json").write_text(json.dumps([meta], indent=1) + "\n")
        source = (f"procedural case {case_id} (seed {seed}), {'x'.join(map(str, labels.shape))} voxels at "
                  f"{'x'.join(f'{s:.2f}' for s in spacing)} mm (spacing scaled up: no KiTS19 label maps used)")
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run_preprocessing(raw, cache, settings, workers=1, cases=[case_id], progress=False)
    t_pre = time.perf_counter() - t0
    if result.failures or result.done + result.skipped != 1:
        raise SystemExit(f"error: preprocessing failed: {'; '.join(str(f) for f in result.failures)}")
    props = json.loads((cache / f"{case_id}.json").read_text())
    plan = {
        "format": BENCH_FORMAT, "case_id": case_id, "seed": seed, "source": source,
        "kits": kits, "original_shape": props["original_shape"], "original_spacing": props["original_spacing"],
        "cropped_shape": props["cropped_shape"], "resampled_shape": props["resampled_shape"],
        "class_locations": {k: len(v) for k, v in props["class_locations"].items()},
        "properties_json_bytes": (cache / f"{case_id}.json").stat().st_size,
        "synth_seconds": t_synth, "preprocess_seconds": t_pre,
    }
    (work / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    emit({"step": "prepare", **plan})


class _FiringCounter:
    """Stands in for the Augmenter and counts which transforms its draws fire, augmenting nothing.

    Augmenter.__call__ starts with rng.random(8) (zoom, noise, smooth, scale, flip z / y / x, spare):
    the counter makes the same draw from the same generator state.
    """

    def __init__(self, settings):
        self.s = settings
        self.counts = dict.fromkeys(FIRINGS, 0)

    def __call__(self, image, label, rng):
        s = self.s
        draws = rng.random(8)
        for name, d, p in zip(FIRINGS, draws, (s.zoom_p, s.noise_p, s.smooth_p, s.scale_p,
                                               s.flip_p, s.flip_p, s.flip_p)):
            self.counts[name] += int(d < p)
        return image, label


def child_ours(work: Path, threads: int, case_id: str, patch, samples: int, warmup: int, seed: int) -> None:
    _setup_threads(threads)
    from data.augment import AugmentSettings
    from data.patches import PatchDataset
    settings = AugmentSettings()
    ds = PatchDataset(work / "cache", [case_id], patch_size=patch, augment=settings)
    keys = [(0, seed * 1_000_003 + i) for i in range(warmup + samples)]
    out = ds[keys[0]]
    shapes = {"image": [list(out["image"].shape), str(out["image"].dtype)],
              "label": [list(out["label"].shape), str(out["label"].dtype)]}
    times, wall, cpu = _timed_loop(lambda k: ds[k], keys, warmup)
    # Which transforms fired in the timed samples: the same samples again, not augmented, not timed.
    counter = _FiringCounter(settings)
    ds.augmenter = counter
    for k in keys[warmup:]:
        ds[k]
    emit({"step": "ours", **_summary(times, wall, cpu), "fired": counter.counts, "output": shapes,
          "threads": threads})


def child_ours_device(work: Path, threads: int, case_id: str, patch, samples: int, warmup: int, seed: int) -> None:
    """train.augment_on: device. The loader's part (read, crop, draw the plan) timed as the loader
    path is; then the device's part (data.augment.apply_plan on the same samples), here on this CPU:
    on a GPU that part leaves the loader's cores."""
    _setup_threads(threads)
    from data.augment import AugmentSettings, apply_plan
    from data.patches import PatchDataset
    settings = AugmentSettings()
    ds = PatchDataset(work / "cache", [case_id], patch_size=patch, augment=settings, augment_on="device")
    keys = [(0, seed * 1_000_003 + i) for i in range(warmup + samples)]
    out = ds[keys[0]]
    shapes = {"image": [list(out["image"].shape), str(out["image"].dtype)],
              "label": [list(out["label"].shape), str(out["label"].dtype)]}
    times, wall, cpu = _timed_loop(lambda k: ds[k], keys, warmup)
    items = [ds[k] for k in keys[warmup:]]
    applied, applied_wall, applied_cpu = _timed_loop(
        lambda item: apply_plan(settings, item["image"], item["label"], item["augment"]), items, 0)
    names = ("zoom", "noise", "smooth", "scale", "flip z", "flip y", "flip x")
    probs = (settings.zoom_p, settings.noise_p, settings.smooth_p, settings.scale_p) + (settings.flip_p,) * 3
    fired = {n: sum(int(item["augment"][i] < pr) for item in items) for i, (n, pr) in enumerate(zip(names, probs))}
    emit({"step": "ours_device", **_summary(times, wall, cpu), "fired": fired, "output": shapes, "threads": threads,
          "apply_on_cpu": _summary(applied, applied_wall, applied_cpu)})


def _monai_pipeline(patch, settings, *, cached: bool, probs: dict | None = None):
    """The study's pipeline from MONAI transforms; `probs` overrides p per transform (parts table)."""
    from monai import transforms as T
    p = {"zoom": settings.zoom_p, "noise": settings.noise_p, "smooth": settings.smooth_p,
         "scale": settings.scale_p, "flip": settings.flip_p, **(probs or {})}
    keys = ["image", "label"]
    idx = dict(fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices") if cached else {}
    sigma = tuple(settings.smooth_sigma)
    assert settings.scale_range[0] == -settings.scale_range[1], "MONAI's factors are symmetric"
    pad_crop = [T.SpatialPadd(keys, spatial_size=patch),
                T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=1, neg=1,
                                         num_samples=1, **idx)]
    random = {
        "zoom": T.RandZoomd(keys, prob=p["zoom"], min_zoom=settings.zoom_range[0], max_zoom=settings.zoom_range[1],
                            mode=("trilinear", "nearest"), keep_size=True),
        "noise": T.RandGaussianNoised("image", prob=p["noise"], mean=0.0, std=settings.noise_std),
        "smooth": T.RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=p["smooth"]),
        "scale": T.RandScaleIntensityd("image", factors=settings.scale_range[1], prob=p["scale"]),
        "flip z": T.RandFlipd(keys, prob=p["flip"], spatial_axis=0),
        "flip y": T.RandFlipd(keys, prob=p["flip"], spatial_axis=1),
        "flip x": T.RandFlipd(keys, prob=p["flip"], spatial_axis=2),
    }
    return pad_crop, random


def _monai_case(work: Path, case_id: str, cached: bool) -> tuple[dict, float]:
    """The whole case in memory as MONAI gets it; with `cached`, plus its fg/bg indices (time returned)."""
    import numpy as np
    image = np.load(work / "cache" / f"{case_id}.npy")[None]
    label = np.load(work / "cache" / f"{case_id}_seg.npy")[None]
    data = {"image": image, "label": label}
    t_idx = 0.0
    if cached:
        from monai import transforms as T
        t0 = time.perf_counter()
        data = T.FgBgToIndicesd("label")(data)
        t_idx = time.perf_counter() - t0
    return data, t_idx


def child_monai(work: Path, threads: int, case_id: str, patch, samples: int, warmup: int, seed: int,
                cached: bool) -> None:
    _setup_threads(threads)
    import monai
    from monai import transforms as T
    from data.augment import AugmentSettings
    data, t_idx = _monai_case(work, case_id, cached)
    pad_crop, random = _monai_pipeline(patch, AugmentSettings(), cached=cached)
    pipeline = T.Compose(pad_crop + list(random.values())).set_random_state(seed)
    counts = dict.fromkeys(FIRINGS, 0)
    counting = [False]

    def sample(_):
        out = pipeline(dict(data))
        if counting[0]:
            for name, t in random.items():
                counts[name] += int(t._do_transform)
        return out

    out = sample(None)[0]
    shapes = {"image": [list(out["image"].shape), str(out["image"].dtype)],
              "label": [list(out["label"].shape), str(out["label"].dtype)]}
    pipeline.set_random_state(seed)
    counting[0] = False
    for _ in range(warmup):
        sample(None)
    counting[0] = True
    times, wall, cpu = _timed_loop(sample, [None] * samples, 0)
    emit({"step": "monai_idx" if cached else "monai", **_summary(times, wall, cpu), "fired": counts,
          "output": shapes, "threads": threads, "indices_seconds": t_idx, "monai_version": monai.__version__})


def child_ours_parts(work: Path, threads: int, case_id: str, patch, n: int, seed: int) -> None:
    """ms per call of the crop and of every transform forced to p = 1, alone."""
    import dataclasses
    import numpy as np
    _setup_threads(threads)
    import data.patches as patches
    from data.augment import AugmentSettings, Augmenter
    none = AugmentSettings.none()
    ds = patches.PatchDataset(work / "cache", [case_id], patch_size=patch, augment=none)
    keys = [(0, seed * 1_000_003 + i) for i in range(n)]
    spent = [0.0]
    # The readers of the cache that data.patches may call per item (load_arrays: the memory maps
    # only; load_preprocessed: the memory maps and the properties JSON); their time is summed.
    readers = {name: getattr(patches, name) for name in ("load_arrays", "load_preprocessed")
               if hasattr(patches, name)}

    def timed(fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapper

    for name, fn in readers.items():
        setattr(patches, name, timed(fn))  # the names __getitem__ calls
    warm = min(3, n)
    parts = {}
    for k in keys[:warm]:
        ds[k]
    spent[0] = 0.0
    times, _, _ = _timed_loop(lambda k: ds[k], keys, 0)
    parts["crop"] = 1e3 * float(np.mean(times))
    parts["crop: reading the case"] = 1e3 * spent[0] / len(keys)
    for name, fn in readers.items():
        setattr(patches, name, fn)
    crops = [ds[k] for k in keys]
    forced = {"zoom": {"zoom_p": 1.0}, "noise": {"noise_p": 1.0}, "smooth": {"smooth_p": 1.0},
              "scale": {"scale_p": 1.0}, "flip": {"flip_p": 1.0}}
    for name, override in forced.items():
        aug = Augmenter(dataclasses.replace(none, **override))
        rng = np.random.default_rng(seed)
        times, _, _ = _timed_loop(lambda c: aug(c["image"], c["label"], rng), crops[:warm] + crops, warm)
        parts[name] = 1e3 * float(np.mean(times))
    emit({"step": "ours_parts", "ms": parts, "n": n})


def child_monai_parts(work: Path, threads: int, case_id: str, patch, n: int, seed: int) -> None:
    import numpy as np
    _setup_threads(threads)
    from monai import transforms as T
    from data.augment import AugmentSettings
    settings = AugmentSettings()
    parts = {}
    warm = min(3, n)
    for cached in (False, True):
        data, _ = _monai_case(work, case_id, cached)
        pad_crop, _ = _monai_pipeline(patch, settings, cached=cached)
        crop = T.Compose(pad_crop).set_random_state(seed)
        times, _, _ = _timed_loop(lambda _, d=data: crop(dict(d)), [None] * (n + warm), warm)
        parts["crop (indices cached)" if cached else "crop"] = 1e3 * float(np.mean(times))
        if not cached:
            crops = [crop(dict(data))[0] for _ in range(n)]
        del data
    _, random = _monai_pipeline(patch, settings, cached=False,
                                probs={"zoom": 1.0, "noise": 1.0, "smooth": 1.0, "scale": 1.0, "flip": 1.0})
    for name, t in random.items():
        t.set_random_state(seed)
        times, _, _ = _timed_loop(lambda c: t(dict(c)), crops[:warm] + crops, warm)
        parts[name] = 1e3 * float(np.mean(times))
    emit({"step": "monai_parts", "ms": parts, "n": n})


# ----------------------------------------------------------------------------------------------
# parent

def run_child(args, step: str, extra: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--workdir", str(args.workdir),
           "--threads", str(args.threads), "--seed", str(args.seed), *extra]
    return run_step(cmd, thread_env(args.threads), step)




def expected_ms(parts: dict, probs: dict, side: str) -> float:
    """ms per patch expected at the study's probabilities from the forced (p = 1) timings."""
    if side == "ours":
        # One flip call for all axes that fire; it costs about the same for 1, 2 or 3 axes (a copy).
        flips = (1 - (1 - probs["flip"]) ** 3) * parts["flip"]
        crop = parts["crop"]
    else:
        flips = probs["flip"] * (parts["flip z"] + parts["flip y"] + parts["flip x"])
        crop = parts["crop (indices cached)"] if side == "monai_idx" else parts["crop"]
    return crop + sum(probs[k] * parts[k] for k in ("zoom", "noise", "smooth", "scale")) + flips


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", help="KiTS19 case to build the CT around (default: the median by resampled size)")
    p.add_argument("--procedural", action="store_true",
                   help="use a procedural case (scaled up) instead of a KiTS19 label map (automatic when the "
                        "label maps are absent)")
    p.add_argument("--patch", type=int, nargs=3, default=[80, 160, 160], metavar=("Z", "Y", "X"),
                   help="patch size (default: the study's, %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads for every pipeline (default 1)")
    p.add_argument("--samples", type=int, default=300, help="timed patches per run (default %(default)s)")
    p.add_argument("--warmup", type=int, default=10, help="untimed patches first, per run (default %(default)s)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each pipeline, interleaved, each in a fresh process on the same samples; the "
                        "fastest is reported (default %(default)s)")
    p.add_argument("--parts", type=int, default=20,
                   help="patches per transform for the per-transform table, 0 to skip it (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthesis and of the samples (default 0)")
    p.add_argument("--workdir", type=Path, help="folder for the case and its cache (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the workdir (a kept workdir is reused by the next run "
                   "for the same case and seed: the case is not made again)")
    p.add_argument("--skip-monai", action="store_true", help="measure ours only")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--kits", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.threads = max(1, args.threads)
    patch = tuple(args.patch)
    if args.child:
        work = args.workdir
        if args.child == "prepare":
            child_prepare(work, args.case, args.kits, args.seed)
            return 0
        case_id = json.loads((work / "plan.json").read_text())["case_id"]
        if args.child == "ours":
            child_ours(work, args.threads, case_id, patch, args.samples, args.warmup, args.seed)
        elif args.child == "ours_device":
            child_ours_device(work, args.threads, case_id, patch, args.samples, args.warmup, args.seed)
        elif args.child in ("monai", "monai_idx"):
            child_monai(work, args.threads, case_id, patch, args.samples, args.warmup, args.seed,
                        cached=args.child == "monai_idx")
        elif args.child == "ours_parts":
            child_ours_parts(work, args.threads, case_id, patch, args.parts, args.seed)
        elif args.child == "monai_parts":
            child_monai_parts(work, args.threads, case_id, patch, args.parts, args.seed)
        else:
            raise SystemExit(f"error: unknown child step {args.child}")
        return 0

    if not args.skip_monai:
        try:
            import monai  # noqa: F401
        except ImportError as exc:
            raise SystemExit(f"error: MONAI is not installed ({exc}); pip install -r bench/requirements.txt, "
                             "or pass --skip-monai")
    if args.samples < 1 or args.warmup < 0 or args.parts < 0:
        raise SystemExit("error: --samples must be >= 1, --warmup and --parts >= 0")
    kits = None if args.procedural else kits_dir()
    if kits is None:
        if args.case:
            raise SystemExit("error: --case needs the KiTS19 label maps ($KITS19_DIR or ../shared/kits19)")
        if not args.procedural:
            print("KiTS19 label maps not found ($KITS19_DIR or ../shared/kits19): using a procedural case")
        args.case = "procedural"
    else:
        from data.preprocessing import PreprocessSettings
        median, sizes = median_case(kits, PreprocessSettings().target_spacing)
        if args.case is None:
            args.case = median
        elif args.case not in sizes:
            raise SystemExit(f"error: {args.case} has no segmentation.nii.gz under {kits}")

    temp = args.workdir is None
    args.workdir = Path(tempfile.mkdtemp(prefix="fairkits_bench_aug_")) if temp else args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        return bench(args, kits, patch)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        else:
            print(f"kept {args.workdir}")


def bench(args, kits: Path | None, patch) -> int:
    from data.augment import AugmentSettings
    work = args.workdir
    plan_path = work / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    kits_str = str(kits) if kits else None
    reused = (plan is not None and plan.get("format") == BENCH_FORMAT and plan.get("seed") == args.seed
              and plan.get("kits") == kits_str and (kits is None or plan.get("case_id") == args.case)
              and (work / "cache" / f"{plan['case_id']}.json").is_file())
    if not reused:
        for sub in ("raw", "cache"):
            shutil.rmtree(work / sub, ignore_errors=True)
        plan_path.unlink(missing_ok=True)
        what = f"around the real label map of {args.case}" if kits else "(procedural)"
        print(f"making the case: synthesising a CT {what} and preprocessing it ...", flush=True)
        extra = ["--case", args.case] + (["--kits", kits_str] if kits else [])
        plan = run_child(args, "prepare", extra)
        made = (f"making the case (not part of the figures): {plan['synth_seconds']:.1f} s synthesis, "
                f"{plan['preprocess_seconds']:.1f} s preprocess_case")
    else:
        made = f"making the case (not part of the figures): reused from {work}"
    fmt = lambda xs: "x".join(f"{x:g}" for x in xs)  # noqa: E731
    print(f"case: {plan['source']}")
    print(f"   original {fmt(plan['original_shape'])} at {fmt(round(s, 3) for s in plan['original_spacing'])} mm; "
          f"body crop {fmt(plan['cropped_shape'])}; preprocessed (default settings) {fmt(plan['resampled_shape'])}; "
          f"class locations cached: {', '.join(f'label {k}: {v}' for k, v in plan['class_locations'].items())} "
          f"(properties JSON {plan['properties_json_bytes'] / 1024:.0f} KiB)")
    print(made)
    if any(r < p for r, p in zip(plan["resampled_shape"], patch)):
        print(f"note: the case is smaller than the patch {fmt(patch)} on some axis: both pipelines pad it")
    settings = AugmentSettings()
    probs = {"zoom": settings.zoom_p, "noise": settings.noise_p, "smooth": settings.smooth_p,
             "scale": settings.scale_p, "flip": settings.flip_p}
    print(f"patch {fmt(patch)}; the study's probabilities: zoom {probs['zoom']}, noise {probs['noise']}, smooth "
          f"{probs['smooth']}, scale {probs['scale']}, flip {probs['flip']} per axis; {args.samples} timed patches "
          f"per run after {args.warmup} untimed")
    print(f"threads: {args.threads} for every pipeline (torch.set_num_threads and OMP/MKL/OpenBLAS env), each run "
          "in a fresh process", flush=True)

    common = ["--patch", *map(str, patch), "--samples", str(args.samples), "--warmup", str(args.warmup)]
    steps = [("ours", "ours: PatchDataset (memmap) + Augmenter"),
             ("ours_device", "ours, augment_on device: loader part")]
    if not args.skip_monai:
        steps += [("monai", "MONAI (a): indices found per call"),
                  ("monai_idx", "MONAI (b): fg/bg indices cached")]
    runs: dict[str, list[dict]] = {step: [] for step, _ in steps}
    repeat = max(1, args.repeat)
    for i in range(repeat):
        for step, title in steps:  # interleaved, so a busy spell on the machine hits every pipeline alike
            print(f"running {title} ({i + 1}/{repeat}) ...", flush=True)
            r = run_child(args, step, common)
            runs[step].append(r)
            print(f"   {r['patches_per_s']:.1f} patches/s; other processes used {r['other_processes_cores']:.2f} "
                  "cores meanwhile", flush=True)
    results = {}
    for step, _ in steps:
        best = dict(max(runs[step], key=lambda r: r["patches_per_s"]))
        best["all_patches_per_s"] = [r["patches_per_s"] for r in runs[step]]
        best["all_other_processes_cores"] = [r["other_processes_cores"] for r in runs[step]]
        results[step] = best
    parts = {}
    if args.parts:
        part_steps = [("ours_parts", "ours")] + ([] if args.skip_monai else [("monai_parts", "MONAI")])
        for step, title in part_steps:
            print(f"running per-transform timings, {title} ({args.parts} patches per transform) ...", flush=True)
            parts[step] = run_child(args, step, ["--patch", *map(str, patch), "--parts", str(args.parts)])

    print()
    header = (f"{'pipeline (one core)':<42} {'patches/s':>9} {'ms/patch':>9} {'median':>7} {'p90':>7} "
              f"{'CPU s':>6} {'others':>6}   fired in the timed patches")
    print(header)
    print("-" * (len(header) + 36))
    for step, title in steps:
        r = results[step]
        fired = " ".join(f"{k.replace(' ', '')} {r['fired'][k]}" for k in FIRINGS)
        print(f"{title:<42} {r['patches_per_s']:>9.1f} {r['mean_ms']:>9.1f} {r['median_ms']:>7.1f} "
              f"{r['p90_ms']:>7.1f} {r['cpu_seconds']:>6.1f} {r['other_processes_cores']:>6.2f}   {fired}")
    n = results["ours"]["samples"]
    exp_counts = " ".join(f"{k.replace(' ', '')} {n * probs[k.split()[0]]:.0f}" for k in FIRINGS)
    print(f"{'(expected firings at the study p)':<42} {'':>9} {'':>9} {'':>7} {'':>7} {'':>6} {'':>6}   {exp_counts}")
    if repeat > 1:
        print(f"(each pipeline run {repeat} times, interleaved, in fresh processes, on the same samples; the "
              "fastest run is shown; all runs' patches/s: "
              + "; ".join(f"{step} " + ", ".join(f"{x:.1f}" for x in results[step]["all_patches_per_s"])
                          for step, _ in steps) + ")")
    for step, _ in steps:
        o = results[step]["output"]
        print(f"({step} output: image {tuple(o['image'][0])} {o['image'][1]}, label {tuple(o['label'][0])} "
              f"{o['label'][1]})")
    loader_ms, device_ms = results["ours"]["mean_ms"], results["ours_device"]["mean_ms"]
    applied_ms = results["ours_device"]["apply_on_cpu"]["mean_ms"]
    print(f"train.augment_on: the loader's CPU time per patch is {loader_ms:.1f} ms with `loader` and "
          f"{device_ms:.1f} ms with `device` (read, crop, draw); the augmentations themselves, {applied_ms:.1f} ms "
          "a patch on this CPU, then run on the training device")
    for rate in (10, 50, 100):
        print(f"   to feed {rate} patches/s: {rate * loader_ms / 1000:.1f} cores with `loader`, "
              f"{rate * device_ms / 1000:.1f} with `device`")
    if "monai_idx" in results:
        print(f"(MONAI (b): FgBgToIndicesd on the whole case took {results['monai_idx']['indices_seconds']:.2f} s "
              "once, not timed)")
    busy = max(max(r["all_other_processes_cores"]) for r in results.values())
    for p in parts.values():
        busy = max(busy, p["other_processes_cores"])
    if busy > BUSY_WARN_CORES:
        print(f"WARNING: other processes used up to {busy:.2f} of the {os.cpu_count()} cores during the runs; "
              "the timings are disturbed: run again on a quiet machine")
    print("(ms/patch: mean time of one patch; CPU s: the run's user+system CPU time in the timed part; others: "
          "cores that other processes of the machine used, on average, while the run's process ran)")

    figures = {"case": plan, "patch": list(patch), "threads": args.threads, "samples": args.samples,
               "repeat": repeat, "probabilities": probs, "pipelines": results, "other_processes_cores_max": busy}
    if parts:
        print()
        ours_p = parts["ours_parts"]["ms"]
        monai_p = parts.get("monai_parts", {}).get("ms", {})
        rows = [("pad + pos/neg crop", "crop", "crop", None),
                ("   of which opening the case (ours: cache reader)", "crop: reading the case", None, None),
                ("pad + pos/neg crop, indices cached (MONAI b)", None, "crop (indices cached)", None),
                ("zoom 0.9-1.2 (image trilinear, label nearest)", "zoom", "zoom", probs["zoom"]),
                ("Gaussian noise std 0.01", "noise", "noise", probs["noise"]),
                ("Gaussian smoothing sigma 0.5-1.15", "smooth", "smooth", probs["smooth"]),
                ("intensity scale +-0.3", "scale", "scale", probs["scale"]),
                ("flip z / y / x", "flip", None, None),
                ("   flip z", None, "flip z", probs["flip"]),
                ("   flip y", None, "flip y", probs["flip"]),
                ("   flip x", None, "flip x", probs["flip"])]
        header = (f"{'ms per call, transform forced to p = 1, alone':<48} {'ours':>8} {'MONAI':>8} "
                  f"{'MONAI/ours':>10} {'study p':>8}")
        print(header)
        print("-" * len(header))
        for title, ko, km, p in rows:
            o = ours_p.get(ko) if ko else None
            m = monai_p.get(km) if km else None
            if title.startswith("flip z / y / x") and monai_p:
                m = monai_p["flip z"] + monai_p["flip y"] + monai_p["flip x"]
                title = "flip, all three axes (MONAI: sum of the three)"
                p = probs["flip"]
            ratio = f"{m / o:.2f}" if (o and m) else ""
            print(f"{title:<48} {'' if o is None else f'{o:.1f}':>8} {'' if m is None else f'{m:.1f}':>8} "
                  f"{ratio:>10} {'' if p is None else p:>8}")
        exp = {"ours": expected_ms(ours_p, probs, "ours")}
        if monai_p:
            exp["monai"] = expected_ms(monai_p, probs, "monai")
            exp["monai_idx"] = expected_ms(monai_p, probs, "monai_idx")
        print("expected ms/patch at the study's p (crop + sum p x forced time; ours: one flip call when any axis "
              "flips, p 0.875): " + "; ".join(f"{k} {v:.1f} ms = {1e3 / v:.1f} patches/s" for k, v in exp.items()))
        figures["parts_ms"] = {k: v["ms"] for k, v in parts.items()}
        figures["expected_ms_per_patch"] = exp
    print()

    ok = True
    checks = []
    if not args.skip_monai:
        ours, a, b = results["ours"], results["monai"], results["monai_idx"]
        ratio_b = ours["patches_per_s"] / b["patches_per_s"]
        ratio_a = ours["patches_per_s"] / a["patches_per_s"]
        figures["ratio_vs_monai_cached_indices"] = ratio_b
        figures["ratio_vs_monai"] = ratio_a
        checks.append((f"throughput ours / MONAI (b, indices cached): {ratio_b:.2f}x "
                       f"({ours['patches_per_s']:.1f} / {b['patches_per_s']:.1f} patches/s)",
                       f">= {THROUGHPUT_TARGET}x", ratio_b >= THROUGHPUT_TARGET))
        width = len(checks[0][0])
        for text, target, passed in checks:
            print(f"{text:<{width}}  target {target:<7} {verdict(passed)}")
            ok &= passed
        print(f"(information) throughput ours / MONAI (a, indices per call): {ratio_a:.2f}x "
              f"({ours['patches_per_s']:.1f} / {a['patches_per_s']:.1f} patches/s)")
        if "expected_ms_per_patch" in figures and "monai_idx" in figures["expected_ms_per_patch"]:
            e = figures["expected_ms_per_patch"]
            print(f"(information) expected from the per-transform table (independent of which transforms fired): "
                  f"ours / MONAI (b) {e['monai_idx'] / e['ours']:.2f}x, ours / MONAI (a) {e['monai'] / e['ours']:.2f}x")
    figures["target"] = THROUGHPUT_TARGET
    figures["pass"] = ok
    print(f"overall: {verdict(ok)}" if checks else "overall: (ours only, no target checked)")
    if args.json:
        write_json(args.json, figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
