"""Bench: one training step of our nnunet model against nnU-Net's own PlainConvUNet.

Both networks are built for the same patch: ours with models.build_model({"name": "nnunet"}, ...)
(stages from models.planning.plan_stages), nnU-Net's with
dynamic_network_architectures.architectures.unet.PlainConvUNet given exactly our stages:
n_stages, features_per_stage, strides and kernel sizes read off our encoder,
n_conv_per_stage = n_conv_per_stage_decoder = 2, conv_bias=True, InstanceNorm3d(eps 1e-5,
affine), LeakyReLU(0.01, inplace), deep_supervision=True, 3 classes, 1 input channel.

Before timing, the bench checks that the two are the same network:
    - parameter counts (printed; a difference is accounted for module by module);
    - our weights copied into a copy of PlainConvUNet (its transposed-conv biases, which ours
      lacks, set to 0) give the same deep-supervision outputs, full resolution first, on one input.

A step, the same for both: zero_grad, forward (under autocast with --amp), the loss
models.losses.DeepSupervisionLoss(DiceCELoss()) on the deep-supervision outputs (nnU-Net's
weights 1/2^i, lowest resolution 0), backward (through a GradScaler with fp16), and an SGD step
(lr 1e-3, momentum 0.9: the study's); no gradient clipping. The steps of the two networks
alternate (ours, nnU-Net, nnU-Net, ours, ...) on the same batch, so a busy spell on the machine
hits both alike; --warmup steps each are not timed, then the median of --steps steps each is
reported, with the forward + loss / backward / optimiser split (CUDA: synchronised at each).

    CPU (default there): patch 32 x 64 x 64, batch 2, fp32, all cores.
    CUDA (default when available): patch 80 x 160 x 160 (the study's), batch 2, AMP fp16 with a
    GradScaler (nnU-Net's choice), cudnn.benchmark on; patches/s reported as well.

Target: s/step ours / nnU-Net <= 1.0 (ratio of the medians), printed with a 95% bootstrap interval
(steps resampled in pairs): the two networks do the same work, so when the interval contains 1.0
the verdict is within the noise of the machine. --profile adds a torch.profiler table of the ops
whose self time differs most between the two.

Needs the bench requirements (pip install -r bench/requirements.txt:
dynamic-network-architectures; never the project's).

Usage (from the repo root):
    python bench/train_step.py                         # CPU: 32x64x64, batch 2, all cores
    python bench/train_step.py --steps 20 --profile
    python bench/train_step.py --device cuda           # 80x160x160, batch 2, AMP fp16
    python bench/train_step.py --patch 48 96 96 --batch 1 --threads 1 --json step.json
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _common import BUSY_WARN_CORES, cpu_seconds, machine_busy_seconds, verdict, write_json  # noqa: E402

RATIO_TARGET = 1.0
EQUIVALENCE_TOL = 1e-4    # max abs difference of the outputs with shared weights (fp32)
CPU_PATCH, CUDA_PATCH = (32, 64, 64), (80, 160, 160)






def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_ours(patch):
    from models import build_model
    from models.planning import plan_stages
    net = build_model({"name": "nnunet"}, patch_size=patch, in_channels=1, num_classes=3)
    plan = plan_stages(patch)
    enc = net.encoder
    if tuple(enc.features) != plan.features or tuple(enc.strides) != plan.strides:
        raise SystemExit(f"error: build_model's stages {enc.features} / {enc.strides} differ from "
                         f"plan_stages' {plan.features} / {plan.strides}")
    return net, plan


def build_dna(ours):
    """PlainConvUNet with exactly our encoder's stages."""
    import torch
    from torch import nn
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    enc = ours.encoder
    n_convs = list(enc.n_convs)
    dec_convs = [len(block) for block in ours.decoder.blocks]  # deepest first, in both
    net = PlainConvUNet(
        input_channels=enc.stages[0][0][0].conv.in_channels, n_stages=len(enc.features),
        features_per_stage=list(enc.features), conv_op=nn.Conv3d,
        kernel_sizes=[[k] * 3 if isinstance(k, int) else list(k) for k in enc.kernel_sizes],
        strides=[list(s) for s in enc.strides], n_conv_per_stage=n_convs,
        num_classes=ours.decoder.heads[0].out_channels, n_conv_per_stage_decoder=dec_convs,
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"negative_slope": 1e-2, "inplace": True}, deep_supervision=True)
    net.apply(PlainConvUNet.initialize)  # nnU-Net's He init, as its trainer does
    return net.to(torch.float32)


