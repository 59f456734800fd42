"""Where a run computes: distributed setup, the device, mixed precision, seeds.

Used by train.py and evaluate.py alike (evaluate.py never imports train.py).

Usage:
    rank, world, distributed = setup_distributed()          # torchrun sets RANK; else (0, 1, False)
    device = pick_device("auto", rank, distributed)          # cuda if available, else cpu
    amp_dtype, use_scaler = amp_settings("auto", device)     # (None, False) on CPU
    seed_everything(0)
    net = unwrap(model)                                      # the module inside DDP / torch.compile
    snapshot = cpu_clone(state)                              # tensors cloned to the CPU
"""
from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from config import ConfigError


def setup_distributed():
    """(rank, world size, distributed?): a process group when launched by torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, False
    if not dist.is_initialized():  # one process group serves every run of a --seeds / --sweep batch
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def pick_device(name: str, rank: int = 0, distributed: bool = False) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): autocast there is ~1.5x
    faster than fp32 for our 3D convolutions; elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_settings(mode: str, device: torch.device):
    """(autocast dtype or None, whether a GradScaler is needed).

    CUDA: auto is bf16 where supported, else fp16 (with a GradScaler). CPU: only an explicit
    bf16 autocasts, and only where the CPU computes bf16 natively (emulated bf16 is slower than
    fp32 and less precise, so it falls back to fp32); auto stays fp32 there, so the tests' CPU
    results do not depend on the CPU model."""
    if mode not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got {mode!r}")
    if mode == "off":
        return None, False
    if device.type != "cuda":
        native = mode == "bf16" and device.type == "cpu" and cpu_has_native_bf16()
        return (torch.bfloat16, False) if native else (None, False)
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def autocast(device: torch.device, amp_dtype):
    return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The three generators' states as tensors and plain values (a checkpoint is data: torch.load
    with weights_only=True reads it, so numpy's key array travels as a tensor)."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    if isinstance(saved, dict):
        saved = (saved["kind"], saved["key"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                 saved["cached_gaussian"])
    np.random.set_state(saved)
    random.setstate(state["python"])


def cpu_clone(obj):
    """A copy of a (nested) state with every tensor cloned to the CPU: a snapshot that later
    training steps do not change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_clone(v) for v in obj)
    return copy.deepcopy(obj)


def unwrap(model):
    """The module itself, inside DistributedDataParallel and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def barrier(distributed: bool) -> None:
    if distributed:
        dist.barrier()
