"""Synthetic CT for KiTS19-style cohorts (the real CT images are not available here, SPEC §3).

Two generators write the same layout as KiTS19:

    OUT/case_XXXXX/imaging.nii.gz       int16 Hounsfield units, (z, y, x), kits_affine(spacing)
    OUT/case_XXXXX/segmentation.nii.gz  uint8 {0 background, 1 kidney, 2 tumor}
    OUT/kits.json                       list of per-case dicts (case_id, gender,
                                        age_at_nephrectomy, body_mass_index, voxel_spacing, ...)

* `write_cohort_from_labels` keeps each real case's label map (file copied byte for byte), its
  geometry and its real metadata, and synthesises the CT around it: real shapes, sizes and
  demographics, synthetic intensities.
* `write_procedural_cohort` needs no files: kidneys and tumors are drawn as smooth random shapes
  whose sizes and demographics follow KiTS19 (the project's embedded demo cohort; the plans and
  their label maps are data/procedural.py's).
Both use `synthesize_ct`, the intensity model (data/synthetic_ct/): body outline with
subcutaneous and visceral fat (BMI-dependent), muscles, spine, liver, spleen, aorta/IVC, bowel
with air and contents, kidney cortex/medulla/sinus, heterogeneous tumors, partial-volume blur,
BMI-dependent noise and a smooth bias field. It is built so that no intensity threshold or band
segments kidney or tumor well (tests/test_synthetic.py checks this).

Known-bias cohorts (SPEC §4): both writers take `bias=` (a BiasSpec from data/bias.py, which
says what each case gets) and `twins=`:

    OUT/kits.json        each case also has `synthetic_bias`: the mechanisms applied to it ({} for
                         none), share / hidden membership, and `measured` (tumor_volume_ratio on
                         the acquired grid; label_dice of the jittered reference vs the truth)
    OUT/synthesis.json   generator, seed, size / case list and the normalised spec with its hash:
                         a later run into OUT with other ones is refused (so is an unbiased run)
    OUT_twins/           twins_dir(OUT): every case with an effect, written without it (same case
                         id, same anatomy, same random draws: byte-identical to the case made
                         without a spec), kits.json entries with `synthetic_bias: {}` and
                         `twin_of`. A cohort of its own: nothing in OUT refers to it.

How each mechanism is made: noise / contrast / blur are arguments of the renderer; slice_mm
re-grids the case (procedural: rasterised at the new z spacing, `ProceduralCase.with_effect`;
from-labels: `resample_z_nearest` and the header zooms / affine's z column); tumor_scale scales
the planned tumors (procedural) or the label map (`scale_tumor`); the render of a case whose
labels or grid changed takes its twin's labels as `reference`, so the anatomy and every random
draw are the twin's; label_noise jitters the written reference only (`jitter_labels`; its own
generator (seed, case, 2)). A case without an effect goes through the unbiased code path. The
label-map mechanisms live in data/label_edits.py.

Usage:
    from data.synthetic import write_cohort_from_labels, write_procedural_cohort, synthesize_ct
    done, failures = write_cohort_from_labels("../shared/kits19", "work/kits19_synth")
    ids = write_procedural_cohort("work/demo", n_cases=40, seed=0)             # default grid
    ids = write_procedural_cohort("/tmp/tiny", n_cases=4, shape=(16, 32, 32))  # fast tests
    ct = synthesize_ct(labels, (3.0, 0.8, 0.8), bmi=31.0, rng=np.random.default_rng(0))
    plan = plan_procedural_case(7, seed=0)   # demographics and sizes without rasterising
    spec = data.bias.load_bias("configs/bias/low_dose_female.yaml")
    ids = write_procedural_cohort("work/ld", n_cases=24, bias=spec, twins=True)   # + work/ld_twins

Cost: the largest real case (case_00151, 1059 x 512 x 512) takes ~50 s and ~1.6 GB peak RSS on
two cores (a third of it is gzip); a default procedural case ~0.4 s.

Determinism: from-labels case `case_00042` uses the generator seeded by (seed, 42); procedural
case i uses (seed, i) for its shapes and (seed, i, 1) for its intensities, so the same seed and
index always give the same case whatever n_cases / only are.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.atomic import atomic_write
from data.bias import NO_EFFECT, BiasSpec, CaseEffect
from data.errors import CaseError
from data.label_edits import _label_dice, jitter_labels, resample_z_nearest, scale_tumor
from data.labels import LabelScheme
from data.nifti import kits_affine, read_volume, write_volume
from data.procedural import (DEFAULT_SHAPE, FIELDS_OF_VIEW, FOV_Z_MM, KIDNEY_FOV_MARGIN_MM, ProceduralCase,
                             plan_procedural_case)
from data.progress import track
from data.synthetic_ct import render_ct
from data.untrusted import case_path, check_case_id, read_json

__all__ = ["synthesize_ct", "write_cohort_from_labels", "write_procedural_cohort",
           "plan_procedural_case", "ProceduralCase", "DEFAULT_SHAPE", "FOV_Z_MM", "twins_dir", "read_synthesis",
           "SYNTHESIS_FILE", "resample_z_nearest", "scale_tumor", "jitter_labels"]


def synthesize_ct(labels: np.ndarray, spacing, *, bmi: float, rng: np.random.Generator, noise: float = 1.0,
                  contrast: float = 1.0, blur_mm: float = 0.0, reference=None) -> np.ndarray:
    """CT-like int16 HU volume (same shape as `labels`) around a KiTS label map.

    labels: (z, y, x) array with 0 background, 1 kidney, 2 tumor (any memory order; a 277 M-voxel
    case is processed in slabs, so memory stays ~ labels + output + a few hundred MB).
    spacing: (z, y, x) voxel size in mm. bmi: the patient's body-mass index (fat thickness,
    noise). rng: all random draws come from it (same state -> same image).
    Kidney and tumor voxels get kidney / tumor intensities; everything else (body, fat, muscle,
    organs, vessels, bone, bowel) is synthesised around the kidneys found in the labels.
    noise, contrast, blur_mm, reference: bias mechanisms (render_ct; the defaults change nothing).
    """
    return render_ct(labels, spacing, bmi=bmi, rng=rng, noise=noise, contrast=contrast, blur_mm=blur_mm,
                     reference=reference)


# ---------------------------------------------------------------------------------------------
# Writing helpers
# ---------------------------------------------------------------------------------------------
def _case_number(case_id: str) -> int:
    """The number in case_00042 (seeds per case); other ids hash to a stable number."""
    m = re.fullmatch(r"case_(\d+)", case_id)
    return int(m.group(1)) if m else zlib.crc32(case_id.encode()) & 0x7FFFFFFF


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def _merge_metadata(out_dir: Path, entries: list[dict]) -> None:
    """kits.json = existing entries (other cases) updated with this run's, sorted by case_id."""
    path = out_dir / "kits.json"
    merged: dict[str, dict] = {}
    if path.is_file():
        try:
            merged = _load_metadata(path)
        except CaseError:
            merged = {}   # an unreadable old index is rebuilt from this run's cases
    for d in entries:
        merged[d["case_id"]] = d
    _write_json_atomic(path, [merged[k] for k in sorted(merged)])