def module_pairs(ours, dna):
    """(our module, nnU-Net's module) for every conv, norm, transposed conv and head, in the same places."""
    pairs = []
    for ostage, dstage in zip(ours.encoder.stages, dna.encoder.stages):
        for ocna, dconv in zip(ostage[-1], dstage[-1].convs):
            pairs += [(ocna.conv, dconv.conv), (ocna.norm, dconv.norm)]
    dec = dna.decoder
    for i, (up, block, head) in enumerate(zip(ours.decoder.ups, ours.decoder.blocks, ours.decoder.heads)):
        pairs.append((up, dec.transpconvs[i]))
        for ocna, dconv in zip(block, dec.stages[i].convs):
            pairs += [(ocna.conv, dconv.conv), (ocna.norm, dconv.norm)]
        pairs.append((head, dec.seg_layers[i]))
    return pairs


def parameter_accounting(ours, dna) -> tuple[list[str], int]:
    """Lines describing every parameter-count difference, module by module, and the unexplained rest."""
    lines, explained = [], 0
    for om, dm in module_pairs(ours, dna):
        if type(om) is not type(dm):
            lines.append(f"{type(om).__name__} vs {type(dm).__name__}: different module types")
        for name in ("weight", "bias"):
            op, dp = getattr(om, name, None), getattr(dm, name, None)
            on, dn = (0 if op is None else op.numel()), (0 if dp is None else dp.numel())
            if on != dn:
                lines.append((name, type(om).__name__, on, dn))
                explained += dn - on
    diff = n_params(dna) - n_params(ours)
    return lines, diff - explained


def check_equivalence(ours, dna, patch, device) -> float:
    """Our weights in a copy of nnU-Net's net (extra biases 0): max abs difference of the outputs."""
    import torch
    dna = copy.deepcopy(dna).to(device)
    with torch.no_grad():
        for om, dm in module_pairs(ours, dna):
            dm.weight.copy_(om.weight)
            if dm.bias is not None:
                if om.bias is not None:
                    dm.bias.copy_(om.bias)
                else:
                    dm.bias.zero_()
        x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(1)).to(device)
        a, b = ours(x), dna(x)
    if len(a) != len(b):
        raise SystemExit(f"error: ours gives {len(a)} deep-supervision outputs, nnU-Net {len(b)}")
    worst = 0.0
    for i, (oa, ob) in enumerate(zip(a, b)):
        if oa.shape != ob.shape:
            raise SystemExit(f"error: output {i}: ours {tuple(oa.shape)}, nnU-Net {tuple(ob.shape)}")
        worst = max(worst, float((oa - ob).abs().max()))
    return worst


class Stepper:
    """One network's training step: the same loss, optimiser, AMP and timing for both."""

    def __init__(self, name, net, n_outputs, device, amp_dtype):
        import torch
        from models.losses import DeepSupervisionLoss, DiceCELoss
        self.name, self.net, self.device, self.amp_dtype = name, net.to(device).train(), device, amp_dtype
        self.criterion = DeepSupervisionLoss(DiceCELoss(), n_outputs=n_outputs)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=1e-3, momentum=0.9)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.times: list[tuple[float, float, float]] = []   # (forward + loss, backward, optimiser) seconds

    def _sync(self):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, x, y, record: bool):
        import torch
        self._sync()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            outputs = self.net(x)
        loss, _ = self.criterion(outputs, y)
        self._sync()
        t1 = time.perf_counter()
        self.scaler.scale(loss).backward()
        self._sync()
        t2 = time.perf_counter()
        self.scaler.step(self.opt)
        self.scaler.update()
        self._sync()
        t3 = time.perf_counter()
        if not torch.isfinite(loss):
            raise SystemExit(f"error: {self.name}: non-finite loss {loss.item()}")
        if record:
            self.times.append((t1 - t0, t2 - t1, t3 - t2))
        return loss.detach()

    def summary(self, batch: int) -> dict:
        totals = [sum(t) for t in self.times]
        med = statistics.median(totals)
        return {"median_s": med, "min_s": min(totals), "max_s": max(totals),
                "q1_s": statistics.quantiles(totals, n=4)[0] if len(totals) > 1 else med,
                "q3_s": statistics.quantiles(totals, n=4)[2] if len(totals) > 1 else med,
                "forward_loss_s": statistics.median(t[0] for t in self.times),
                "backward_s": statistics.median(t[1] for t in self.times),
                "optimizer_s": statistics.median(t[2] for t in self.times),
                "patches_per_s": batch / med, "all_s": totals}


