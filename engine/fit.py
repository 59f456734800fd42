"""Training one run: the network, the run's mitigations, the optimiser, and the loop that fits them.

The Trainer calls the mitigation hooks (mitigations/base.py) the same way whatever the config
names: the sampler hook picks the batches, network_config the network, build_module / param_groups
the extra modules and their parameters, forward_kwargs the forward, loss the training loss, and
state_dict what the checkpoint keeps. It names no mitigation.

Usage:
    trainer = Trainer(cfg, data, env, log=print)        # env: engine.fit.Env (device, AMP, ranks)
    trainer.resume(ckpt)                                 # optional: continue exactly
    trainer.fit(run_dir, writer)                         # epochs, validation, best.pt / last.pt
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import dataclass

import pandas as pd
import torch

from data.augment import AugmentSettings, apply_batch
from data.cache import with_covariates
from data.errors import CaseError, format_failures
from data.patches import PatchDataset
from engine.builders import build_loss, build_optimizer, build_schedule
from engine.interrupts import shield_worker
from engine.logging import log_audits, log_slices, log_step
from engine.runtime import autocast, barrier, cpu_clone, rng_state, set_rng_state, unwrap
from engine.scoring import CaseScorer, WindowOptions
from mitigations import TrainStep, build_mitigations
from mitigations.samplers import uniform_sampler
from models import build_model
from models.checkpoint import git_commit, save_checkpoint
from models.losses import DeepSupervisionLoss


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. the loss stays non-finite); its checkpoints so far are kept."""


