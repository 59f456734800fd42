"""Train a segmentation network with the study's recipe: `python train.py --config configs/X.yaml`.

    python train.py --config configs/demo.yaml                       # the embedded demo, CPU-sized
    python train.py --config configs/baseline_nnunet.yaml --set train.epochs=2 --set train.workers=0
    python train.py --resume runs/baseline_nnunet-20261122-101500    # continue from last.pt
    torchrun --nproc_per_node=2 train.py --config configs/baseline_nnunet.yaml   # DDP

Reads top to bottom: config -> data -> model -> optimiser -> loop -> checkpoints -> test tables.
Everything lands in the run folder (never an existing one unless resuming): config.yaml,
TensorBoard events, last.pt / best.pt, and eval/ with per_case.csv and the group tables.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from config import ConfigError, dump_config, load_config, load_sweep, yaml_load
from data.augment import AugmentSettings
from data.errors import CaseError
from data.patches import PatchDataset
from data.prepare import prepare_data
from data.preprocessing import groups_from_table, load_cache_settings, load_case_table
from data.samplers import build_sampler
from fairness.audit import audit_groups, format_audit
from fairness.dro import GroupDRO
from fairness.meta import FairMetaBranch
from models import build_model
from models.checkpoint import git_commit, load_checkpoint, save_checkpoint
from models.inference import score_cached_cases
from models.routing import WithGroup, resolve_routing
from models.losses import DeepSupervisionLoss, DiceCELoss

LOSSES = {"dice_ce": DiceCELoss}


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. the loss stays non-finite); its checkpoints so far are kept."""
OPTIMIZERS = {"sgd", "adamw"}
SCHEDULES = {"constant", "poly"}
FAIRNESS_METHODS = {"none", "fairmeta", "dro"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML config (sections data, model, loss, sampler, optim, train, eval, fairness)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--resume", type=Path, help="run folder (or checkpoint) to continue from its last.pt")
    p.add_argument("--name", help="run folder name under train.out_dir (default: config name + time)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="train once per seed (the study averages 0 1 2): runs NAME/seedS, resumable")
    p.add_argument("--sweep", type=Path, metavar="FILE",
                   help="a sweep file (configs/sweeps/): one run per entry, each its config plus overrides")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- setup helpers
def setup_distributed():
    if "RANK" not in os.environ:
        return 0, 1, False
    if not dist.is_initialized():  # one process group serves every run of a --seeds / --sweep batch
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


def pick_device(name: str, rank: int, distributed: bool) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    return device


def amp_settings(mode: str, device: torch.device):
    """(autocast dtype or None, whether a GradScaler is needed)."""
    if device.type != "cuda" or mode == "off":
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode not in ("bf16", "fp16"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got {mode!r}")
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(cfg: dict, params):
    name = cfg["name"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimiser {name!r}; valid: {', '.join(sorted(OPTIMIZERS))}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"])
    return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def build_schedule(cfg: dict, optimizer, epochs: int):
    if cfg["schedule"] not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg['schedule']!r}; valid: {', '.join(sorted(SCHEDULES))}")
    if cfg["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    # nnU-Net's poly: lr * (1 - epoch / epochs) ** 0.9, stepped once per epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: (1 - min(epoch, epochs - 1) / epochs) ** cfg["poly_exponent"])


def build_loss(cfg: dict) -> DiceCELoss:
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name](**cfg)


def check_choices(cfg: dict) -> None:
    """Names that pick code (model, sampler, loss, ...): checked before a folder is made or data read."""
    from data.samplers import SAMPLERS
    from models import MODELS
    for section, key, valid in (("model", "name", MODELS), ("sampler", "name", SAMPLERS), ("loss", "name", LOSSES),
                                ("optim", "name", OPTIMIZERS), ("optim", "schedule", SCHEDULES),
                                ("fairness", "method", FAIRNESS_METHODS)):
        if cfg[section][key] not in valid:
            raise ConfigError(f"unknown {section}.{key} {cfg[section][key]!r}; valid: {', '.join(sorted(valid))}")


def new_run_dir(cfg: dict, config_path, name) -> Path:
    """The new run's folder, checked now (it must not exist and must be creatable) and made later,
    once data and model are ready, so a run that fails to start leaves no empty folder behind."""
    name = name or cfg["train"]["name"] or f"{Path(config_path).stem if config_path else 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg["train"]["out_dir"]) / name
    if run_dir.exists():
        raise ConfigError(f"run folder {run_dir} exists; choose another --name or --resume it")
    ancestor = run_dir.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = ("Not a directory" if not ancestor.is_dir()
               else "Permission denied" if not os.access(ancestor, os.W_OK | os.X_OK) else None)
    if problem:
        raise ConfigError(f"cannot create the run folder {run_dir} ({problem}); check train.out_dir")
    return run_dir


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"run folder {run_dir} appeared while this run was starting; choose another --name") from None
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {run_dir} ({exc.strerror or exc}); "
                          "check train.out_dir") from None


def unwrap(model):
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


# ----------------------------------------------------------------------------- validation
def validate(model, cache, case_ids, groups_by_attr, cfg, device, amp_dtype, keep=0, routing=None):
    net = unwrap(model)
    ds_was = net.deep_supervision
    net.deep_supervision = False
    options = dict(patch_size=cfg["train"]["patch_size"], overlap=cfg["eval"]["overlap"], mirror=cfg["eval"]["mirror"],
                   tile_batch=cfg["eval"]["tile_batch"], device=device, amp_dtype=amp_dtype)
    try:
        if routing is None:
            rows, kept = score_cached_cases(net, cache, case_ids, keep=keep, **options)
        else:  # dMoE: each case through its own group's routers
            rows, kept = [], []
            for case_id in case_ids:
                r, k = score_cached_cases(WithGroup(net, routing[case_id]), cache, [case_id],
                                          keep=max(0, keep - len(kept)), **options)
                rows, kept = rows + r, kept + k
    finally:
        net.deep_supervision = ds_was
    per_case = pd.DataFrame(rows)
    for attr, groups in groups_by_attr.items():
        per_case[attr] = per_case["case_id"].map(groups)
    return per_case, kept


def log_audits(writer, per_case, groups_by_attr, orders, step, prefix):
    audits = {}
    for attr in groups_by_attr:
        audit = audit_groups(per_case, attr, order=orders.get(attr), alpha=0.2)
        audits[attr] = audit
        if writer is None:
            continue
        for group, row in audit.table.iterrows():
            if pd.notna(row["mean"]):
                writer.add_scalar(f"{prefix}/{attr}/dice_{group}", row["mean"], step)
        if math.isfinite(audit.summary["sd"]):
            writer.add_scalar(f"{prefix}/{attr}/SD", 100 * audit.summary["sd"], step)
        if math.isfinite(audit.summary["ser"]):
            writer.add_scalar(f"{prefix}/{attr}/SER", audit.summary["ser"], step)
    return audits


def log_slices(writer, kept, step):
    for case_id, image, label, pred in kept:
        z = int(np.argmax((label > 0).sum(axis=(1, 2)))) if label.any() else image.shape[0] // 2
        panel = np.concatenate([(image[z] - image[z].min()) / (np.ptp(image[z]) + 1e-6), label[z] / 2.0, pred[z] / 2.0],
                               axis=1)
        writer.add_image(f"val/{case_id}", panel[None].astype(np.float32), step)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.seeds or args.sweep:
            return run_many(args)
        return train_run(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_many(args) -> int:
    """Several runs in one command: each seed of --seeds, for each entry of --sweep.

    Runs land in train.out_dir/NAME/[ENTRY/]seedS. Re-issuing the same command continues the batch:
    a finished run (eval/per_case.csv) is kept, an interrupted one resumes from its last.pt; a
    finished run whose saved config differs from the one asked for is an error, never reused.
    """
    if args.resume is not None:
        raise ConfigError("--resume continues one run; re-issue the --seeds / --sweep command to continue a batch")
    if args.sweep is not None:
        sweep = load_sweep(args.sweep)
        config_path, entries = sweep.config, sweep.runs
        if args.config is not None and Path(args.config).resolve() != config_path:
            raise ConfigError(f"{args.sweep} names its own config ({config_path}); drop --config")
        batch = args.name or args.sweep.stem
    else:
        if args.config is None:
            raise ConfigError("give --config FILE with --seeds")
        config_path, entries = args.config, {"": []}
        batch = args.name or Path(args.config).stem
    seeds = args.seeds or [None]
    plan = []
    for entry, entry_sets in entries.items():
        for seed in seeds:
            sets = list(entry_sets) + list(args.set) + ([f"train.seed={seed}"] if seed is not None else [])
            cfg = load_config(config_path, sets)
            check_choices(cfg)
            name = "/".join(part for part in (batch, entry, f"seed{seed}" if seed is not None else "") if part)
            plan.append((name, sets, Path(cfg["train"]["out_dir"]) / name, cfg))
    rank, _, distributed = setup_distributed()
    done, todo = [], []
    for name, sets, run_dir, cfg in plan:
        if (run_dir / "config.yaml").is_file() and load_config(saved=yaml_load(run_dir / "config.yaml")) != cfg:
            raise ConfigError(f"{run_dir} holds a run with another config; choose another --name")
        if (run_dir / "eval" / "per_case.csv").is_file():
            done.append(name)
        else:
            todo.append((name, sets, run_dir))
    if distributed:
        dist.barrier()  # every rank has seen the folders before rank 0 makes new ones
    if rank == 0:
        print(f"{len(plan)} runs in {batch}: {len(done)} finished, {len(todo)} to train"
              + (f" (kept: {', '.join(done)})" if done else ""), flush=True)
    for i, (name, sets, run_dir) in enumerate(todo, 1):
        one = argparse.Namespace(**{**vars(args), "config": config_path, "set": sets, "name": name, "resume": None})
        if (run_dir / "last.pt").is_file():
            one.resume, one.set = run_dir, []
        elif run_dir.exists():
            raise ConfigError(f"{run_dir} exists without last.pt (stopped before its first checkpoint); remove it")
        if rank == 0:
            print(f"\n=== run {i}/{len(todo)}: {name}{' (resuming)' if one.resume else ''}", flush=True)
        train_run(one)
    return 0


def train_run(args) -> int:
    rank, world, distributed = setup_distributed()
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)

    # --- config: a new run, or the one being resumed -------------------------------------------
    resume_ckpt = None
    if args.resume is not None:
        resume_ckpt = load_checkpoint(args.resume)
        run_dir = args.resume if args.resume.is_dir() else args.resume.parent
        try:
            cfg = load_config(saved=resume_ckpt["config"], overrides=args.set)  # e.g. --set train.epochs=300
        except ConfigError as exc:
            raise ConfigError(f"{args.resume}: cannot resume: {exc}") from None
        check_choices(cfg)
    else:
        if args.config is None:
            raise ConfigError("give --config FILE (or --resume RUN)")
        cfg = load_config(args.config, args.set)
        check_choices(cfg)
        run_dir = new_run_dir(cfg, args.config, args.name) if is_main else None
    tc = cfg["train"]
    if distributed and not args.resume:
        holder = [str(run_dir) if is_main else None]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    device = pick_device(tc["device"], rank, distributed)
    amp_dtype, use_scaler = amp_settings(tc["amp"], device)
    seed_everything(tc["seed"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = tc["cudnn_benchmark"]

    # --- data ------------------------------------------------------------------------------------
    if is_main:
        cache, split = prepare_data(cfg["data"], progress=not args.no_progress, log=log)
    if distributed:
        dist.barrier()
        if not is_main:
            cache, split = prepare_data(cfg["data"], progress=False, log=lambda *a: None)
    table = load_case_table(cache)
    settings = load_cache_settings(cache)
    groups_by_attr = {attr: groups_from_table(table, attr, settings) for attr in cfg["data"]["groups"]}
    from data.groups import parse_attribute
    orders = {attr: parse_attribute(attr, age_edges=settings.age_edges, bmi_edges=settings.bmi_edges).order
              for attr in cfg["data"]["groups"]}
    train_ids, val_ids, test_ids = split["train"], split["val"] or split["test"], split["test"]
    if cfg["eval"]["max_cases"]:
        val_ids = val_ids[:cfg["eval"]["max_cases"]]
    patch = tuple(tc["patch_size"])
    largest = [max(int(str(s).split("x")[a]) for s in table.loc[train_ids, "resampled_shape"]) for a in range(3)]
    if any(p > m for p, m in zip(patch, largest)):
        log(f"note: patch {patch} is larger than every training case (largest {'x'.join(map(str, largest))} "
            "per axis): cases are zero-padded")
    dataset = PatchDataset(cache, train_ids, patch_size=patch, augment=AugmentSettings.from_dict(tc["augment"]),
                           pos_ratio=cfg["sampler"]["pos_ratio"], neg_ratio=cfg["sampler"]["neg_ratio"])
    fair_attr = cfg["fairness"]["attribute"]
    fair_groups = groups_by_attr.get(fair_attr) or groups_from_table(table, fair_attr, settings)
    try:
        sampler = build_sampler(cfg["sampler"], n_cases=len(train_ids), batch_size=tc["batch_size"], seed=tc["seed"],
                                rank=rank, world_size=world, groups=[fair_groups[c] for c in train_ids])
    except ValueError as exc:
        raise ConfigError(f"sampler {cfg['sampler']['name']!r} by {fair_attr}: {exc}") from None
    if hasattr(sampler, "group_counts"):
        log(f"sampler {cfg['sampler']['name']} by {fair_attr}: cases per group per epoch "
            + ", ".join(f"{g} {n}" for g, n in sampler.group_counts().items()))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=tc["workers"],
                                         pin_memory=device.type == "cuda", persistent_workers=tc["workers"] > 0)
    train_groups = {attr: [g[c] for c in train_ids] for attr, g in groups_by_attr.items()}
    log(f"data: {len(train_ids)} train, {len(val_ids)} validation, {len(test_ids)} test cases from {cache}")

    # --- model, loss, optimiser ------------------------------------------------------------------
    # dMoE (FairDRO) routes each sample by its group: the group list is fixed here, stored in the checkpoint
    model_cfg, routing = resolve_routing(cfg["model"], default_attribute=fair_attr, table=table, settings=settings,
                                         order=orders.get(cfg["model"].get("moe", {}).get("attribute") or fair_attr))
    if routing is not None:
        missing = [c for c in train_ids if c not in routing]
        if missing:
            raise CaseError(missing[0], f"has no group the dMoE routers know ({routing.attribute})")
        log(f"dMoE routed by {routing.attribute}: " + ", ".join(f"{g} -> router {i}" for i, g in enumerate(routing.groups)))
    model = build_model(model_cfg, patch_size=patch, in_channels=1, num_classes=3).to(device)
    n_outputs = len(model.decoder.heads) if model.deep_supervision else 1
    criterion = DeepSupervisionLoss(build_loss(cfg["loss"]), n_outputs=n_outputs)
    fc = cfg["fairness"]
    if fc["method"] not in FAIRNESS_METHODS:
        raise ConfigError(f"unknown fairness.method {fc['method']!r}; valid: {', '.join(sorted(FAIRNESS_METHODS))}")
    meta = None
    if fc["method"] == "fairmeta":
        meta_groups = orders.get(fair_attr) or sorted(set(fair_groups.values()))
        meta = FairMetaBranch(groups=meta_groups, input=fc["input"], adversarial=fc["adversarial"],
                              **fc["classifier"]).to(device)
        group_position = {g: i for i, g in enumerate(meta_groups)}
        log(f"fair meta-learning on {fair_attr} ({', '.join(meta_groups)}): {fc['alpha']} * L_seg + "
            f"{fc['beta']} * L_cls, classifier input {fc['input']}{', adversarial' if fc['adversarial'] else ''}")
    dro = None
    if fc["method"] == "dro":
        dro_groups = orders.get(fair_attr) or sorted(set(fair_groups.values()))
        dro_position = {g: i for i, g in enumerate(dro_groups)}
        dro = GroupDRO(n_groups=len(dro_groups), **fc["dro"]).to(device)
        log(f"DRO loss over {fair_attr} ({', '.join(dro_groups)}): CVaR{fc['dro']['alpha']:g} within groups "
            f"(threshold step {fc['dro']['tau_lr']:g}), group weights eta {fc['dro']['eta']:g}"
            + ("; loss.batch_dice is ignored: DRO aggregates per-sample losses" if cfg["loss"]["batch_dice"] else ""))
    moe_balance = (cfg["model"].get("moe") or {}).get("balance_weight", 0.0)
    params = list(model.parameters()) + (list(meta.parameters()) if meta is not None else [])
    optimizer = build_optimizer(cfg["optim"], params)
    scheduler = build_schedule(cfg["optim"], optimizer, tc["epochs"])
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start_epoch, step, best = 0, 0, -math.inf
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        if meta is not None:
            meta.load_state_dict(resume_ckpt["fairmeta"])
        if dro is not None:
            dro.load_state_dict(resume_ckpt["dro"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        scaler.load_state_dict(resume_ckpt["scaler"])
        start_epoch, step, best = resume_ckpt["epoch"], resume_ckpt["step"], resume_ckpt["best"]
        torch.set_rng_state(resume_ckpt["rng"]["torch"])
        np.random.set_state(resume_ckpt["rng"]["numpy"])
        random.setstate(resume_ckpt["rng"]["python"])
        log(f"resumed {run_dir} at epoch {start_epoch} (step {step})")
    if tc["channels_last"]:
        model = model.to(memory_format=torch.channels_last_3d)
    if tc["compile"]:
        model = torch.compile(model)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not unwrap(model).deep_supervision)
        if meta is not None:
            meta = torch.nn.parallel.DistributedDataParallel(
                meta, device_ids=[device.index] if device.type == "cuda" else None)
    n_params = sum(p.numel() for p in unwrap(model).parameters())
    log(f"model: {cfg['model']['name']} ({n_params / 1e6:.2f} M parameters), patch {patch}, "
        f"device {device}{', AMP ' + str(amp_dtype).split('.')[-1] if amp_dtype else ''}, world size {world}")

    writer = None
    if is_main:
        if resume_ckpt is None:
            create_run_dir(run_dir)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir))

    def checkpoint(name: str, epoch_done: int):
        save_checkpoint(run_dir / name, {
            "config": cfg, "model_config": model_cfg, "git_commit": git_commit(), "num_classes": 3,
            **({"dro": dro.state_dict()} if dro is not None else {}),
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            **({"fairmeta": unwrap(meta).state_dict()} if meta is not None else {}),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch_done, "step": step, "best": best,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        })

    # --- the loop ----------------------------------------------------------------------------------
    nonfinite_streak = 0
    run_start = time.time()
    for epoch in range(start_epoch, tc["epochs"]):
        sampler.set_epoch(epoch)
        model.train()
        if meta is not None:
            meta.train()
        t0, seen = time.time(), 0
        for batch in loader:
            image = batch["image"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            if tc["channels_last"]:
                image = image.contiguous(memory_format=torch.channels_last_3d)
            cases = batch["case"].tolist()
            route = (torch.tensor([routing[train_ids[c]] for c in cases], device=device)
                     if routing is not None else None)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(image, groups=route) if route is not None else model(image)
            # DRO ranks samples by loss: a class absent from a patch must not count as a failure there
            levels = criterion.per_sample_levels(outputs, label, skip_absent=dro is not None)  # (B, levels)
            weights = torch.tensor(criterion.weights, device=levels.device)
            per_sample = levels @ weights
            if dro is not None:
                dro_index = torch.tensor([dro_position[fair_groups[train_ids[c]]] for c in cases], device=device)
                loss = dro(per_sample, dro_index)
            else:
                loss = criterion(outputs, label)[0] if cfg["loss"]["batch_dice"] else per_sample.mean()
            if moe_balance:
                loss = loss + moe_balance * unwrap(model).moe_aux_loss()
            if meta is not None:
                group_index = torch.tensor([group_position[fair_groups[train_ids[c]]] for c in cases], device=device)
                full_res = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss_cls, cls_logits = meta(image, full_res, group_index)
                loss = fc["alpha"] * loss + fc["beta"] * loss_cls
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                nonfinite_streak += 1
                log(f"epoch {epoch} step {step}: non-finite loss ({loss.item()}), step skipped")
                if writer:
                    writer.add_scalar("train/skipped_nonfinite", nonfinite_streak, step)
                if nonfinite_streak >= tc["max_nonfinite_steps"]:
                    raise TrainingStopped(f"{nonfinite_streak} consecutive non-finite losses: stopping instead of "
                                       "training on garbage (lower optim.lr, check the data, or try train.amp=bf16)")
                step += 1
                continue
            nonfinite_streak = 0
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg["optim"]["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            seen += image.shape[0]
            if writer:
                writer.add_scalar("train/loss", loss.item(), step)
                for i, value in enumerate(levels.mean(0).tolist()):
                    writer.add_scalar(f"train/loss_level{i}", value, step)
                if dro is not None:
                    for g, i in dro_position.items():
                        writer.add_scalar(f"train/dro_q/{g}", dro.q[i].item(), step)
                        if not math.isnan(dro.last_tail[i]):
                            writer.add_scalar(f"train/dro_tail_loss/{g}", dro.last_tail[i].item(), step)
                        writer.add_scalar(f"train/dro_tau/{g}", dro.tau[i].item(), step)
                if routing is not None or moe_balance:
                    writer.add_scalar("train/moe_balance_loss", unwrap(model).moe_aux_loss().item(), step)
                if meta is not None:
                    writer.add_scalar("train/L_cls", loss_cls.item(), step)
                    hits = (cls_logits.argmax(1) == group_index).float()
                    for g, i in group_position.items():
                        if (group_index == i).any():
                            writer.add_scalar(f"train/cls_accuracy/{g}", hits[group_index == i].mean().item(), step)
                for attr, groups in train_groups.items():
                    for g in sorted({groups[c] for c in cases}):
                        mask = torch.tensor([groups[c] == g for c in cases], device=per_sample.device)
                        writer.add_scalar(f"train/loss_{attr}/{g}", per_sample[mask].mean().item(), step)
            if step % tc["log_every"] == 0:
                rate = seen * world / max(time.time() - t0, 1e-6)
                log(f"epoch {epoch + 1}/{tc['epochs']} step {step} loss {loss.item():.4f} "
                    f"lr {optimizer.param_groups[0]['lr']:.2e} {rate:.1f} patches/s "
                    f"[{time.strftime('%H:%M:%S', time.gmtime(time.time() - run_start))}]")
            step += 1
        scheduler.step()
        if writer:
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            writer.add_scalar("train/patches_per_s", seen * world / max(time.time() - t0, 1e-6), step)
        epoch_done = epoch + 1
        last_epoch = epoch_done == tc["epochs"]
        if is_main and (epoch_done % cfg["eval"]["every"] == 0 or last_epoch):
            per_case, kept = validate(model, cache, val_ids, groups_by_attr, cfg, device, amp_dtype, routing=routing,
                                      keep=tc["image_slices"])
            score = float(per_case["mean"].mean())
            writer.add_scalar("val/mean_dice", score, step)
            writer.add_scalar("val/kidney_dice", float(per_case["kidney"].mean()), step)
            writer.add_scalar("val/tumor_dice", float(per_case["tumor"].mean()), step)
            log_audits(writer, per_case, groups_by_attr, orders, step, "val")
            log_slices(writer, kept, step)
            log(f"epoch {epoch_done}: validation mean Dice {score:.4f} "
                f"(kidney {per_case['kidney'].mean():.4f}, tumor {per_case['tumor'].mean():.4f})")
            if score > best:
                best = score
                checkpoint("best.pt", epoch_done)
        if is_main and (epoch_done % tc["checkpoint_every"] == 0 or last_epoch):
            checkpoint("last.pt", epoch_done)
        if distributed:
            dist.barrier()

    # --- the test split: per-case Dice and the study's group tables --------------------------------
    if is_main:
        eval_dir = run_dir / "eval"
        eval_dir.mkdir(exist_ok=True)
        # best.pt is chosen on the validation cases; with no validation split those are the test
        # cases, and testing the weights picked on them would flatter the result: use the last.
        if split["val"] and (run_dir / "best.pt").is_file():
            unwrap(model).load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
            log("evaluating best.pt (chosen on the validation split) on the test split")
        else:
            log("evaluating the final weights on the test split (no validation split: best.pt was "
                "chosen on the test cases, so it is not used for the test tables)")
        per_case, _ = validate(model, cache, test_ids, groups_by_attr, cfg, device, amp_dtype, routing=routing)
        per_case.to_csv(eval_dir / "per_case.csv", index=False)
        audits = log_audits(writer, per_case, groups_by_attr, orders, step, "test")
        for attr, audit in audits.items():
            audit.table.to_csv(eval_dir / f"groups_{attr}.csv")
            log(f"\ntest split, grouped by {attr}:\n{format_audit(audit)}")
        log(f"\nrun folder: {run_dir} (TensorBoard: tensorboard --logdir {run_dir})")
        writer.close()
    if distributed:
        dist.barrier()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, CaseError, ValueError, FileNotFoundError, TrainingStopped) as exc:
        if "--debug" in sys.argv:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