def profile(steppers, x, y, steps: int, top: int) -> dict:
    """Self time per op (ms per step) for each network, from torch.profiler over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    tables = {}
    for s in steppers:
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                s.step(x, y, record=False)
        rows = {}
        for ev in prof.key_averages():
            self_us = ev.self_device_time_total if x.device.type == "cuda" else ev.self_cpu_time_total
            rows[ev.key] = (self_us / 1e3 / steps, ev.count // steps)
        tables[s.name] = rows
    return tables


def print_profile(tables: dict, top: int) -> list[dict]:
    (na, ta), (nb, tb) = tables.items()
    names = set(ta) | set(tb)
    rows = []
    for name in names:
        a, ca = ta.get(name, (0.0, 0))
        b, cb = tb.get(name, (0.0, 0))
        rows.append({"op": name, na: a, nb: b, "diff_ms": a - b, f"{na}_calls": ca, f"{nb}_calls": cb})
    total_a, total_b = sum(v[0] for v in ta.values()), sum(v[0] for v in tb.values())
    print(f"profile: self time per step (ms), the {top} ops whose time differs most, then the {top} largest")
    header = f"{'op':<46} {na + ' ms':>10} {nb + ' ms':>11} {'diff ms':>9} {'calls ' + na:>11} {'calls ' + nb:>12}"
    for title, key in (("differ most", lambda r: -abs(r["diff_ms"])), ("largest", lambda r: -max(r[na], r[nb]))):
        print(f"-- {title}")
        print(header)
        for r in sorted(rows, key=key)[:top]:
            print(f"{r['op'][:46]:<46} {r[na]:>10.1f} {r[nb]:>11.1f} {r['diff_ms']:>+9.1f} {r[na + '_calls']:>11} "
                  f"{r[nb + '_calls']:>12}")
    print(f"{'total self time':<46} {total_a:>10.1f} {total_b:>11.1f} {total_a - total_b:>+9.1f}")
    return sorted(rows, key=lambda r: -abs(r["diff_ms"]))


def bootstrap_ratio(a: list[float], b: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of median(a) / median(b), resampling the (a_i, b_i) pairs of the same iteration."""
    import random
    rnd = random.Random(seed)
    k = len(a)
    ratios = []
    for _ in range(n):
        idx = [rnd.randrange(k) for _ in range(k)]
        ratios.append(statistics.median(a[i] for i in idx) / statistics.median(b[i] for i in idx))
    ratios.sort()
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]