def _copy_atomic(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _complete(case_dir: Path) -> bool:
    return (case_dir / "imaging.nii.gz").is_file() and (case_dir / "segmentation.nii.gz").is_file()


# ---------------------------------------------------------------------------------------------
# Provenance of a biased cohort: OUT/synthesis.json
# ---------------------------------------------------------------------------------------------
SYNTHESIS_FILE = "synthesis.json"
TWINS_SUFFIX = "_twins"
# in a procedural cohort's folder from its first file until kits.json is written: a folder holding
# it is a synthesis cut short (killed, timed out), which data/prepare.py runs again
PENDING_FILE = ".synthesis_pending"


def twins_dir(out_dir) -> Path:
    """Where the counterfactual twins of the cohort in out_dir go: the sibling OUT_twins/."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + TWINS_SUFFIX)


def read_synthesis(folder) -> dict | None:
    """The synthesis record of a folder written with a bias spec (None: none there)."""
    path = Path(folder) / SYNTHESIS_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except CaseError as exc:
        raise CaseError(str(path), f"unreadable synthesis record ({exc.problem})") from None


def _synthesis_record(spec: BiasSpec, generator: str, seed: int, twins_of: str | None = None, **settings) -> dict:
    return {"format": 1, "generator": generator, "seed": seed, **settings, "bias": spec.normalised,
            "bias_sha256": spec.sha256, "bias_file": spec.source, "twins_of": twins_of}


def _claim(out_dir: Path, record: dict) -> None:
    """Write out_dir/synthesis.json, or check that the one there says the same (the bias file's
    name may differ); refuse a folder that already holds cases synthesised without a spec."""
    old = read_synthesis(out_dir)
    if old is not None:
        differ = sorted(k for k in set(old) | set(record) if k != "bias_file" and old.get(k) != record.get(k))
        if differ:
            raise CaseError(str(out_dir), f"was synthesised with other settings ({', '.join(differ)} differ; "
                            f"its bias file: {old.get('bias_file')}); choose another --out or delete it")
        return
    if any(p.is_dir() for p in out_dir.glob("case_*")):
        raise CaseError(str(out_dir), "holds cases synthesised without a bias spec; choose another --out")
    _write_json_atomic(out_dir / SYNTHESIS_FILE, record)


def _refuse_biased(out_dir: Path) -> None:
    """A run without a spec must not add unbiased cases to a biased cohort."""
    old = read_synthesis(out_dir)
    if old is not None:
        raise CaseError(str(out_dir), f"was synthesised with the bias spec {old.get('bias_file')}; pass the "
                        "same --bias (and seed) or choose another --out")


def _effects(spec: BiasSpec | None, metas: dict[str, dict], seed: int):
    """({case_id: CaseEffect}, failures); every case gets NO_EFFECT without a spec."""
    if spec is None:
        return {cid: NO_EFFECT for cid in metas}, []
    return spec.resolve(metas, seed)


def _record(effect: CaseEffect, measured: dict) -> dict:
    rec = effect.record
    if measured:
        rec["measured"] = measured
    return rec


def _twin_entry(meta: dict, cohort: Path, biased_record: dict) -> dict:
    return dict(meta, synthetic_bias={},
                twin_of={"cohort": cohort.name, "case_id": meta["case_id"], "synthetic_bias": biased_record})


def _render_args(effect: CaseEffect) -> dict:
    return {"noise": effect.noise, "contrast": effect.contrast, "blur_mm": effect.blur}


# ---------------------------------------------------------------------------------------------
# From real label maps
# ---------------------------------------------------------------------------------------------
def _load_metadata(path: Path) -> dict[str, dict]:
    """{case_id: entry} of a kits.json; entries without a case id are skipped, a case id that is
    not a plain name is an error naming the file (it would become a folder name)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise CaseError(str(path), "expected a list of per-case dicts")
    entries = [d for d in data if isinstance(d, dict) and "case_id" in d]
    for i, d in enumerate(entries):
        check_case_id(d["case_id"], where=f"{path} entry {i}")
    return {d["case_id"]: d for d in entries}


def _bmi_of(case_id: str, meta: dict) -> float:
    try:
        bmi = float(meta["body_mass_index"])
    except (KeyError, TypeError, ValueError):
        raise CaseError(case_id, f"body_mass_index missing or not a number: {meta.get('body_mass_index')!r}")
    if not math.isfinite(bmi) or not 8.0 <= bmi <= 90.0:
        raise CaseError(case_id, f"body_mass_index {bmi} is not a plausible BMI")
    return bmi


def _checked_labels(case_id: str, labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind not in "biu":
        raise CaseError(case_id, f"label map has non-integer dtype {labels.dtype}")
    top = int(labels.max()) if labels.size else 0
    if top > 2 or (labels.dtype.kind == "i" and int(labels.min()) < 0):
        raise CaseError(case_id, f"label values outside the scheme {{0, 1, 2}} (max {top}); a KiTS21/23 map "
                        "(3 = cyst) needs --label-scheme, e.g. kits23-cyst-kidney")
    return labels


def _biased_labels(labels, spacing, affine, effect: CaseEffect):
    """(labels, spacing, affine, measured) of a real label map under slice_mm and tumor_scale."""
    sp, measured = tuple(float(s) for s in spacing), {}
    if effect.slice_mm is not None:
        labels = resample_z_nearest(labels, sp[0], effect.slice_mm)
        affine = np.array(affine, dtype=np.float64)
        affine[:3, 0] *= effect.slice_mm / sp[0]     # slice 0 stays where it was
        sp = (float(effect.slice_mm), sp[1], sp[2])
    if effect.tumor_scale != 1.0:
        labels, ratio = scale_tumor(labels, sp, effect.tumor_scale)
        measured["tumor_volume_ratio"] = round(ratio, 4)
    return labels, sp, affine, measured


def _from_labels_case(case_id: str, meta: dict, seg_path: Path, case_out: Path, seed: int,
                      effect: CaseEffect = NO_EFFECT, scheme: LabelScheme | None = None) -> dict:
    """Synthesise one case's CT around its real label map; returns the effect's measured values.

    Without an effect the label map is copied byte for byte (written mapped when `scheme` changes
    a value present, e.g. a KiTS23 cyst) and the CT rendered around it. With one, the label map is
    resampled (slice_mm) and its tumor scaled (tumor_scale), the CT is rendered around that with
    the acquisition effects and the twin's draws (reference = the real labels), and the written
    reference is jittered (label_noise)."""
    bmi = _bmi_of(case_id, meta)
    vol = read_volume(seg_path, where=case_id)
    raw = vol.array
    labels = _checked_labels(case_id, raw if scheme is None else scheme.apply(raw, where=case_id))
    mapped = labels is not raw and not np.array_equal(labels, raw)
    rng = np.random.default_rng([seed, _case_number(case_id)])
    if not effect.acts:
        ct = synthesize_ct(labels, vol.spacing, bmi=bmi, rng=rng)
        if not mapped:
            labels = None
        raw = vol.array = None   # free the label map before writing
        case_out.mkdir(parents=True, exist_ok=True)
        write_volume(case_out / "imaging.nii.gz", ct, affine=vol.affine, header=vol.header)
        del ct
        if mapped:
            write_volume(case_out / "segmentation.nii.gz", labels, affine=vol.affine, header=vol.header)
        else:
            _copy_atomic(seg_path, case_out / "segmentation.nii.gz")
        return {}
    grid, spacing, affine, measured = _biased_labels(labels, vol.spacing, vol.affine, effect)
    same_labels = grid is labels
    ct = synthesize_ct(grid, spacing, bmi=bmi, rng=rng, reference=None if same_labels else (labels, vol.spacing),
                       **_render_args(effect))
    labels = raw = vol.array = None   # free the real label map (when it was changed) before writing
    written = grid
    if effect.label_noise:
        written = jitter_labels(grid, effect.label_noise, np.random.default_rng([seed, _case_number(case_id), 2]))
        measured["label_dice"] = _label_dice(written, grid)
    zooms = spacing if effect.slice_mm is not None else None
    write_volume(case_out / "imaging.nii.gz", ct, affine=affine, header=vol.header, spacing=zooms)
    if same_labels and not effect.label_noise and not mapped:   # acquisition effects only: the reference as it is
        _copy_atomic(seg_path, case_out / "segmentation.nii.gz")
    else:
        write_volume(case_out / "segmentation.nii.gz", written, affine=affine, header=vol.header, spacing=zooms)
    return measured


def _select_from_labels(spec: BiasSpec | None, case_ids: list[str], meta_by_id: dict, seed: int):
    """(case ids to write, {case_id: CaseEffect}, failures): share's selection, then the effects."""
    if spec is None:
        return case_ids, {c: NO_EFFECT for c in case_ids}, []
    metas = {c: meta_by_id[c] for c in case_ids if c in meta_by_id}
    kept, failures = spec.select_fixed(metas, seed)
    effects, more = spec.resolve({c: metas[c] for c in kept}, seed)
    failed = {f.where for f in failures + more}
    dropped = set(metas) - set(kept)
    return [c for c in case_ids if c not in dropped and c not in failed], effects, failures + more


def write_cohort_from_labels(label_dir, out_dir, *, only: list[str] | None = None, seed: int = 0,
                             metadata_path=None, progress: bool = True, bias: BiasSpec | None = None,
                             twins: bool = False, label_scheme: str | None = None) -> tuple[list[str], list[CaseError]]:
    """Synthesise CT for real KiTS19 label maps; returns (complete case ids, per-case failures).

    label_dir holds case_XXXXX/segmentation.nii.gz and (unless metadata_path says otherwise)
    kits.json. For each case (all case_* folders, or `only`), the label map is copied unchanged,
    the imaging is synthesised with the case's real BMI in the label map's own geometry (shape,
    spacing, affine, header), and the case's real metadata is copied into out_dir/kits.json.
    A case whose two files are already in out_dir is skipped (a killed run resumes); files are
    written atomically, segmentation last, so "both present" means complete. kits.json is merged
    with an existing one and written atomically at the end. A problem with one case becomes a
    CaseError in the returned list and the other cases go on; an unreadable metadata file
    raises CaseError at once.

    bias: a BiasSpec (data/bias.py). `share` keeps a sub-cohort of these cases (left out cases
    are neither written nor listed), each case gets its effect, and kits.json records it as
    `synthetic_bias`; out_dir/synthesis.json records the spec, seed and case list, and a later
    run with other ones into the same folder is refused. twins: each case with an effect is also
    written without it into twins_dir(out_dir) (same case id, same draws; `twin_of` in its
    kits.json).

    label_scheme: how the source's label values map onto ours (data/labels.py), e.g.
    "kits23-cyst-kidney" for KiTS21/23 maps with label 3 = cyst; the label maps written hold the
    mapped values, and each case's kits.json entry records the scheme (`synthetic_label_scheme`).
    None: KiTS19's {0, 1, 2}, anything else refused.
    """
    label_dir, out_dir = Path(label_dir), Path(out_dir)
    scheme = LabelScheme.parse(label_scheme) if label_scheme is not None else None
    if twins and bias is None:
        raise ValueError("twins need a bias spec")
    meta_by_id = _load_metadata(Path(metadata_path) if metadata_path else label_dir / "kits.json")
    if only is not None:
        case_ids = list(dict.fromkeys(only))
    else:
        case_ids = sorted(p.name for p in label_dir.glob("case_*") if p.is_dir())
    record = None
    if bias is None:
        _refuse_biased(out_dir)
    else:
        record = _synthesis_record(bias, "from-labels", seed, cases=sorted(case_ids))
    case_ids, effects, failures = _select_from_labels(bias, case_ids, meta_by_id, seed)
    if record is not None:
        _claim(out_dir, record)
        if twins and any(e.acts for e in effects.values()):
            _claim(twins_dir(out_dir), dict(record, twins_of=out_dir.name))
    old = {}
    if bias is not None and (out_dir / "kits.json").is_file():
        old = {k: v for k, v in _load_metadata(out_dir / "kits.json").items() if "synthetic_bias" in v}
    done: list[str] = []
    entries, twin_entries = [], []
    for case_id in track(case_ids, desc="synthetic CT", enabled=progress):
        effect = effects.get(case_id, NO_EFFECT)
        try:
            case_out = case_path(out_dir, case_id)
            meta = meta_by_id.get(case_id)
            if meta is None:
                raise CaseError(case_id, "no entry in the metadata file")
            seg_path = case_path(label_dir, case_id) / "segmentation.nii.gz"
            if scheme is not None:
                meta = dict(meta, synthetic_label_scheme=str(scheme))
            entry = meta
            if not _complete(case_out):
                measured = _from_labels_case(case_id, meta, seg_path, case_out, seed, effect, scheme)
                if bias is not None:
                    entry = dict(meta, synthetic_bias=_record(effect, measured))
            elif bias is not None:   # resumed: keep what the first run measured
                entry = old.get(case_id, dict(meta, synthetic_bias=_record(effect, {})))
            if twins and effect.acts:
                twin_out = case_path(twins_dir(out_dir), case_id)
                if not _complete(twin_out):
                    _from_labels_case(case_id, meta, seg_path, twin_out, seed, scheme=scheme)
                twin_entries.append(_twin_entry(meta, out_dir, entry["synthetic_bias"]))
            done.append(case_id)
            entries.append(entry)
        except CaseError as err:
            failures.append(err)
        except MemoryError:   # one case too large for this machine: the others are still written
            failures.append(CaseError(case_id, "out of memory while synthesising it"))
    if entries or not (out_dir / "kits.json").exists():
        _merge_metadata(out_dir, entries)
    if twin_entries:
        _merge_metadata(twins_dir(out_dir), twin_entries)
    return done, failures


# ---------------------------------------------------------------------------------------------
# Procedural cohort
# ---------------------------------------------------------------------------------------------


def _fov_box_mm(case: ProceduralCase, effect: CaseEffect, fov: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The written field of view in mm, (lo, hi), for `case` and its twin alike; None: the grid."""
    if fov == "abdomen":
        return None
    boxes = [case.organ_box_mm(), case.with_effect(effect).organ_box_mm()]   # tumor_scale may grow one
    lo = np.min([b[0] for b in boxes], axis=0) - KIDNEY_FOV_MARGIN_MM
    hi = np.max([b[1] for b in boxes], axis=0) + KIDNEY_FOV_MARGIN_MM
    return lo, hi


def _crop_slices(box_mm, spacing, shape) -> tuple[slice, ...]:
    """The voxels whose centres (i * spacing) lie in the box, clipped to the grid."""
    lo, hi = box_mm
    return tuple(slice(max(0, int(math.ceil(l / s))), min(n, int(math.floor(h / s)) + 1))
                 for l, h, s, n in zip(lo, hi, spacing, shape))


def _procedural_case(case: ProceduralCase, effect: CaseEffect, out_dir: Path, seed: int,
                     fov: str = "abdomen", box_mm=None) -> tuple[dict, dict]:
    """Write one procedural case under `effect`; returns (its metadata, the effect's measured values).

    The twin's plan is rasterised first; under slice_mm / tumor_scale the case is re-rasterised
    from the changed plan and rendered with the twin's labels as the anatomy's reference.
    box_mm: crop the written image and labels to this box (_fov_box_mm of the field of view `fov`,
    which the metadata records); the affine's origin moves with it, so the crop sits where it was
    in the scanner's frame."""
    labels = case.labels()
    acq = case.with_effect(effect)
    grid, reference, measured = labels, None, {}
    if acq is not case:
        grid, reference = acq.labels(), (labels, case.spacing)
        if effect.tumor_scale != 1.0:   # on the acquired grid, with / without the scaling
            unscaled = labels if effect.slice_mm is None else case.with_effect(replace(NO_EFFECT, slice_mm=effect.slice_mm)).labels()
            measured["tumor_volume_ratio"] = round(float(np.count_nonzero(grid == 2)) / np.count_nonzero(unscaled == 2), 4)
    ct = synthesize_ct(grid, acq.spacing, bmi=case.bmi, rng=np.random.default_rng([seed, case.index, 1]),
                       reference=reference, **_render_args(effect))
    written = grid
    if effect.label_noise:
        written = jitter_labels(grid, effect.label_noise, np.random.default_rng([seed, case.index, 2]))
        measured["label_dice"] = _label_dice(written, grid)
    affine = kits_affine(acq.spacing)
    if box_mm is not None:
        crop = _crop_slices(box_mm, acq.spacing, ct.shape)
        ct, written = ct[crop], written[crop]
        affine[:3, 3] = affine[:3, :3] @ np.array([c.start for c in crop], dtype=np.float64)
    case_out = out_dir / case.case_id
    write_volume(case_out / "imaging.nii.gz", ct, affine=affine, spacing=acq.spacing)
    write_volume(case_out / "segmentation.nii.gz", written, affine=affine, spacing=acq.spacing)
    meta = acq.metadata
    if fov != "abdomen":
        meta["synthetic_fov"] = fov
    return meta, measured


def _procedural_plans(n_cases: int, seed: int, shape, spec: BiasSpec | None) -> list[ProceduralCase]:
    """Cases 0 .. n_cases-1; under `share`, the first cases (by index) that fill the quotas."""
    if spec is None or not spec.share_entries:
        return [plan_procedural_case(i, seed=seed, shape=shape) for i in range(n_cases)]

    def candidates():
        for i in itertools.count():
            plan = plan_procedural_case(i, seed=seed, shape=shape)
            yield plan.case_id, plan.metadata
    ids = spec.select_stream(candidates(), n_cases)
    return [plan_procedural_case(_case_number(c), seed=seed, shape=shape) for c in ids]


def write_procedural_cohort(out_dir, *, n_cases: int, seed: int = 0, shape: tuple[int, int, int] | None = None,
                            progress: bool = True, bias: BiasSpec | None = None, twins: bool = False,
                            fov: str = "abdomen") -> list[str]:
    """Write n_cases procedural cases (case_00000 ...) with kits.json; returns their ids.

    shape: (z, y, x) grid; default DEFAULT_SHAPE. The in-plane matrix is exact; the slice count
    varies per case (thin / thick slices over a fixed FOV_Z_MM, see plan_procedural_case).
    bias: a BiasSpec (data/bias.py): each case gets its effect and kits.json records it as
    `synthetic_bias`. Under `share` the cohort is the first cases by index that fill the groups'
    quotas (ids keep their index, so they have gaps); a case without an effect is byte-identical
    to the case written without a spec. out_dir/synthesis.json records spec, seed, n_cases and
    shape; another run into the folder must match it. twins: each case with an effect is also
    written without it into twins_dir(out_dir), with `twin_of` in its kits.json.
    fov: "abdomen" (the whole grid) or "kidneys" (cropped around them, FIELDS_OF_VIEW); a cropped
    case records `synthetic_fov` in kits.json.
    """
    if fov not in FIELDS_OF_VIEW:
        raise ValueError(f"unknown field of view {fov!r}; valid: {', '.join(FIELDS_OF_VIEW)}")
    if n_cases < 0:
        raise ValueError(f"n_cases must be >= 0, got {n_cases}")
    if twins and bias is None:
        raise ValueError("twins need a bias spec")
    out_dir = Path(out_dir)
    if bias is None:
        _refuse_biased(out_dir)
    plans = _procedural_plans(n_cases, seed, shape, bias)
    effects, _ = _effects(bias, {p.case_id: p.metadata for p in plans}, seed)
    if not (out_dir / "kits.json").is_file():
        _write_json_atomic(out_dir / PENDING_FILE, {"n_cases": n_cases, "seed": seed})
    if bias is not None:
        record = _synthesis_record(bias, "procedural", seed, n_cases=n_cases,
                                   shape=list(shape) if shape is not None else None,
                                   **({"fov": fov} if fov != "abdomen" else {}))
        _claim(out_dir, record)
        if twins and any(e.acts for e in effects.values()):
            _claim(twins_dir(out_dir), dict(record, twins_of=out_dir.name))
    ids, entries, twin_entries = [], [], []
    for case in track(plans, desc="procedural CT", enabled=progress):
        effect = effects[case.case_id]
        box = _fov_box_mm(case, effect, fov)
        meta, measured = _procedural_case(case, effect, out_dir, seed, fov, box)
        if bias is not None:
            meta["synthetic_bias"] = _record(effect, measured)
        if twins and effect.acts:
            twin_meta, _ = _procedural_case(case, NO_EFFECT, twins_dir(out_dir), seed, fov, box)
            twin_entries.append(_twin_entry(twin_meta, out_dir, meta["synthetic_bias"]))
        ids.append(case.case_id)
        entries.append(meta)
    _merge_metadata(out_dir, entries)
    if twin_entries:
        _merge_metadata(twins_dir(out_dir), twin_entries)
    (out_dir / PENDING_FILE).unlink(missing_ok=True)
    return ids
