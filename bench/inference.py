"""Bench: sliding-window inference over one KiTS19-size case, ours against MONAI's.

One preprocessed-size case (default 120 x 240 x 240 voxels: the study's median case preprocesses
to about 115 x 208 x 240 at 3.22 x 1.62 x 1.62 mm, rounded up to a size that both tilings below
cover with the same tiles; --shape to change it) goes through

    ours    models.inference.predict_case(model, image, patch_size, overlap 0.5, tile_batch 2):
            nnU-Net's sliding window (tiles evenly spread, steps <= patch / 2, Gaussian importance
            sigma = patch / 8, max 1), the softmax of the full-resolution output per tile;
    MONAI   monai.inferers.sliding_window_inference(image, patch, sw_batch_size 2, predictor,
            overlap 0.5, mode="gaussian", sigma_scale=0.125) with the same model, the predictor
            returning the softmax of its first (full-resolution) deep-supervision output, as ours
            does (our nnunet returns the list of deep-supervision outputs in eval() too), under
            torch.no_grad() and, with --amp, torch.autocast;

both timed from the numpy image to the (C, Z, Y, X) float32 probabilities on the CPU, runs
interleaved (ours, MONAI, MONAI, ours, ...), best of --repeats each. The model is our nnunet
(models.build_model({"name": "nnunet", ...}), 1 channel in, 3 classes, deep supervision on,
random He init), on the CPU at a reduced patch and width so that a run takes a minute or so on
2 cores (patch 48 x 96 x 96, features 8 doubling to 64), on CUDA at the study's (80 x 160 x 160,
32 to 320).

What differs between the two, and what the bench does about it:
    tiling   MONAI steps int(patch * (1 - overlap)) and moves the last tile back to end at the
             border; ours spreads the tiles evenly. They give the same tiles when (size - patch)
             is a multiple of the step on every axis (the default shape is chosen so, for both the
             CPU and the CUDA patch); the bench prints both lists of tile starts per axis.
    weights  MONAI's Gaussian (monai.data.utils.compute_importance_map) is the same sampled
             Gaussian, not normalised (max < 1 for an even patch; irrelevant, the blend divides
             by the summed weights) and clamped below at 1e-3, which lifts most of the map:
             half of the voxels of a tile, its outer shell, weigh 1e-3 instead of down to
             ~1e-10 (ours: clamped only at its smallest positive value, i.e. never). Where several tiles
             overlap near their borders this changes the blend, so the two outputs differ by
             more than rounding with a real model. The bench prints the maps' difference, then
             compares the outputs twice: (a) against MONAI given our importance map
             (roi_weight_map; one more, untimed, MONAI run): same tiles, same weights, so any
             difference is the stitching's, and this is the target; (b) against MONAI's own
             Gaussian (the timed run): for information, with the label agreement.
    machinery  the network dominates both times; the rest (cutting tiles, weighting, stitching,
             normalising) is also timed alone with a 1x1x1-conv "model" (--overhead-repeats).

Targets: seconds ours / MONAI <= 1.0 (best of --repeats each), and (a) max |difference| of the
probabilities < 1e-4. Both print PASS/FAIL; the bench warns when other processes used more than
a quarter of a core while it timed (the timings are then disturbed: rerun on a quiet machine).

Needs the bench requirements (pip install -r bench/requirements.txt: monai; never the project's).

Usage (from the repo root):
    python bench/inference.py                                  # CPU: 120x240x240, patch 48x96x96
    python bench/inference.py --repeats 3 --json inference.json
    python bench/inference.py --shape 64 144 144 --repeats 1   # quick
    python bench/inference.py --device cuda                    # patch 80x160x160, features 32-320, fp32
    python bench/inference.py --device cuda --amp fp16
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import BUSY_WARN_CORES, cpu_seconds, loadavg, machine_busy_seconds, verdict, write_json  # noqa: E402

RATIO_TARGET = 1.0
OUTPUT_TOL = 1e-4          # max abs difference of the probabilities, same tiles and weights
SIGMA_SCALE = 0.125        # nnU-Net's and MONAI's default: sigma = patch / 8
DEFAULT_SHAPE = (120, 240, 240)
CPU_PATCH, CUDA_PATCH = (48, 96, 96), (80, 160, 160)
CPU_FEATURES, CUDA_FEATURES = (8, 64), (32, 320)










def fmt(xs) -> str:
    return "x".join(str(x) for x in xs)


def monai_axis_starts(shape, patch, overlap) -> list[list[int]]:
    """The tile starts per axis that sliding_window_inference uses (after its own padding)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval
    size = tuple(max(s, p) for s, p in zip(shape, patch))
    interval = _get_scan_interval(size, patch, len(patch), (overlap,) * len(patch))
    slices = dense_patch_slices(size, patch, interval)
    return [sorted({int(sl[a].start) for sl in slices}) for a in range(len(patch))]


