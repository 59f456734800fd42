"""Self-describing checkpoints: weights plus everything needed to rebuild and resume the run.

A checkpoint holds the resolved config (so the network is rebuilt from it alone), the git
commit, the model/optimiser/scheduler/scaler states, the epoch and step reached, the best
validation score, and the RNG states. It is written to a temporary name and renamed, so a
killed write never leaves a corrupt file behind.

A checkpoint is data: tensors and plain dicts, lists, strings and numbers, which
torch.load(weights_only=True) reads without running anything in the file. It is always read
that way; a file that needs more (a crafted pickle, or a checkpoint of fairkits before format 3,
whose RNG state was a numpy object) is refused in one line. Old checkpoints are converted by an
explicit command the user runs knowingly (`python train.py --convert-checkpoint OLD.pt`), which
unpickles them once; nothing converts silently.

Usage:
    save_checkpoint(run_dir / "last.pt", {...})
    ckpt = load_checkpoint("runs/x/last.pt")          # CheckpointError (one line) if unusable
    model = model_from_checkpoint(ckpt)     # rebuilt from ckpt["config"], weights loaded
    convert_checkpoint("old/last.pt")       # -> old/last-v3.pt (unpickles: trusted files only)
"""
from __future__ import annotations

import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import torch

from data.atomic import atomic_write, remove_stale_temporaries
from data.untrusted import short