@dataclass(frozen=True)
class Env:
    """Where the run computes."""
    device: torch.device
    amp_dtype: torch.dtype | None
    use_scaler: bool
    rank: int = 0
    world: int = 1
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Trainer:
    def __init__(self, cfg: dict, data, env: Env, *, log=print):
        self.cfg, self.data, self.env, self.log = cfg, data, env, log
        self.tc = cfg["train"]
        self.patch = tuple(self.tc["patch_size"])
        self.methods = build_mitigations(cfg["fairness"], data.index)
        if any(m.needs_groups for m in self.methods):
            data.index.positions(data.train_ids)  # a training case without a usable group fails here, by name
        self._build_network()
        self._build_optimizer()
        self._build_loader()
        for line in filter(None, (m.describe() for m in self.methods)):
            self.log(line)
        self.epoch, self.step, self.best = 0, 0, -math.inf
        self.current_epoch = 0          # the epoch being trained (1-based), for the interrupt line
        self.saved_epoch = None         # the epoch last.pt holds, once written or resumed from
        self.boundary = None            # (epoch, state) at the last epoch end not yet in last.pt
        self.commit = git_commit()      # the code's version, once per run (two git calls)
        self.last_validation = None   # (step, case ids, per-case table) of the latest validation pass
        self.nonfinite_streak = 0

    # --- setup -------------------------------------------------------------------------------------
    def _build_network(self) -> None:
        model_cfg = self.cfg["model"]
        for m in self.methods:
            model_cfg = m.network_config(model_cfg)
        self.model_cfg = model_cfg
        self.model = build_model(model_cfg, patch_size=self.patch, in_channels=1, num_classes=3).to(self.env.device)
        for m in self.methods:
            m.setup(self.env.device)
        n_outputs = len(self.model.decoder.heads) if self.model.deep_supervision else 1
        self.criterion = DeepSupervisionLoss(build_loss(self.cfg["loss"]), n_outputs=n_outputs)
        self.ranks_samples = any(m.ranks_samples for m in self.methods)
        if self.ranks_samples and self.cfg["loss"]["batch_dice"]:
            self.log("note: loss.batch_dice is ignored: the per-sample losses are aggregated by "
                     + ", ".join(m.name for m in self.methods if m.ranks_samples))

    def _build_optimizer(self) -> None:
        groups = [{"params": list(self.model.parameters())}] + [g for m in self.methods for g in m.param_groups()]
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(self.cfg["optim"], groups)
        self.scheduler = build_schedule(self.cfg["optim"], self.optimizer, self.tc["epochs"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.env.use_scaler)

    def _build_loader(self) -> None:
        d, tc, env = self.data, self.tc, self.env
        index = d.index
        self.dataset = PatchDataset(d.cache, d.train_ids, patch_size=self.patch,
                                    augment=AugmentSettings.from_dict(tc["augment"]),
                                    pos_ratio=self.cfg["sampler"]["pos_ratio"],
                                    neg_ratio=self.cfg["sampler"]["neg_ratio"],
                                    groups=[index.position(c) if index.known(c) else -1 for c in d.train_ids],
                                    augment_on=tc["augment_on"])
        common = dict(batch_size=tc["batch_size"], seed=tc["seed"], rank=env.rank, world_size=env.world,
                      steps_per_epoch=tc["steps_per_epoch"])
        samplers = [s for s in (m.sampler(case_ids=d.train_ids, **common) for m in self.methods) if s is not None]
        self.sampler = samplers[0] if samplers else uniform_sampler(n_cases=len(d.train_ids), **common)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=tc["workers"],
                                                  pin_memory=env.device.type == "cuda",
                                                  persistent_workers=tc["workers"] > 0, worker_init_fn=shield_worker)

    def resume(self, ckpt: dict) -> None:
        """Continue exactly where a checkpoint stopped: weights, mitigation states, optimiser, RNGs."""
        self.model.load_state_dict(ckpt["model"])
        states = ckpt.get("mitigations", {})
        for m in self.methods:
            if m.module is not None:
                if m.name not in states:
                    raise ValueError(f"the checkpoint has no state for the {m.name} mitigation this run uses")
                m.load_state_dict(states[m.name])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.best = ckpt["epoch"], ckpt["step"], ckpt["best"]
        self.saved_epoch = ckpt["epoch"]
        set_rng_state(ckpt["rng"])

    def wrap(self) -> None:
        """channels-last, torch.compile and DDP, as the config asks (after any resume)."""
        tc, env = self.tc, self.env
        if tc["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        if tc["compile"]:
            self.model = torch.compile(self.model)
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=not unwrap(self.model).deep_supervision)
            for m in self.methods:
                m.wrap(lambda module: torch.nn.parallel.DistributedDataParallel(module, device_ids=ids))
        n_params = sum(p.numel() for p in unwrap(self.model).parameters())
        amp = self.env.amp_dtype
        self.log(f"model: {self.cfg['model']['name']} ({n_params / 1e6:.2f} M parameters), patch {self.patch}, "
                 f"device {env.device}{', AMP ' + str(amp).split('.')[-1] if amp else ''}, world size {env.world}")

    def state(self, epoch_done: int) -> dict:
        """Everything a checkpoint holds (live tensors: clone it to keep it)."""
        return {
            "config": self.cfg, "model_config": self.model_cfg, "group_index": self.data.index.to_dict(),
            "git_commit": self.commit, "num_classes": 3,
            "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
            "mitigations": {m.name: m.state_dict() for m in self.methods if m.module is not None},
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": epoch_done, "step": self.step, "best": self.best, "rng": rng_state(),
        }

    def checkpoint(self, path, epoch_done: int) -> None:
        save_checkpoint(path, self.state(epoch_done))
        if Path(path).name == "last.pt":
            self.saved_epoch, self.boundary = epoch_done, None

    def save_boundary(self, run_dir) -> int | None:
        """Write the state kept at the last epoch boundary as last.pt (SIGTERM: the job is about to
        be killed, and the epochs since the last checkpoint need not be lost); its epoch, or None
        when last.pt already holds the latest boundary."""
        if self.boundary is None or not self.env.is_main:
            return None
        epoch, state = self.boundary
        save_checkpoint(Path(run_dir) / "last.pt", state)
        self.saved_epoch, self.boundary = epoch, None
        return epoch

    # --- the loop ------------------------------------------------------------------------------------
    def fit(self, run_dir, writer) -> None:
        tc, env = self.tc, self.env
        run_start = time.time()
        for epoch in range(self.epoch, tc["epochs"]):
            self.current_epoch = epoch + 1
            self.train_epoch(epoch, writer, run_start)
            epoch_done = epoch + 1
            last_epoch = epoch_done == tc["epochs"]
            if env.is_main and (epoch_done % self.cfg["eval"]["every"] == 0 or last_epoch):
                self.validate(run_dir, writer, epoch_done)
            if env.is_main and (epoch_done % tc["checkpoint_every"] == 0 or last_epoch):
                self.checkpoint(run_dir / "last.pt", epoch_done)
            elif env.is_main:   # kept in memory, written only if a SIGTERM comes before the next checkpoint
                self.boundary = (epoch_done, cpu_clone(self.state(epoch_done)))
            barrier(env.distributed)

    def close(self) -> None:
        """End the loader's persistent workers now: the training is over, and they would otherwise live
        until the process exits (one set per run of a batch, and shielded from SIGTERM)."""
        self.loader = None   # its iterator goes with it, and shuts its workers down in order

    def train_epoch(self, epoch: int, writer, run_start: float) -> None:
        tc, world = self.tc, self.env.world
        self.sampler.set_epoch(epoch)
        self.model.train()
        for m in self.methods:
            m.train()
        t0, seen = time.time(), 0
        for batch in self.loader:
            done = self.train_step(batch, epoch, writer)
            seen += done
            if done and self.step % tc["log_every"] == 0:
                rate = seen * world / max(time.time() - t0, 1e-6)
                self.log(f"epoch {epoch + 1}/{tc['epochs']} step {self.step} loss {self.last_loss:.4f} "
                         f"lr {self.optimizer.param_groups[0]['lr']:.2e} {rate:.1f} patches/s "
                         f"[{time.strftime('%H:%M:%S', time.gmtime(time.time() - run_start))}]")
            self.step += 1
        self.scheduler.step()
        if writer:
            writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
            writer.add_scalar("train/patches_per_s", seen * world / max(time.time() - t0, 1e-6), self.step)

    def _forward_loss(self, batch):
        """(loss, per-level losses, per-sample losses, scalars) of one batch."""
        device, amp = self.env.device, self.env.amp_dtype
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        group = batch["group"].to(device)
        if "augment" in batch:     # train.augment_on: device, each sample by its worker's draws
            image, label = apply_batch(self.dataset.augment, image, label, batch["augment"])
        if self.tc["channels_last"]:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        kwargs = {k: v for m in self.methods for k, v in m.forward_kwargs(group).items()}
        with autocast(device, amp):
            outputs = self.model(image, **kwargs)
        levels = self.criterion.per_sample_levels(outputs, label, skip_absent=self.ranks_samples)  # (B, levels)
        per_sample = levels @ torch.tensor(self.criterion.weights, device=levels.device)
        plain = ((lambda: self.criterion(outputs, label)[0]) if self.cfg["loss"]["batch_dice"]
                 else per_sample.mean)
        step = TrainStep(image=image, label=label, group=group, outputs=outputs, per_sample=per_sample,
                         plain=plain, amp_dtype=amp, network=unwrap(self.model), progress=self.progress)
        loss, scalars = None, {}
        for m in self.methods:
            loss, more = m.loss(loss, step)
            scalars.update(more)
        return step.resolve(loss), levels, per_sample, scalars

    @property
    def progress(self) -> float:
        """Fraction of the run's steps done before the current one (the mitigations' schedules)."""
        return self.step / max(1, self.tc["epochs"] * len(self.loader))

    def train_step(self, batch, epoch: int, writer) -> int:
        """One optimiser step; returns the patches it trained on (0 for a skipped step)."""
        loss, levels, per_sample, scalars = self._forward_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._skip_nonfinite(f"loss ({loss.item()})", epoch, writer)
            return 0
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg["optim"]["grad_clip"])
        if not self.scaler.is_enabled() and not torch.isfinite(norm):   # fp16's scaler skips these itself
            self.optimizer.zero_grad(set_to_none=True)                  # one bad step must not poison the weights
            self._skip_nonfinite(f"gradient (norm {norm.item()})", epoch, writer)
            return 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.nonfinite_streak = 0
        self.last_loss = loss.item()
        if writer:
            log_step(writer, self.step, loss=self.last_loss, levels=levels, per_sample=per_sample, scalars=scalars,
                     cases=batch["case"].tolist(), train_groups=self.train_groups)
        return batch["image"].shape[0]

    def _skip_nonfinite(self, what: str, epoch: int, writer) -> None:
        self.nonfinite_streak += 1
        self.log(f"epoch {epoch + 1} step {self.step}: non-finite {what}, step skipped")
        if writer:
            writer.add_scalar("train/skipped_nonfinite", self.nonfinite_streak, self.step)
        if self.nonfinite_streak >= self.tc["max_nonfinite_steps"]:
            raise TrainingStopped(f"{self.nonfinite_streak} consecutive steps with a non-finite loss or gradient: "
                                  "stopping instead of training on garbage (lower optim.lr, check the data, "
                                  "or try train.amp=bf16)")

    @property
    def train_groups(self) -> dict:
        """{attribute: group of each training case, by dataset index}, for per-group losses."""
        if not hasattr(self, "_train_groups"):
            ids = self.data.train_ids
            self._train_groups = {attr: [g[c] for c in ids] for attr, g in self.data.groups_by_attr.items()}
        return self._train_groups

    # --- validation and test ---------------------------------------------------------------------------
    def score(self, case_ids, keep: int = 0) -> tuple[pd.DataFrame, list]:
        """Per-case Dice (preprocessed geometry) of the current weights, with the group columns."""
        ev, net = self.cfg["eval"], unwrap(self.model)
        options = WindowOptions(patch_size=self.patch, overlap=ev["overlap"], mirror=ev["mirror"],
                                mirror_axes=tuple(ev["mirror_axes"]),
                                tile_batch=ev["tile_batch"], device=self.env.device, amp_dtype=self.env.amp_dtype)
        ds_was, net.deep_supervision = net.deep_supervision, False
        scorer = CaseScorer(net, self.data.cache, options, index=self.data.index, metrics=ev["metrics"],
                            tolerance_mm=ev["surface_tolerance_mm"])
        try:
            rows, kept = scorer.score_many(case_ids, keep=keep)
        finally:
            net.deep_supervision = ds_was
        if scorer.failures:
            self.log(f"note: {len(scorer.failures)} of {len(case_ids)} case(s) left out of the tables; "
                     + format_failures(scorer.failures, what="unreadable case"))
        if not rows:
            raise CaseError(str(self.data.cache), "no case could be scored")
        per_case = pd.DataFrame(rows).drop(columns="geometry")
        for attr, groups in self.data.groups_by_attr.items():
            per_case[attr] = per_case["case_id"].map(groups)
        return with_covariates(per_case, self.data.table), kept

    def embed(self, case_ids) -> pd.DataFrame:
        """The pooled bottleneck vector of each case (models/embedding.py): one row per case, e0... columns."""
        ev, net = self.cfg["eval"], unwrap(self.model)
        options = WindowOptions(patch_size=self.patch, tile_batch=ev["tile_batch"], device=self.env.device,
                                amp_dtype=self.env.amp_dtype)
        scorer = CaseScorer(net, self.data.cache, options, index=self.data.index)
        vectors = {}
        for case_id in case_ids:
            try:
                vectors[case_id] = scorer.embed(case_id)
            except CaseError:
                continue   # an unreadable case: score() already left it out of the tables and said so
        return pd.DataFrame.from_dict(vectors, orient="index").add_prefix("e")

    def validate(self, run_dir, writer, epoch_done: int) -> None:
        per_case, kept = self.score(self.data.val_ids, keep=self.tc["image_slices"])
        self.last_validation = (self.step, list(self.data.val_ids), per_case)   # the test tables may reuse it
        score = float(per_case["mean"].mean())
        writer.add_scalar("val/mean_dice", score, self.step)
        writer.add_scalar("val/kidney_dice", float(per_case["kidney"].mean()), self.step)
        writer.add_scalar("val/tumor_dice", float(per_case["tumor"].mean()), self.step)
        log_audits(writer, per_case, self.data.groups_by_attr, self.data.orders, self.step, "val",
                   covariates=self.cfg["eval"]["adjust_for"])
        log_slices(writer, kept, self.step)
        self.log(f"epoch {epoch_done}: validation mean Dice {score:.4f} "
                 f"(kidney {per_case['kidney'].mean():.4f}, tumor {per_case['tumor'].mean():.4f})")
        if score > self.best:
            self.best = score
            self.checkpoint(run_dir / "best.pt", epoch_done)
