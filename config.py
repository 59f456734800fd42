"""Run configuration: YAML sections over the study's defaults, `base:` inheritance, --set overrides.

A config has the sections data, model, loss, sampler, optim, train, eval, fairness. DEFAULTS
below is the schema: every key a config may set, with the study's values (SPEC §1). A key that
is not in the schema is an error naming the valid keys; a value of the wrong type is an error.
The `model` section is open: besides `name`, its keys are the keyword arguments of that model's
builder (models/networks.py), which rejects misspellings itself.

A config file may start with `base: other.yaml` (relative to the file): the base is loaded
first and this file's sections are merged over it, so experiment configs stay a few lines.

The `fairness` section says which mitigation a run uses (`fairness.method`) and holds one
sub-section of settings per mitigation (mitigations/__init__.py lists them). Keys of earlier
versions give a one-line error naming their new key (MOVED); configs saved by earlier versions
(in checkpoints and run folders) are translated on load (upgrade_saved_config).

Usage:
    cfg = load_config("configs/resm_sex.yaml", overrides=["train.epochs=2", "train.patch_size=[32,64,64]"])
    cfg["train"]["epochs"]
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from data.augment import AUGMENT_ON, AugmentSettings
from data.preprocess_settings import PreprocessSettings
from data.errors import CaseError, ConfigError  # noqa: F401  (ConfigError: config.ConfigError for callers)
from data.untrusted import parse_yaml, read_yaml, short

DEFAULTS = {
    "data": {
        "raw": None,                 # KiTS-layout folder (imaging + segmentation + metadata)
        "metadata": None,            # default RAW/kits.json
        "cache": "cache/kits19",     # preprocessed cache (made from `raw` when missing)
        "synthesize_cases": 0,       # >0: synthesise a procedural cohort into `raw` when it is missing
        "synthesize_seed": 0,
        "synthesize_shape": None,    # procedural grid (z, y, x); None: the generator's default
        "synthesize_fov": "abdomen",  # procedural field of view: abdomen (whole grid) | kidneys (cropped around them)
        # known-bias cohorts (SPEC §4, data/bias.py): a bias YAML (relative to the working dir, e.g.
        # configs/bias/low_dose_female.yaml) applied when synthesising; null: no bias. twins: also
        # write each biased case without its effect into `raw`_twins/ (never read for training)
        "synthesize_bias": None,
        "synthesize_twins": False,
        "preprocess": PreprocessSettings().to_dict(),
        "preprocess_workers": 1,
        "split_seed": 0,
        "test": 50 / 210,            # count or fraction (the study: 50 of 210)
        "val": 0.0,                  # count or fraction of train; 0: validate on the test split
        "stratify": None,
        "groups": ["sex", "age"],    # attributes reported in every table
    },
    "model": {"name": "nnunet", "deep_supervision": True},
    "loss": {"name": "dice_ce", "dice_weight": 1.0, "ce_weight": 1.0, "smooth": 1e-5, "batch_dice": False},
    "sampler": {"pos_ratio": 1.0, "neg_ratio": 1.0},    # patch centres: foreground : background
    "optim": {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
              "schedule": "constant", "poly_exponent": 0.9, "grad_clip": 12.0},
    "train": {
        "epochs": 2000,
        # batches per epoch, the same for every sampler (nnU-Net's 250 iterations): null = one pass
        # over the training cases (RESM's min target then trains fewer steps than the baseline)
        "steps_per_epoch": None,
        "batch_size": 4,
        "patch_size": [80, 160, 160],   # (z, y, x)
        "seed": 0,
        "workers": 2,
        "device": "auto",               # auto | cpu | cuda | cuda:N
        "amp": "auto",                  # auto (CUDA: bf16 if supported, else fp16; CPU: fp32) | bf16 | fp16 | off
                                        # (bf16 on a CPU: only with native bf16, AVX512-BF16 / AMX, else fp32)
        # where amp is bf16 but the CPU has no native bf16 (so it trains in fp32, about twice the
        # time a step): these overrides ("section.key": value) are applied first, e.g. a smaller patch
        "fp32_fallback": {},
        "compile": False,
        "channels_last": False,
        "cudnn_benchmark": True,
        "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(AugmentSettings()).items()},
        # where the augmentations run: loader (its workers, on the CPU) | device (the training device:
        # workers only read and crop; the same draws, data/augment.py)
        "augment_on": "loader",
        "out_dir": "runs",
        "name": None,                   # run folder name; default: config name + time
        "checkpoint_every": 10,         # epochs between last.pt writes
        "log_every": 10,                # steps between console lines
        "max_nonfinite_steps": 20,      # consecutive NaN/Inf losses before the run stops
        "image_slices": 2,              # TensorBoard: cases shown at each validation
    },
    "eval": {
        "every": 50,                    # epochs between validations
        "overlap": 0.5,                 # sliding-window step 0.5 of the patch
        "mirror": False,                # test-time mirroring
        "mirror_axes": [0, 1, 2],       # its axes (0 z, 1 y, 2 x): every flip of them, 8 for all three
        "tile_batch": 2,
        "max_cases": 0,                 # 0: every validation case
        # case-mix covariates the audits adjust group gaps for (fairness/significance.py): columns
        # of the per-case table, log_<column> = log(1 + column); [] for no adjusted gap
        "adjust_for": ["log_tumor_ml", "log_kidney_ml", "bmi"],
        # per-case metrics scored at validation / test and by evaluate.py --ckpt (fairness/metrics.py):
        # dice (always), nsd, hd95, assd; surface ones from the true voxel spacing, NSD at this tolerance
        "metrics": ["dice"],
        "surface_tolerance_mm": 2.0,
        # failing subgroups nobody named (fairness/discovery.py) on the test split's table: rules on
        # the cases' features, each half searching and the other confirming; slices.csv in eval/
        "discover": False,
        "discover_features": "auto",    # auto | a comma list of metadata, derived, image, embedding
        "discover_region": "mean",      # the per-case value searched: mean | kidney | tumor
        # eval/report.html with the test tables: the audit as one self-contained page (fairness/html_report.py)
        "report": True,
    },
    "fairness": {
        "attribute": "sex",             # the group attribute every mitigation acts on (the run's group index)
        # the mitigation(s), mitigations/__init__.py: none | resm | stratified | fairmeta | dmoe | dro,
        # or a list ([dmoe, dro] is FairDRO); each reads its own section below
        "method": "none",
        "resm": {"target": "min",       # cases per group per epoch: min | max | mean of the group sizes
                 "redraw": True},       # draw the resampled set anew every epoch (false: once)
        "fairmeta": {
            "seg_weight": 1.0,          # seg_weight * L_seg + cls_weight * L_cls (the study's alpha, beta)
            "cls_weight": 2.0,
            "input": "softmax+image",   # classifier input: softmax+image | image (the control)
            "adversarial": False,       # reverse the gradient reaching the segmenter
            "classifier": {"growth_rate": 8, "block_config": [2, 2, 2], "init_features": 16},
            "cls_warmup": 0.0,          # cls_weight ramps up linearly over this fraction of training (0: the study)
            "classifier_lr": None,      # the classifier's own lr (null: the optimiser's, the study)
        },
        # FairDRO's dMoE: experts after these encoder stages (-1 = bottleneck), noisy top-k routers,
        # one per group (router: group) or one for all (shared: the plain-MoE ablation)
        "dmoe": {"stages": [-2, -1], "experts": 8, "top_k": 2, "hidden_ratio": 4, "router": "group",
                 "noise": True, "balance_weight": 0.0},
        # FairDRO's loss: CVaR at cvar_level inside each group (Rockafellar-Uryasev form, the group's
        # threshold tracked with step tau_lr), group weights q_g *= exp(eta * L_g)
        # warmup: this fraction of training on the plain loss first (0: the study)
        "dro": {"cvar_level": 0.2, "eta": 0.01, "tau_lr": 0.05, "warmup": 0.0},
    },
}
OPEN_SECTIONS = {"model", "train.fp32_fallback"}
EITHER_TYPE = {"fairness.method": (str, list)}   # one method or a list of them
# keys of earlier versions: a config that still uses one is told where it went
MOVED = {
    "sampler.name": "fairness.method (resm, stratified; the uniform sampler is the default)",
    "sampler.target": "fairness.resm.target",
    "sampler.redraw": "fairness.resm.redraw",
    "fairness.alpha": "fairness.fairmeta.seg_weight",
    "fairness.beta": "fairness.fairmeta.cls_weight",
    "fairness.input": "fairness.fairmeta.input",
    "fairness.adversarial": "fairness.fairmeta.adversarial",
    "fairness.classifier": "fairness.fairmeta.classifier",
    "fairness.dro.alpha": "fairness.dro.cvar_level",
    "model.moe": "fairness.dmoe (and add dmoe to fairness.method)",
}
REMOVED = {"eval.criterion": "it was never read: best.pt is the best validation mean Dice"}




# numeric keys and the range a run can use: (low, high, low excluded); None: unbounded
RANGES = {
    "data.synthesize_cases": (0, None, False), "data.synthesize_seed": (0, None, False),
    "data.preprocess_workers": (1, 256, False), "data.split_seed": (0, None, False),
    "data.test": (0, None, False), "data.val": (0, None, False),
    "optim.lr": (0, None, True), "optim.momentum": (0, 1, False), "optim.weight_decay": (0, None, False),
    "optim.poly_exponent": (0, None, True), "optim.grad_clip": (0, None, True),
    "train.epochs": (1, None, False), "train.steps_per_epoch": (1, None, False),
    "train.batch_size": (1, None, False), "train.seed": (0, None, False),
    "train.workers": (0, 256, False), "train.checkpoint_every": (1, None, False), "train.log_every": (1, None, False),
    "train.max_nonfinite_steps": (1, None, False), "train.image_slices": (0, None, False),
    "eval.every": (1, None, False), "eval.overlap": (0, 0.95, False), "eval.tile_batch": (1, None, False),
    "eval.max_cases": (0, None, False),
    "fairness.dro.cvar_level": (0, 1, True), "fairness.dro.eta": (0, None, False),
    "fairness.dro.tau_lr": (0, None, False), "fairness.dro.warmup": (0, 1, False),
    "fairness.fairmeta.seg_weight": (0, None, False), "fairness.fairmeta.cls_weight": (0, None, False),
    "fairness.fairmeta.cls_warmup": (0, 1, False),
    "fairness.dmoe.experts": (1, None, False), "fairness.dmoe.top_k": (1, None, False),
}
MIN_PATCH = 4   # voxels per axis; the network checks its own strides divide the patch


def _check_ranges(cfg: dict) -> None:
    for path, (low, high, low_excluded) in RANGES.items():
        section, *keys = path.split(".")
        value = cfg[section]
        for key in keys:
            value = value[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low or (low_excluded and value == low) or (high is not None and value > high):
            bound = f"{'above' if low_excluded else 'at least'} {low:g}" + (f" and at most {high:g}" if high is not None else "")
            raise ConfigError(f"config key {path!r} must be a number {bound}, got {short(value)}")
    steps = cfg["train"]["steps_per_epoch"]
    if steps is not None and not isinstance(steps, int):
        raise ConfigError(f"config key 'train.steps_per_epoch' is a whole number of batches or null, got {short(steps)}")
    if cfg["train"]["augment_on"] not in AUGMENT_ON:
        raise ConfigError(f"config key 'train.augment_on' is one of {', '.join(AUGMENT_ON)}, "
                          f"got {short(cfg['train']['augment_on'])}")
    patch = cfg["train"]["patch_size"]
    if len(patch) != 3 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= MIN_PATCH for p in patch):
        raise ConfigError(f"config key 'train.patch_size' is three whole numbers >= {MIN_PATCH} (z, y, x), "
                          f"got {short(patch)}")


def _merge(base: dict, over: dict, where: str, strict: bool) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        path = f"{where}.{key}" if where else key
        if strict and path in MOVED:
            raise ConfigError(f"config key {path!r} is now {MOVED[path]}")
        if strict and path in REMOVED:
            raise ConfigError(f"config key {path!r} was removed ({REMOVED[path]}); delete it")
        if strict and key not in base:
            raise ConfigError(f"unknown config key {path!r}; valid keys in {where or 'the top level'}: "
                              f"{', '.join(sorted(base))}")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            section_open = strict and path in OPEN_SECTIONS
            out[key] = _merge(base[key], value, path, strict and not section_open)
        else:
            if strict and path in EITHER_TYPE:
                if not isinstance(value, EITHER_TYPE[path]):
                    raise ConfigError(f"config key {path!r} expects a name or a list of names, got {short(value)}")
            elif strict:
                _check_type(path, base[key], value)
            out[key] = copy.deepcopy(value)
    return out


def _check_type(path: str, default, value) -> None:
    if default is None or value is None:
        return
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) == isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key {path!r} expects {type(default).__name__}, got {short(value)}")


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise ConfigError(f"config {path} inherits from itself")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = read_yaml(path) or {}
    except CaseError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    for section, value in raw.items():
        if section != "base" and not isinstance(value, dict):
            raise ConfigError(f"{path}: section {short(section)} is {short(value)}; a section is a mapping of keys")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base is {short(base)}; it names the config file this one extends")
    parent = _read_yaml((path.parent / base).resolve(), seen + (path,))
    return _merge(parent, raw, "", strict=False)


def parse_override(text: str) -> tuple[list[str], object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        parsed = parse_yaml(value, where=f"--set {key}")
    except CaseError as exc:
        if not str(exc.problem).startswith("not valid YAML"):
            raise ConfigError(str(exc)) from None   # a bomb or a nest: refused, never kept as text
        parsed = value
    return key.strip().split("."), parsed


def load_config(path=None, overrides=(), *, saved: dict | None = None) -> dict:
    """DEFAULTS <- file (with its bases) or a saved config (a checkpoint's) <- overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if saved is not None:
        cfg = _merge(cfg, upgrade_saved_config(saved), "", strict=True)
    if path is not None:
        cfg = _merge(cfg, _read_yaml(Path(path).resolve()), "", strict=True)
    for text in overrides:
        keys, value = parse_override(text)
        nested = value
        for key in reversed(keys):
            nested = {key: nested}
        cfg = _merge(cfg, nested, "", strict=True)
        _yield_fallback(cfg, ".".join(keys))
    PreprocessSettings.from_dict(cfg["data"]["preprocess"])
    AugmentSettings.from_dict(cfg["train"]["augment"])
    if "moe" in cfg["model"]:  # the model section is open (builder arguments), so checked here
        raise ConfigError(f"config key 'model.moe' is now {MOVED['model.moe']}")
    if isinstance(cfg["fairness"]["method"], list) and len(cfg["fairness"]["method"]) == 1:
        cfg["fairness"]["method"] = cfg["fairness"]["method"][0]
    _check_methods(cfg["fairness"]["method"])
    _check_eval_metrics(cfg["eval"])
    _check_mirror_axes(cfg["eval"]["mirror_axes"])
    _check_discovery(cfg["eval"])
    _check_ranges(cfg)
    apply_fp32_fallback(cfg)        # checked here (every key a config key of the right type), applied by train.py
    if cfg["data"]["synthesize_fov"] not in ("abdomen", "kidneys"):
        raise ConfigError(f"config key 'data.synthesize_fov' is abdomen or kidneys, got {cfg['data']['synthesize_fov']!r}")
    return cfg


def _yield_fallback(cfg: dict, path: str) -> None:
    """An explicit override (--set, a sweep's or --seeds' value) beats train.fp32_fallback's value for
    the same key: `--set train.epochs=95` trains 95 epochs on every CPU."""
    fallback = cfg["train"].get("fp32_fallback")
    if not isinstance(fallback, dict) or path.startswith("train.fp32_fallback"):
        return
    for key in [k for k in fallback if str(k) == path or str(k).startswith(path + ".")
                or path.startswith(str(k) + ".")]:
        del fallback[key]


def apply_fp32_fallback(cfg: dict) -> tuple[dict, list[str]]:
    """(the config with train.fp32_fallback's overrides applied and the fallback emptied, the overrides
    as "key=value" texts); ConfigError naming a key that is not a config key or a value of the wrong
    type. train.py applies it where the CPU has no native bf16 (the saved config holds the result, so
    a resumed run does not apply it twice)."""
    fallback = cfg["train"].get("fp32_fallback") or {}
    if not isinstance(fallback, dict):
        raise ConfigError(f"config key 'train.fp32_fallback' is a mapping of overrides, got {short(fallback)}")
    out, texts = copy.deepcopy(cfg), []
    for path, value in fallback.items():
        keys = str(path).split(".")
        if len(keys) < 2 or path.startswith("train.fp32_fallback"):
            raise ConfigError(f"train.fp32_fallback: {path!r} is not a config key like train.patch_size")
        nested = value
        for key in reversed(keys):
            nested = {key: nested}
        out = _merge(out, nested, "", strict=True)
        texts.append(f"{path}={json.dumps(value)}")
    out["train"]["fp32_fallback"] = {}
    return out, texts


def _check_mirror_axes(axes) -> None:
    if (not isinstance(axes, list) or not axes
            or not all(isinstance(a, int) and not isinstance(a, bool) and a in (0, 1, 2) for a in axes)
            or len(set(axes)) != len(axes)):
        raise ConfigError(f"config key 'eval.mirror_axes' is a list of distinct axes among 0 (z), 1 (y), 2 (x), "
                          f"got {short(axes)}")


def _check_eval_metrics(ev: dict) -> None:
    from fairness.metrics import check_metrics
    try:
        ev["metrics"] = check_metrics(ev["metrics"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config key 'eval.metrics': {exc}") from None
    tol = ev["surface_tolerance_mm"]
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ConfigError(f"config key 'eval.surface_tolerance_mm' is a distance >= 0 in mm, got {tol!r}")


def _check_discovery(ev: dict) -> None:
    from fairness.discovery import feature_families
    try:
        feature_families(ev["discover_features"])
    except ValueError as exc:
        raise ConfigError(f"config key 'eval.discover_features': {exc}") from None
    if ev["discover_region"] not in ("mean", "kidney", "tumor"):
        raise ConfigError(f"config key 'eval.discover_region' is mean, kidney or tumor, got {short(ev['discover_region'])}")


def _check_methods(method) -> None:
    from mitigations import method_names
    try:
        method_names(method)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def upgrade_saved_config(saved: dict) -> dict:
    """A config saved by an earlier fairkits (checkpoints, run folders' config.yaml) in today's layout.

    Before the mitigations package, a run's method was spread over sampler.name (resm,
    stratified), fairness.method (fairmeta, dro) and model.moe, with the fair-meta weights as
    fairness.alpha / beta and the DRO level as fairness.dro.alpha. Saved configs in that layout
    are translated key by key (what the run did is unchanged); configs a user writes are not:
    they get the one-line error of MOVED.
    """
    old_sampler = (saved.get("sampler") or {}).get("name")
    if old_sampler is None and "moe" not in (saved.get("model") or {}):
        return saved
    s = copy.deepcopy(saved)
    sampler, fair, model = s.setdefault("sampler", {}), s.setdefault("fairness", {}), s.setdefault("model", {})
    methods = [sampler.pop("name", "uniform")]
    resm = {k: sampler.pop(k) for k in ("target", "redraw") if k in sampler}
    meta = {new: fair.pop(old) for old, new in (("alpha", "seg_weight"), ("beta", "cls_weight"), ("input", "input"),
                                                ("adversarial", "adversarial"), ("classifier", "classifier"))
            if old in fair}
    moe = model.pop("moe", None)
    if moe:
        methods.append("dmoe")
        fair["dmoe"] = {k: v for k, v in moe.items() if k not in ("attribute", "groups")}
    methods.append(fair.pop("method", "none"))
    if "alpha" in (fair.get("dro") or {}):
        fair["dro"]["cvar_level"] = fair["dro"].pop("alpha")
    names = [m for m in methods if m not in ("uniform", "none")]
    fair.update(method=names if len(names) > 1 else (names[0] if names else "none"), resm=resm, fairmeta=meta)
    s.get("eval", {}).pop("criterion", None)
    return s


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def yaml_load(path) -> dict:
    """A YAML mapping from a file, or a ConfigError naming the file."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except CaseError as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc.problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping")
    return data


@dataclass(frozen=True)
class Sweep:
    config: Path                  # the experiment config every run starts from
    runs: dict                    # run name -> list of "section.key=value" overrides


def load_sweep(path) -> Sweep:
    """A sweep file: `config:` (relative to the file) and `runs:` {name: {section.key: value}}.

    Every run's resolved config is validated here, so a misspelled key fails before any training.
    """
    path = Path(path)
    data = yaml_load(path)
    unknown = set(data) - {"config", "runs"}
    if unknown or "config" not in data or not isinstance(data.get("runs"), dict) or not data["runs"]:
        raise ConfigError(f"{path}: a sweep has exactly the keys config (a file) and runs (name: {{key: value}})"
                          + (f"; unknown: {', '.join(sorted(map(str, unknown)))}" if unknown else ""))
    config = (path.parent / data["config"]).resolve()
    runs = {}
    for name, sets in data["runs"].items():
        if not isinstance(sets, dict) or "/" in str(name):
            raise ConfigError(f"{path}: run {name!r} must map section.key to a value (and have no '/')")
        runs[str(name)] = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                           for key, value in sets.items()]
        try:
            load_config(config, runs[str(name)])
        except ConfigError as exc:
            raise ConfigError(f"{path}: run {name}: {exc}") from None
    return Sweep(config=config, runs=runs)
