"""Bench: our trainer's step rate fed by its loader, against the same steps with no data loading.

The real Trainer (engine/fit.py) is built from a config, on a procedural cohort synthesised and
preprocessed into --workdir (not timed), and runs its own train_step on:

    loader/loader   batches from its DataLoader with --workers workers, train.augment_on: loader
                    (the workers read, crop and augment);
    loader/device   the same with train.augment_on: device (the workers read, crop and draw; the
                    trainer augments on the device);
    no loading      one batch, already on the device, stepped again and again: the device's own rate;
    compiled        the no-loading rate with train.compile: true (torch.compile), when --compile.

Each is --steps timed steps after --warmup untimed ones; on CUDA the clock waits for the device. The
ratio of a fed rate to the no-loading rate is the device's busy share: 1.0 means the loader is never
what the step waits for (the target on a GPU: at least 0.9 with at most 4 workers).

    python bench/trainer_rate.py --device cuda                        # the study's patch and widths, bf16
    python bench/trainer_rate.py --device cpu --quick                 # a dry run: small patch and widths
    python bench/trainer_rate.py --device cuda --compile --json rate.json

Defaults on CUDA: patch 80 x 160 x 160, batch 2, nnU-Net widths 32 -> 320, bf16, 4 workers. --quick:
patch 32 x 64 x 64, widths 8 -> 64, 2 workers, few steps (proves the bench end to end on a CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import load_config  # noqa: E402
from engine.fit import Env, Trainer  # noqa: E402
from engine.runtime import amp_settings, pick_device  # noqa: E402
from engine.rundata import load_run_data  # noqa: E402


def settings(args) -> list[str]:
    quick = args.quick
    patch = args.patch or ([32, 64, 64] if quick else [80, 160, 160])
    widths = (8, 64) if quick else (32, 320)
    return [f"data.raw={args.workdir / 'raw'}", f"data.cache={args.workdir / 'cache'}",
            f"data.synthesize_cases={args.cases}", "data.test=2", "data.synthesize_bias=null",
            f"model.base_features={widths[0]}", f"model.max_features={widths[1]}",
            f"train.patch_size=[{','.join(map(str, patch))}]", f"train.batch_size={args.batch}",
            f"train.device={args.device}", f"train.amp={args.amp}", "train.steps_per_epoch=100000",
            f"train.workers={args.workers}", "train.channels_last=true"]


def trainer_for(args, extra: list[str]) -> Trainer:
    cfg = load_config(ROOT / "configs" / "demo.yaml", settings(args) + extra)
    device = pick_device(cfg["train"]["device"])
    amp_dtype, use_scaler = amp_settings(cfg["train"]["amp"], device)
    data = load_run_data(cfg, progress=False, log=lambda *_: None)
    trainer = Trainer(cfg, data, Env(device=device, amp_dtype=amp_dtype, use_scaler=use_scaler), log=lambda *_: None)
    trainer.wrap()
    trainer.model.train()
    return trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(trainer: Trainer, batches, warmup: int, steps: int) -> dict:
    device = trainer.env.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    it = iter(batches)
    for _ in range(warmup):
        trainer.train_step(next(it), 0, None)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(it), 0, None)
    sync(device)
    seconds = time.perf_counter() - start
    out = {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds,
           "patches_per_s": steps * trainer.tc["batch_size"] / seconds}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out


def fed(args, augment_on: str) -> dict:
    trainer = trainer_for(args, [f"train.augment_on={augment_on}"])
    trainer.sampler.set_epoch(0)
    return timed_steps(trainer, trainer.loader, args.warmup, args.steps)


def unfed(args, compile_: bool) -> dict:
    trainer = trainer_for(args, ["train.augment_on=loader", f"train.compile={str(compile_).lower()}"])
    trainer.sampler.set_epoch(0)
    batch = next(iter(trainer.loader))
    batch = {k: v.to(trainer.env.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    forever = iter(lambda: batch, None)
    return timed_steps(trainer, forever, args.warmup + (5 if compile_ else 0), args.steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="small patch and widths, few steps: a dry run")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="patch (default 80 160 160; --quick 32 64 64)")
    p.add_argument("--batch", type=int, default=2, help="batch size (2)")
    p.add_argument("--amp", default="auto", help="train.amp: auto (CUDA bf16), bf16, fp16, off")
    p.add_argument("--workers", type=int, help="loader workers (4; --quick 2)")
    p.add_argument("--steps", type=int, help="timed steps per configuration (50; --quick 6)")
    p.add_argument("--warmup", type=int, help="untimed steps first (10; --quick 2)")
    p.add_argument("--cases", type=int, default=12, help="procedural cases synthesised (12, 10 for training)")
    p.add_argument("--compile", action="store_true", help="also time train.compile: true without data loading")
    p.add_argument("--workdir", type=Path, help="cohort and cache folder, reused when it exists (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    args.workers = args.workers if args.workers is not None else (2 if args.quick else 4)
    args.steps = args.steps or (6 if args.quick else 50)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 10)
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="fairkits_rate_"))).resolve()
    print(f"trainer rate: device {pick_device(args.device)}, torch {torch.__version__}, {args.workers} workers, "
          f"{args.steps} timed steps after {args.warmup}; cohort in {args.workdir}", flush=True)
    results = {}
    for name, run in (("loader/loader", lambda: fed(args, "loader")), ("loader/device", lambda: fed(args, "device")),
                      ("no loading", lambda: unfed(args, False))) + ((("compiled, no loading", lambda: unfed(args, True)),)
                                                                    if args.compile else ()):
        results[name] = run()
        r = results[name]
        print(f"  {name:<22} {r['steps_per_s']:7.2f} steps/s  {r['patches_per_s']:7.2f} patches/s"
              + (f"  peak {r['peak_gib']:.1f} GiB" if "peak_gib" in r else ""), flush=True)
    base = results["no loading"]["steps_per_s"]
    for name in ("loader/loader", "loader/device"):
        results[name]["busy_share"] = results[name]["steps_per_s"] / base
        print(f"busy share, augment_on {name.split('/')[1]}: {results[name]['busy_share']:.2f} of the no-loading "
              f"rate (target on a GPU >= 0.90 with <= 4 workers)")
    if "compiled, no loading" in results:
        print(f"torch.compile: {results['compiled, no loading']['steps_per_s'] / base:.2f} x the eager rate")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
