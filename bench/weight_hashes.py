"""Bitwise fingerprint of training: the SHA-256 of the final weights of a tiny CPU run per config.

A refactoring that must not change behaviour is checked by running this before and after it:
every shipped training config is trained for a few steps on a tiny hand-made cohort, in one
thread, each run in its own process, and the hash of every state in its last.pt that training
produces (the network, and the mitigation's modules and buffers) is printed. Equal hashes mean
bitwise-equal training.

    python bench/weight_hashes.py                       # every config in configs/
    python bench/weight_hashes.py --configs configs/resm_sex.yaml --epochs 2
    python bench/weight_hashes.py --json before.json    # save; --compare before.json to diff

The run sizes are the smoke test's (tests/test_configs_smoke.py): 8 cases of 24 x 40 x 48, patch
16 x 32 x 32, features 4 -> 16, batch 4, `--epochs` (2) epochs, no validation.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kits_fixtures import write_tiny_cohort  # noqa: E402

SKIP = {"preprocess_study.yaml"}
# the smoke test's sizes; the fair-meta classifier's width has its own key
SMOKE_SETS = ["data.synthesize_cases=0", "data.test=2", "data.val=0", "train.steps_per_epoch=null", "train.patch_size=[16,32,32]",
              "model.base_features=4", "model.max_features=16", "train.batch_size=4", "train.workers=0",
              "eval.every=100", "data.preprocess.target_spacing=[3.22,1.62,1.62]", "train.device=cpu"]
CLASSIFIER_KEY = "fairness.fairmeta.classifier.growth_rate=4"
# states of a checkpoint that training produces: the network, and each mitigation's modules and
# buffers (under "mitigations" by name; top-level "fairmeta" / "dro" in checkpoints before that)
LEGACY_STATES = ("fairmeta", "dro")


def state_hash(state) -> str:
    digest = hashlib.sha256()

    def feed(prefix, value):
        if isinstance(value, dict):
            for key in sorted(value):
                feed(f"{prefix}.{key}", value[key])
        elif isinstance(value, torch.Tensor):
            digest.update(prefix.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(f"{prefix}={value!r}".encode())
    feed("", state)
    return digest.hexdigest()


def run_one(config: Path, work: Path, epochs: int, classifier_key: str) -> dict:
    sets = [f"data.raw={work / 'raw'}", f"data.cache={work / 'cache'}", f"train.out_dir={work / 'runs'}",
            f"train.epochs={epochs}", *SMOKE_SETS]
    if "fairmeta" in config.read_text():
        sets.append(classifier_key)
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--name", config.stem, "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    ckpt = torch.load(work / "runs" / config.stem / "last.pt", map_location="cpu", weights_only=True)
    states = {"model": ckpt["model"], **{k: ckpt[k] for k in LEGACY_STATES if k in ckpt},
              **{k: v for k, v in ckpt.get("mitigations", {}).items() if v}}
    return {key: state_hash(value) for key, value in states.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", type=Path,
                   default=sorted(c for c in (ROOT / "configs").glob("*.yaml") if c.name not in SKIP))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--classifier-key", default=CLASSIFIER_KEY,
                   help="the override that narrows the fair-meta classifier (its key in this version)")
    p.add_argument("--json", type=Path, help="write {config: {state: sha256}} here")
    p.add_argument("--compare", type=Path, help="a --json file of an earlier run: print same / DIFFERENT")
    args = p.parse_args(argv)
    earlier = json.loads(args.compare.read_text()) if args.compare else {}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_tiny_cohort(work / "raw", n_cases=8, shape=(24, 40, 48), spacing=(3.22, 1.62, 1.62))
        for config in args.configs:
            results[config.stem] = run_one(config.resolve(), work, args.epochs, args.classifier_key)
            line = "  ".join(f"{k} {v[:16]}" for k, v in results[config.stem].items())
            verdict = ""
            if config.stem in earlier:
                before = {k: v for k, v in earlier[config.stem].items() if k != "error"}
                now = {k: v for k, v in results[config.stem].items() if k != "error"}
                verdict = "  same" if before and before == now else "  DIFFERENT"
            print(f"{config.stem:28s} {line}{verdict}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