def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help=f"patch size (default: {'x'.join(map(str, CPU_PATCH))} on CPU, "
                        f"{'x'.join(map(str, CUDA_PATCH))} on CUDA)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default %(default)s)")
    p.add_argument("--steps", type=int, help="timed steps per network (default 10 on CPU, 50 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps per network first (default 2 on CPU, 10 on CUDA)")
    p.add_argument("--amp", choices=("fp16", "bf16", "off"),
                   help="autocast dtype (default: fp16 with a GradScaler on CUDA, off on CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads on CPU (default: all cores, %(default)s)")
    p.add_argument("--profile", action="store_true", help="also profile both (torch.profiler) and print the ops "
                   "whose self time differs most")
    p.add_argument("--profile-steps", type=int, default=2, help="steps per network under the profiler (default 2)")
    p.add_argument("--top", type=int, default=15, help="rows of each profile table (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch (default 0)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"error: dynamic-network-architectures is not installed ({exc}); "
                         "pip install -r bench/requirements.txt")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but CUDA is not available")
    cuda = device.type == "cuda"
    patch = tuple(args.patch) if args.patch else (CUDA_PATCH if cuda else CPU_PATCH)
    steps = args.steps if args.steps is not None else (50 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    amp = args.amp or ("fp16" if cuda else "off")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]
    if amp == "fp16" and not cuda:
        raise SystemExit("error: --amp fp16 needs CUDA (on CPU use --amp bf16 or off)")
    if steps < 1 or warmup < 0 or args.batch < 1:
        raise SystemExit("error: --steps and --batch must be >= 1, --warmup >= 0")
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    if cuda:
        if device.index is None:  # torch.cuda.set_device refuses a device without an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)

    import dynamic_network_architectures as dna_pkg
    ours, plan = build_ours(patch)
    dna = build_dna(ours)
    fmt = lambda xs: "x".join(str(x) for x in xs)  # noqa: E731
    print(f"patch {fmt(patch)}, batch {args.batch}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if cuda else f", {threads} threads")
          + f", AMP {amp}; torch {torch.__version__}, dynamic-network-architectures "
            f"{getattr(dna_pkg, '__version__', None) or _dist_version('dynamic_network_architectures')}")
    print(f"stages (models.planning.plan_stages, used for both): {plan.n_stages}; features {list(plan.features)}; "
          f"strides {[list(s) for s in plan.strides]}; kernels 3x3x3; 2 convs per stage, encoder and decoder")

    # --- the same network? -------------------------------------------------------------------
    po, pd = n_params(ours), n_params(dna)
    lines, unexplained = parameter_accounting(ours, dna)
    print(f"parameters: ours {po:,}, nnU-Net PlainConvUNet {pd:,} (difference {pd - po:+,})")
    by_kind: dict[tuple, list[int]] = {}
    for name, kind, on, dn in (l for l in lines if isinstance(l, tuple)):
        by_kind.setdefault((name, kind), []).append(dn - on)
    for (name, kind), diffs in by_kind.items():
        print(f"   {kind}.{name}: nnU-Net has {sum(diffs):+,} ({len(diffs)} modules: "
              f"{', '.join(f'{d:+}' for d in diffs)}"
              + ("): ours builds its transposed convs with bias=False (models/decoder.py), nnU-Net's UNetDecoder "
                 "with bias=conv_bias (True). That bias is nearly redundant: it adds a per-channel constant to the "
                 "upsampled half of the concat, which the next conv turns into a per-channel constant (exactly, "
                 "away from its zero-padded border) that the InstanceNorm right after removes; its cost is one add "
                 "per transposed-conv output voxel" if (name, kind) == ("bias", "ConvTranspose3d") else ")"))
    for l in lines:
        if isinstance(l, str):
            print(f"   {l}")
    if unexplained:
        print(f"   unexplained by module pairs: {unexplained:+,}")
    # On the CPU in fp32 (no TF32), on the smallest input that leaves the bottleneck 2 voxels a side.
    total = [1, 1, 1]
    for stride in plan.strides:
        total = [t * st for t, st in zip(total, stride)]
    check_patch = tuple(min(p, 2 * t) for p, t in zip(patch, total))
    eq = check_equivalence(ours, dna, check_patch, device=torch.device("cpu"))
    print(f"same function: our weights copied into PlainConvUNet (its transposed-conv biases 0), input "
          f"1x1x{fmt(check_patch)} on the CPU: max abs difference of the outputs {eq:.2e} "
          f"({verdict(eq <= EQUIVALENCE_TOL)} at {EQUIVALENCE_TOL:g})")
    if eq > EQUIVALENCE_TOL:
        print("WARNING: the two networks do not compute the same function; the comparison is not like for like")

    # --- the batch, and the outputs' order --------------------------------------------------------
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 1, *patch, generator=gen).to(device)
    y = torch.randint(0, 3, (args.batch, *patch), generator=gen).to(device)
    ours.to(device)
    dna.to(device)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                         enabled=amp_dtype is not None):
        oo, do = ours(x), dna(x)
    shapes_o, shapes_d = [tuple(o.shape[2:]) for o in oo], [tuple(o.shape[2:]) for o in do]
    sizes = [s[0] * s[1] * s[2] for s in shapes_d]
    full_first = shapes_d[0] == patch and all(a > b for a, b in zip(sizes, sizes[1:]))
    print(f"deep-supervision outputs (spatial): ours {[fmt(s) for s in shapes_o]}; nnU-Net "
          f"{[fmt(s) for s in shapes_d]} ({'same, full resolution first' if shapes_o == shapes_d and full_first else 'DIFFERENT'})")
    if shapes_o != shapes_d or not full_first:
        raise SystemExit("error: the deep-supervision outputs differ in order or shape; the loss would not match")
    del oo, do
    n_out = len(shapes_o)
    steppers = [Stepper("ours", ours, n_out, device, amp_dtype), Stepper("nnU-Net", dna, n_out, device, amp_dtype)]
    from models.losses import deep_supervision_weights
    print(f"step: zero_grad, forward{' (autocast ' + amp + ')' if amp_dtype else ''}, DeepSupervisionLoss(DiceCELoss()) "
          f"weights {[round(w, 3) for w in deep_supervision_weights(n_out)]}, backward"
          f"{' (GradScaler)' if amp == 'fp16' else ''}, SGD step (lr 1e-3, momentum 0.9); no grad clipping")
    print(f"timing: {warmup} untimed + {steps} timed steps per network, alternating (ours, nnU-Net, nnU-Net, ours, "
          "...), on the same batch; medians", flush=True)

    # --- timing -----------------------------------------------------------------------------------
    busy0, self0, wall0 = machine_busy_seconds(), cpu_seconds(), time.perf_counter()
    for i in range(warmup + steps):
        order = steppers if i % 2 == 0 else steppers[::-1]
        for s in order:
            s.step(x, y, record=i >= warmup)
        if i == warmup - 1:
            busy0, self0, wall0 = machine_busy_seconds(), cpu_seconds(), time.perf_counter()
    wall = time.perf_counter() - wall0
    others = max(0.0, machine_busy_seconds() - busy0 - (cpu_seconds() - self0)) / wall
    res = {s.name: s.summary(args.batch) for s in steppers}
    mem = {}
    if cuda:
        # Peak memory of one step each, measured on its own after the timing.
        for s in steppers:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            s.step(x, y, record=False)
            mem[s.name] = torch.cuda.max_memory_allocated(device)
            res[s.name]["peak_memory_bytes"] = mem[s.name]

    print()
    header = (f"{'network':<28} {'s/step':>8} {'min':>8} {'max':>8} {'fwd+loss':>9} {'bwd':>8} {'optim':>8} "
              f"{'patches/s':>10}" + (f" {'peak GiB':>9}" if cuda else ""))
    print(header)
    print("-" * len(header))
    titles = {"ours": "ours: models nnunet", "nnU-Net": "nnU-Net: PlainConvUNet"}
    for name, r in res.items():
        print(f"{titles[name]:<28} {r['median_s']:>8.3f} {r['min_s']:>8.3f} {r['max_s']:>8.3f} "
              f"{r['forward_loss_s']:>9.3f} {r['backward_s']:>8.3f} {r['optimizer_s']:>8.3f} {r['patches_per_s']:>10.2f}"
              + (f" {mem[name] / 1024 ** 3:>9.2f}" if cuda else ""))
    paired = [a / b for a, b in zip(res["ours"]["all_s"], res["nnU-Net"]["all_s"])]
    print(f"(s/step: median of {steps} steps; fwd+loss / bwd / optim: medians of the parts, synchronised "
          f"{'on the GPU ' if cuda else ''}at each; per-step ratios ours/nnU-Net, paired by iteration: median "
          f"{statistics.median(paired):.3f}, range {min(paired):.3f} - {max(paired):.3f})")
    print(f"(other processes used {others:.2f} of the {os.cpu_count()} cores, on average, during the timed steps)")
    if others > BUSY_WARN_CORES:
        print(f"WARNING: other processes used {others:.2f} cores during the timed steps; the timings are disturbed: "
              "run again on a quiet machine")

    figures = {"device": str(device), "patch": list(patch), "batch": args.batch, "amp": amp, "threads": threads,
               "steps": steps, "warmup": warmup, "plan": {"features": list(plan.features),
                                                          "strides": [list(s) for s in plan.strides]},
               "params": {"ours": po, "nnunet": pd}, "equivalence_max_abs_diff": eq, "results": res,
               "paired_ratio_median": statistics.median(paired), "other_processes_cores": others}
    if args.profile:
        print()
        tables = profile(steppers, x, y, max(1, args.profile_steps), args.top)
        figures["profile"] = print_profile(tables, args.top)

    print()
    ratio = res["ours"]["median_s"] / res["nnU-Net"]["median_s"]
    figures["ratio"] = ratio
    ok = ratio <= RATIO_TARGET
    text = (f"s/step ours / nnU-Net: {ratio:.3f} ({res['ours']['median_s']:.3f} s / {res['nnU-Net']['median_s']:.3f} s"
            + (f"; {res['ours']['patches_per_s']:.1f} vs {res['nnU-Net']['patches_per_s']:.1f} patches/s" if cuda
               else "") + ")")
    print(f"{text}  target <= {RATIO_TARGET}  {verdict(ok)}")
    lo, hi = bootstrap_ratio(res["ours"]["all_s"], res["nnU-Net"]["all_s"])
    figures["ratio_bootstrap_95"] = [lo, hi]
    print(f"(information) 95% bootstrap interval of that ratio (steps resampled in pairs): {lo:.3f} - {hi:.3f}"
          + (f"; it contains {RATIO_TARGET}: at {steps} steps the two are not told apart, and the verdict can go "
             "either way between runs" if lo <= RATIO_TARGET <= hi else ""))
    figures["target"] = RATIO_TARGET
    figures["pass"] = ok
    print(f"overall: {verdict(ok)}")
    if args.json:
        write_json(args.json, figures)
    return 0 if ok else 1


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name.replace("_", "-"))
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    sys.exit(main())
