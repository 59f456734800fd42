"""Self-describing checkpoints: weights plus everything needed to rebuild and resume the run.

A checkpoint holds the resolved config (so the network is rebuilt from it alone), the git
commit, the model/optimiser/scheduler/scaler states, the epoch and step reached, the best
validation score, and the RNG states. It is written to a temporary name and renamed, so a
killed write never leaves a corrupt file behind.

Usage:
    save_checkpoint(run_dir / "last.pt", {...})
    ckpt = load_checkpoint("runs/x/last.pt")
    model = model_from_checkpoint(ckpt)     # rebuilt from ckpt["config"], weights loaded
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from data.atomic import atomic_write, remove_stale_temporaries

FORMAT_VERSION = 2   # 2: mitigation states under "mitigations", the run's "group_index"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path, state: dict) -> None:
    """Write to a temporary name, flush it to disk, then rename: a process killed at any moment
    leaves either the previous complete file or the new one, never a torn one. Leftover temporary
    files of writers that were killed are removed after a successful write."""
    path = Path(path)
    atomic_write(path, lambda tmp: _save_to(tmp, {"format_version": FORMAT_VERSION, **state}), fsync=True)
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


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a fairkits checkpoint (no config or model state)")
    version = ckpt.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer fairkits (checkpoint format {version}, this version reads "
                         f"up to {FORMAT_VERSION}); update fairkits to read it")
    return upgrade_checkpoint(ckpt) if version < FORMAT_VERSION else ckpt


def upgrade_checkpoint(ckpt: dict) -> dict:
    """A format-1 checkpoint (before the mitigations package) in format 2, in memory.

    Format 1 kept the fair-meta branch under "fairmeta" and the DRO state under "dro", had no
    group index (the dMoE group list was in model_config.moe) and the config in the old layout
    (translated by config.upgrade_saved_config). The weights are untouched.
    """
    from config import upgrade_saved_config

    ckpt = dict(ckpt)
    ckpt["config"] = upgrade_saved_config(ckpt["config"])
    ckpt["mitigations"] = {name: ckpt.pop(name) for name in ("fairmeta", "dro") if name in ckpt}
    moe = (ckpt.get("model_config") or {}).get("moe") or {}
    if moe.get("groups"):
        ckpt["group_index"] = {"attribute": moe.get("attribute") or ckpt["config"]["fairness"]["attribute"],
                               "groups": list(moe["groups"])}
    ckpt["format_version"] = FORMAT_VERSION
    return ckpt


def model_from_checkpoint(ckpt: dict, where: str = "checkpoint"):
    """The network a checkpoint describes, with its weights; a clear ValueError if they disagree."""
    from models import build_model
    cfg = ckpt["config"]
    model_cfg = ckpt.get("model_config", cfg["model"])  # with what train.py resolved (dMoE groups)
    try:
        model = build_model(model_cfg, patch_size=cfg["train"]["patch_size"], in_channels=1,
                            num_classes=ckpt.get("num_classes", 3))
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{where}: its config does not build a model with this version of fairkits ({exc})") from None
    try:
        model.load_state_dict(ckpt["model"])  # strict: another architecture fails here, by key
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()][1:2]
        raise ValueError(f"{where}: weights do not fit the {cfg['model'].get('name')} its config describes "
                         f"({'; '.join(first) or 'shape or key mismatch'}); never loading a different network") from None
    return model
