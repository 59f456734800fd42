"""--ckpt: a checkpoint rebuilt from itself, its cases predicted with the sliding window, written back
in the original geometry and scored there.

    from audit.checkpoints import evaluate_checkpoint
    per_case, attributes, failures, metrics, metadata, embeddings, cfg = evaluate_checkpoint(ckpt, args, out_dir)

`args` is evaluate.py's parsed options (--device, --amp, --overlap, --mirror, --tile-batch, --split,
--data, --cases, --group, --metric, --discover). Writing the tables is audit/results.py's job.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from audit.results import discovery_families
from data.errors import CaseError, format_failures
from data.progress import track


def ckpt_out_dir(ckpt_path: Path, args, index: int, n: int) -> Path:
    run_dir = ckpt_path.parent
    name = ckpt_path.stem + (f"-{args.data.name}" if args.data is not None else "")
    if args.split != "test" and args.data is None:
        name += f"-{args.split}"
    if args.out is None:
        return run_dir / "eval" / name
    return args.out if n == 1 else args.out / f"{index:02d}-{run_dir.name}-{name}"


def load_model(ckpt_path: Path, args):
    """(checkpoint, its config, the network on the device in eval mode, the window options)."""
    from config import load_config
    from engine.runtime import amp_settings, pick_device
    from engine.scoring import WindowOptions
    from models.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    try:
        cfg = load_config(saved=ckpt["config"])
    except ValueError as exc:  # a checkpoint from an older (or newer) fairkits
        raise ValueError(f"{ckpt_path}: its saved config does not fit this version of fairkits ({exc})") from None
    model = model_from_checkpoint(ckpt, where=str(ckpt_path))
    model.deep_supervision = False
    device = pick_device(args.device)
    amp_dtype, _ = amp_settings(args.amp, device)
    model.to(device).eval()
    ev = cfg["eval"]
    options = WindowOptions(patch_size=tuple(cfg["train"]["patch_size"]),
                            overlap=ev["overlap"] if args.overlap is None else args.overlap,
                            mirror=ev["mirror"] if args.mirror is None else args.mirror,
                            mirror_axes=tuple(ev["mirror_axes"] if args.mirror_axes is None else args.mirror_axes),
                            tile_batch=args.tile_batch or ev["tile_batch"], device=device, amp_dtype=amp_dtype)
    return ckpt, cfg, model, options


def checkpoint_cases(ckpt_path: Path, cfg: dict, args, out_dir: Path):
    """(cache, case table, case ids, raw folder, metadata) of what --ckpt evaluates."""
    from data.cache import load_cache_settings, load_case_table
    from data.preprocessing import PreprocessSettings, run_preprocessing
    from data.splits import load_split

    settings = PreprocessSettings.from_dict(cfg["data"]["preprocess"])
    if args.data is not None:  # another cohort, preprocessed the way the model was trained
        raw, metadata, cache = args.data, args.meta, out_dir / "cache"
        result = run_preprocessing(raw, cache, settings, metadata_path=metadata, progress=not args.no_progress)
        if result.failures:
            print(format_failures(result.failures), file=sys.stderr)
        table = load_case_table(cache)
        case_ids = table.index.tolist()
    else:
        raw = Path(cfg["data"]["raw"]) if cfg["data"]["raw"] else None
        metadata, cache = cfg["data"]["metadata"], Path(cfg["data"]["cache"])
        table = load_case_table(cache)
        split = load_split(cache / "splits.json", known_cases=table.index.tolist())
        case_ids = table.index.tolist() if args.split == "all" else split[args.split]
        if args.split == "test" and not split["val"] and ckpt_path.stem == "best":
            print(f"warning: {ckpt_path} was chosen on these test cases (the run had no validation split): its "
                  "test figures are optimistic; last.pt is the unbiased one", file=sys.stderr)
    if load_cache_settings(cache) != settings:
        raise CaseError(str(cache), f"was preprocessed with other settings than {ckpt_path} was trained on")
    if args.cases:
        unknown = [c for c in args.cases if c not in table.index]
        if unknown:
            raise CaseError(",".join(unknown), f"not in the cache {cache}")
        case_ids = [c for c in case_ids if c in set(args.cases)] if args.data is None and args.split != "all" \
            else list(args.cases)
    if not case_ids:
        raise CaseError(str(cache), f"no cases to evaluate (split {args.split!r} is empty)")
    return cache, table, settings, case_ids, raw, metadata


def original_records(raw, metadata, case_ids) -> dict:
    """{case_id: CaseRecord} of the cases whose original label map is in the raw folder."""
    from data.kits import scan_cohort

    records = {}
    if raw is not None and raw.is_dir():
        records = {r.case_id: r for r in scan_cohort(raw, metadata_path=metadata, cases=case_ids).records}
    if len(records) < len(case_ids):
        print(f"note: {len(case_ids) - len(records)} case(s) have no original label map under {raw}: scored "
              "in the preprocessed geometry and not written as NIfTI", file=sys.stderr)
    return records


def evaluate_checkpoint(ckpt_path: Path, args, out_dir: Path):
    """Predict, write back, score one checkpoint; returns (per_case, attributes, failures, metrics,
    metadata, embeddings, config): metadata {case_id: entry} from the raw folder's kits.json, else the
    case table's; embeddings (with --discover and the embedding family) the pooled bottleneck vectors,
    one row per case (else None); config the checkpoint's resolved config (the report's digest)."""
    from data.cache import groups_from_table, table_metadata, with_covariates
    from data.group_index import GroupIndex
    from data.groups import parse_attribute
    from data.kits import load_case
    from data.labels import LabelScheme
    from engine.scoring import CaseScorer
    from fairness.features import image_features

    ckpt, cfg, model, options = load_model(ckpt_path, args)
    cache, table, settings, case_ids, raw, metadata = checkpoint_cases(ckpt_path, cfg, args, out_dir)
    claim_predictions(out_dir / "predictions", prediction_record(ckpt_path, args, options, settings), args.overwrite)
    records = original_records(raw, metadata, case_ids)
    # each case routed by its group exactly as in training: the group index the checkpoint stores
    index = None
    if model.routes_by_group:
        stored = ckpt.get("group_index") or {"attribute": cfg["fairness"]["attribute"]}
        index = GroupIndex.from_table(table, settings, stored["attribute"], groups=stored.get("groups"))
    metrics = checkpoint_metrics(args, cfg)
    tolerance = cfg["eval"]["surface_tolerance_mm"] if args.surface_tolerance is None else args.surface_tolerance
    scorer = CaseScorer(model, cache, options, index=index, anisotropy_threshold=settings.anisotropy_threshold,
                        metrics=metrics, tolerance_mm=tolerance)
    scheme = LabelScheme.parse(settings.label_scheme)
    attributes = [parse_attribute(s, age_edges=settings.age_edges, bmi_edges=settings.bmi_edges) for s in args.group]
    columns = {a.name: groups_from_table(table, spec, settings) for a, spec in zip(attributes, args.group)}
    rows, failures = [], []
    with_image = args.discover and "image" in discovery_families(args)   # --discover's CT measurements
    with_embedding = args.discover and "embedding" in discovery_families(args)   # and the model's own view
    vectors = {}
    bar = track(case_ids, desc=f"evaluate {ckpt_path.parent.name}/{ckpt_path.name}", enabled=not args.no_progress)
    for case_id in bar:
        try:
            row = scorer.score(case_id, record=records.get(case_id), scheme=scheme, pred_dir=out_dir / "predictions")
            if with_image and records.get(case_id) is not None and records[case_id].image_path is not None:
                case = load_case(records[case_id], scheme, with_image=True)   # the original CT, in HU
                row.update(image_features(case.image, case.labels))
            if with_embedding:
                vectors[case_id] = scorer.embed(case_id)
            rows.append({**row, **{name: col[case_id] for name, col in columns.items()}})
            bar.set_postfix_str(f"{case_id} mean Dice {row['mean']:.3f}")
        except CaseError as exc:
            failures.append(exc)
    if scorer.reused:
        print(f"kept {scorer.reused} prediction(s) already in {out_dir / 'predictions'} (an earlier, interrupted "
              "evaluation)")
    metadata = {cid: r.meta for cid, r in records.items()} or table_metadata(table)
    embeddings = pd.DataFrame.from_dict(vectors, orient="index").add_prefix("e") if vectors else None
    return with_covariates(pd.DataFrame(rows), table), attributes, failures, metrics, metadata, embeddings, cfg


PREDICTIONS_RECORD = "made_by.json"     # which checkpoint and settings wrote a predictions folder


def prediction_record(ckpt_path: Path, args, options, settings) -> dict:
    """What the predictions depend on: the checkpoint's bytes (SHA-256), the window's settings, the
    cases' source and preprocessing. Two evaluations with the same record write the same maps."""
    import hashlib

    digest = hashlib.sha256()
    with open(ckpt_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    amp = getattr(options.amp_dtype, "__str__", lambda: "none")() if options.amp_dtype is not None else "none"
    return {"checkpoint_sha256": digest.hexdigest(), "overlap": float(options.overlap), "mirror": sorted(set(options.mirror_axes)) if options.mirror else False,
            "patch_size": list(options.patch_size), "amp": amp, "device": str(options.device).split(":")[0],
            "data": str(args.data.resolve()) if args.data is not None else "the run's cache",
            "preprocess": settings.to_dict() if hasattr(settings, "to_dict") else str(settings)}


def claim_predictions(pred_dir: Path, record: dict, overwrite: bool) -> None:
    """The predictions folder for this checkpoint and these settings: with --overwrite emptied first;
    else its maps are reused (an interrupted evaluation continues) only when its record says the same
    checkpoint and settings wrote them, and refused otherwise (a result that is wrong and looks
    right: an earlier checkpoint's maps scored as this one's). The record is written before any map."""
    import json

    from data.atomic import write_text
    from data.untrusted import read_json

    maps = sorted(pred_dir.glob("*.nii.gz")) if pred_dir.is_dir() else []
    record_path = pred_dir / PREDICTIONS_RECORD
    if overwrite:
        for path in maps:
            path.unlink(missing_ok=True)
    elif maps:
        earlier = read_json(record_path) if record_path.is_file() else None
        if earlier != json.loads(json.dumps(record)):
            what = "no record of what made them" if earlier is None else ", ".join(
                k for k in record if (earlier or {}).get(k) != json.loads(json.dumps(record))[k]) + " differ"
            raise CaseError(str(pred_dir), f"holds {len(maps)} prediction(s) of another checkpoint or other settings "
                                           f"({what}); pass --overwrite to predict again from a clean folder")
    pred_dir.mkdir(parents=True, exist_ok=True)
    write_text(record_path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def checkpoint_metrics(args, cfg: dict) -> list[str]:
    """--metric, else the run's eval.metrics; Dice first, always."""
    from fairness.metrics import check_metrics
    return check_metrics(args.metric or cfg["eval"]["metrics"])