FORMAT_VERSION = 3   # 2: mitigation states under "mitigations", the run's "group_index"; 3: data only
PLAIN = (str, int, float, bool, type(None), torch.Tensor)
CONVERT_COMMAND = "python train.py --convert-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, in one line naming the file and why."""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_plain(obj, where: str = "state") -> None:
    """TypeError naming the first value that is not a tensor or plain data (dict with str/int keys,
    list, tuple, str, number, bool, None): what torch.load(weights_only=True) reads back."""
    stack = [(obj, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, (str, int)):
                    raise TypeError(f"{at} has a key {key!r} of type {type(key).__name__}")
                stack.append((child, f"{at}[{key!r}]"))
        elif isinstance(value, (list, tuple)):
            stack.extend((child, f"{at}[{i}]") for i, child in enumerate(value))
        elif not isinstance(value, PLAIN):
            raise TypeError(f"{at} is a {type(value).__module__}.{type(value).__name__}, not a tensor or plain data")


def save_checkpoint(path, state: dict) -> None:
    """Write to a temporary name, flush it to disk, then rename: a process killed at any moment
    leaves either the previous complete file or the new one, never a torn one. Leftover temporary
    files of writers that were killed are removed after a successful write. The state must be
    data (check_plain): a checkpoint never needs code to be read."""
    path = Path(path)
    state = {"format_version": FORMAT_VERSION, **state}
    check_plain(state, "checkpoint")
    atomic_write(path, lambda tmp: _save_to(tmp, state), fsync=True)
    remove_stale_temporaries(path.parent, f".{path.name}.tmp*")


def _save_to(tmp: Path, state: dict) -> None:
    """torch.save, with a failed write (a full disk) raised as the OSError it is: torch's zip writer
    turns it into a RuntimeError about stream positions."""
    with open(tmp, "wb") as fh:
        try:
            torch.save(state, fh)
        except RuntimeError as exc:
            cause = exc.__context__
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__
            if cause is None:
                raise
            raise cause from None


def _checkpoint_file(path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint read as data (torch.load with weights_only=True: nothing in it runs), its
    structure checked; CheckpointError in one line otherwise. Files of fairkits before format 3
    hold numpy objects: they are refused with the command that converts them."""
    path = _checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:   # weights_only refused a global: code or a foreign object
        found = re.search(r"(?:Unsupported global|Unsupported operand|GLOBAL)[^.\n]*", str(exc))
        raise CheckpointError(
            f"{path}: holds objects beyond tensors and plain data ({found.group(0).strip() if found else 'refused'}), "
            f"so it is not read (reading it could run code). A checkpoint of fairkits before format 3 is "
            f"converted, once and knowingly, by `{CONVERT_COMMAND} {path}` (only for files you trust)") from None
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    return validate_checkpoint(_in_format(ckpt, path), path)


def _in_format(ckpt, path: Path) -> dict:
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a fairkits checkpoint (no config or model state)")
    version = ckpt.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version is {short(version)}, not a number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer fairkits (checkpoint format {version}, this version "
                              f"reads up to {FORMAT_VERSION}); update fairkits to read it")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: its config is {short(ckpt['config'])}, not a mapping of sections")
    return upgrade_checkpoint(ckpt) if version < FORMAT_VERSION else ckpt


# key: (types it may have, required)
LAYOUT = {"config": (dict, True), "model": (dict, True), "model_config": (dict, False), "num_classes": (int, False),
          "group_index": ((dict, type(None)), False), "git_commit": (str, False), "optimizer": (dict, False),
          "scheduler": (dict, False), "scaler": (dict, False), "mitigations": (dict, False),
          "epoch": (int, False), "step": (int, False), "best": ((int, float, type(None)), False), "rng": (dict, False)}


def validate_checkpoint(ckpt: dict, path) -> dict:
    """`ckpt` if its entries have the types a fairkits checkpoint has; CheckpointError otherwise.
    (Shapes are checked against the network in model_from_checkpoint.)"""
    for key, (types, required) in LAYOUT.items():
        if key not in ckpt:
            if required:
                raise CheckpointError(f"{path}: has no {key!r}")
            continue
        value = ckpt[key]
        if (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))) \
                or not isinstance(value, types):
            raise CheckpointError(f"{path}: its {key!r} is {short(value)}, not what a fairkits checkpoint holds")
    for name, value in ckpt["model"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: model state entry {short(name)} is {short(value)}, not a tensor")
    for section in ("model", "train"):
        if not isinstance(ckpt["config"].get(section), dict):
            raise CheckpointError(f"{path}: its config has no {section!r} section")
    for key in ("epoch", "step"):
        if key in ckpt and ckpt[key] < 0:
            raise CheckpointError(f"{path}: its {key!r} is {ckpt[key]}, below 0")
    index = ckpt.get("group_index")
    if index is not None and (not isinstance(index.get("attribute"), str) or not isinstance(index.get("groups"), list)
                              or not all(isinstance(g, str) for g in index["groups"])):
        raise CheckpointError(f"{path}: its group_index is not an attribute with a list of group names")
    return ckpt


def convert_checkpoint(old, new=None) -> Path:
    """Read a checkpoint of an earlier fairkits with full unpickling (it may run code: only for a
    file you trust), bring it to this format (numpy RNG state as tensors, older layouts upgraded)
    and save it as data at `new` (default: OLD's name with `-v3` before `.pt`). The old file is
    kept. Returns the new path."""
    old = _checkpoint_file(old)
    new = Path(new) if new is not None else old.with_name(f"{old.stem}-v{FORMAT_VERSION}{old.suffix}")
    if new.resolve() == old.resolve():
        raise CheckpointError(f"{new}: the converted checkpoint would replace the one it is made from; give --out")
    if new.exists():
        raise CheckpointError(f"{new}: exists; remove it or give another --out")
    try:
        ckpt = torch.load(old, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{old}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    ckpt = dict(_in_format(ckpt, old))
    rng = ckpt.get("rng")
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), tuple):
        kind, key, pos, has_gauss, cached = rng["numpy"]
        ckpt["rng"] = dict(rng, numpy={"kind": str(kind), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)})
    ckpt = _plain(ckpt)
    try:
        check_plain(ckpt, str(old))
    except TypeError as exc:
        raise CheckpointError(f"cannot convert: {exc}") from None
    validate_checkpoint(ckpt, old)
    save_checkpoint(new, {k: v for k, v in ckpt.items() if k != "format_version"})
    return new


def _plain(obj):
    """numpy scalars and arrays (older checkpoints' configs and states) as plain values and tensors."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def upgrade_checkpoint(ckpt: dict) -> dict:
    """A checkpoint of an earlier format in this one, in memory (the weights are untouched).

    Format 1 (before the mitigations package) kept the fair-meta branch under "fairmeta" and the
    DRO state under "dro", had no group index (the dMoE group list was in model_config.moe) and the
    config in the old layout (translated by config.upgrade_saved_config). Format 2 differs from 3
    only in how the RNG state is stored, which convert_checkpoint translates (a format-2 file that
    torch.load(weights_only=True) could read needs nothing more).
    """
    from config import upgrade_saved_config

    ckpt = dict(ckpt)
    if ckpt.get("format_version", 1) == 1:
        ckpt["config"] = upgrade_saved_config(ckpt["config"])
        ckpt["mitigations"] = {name: ckpt.pop(name) for name in ("fairmeta", "dro") if name in ckpt}
        moe = (ckpt.get("model_config") or {}).get("moe") or {}
        if moe.get("groups"):
            attribute = moe.get("attribute") or (ckpt["config"].get("fairness") or {}).get("attribute")
            ckpt["group_index"] = {"attribute": attribute, "groups": list(moe["groups"])}
    ckpt["format_version"] = FORMAT_VERSION
    return ckpt


# what a saved config may ask of a network before anything is built (a checkpoint is untrusted input:
# num_classes 10**9 would allocate 64 GB before a weight was checked)
SIZE_BOUNDS = {"num_classes": (2, 255), "patch_side": (4, 1024), "patch_voxels": (64, 2 ** 27),
               "width": (1, 4096), "stages": (1, 12)}
WIDTH_KEYS = ("base_features", "max_features", "features", "experts", "hidden_ratio", "top_k", "growth_rate",
              "init_features")


def check_sizes(ckpt: dict, where: str) -> None:
    """CheckpointError unless every size the saved config gives is an integer within SIZE_BOUNDS."""
    cfg = ckpt.get("config") or {}
    model_cfg = ckpt.get("model_config", cfg.get("model", {})) or {}

    def bounded(name, value, bound):
        low, high = SIZE_BOUNDS[bound]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CheckpointError(f"{where}: its config gives {name} = {str(value)[:40]}; expected an integer in "
                                  f"{low}-{high} (refusing to build the network it describes)")

    bounded("num_classes", ckpt.get("num_classes", 3), "num_classes")
    patch = (cfg.get("train") or {}).get("patch_size")
    if not isinstance(patch, (list, tuple)) or len(patch) != 3:
        raise CheckpointError(f"{where}: its config gives train.patch_size = {str(patch)[:40]}; expected 3 integers")
    for side in patch:
        bounded("train.patch_size", side, "patch_side")
    bounded("the patch's voxels", int(patch[0]) * int(patch[1]) * int(patch[2]), "patch_voxels")
    for key in WIDTH_KEYS:
        if key in model_cfg and model_cfg[key] is not None:
            bounded(f"model.{key}", model_cfg[key], "width")
    if model_cfg.get("n_stages") is not None:
        bounded("model.n_stages", model_cfg["n_stages"], "stages")


def model_from_checkpoint(ckpt: dict, where: str = "checkpoint"):
    """The network a checkpoint describes, with its weights; CheckpointError if they disagree
    (every tensor's name and shape must be the network's). The sizes are checked first (check_sizes),
    then the network is built on the meta device (no memory) and its shapes compared with the
    weights', and only then built for real."""
    import torch

    from models import build_model
    check_sizes(ckpt, where)
    cfg = ckpt["config"]
    model_cfg = ckpt.get("model_config", cfg["model"])  # with what train.py resolved (dMoE groups)
    build = lambda: build_model(model_cfg, patch_size=cfg["train"]["patch_size"], in_channels=1,  # noqa: E731
                                num_classes=ckpt.get("num_classes", 3))
    try:
        with torch.device("meta"):
            shapes = {name: tuple(t.shape) for name, t in build().state_dict().items()}
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{where}: its config does not build a model with this version of fairkits ({exc})") from None
    weights = ckpt.get("model") or {}
    wrong = [(n, shapes[n], tuple(weights[n].shape)) for n in shapes if n in weights and hasattr(weights[n], "shape")
             and tuple(weights[n].shape) != shapes[n]]
    missing, extra = sorted(set(shapes) - set(weights)), sorted(set(weights) - set(shapes))
    if wrong or missing or extra:
        detail = (f"{wrong[0][0]}: the config gives {wrong[0][1]}, the weights {wrong[0][2]}" if wrong else
                  f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}")
        raise CheckpointError(f"{where}: weights do not fit the {cfg['model'].get('name')} its config describes "
                              f"({detail}); never loading a different network")
    try:
        model = build()
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{where}: its config does not build a model with this version of fairkits ({exc})") from None
    try:
        model.load_state_dict(ckpt["model"])  # strict: another architecture fails here, by key
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()][1:2]
        raise CheckpointError(f"{where}: weights do not fit the {cfg['model'].get('name')} its config describes "
                         f"({'; '.join(first) or 'shape or key mismatch'}); never loading a different network") from None
    return model