class Timer:
    """Interleaved runs, best time per side, other processes' CPU use and (CUDA) peak memory."""

    def __init__(self, device):
        self.device = device
        self.times: dict[str, list[float]] = {}
        self.peak: dict[str, int] = {}
        self.outputs: dict = {}
        self.busy = self.own = self.wall = 0.0

    def run(self, name, fn):
        import torch
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        busy0, own0, t0 = machine_busy_seconds(), cpu_seconds(), time.perf_counter()
        out = fn()  # ends with .cpu(): synchronised
        dt = time.perf_counter() - t0
        self.busy += machine_busy_seconds() - busy0
        self.own += cpu_seconds() - own0
        self.wall += dt
        if cuda:
            self.peak[name] = max(self.peak.get(name, 0), torch.cuda.max_memory_allocated(self.device))
        self.times.setdefault(name, []).append(dt)
        self.outputs[name] = out
        return out

    def others(self) -> float:
        return max(0.0, self.busy - self.own) / self.wall if self.wall > 0 else 0.0


def interleave(timer: Timer, sides: dict, repeats: int, label: str) -> None:
    names = list(sides)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            timer.run(name, sides[name])
            print(f"   {label} run {r + 1}/{repeats}: {name:<6} {timer.times[name][-1]:8.2f} s", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(DEFAULT_SHAPE),
                   help=f"case size in voxels (default {fmt(DEFAULT_SHAPE)})")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help=f"patch size (default: {fmt(CPU_PATCH)} on CPU, {fmt(CUDA_PATCH)} on CUDA)")
    p.add_argument("--features", type=int, nargs=2, metavar=("BASE", "MAX"),
                   help=f"nnunet base_features and max_features (default: {' '.join(map(str, CPU_FEATURES))} "
                        f"on CPU, {' '.join(map(str, CUDA_FEATURES))} on CUDA)")
    p.add_argument("--overlap", type=float, default=0.5, help="tile overlap (default %(default)s)")
    p.add_argument("--tile-batch", type=int, default=2, help="tiles per forward, both (default %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per side, best reported (default %(default)s)")
    p.add_argument("--overhead-repeats", type=int, default=3,
                   help="timed runs per side with the 1x1x1-conv model (0 to skip; default %(default)s)")
    p.add_argument("--amp", choices=("fp16", "bf16", "off"), default="off",
                   help="autocast dtype, both sides (default off; fp16 needs CUDA)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads on CPU (default: all cores, %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the image (default 0)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    try:
        import monai
        from monai.data.utils import compute_importance_map
        from monai.inferers import sliding_window_inference
    except ImportError as exc:
        raise SystemExit(f"error: monai is not installed ({exc}); pip install -r bench/requirements.txt")
    from models import build_model
    from models.inference import gaussian_importance, predict_case, tile_starts

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    if cuda and device.index is None:  # torch.cuda.set_device refuses a device without an index
        device = torch.device("cuda", torch.cuda.current_device())
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[args.amp]
    if args.amp == "fp16" and not cuda:
        raise SystemExit("error: --amp fp16 needs CUDA (on CPU use --amp bf16 or off)")
    if args.repeats < 1 or args.tile_batch < 1 or not 0 <= args.overlap < 1:
        raise SystemExit("error: --repeats and --tile-batch must be >= 1, 0 <= --overlap < 1")
    shape = tuple(args.shape)
    patch = tuple(args.patch) if args.patch else (CUDA_PATCH if cuda else CPU_PATCH)
    base, top = args.features or (CUDA_FEATURES if cuda else CPU_FEATURES)
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)

    model = build_model({"name": "nnunet", "base_features": base, "max_features": top}, patch_size=patch,
                        in_channels=1, num_classes=3).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    # A preprocessed-like image: the cache holds z-scored CT, so values of order 1.
    image = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).numpy()
    print(f"case {fmt(shape)} voxels, patch {fmt(patch)}, overlap {args.overlap}, {args.tile_batch} tiles per "
          f"forward, device {device}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else f", {threads} threads")
          + f", AMP {args.amp}; torch {torch.__version__}, monai {monai.__version__}")
    print(f"model: nnunet, features {base} doubling to {top}, stages {list(model.encoder.features)}, "
          f"{n_params:,} parameters, deep supervision on (both use the first, full-resolution output)")
    print(f"load average at start: {loadavg()}")

    # --- the tiles ---------------------------------------------------------------------------------
    full = tuple(max(s, p) for s, p in zip(shape, patch))
    ours_starts = [tile_starts(s, p, args.overlap) for s, p in zip(full, patch)]
    monai_starts = monai_axis_starts(shape, patch, args.overlap)
    same_tiles = ours_starts == monai_starts
    n_tiles = len(list(itertools.product(*ours_starts)))
    print(f"tile starts per axis (z, y, x){' after padding to ' + fmt(full) if full != shape else ''}:")
    print(f"   ours  {ours_starts}  ({n_tiles} tiles)")
    print(f"   MONAI {monai_starts}  ({len(list(itertools.product(*monai_starts)))} tiles)")
    print(f"   {'the same tiles' if same_tiles else 'DIFFERENT tiles: the outputs are not comparable voxel for voxel'}"
          + ("" if same_tiles else "; choose a shape with (size - patch) a multiple of int(patch * (1 - overlap))"))

    # --- the importance maps ----------------------------------------------------------------------
    ours_map = gaussian_importance(patch)
    monai_map = compute_importance_map(patch, mode="gaussian", sigma_scale=SIGMA_SCALE, device="cpu")
    floor = float(monai_map.min())
    clamped = float((monai_map <= floor).float().mean())
    map_diff = float((ours_map - monai_map / monai_map.max()).abs().max())
    print(f"importance maps: ours max {float(ours_map.max()):.4f} min {float(ours_map.min()):.2e}; MONAI max "
          f"{float(monai_map.max()):.4f} min {floor:.2e}, {clamped:.1%} of the voxels at that floor; max |ours - "
          f"MONAI / max(MONAI)| {map_diff:.2e}")

    # --- the two pipelines ------------------------------------------------------------------------
    def make_predictor(net):
        def predictor(x):
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                out = net(x)
                out = out[0] if isinstance(out, (list, tuple)) else out
                return torch.softmax(out.float(), dim=1)
        return predictor

    def run_ours(net):
        return lambda: predict_case(net, image, patch_size=patch, overlap=args.overlap, tile_batch=args.tile_batch,
                                    device=device, amp_dtype=amp_dtype)

    def run_monai(net, weight_map=None):
        predictor = make_predictor(net)

        def run():
            with torch.no_grad():
                x = torch.from_numpy(image)[None, None].to(device)
                kw = {"roi_weight_map": weight_map.to(device)} if weight_map is not None else \
                     {"mode": "gaussian", "sigma_scale": SIGMA_SCALE}
                out = sliding_window_inference(x, patch, args.tile_batch, predictor, overlap=args.overlap,
                                               sw_device=device, device=device, **kw)
                return torch.as_tensor(out)[0].cpu()
        return run

    # Warm-up (untimed): a tile batch of each size the runs use (the last one may be smaller) through the
    # model, so that neither side pays the first call (oneDNN primitives, cuDNN benchmarking).
    with torch.no_grad():
        for b in sorted({min(args.tile_batch, n_tiles), n_tiles % args.tile_batch} - {0}):
            make_predictor(model)(torch.zeros((b, 1) + patch, device=device))

    print(f"timing: {args.repeats} runs per side, interleaved (ours, MONAI, MONAI, ours, ...), best reported",
          flush=True)
    timer = Timer(device)
    interleave(timer, {"ours": run_ours(model), "MONAI": run_monai(model)}, args.repeats, "model")
    ours_out, monai_out = timer.outputs["ours"], timer.outputs["MONAI"]
    t_ours, t_monai = min(timer.times["ours"]), min(timer.times["MONAI"])
    others = timer.others()

    overhead = None
    if args.overhead_repeats > 0:
        # The sliding-window machinery alone: a "model" that costs next to nothing (one 1x1x1 conv).
        conv = torch.nn.Conv3d(1, 3, kernel_size=1).to(device).eval()
        otimer = Timer(device)
        print(f"machinery alone (model: one 1x1x1 conv), {args.overhead_repeats} runs per side:", flush=True)
        interleave(otimer, {"ours": run_ours(conv), "MONAI": run_monai(conv)}, args.overhead_repeats, "1x1x1")
        overhead = {k: min(v) for k, v in otimer.times.items()}
        others = max(others, otimer.others())

    # --- the outputs --------------------------------------------------------------------------------
    print("checking: MONAI with our importance map (roi_weight_map), untimed ...", flush=True)
    same_weights_out = run_monai(model, weight_map=ours_map)()
    diff_same = float((ours_out - same_weights_out).abs().max())
    diff_own = float((ours_out - monai_out).abs().max())
    labels_agree = float((ours_out.argmax(0) == monai_out.argmax(0)).float().mean())
    print(f"load average at end: {loadavg()}")

    print()
    header = f"{'sliding window':<40} {'best s':>8} {'runs (s)':<28}" + (f" {'peak GiB':>9}" if cuda else "")
    print(header)
    print("-" * len(header))
    titles = {"ours": "ours: models.inference.predict_case", "MONAI": "MONAI: sliding_window_inference"}
    for name in ("ours", "MONAI"):
        runs = ", ".join(f"{t:.2f}" for t in timer.times[name])
        print(f"{titles[name]:<40} {min(timer.times[name]):>8.2f} {runs:<28}"
              + (f" {timer.peak[name] / 1024 ** 3:>9.2f}" if cuda else ""))
    if overhead:
        print(f"machinery alone (1x1x1 conv): ours {overhead['ours']:.2f} s, MONAI {overhead['MONAI']:.2f} s, "
              f"ratio {overhead['ours'] / overhead['MONAI']:.3f}")
    print(f"(other processes used {others:.2f} of the {os.cpu_count()} cores, on average, while timing; "
          f"load average {loadavg()})")
    if others > BUSY_WARN_CORES:
        print(f"WARNING: other processes used {others:.2f} cores while timing; the timings are disturbed: "
              "run again on a quiet machine")
    print(f"outputs (C, Z, Y, X) = {tuple(ours_out.shape)}, MONAI {tuple(monai_out.shape)}:")
    print(f"   (a) ours vs MONAI with our importance map: max |difference| {diff_same:.2e}")
    print(f"   (b) ours vs MONAI with its own Gaussian: max |difference| {diff_own:.2e}, labels (argmax) agree on "
          f"{labels_agree:.4%} of the voxels (the difference comes from MONAI's 1e-3 floor on its map)")

    print()
    ratio = t_ours / t_monai
    ok_time = ratio <= RATIO_TARGET
    print(f"seconds ours / MONAI: {ratio:.3f} ({t_ours:.2f} s / {t_monai:.2f} s)  target <= {RATIO_TARGET}  "
          f"{verdict(ok_time)}")
    if same_tiles:
        ok_out = diff_same < OUTPUT_TOL
        print(f"outputs, same tiles and weights: max |difference| {diff_same:.2e}  target < {OUTPUT_TOL:g}  "
              f"{verdict(ok_out)}")
    else:
        ok_out = None
        print("outputs: n/a, the tilings differ (see the tile starts above); no verdict")
    ok = ok_time and ok_out is not False
    print(f"overall: {verdict(ok)}")

    if args.json:
        figures = {"device": str(device), "shape": list(shape), "patch": list(patch), "features": [base, top],
                   "params": n_params, "overlap": args.overlap, "tile_batch": args.tile_batch, "amp": args.amp,
                   "threads": threads, "repeats": args.repeats, "times_s": timer.times,
                   "best_s": {"ours": t_ours, "MONAI": t_monai}, "ratio": ratio, "machinery_best_s": overhead,
                   "tile_starts": {"ours": ours_starts, "MONAI": monai_starts}, "same_tiles": same_tiles,
                   "importance_map_max_abs_diff": map_diff, "monai_map_floor_fraction": clamped,
                   "max_abs_diff_same_weights": diff_same, "max_abs_diff_monai_gaussian": diff_own,
                   "label_agreement_monai_gaussian": labels_agree, "other_processes_cores": others,
                   "loadavg_end": loadavg(), "peak_memory_bytes": timer.peak or None,
                   "targets": {"ratio": RATIO_TARGET, "max_abs_diff": OUTPUT_TOL},
                   "pass": {"time": ok_time, "outputs": ok_out, "overall": ok}}
        write_json(args.json, figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
