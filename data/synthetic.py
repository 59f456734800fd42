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
  whose sizes and demographics follow KiTS19 (the project's embedded demo cohort).
Both use `synthesize_ct`, the intensity model (data/synthetic_anatomy.py): body outline with
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
generator (seed, case, 2)). A case without an effect goes through the unbiased code path.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from data.atomic import atomic_write
from data.bias import NO_EFFECT, BiasSpec, CaseEffect
from data.errors import CaseError
from data.labels import LabelScheme
from data.nifti import kits_affine, read_volume, write_volume
from data.progress import track
from data.synthetic_anatomy import LEFT, random_field, render_ct
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
# Summary numbers measured on the 210 KiTS19 cases (../shared/kits19: kits.json and the label
# maps, label 1 voxels x voxel volume); only these constants are kept here.
MALE_FRACTION = 123 / 210
AGE_BINS = [(0, 10, 1), (10, 20, 3), (20, 30, 4), (30, 40, 13), (40, 50, 29), (50, 60, 49),
            (60, 70, 69), (70, 80, 33), (80, 90, 8), (90, 91, 1)]          # (lo, hi, count)
BMI_BINS = [(16, 20, 3), (20, 25, 35), (25, 30, 66), (30, 35, 46), (35, 40, 38), (40, 45, 16),
            (45, 50, 6)]                                                     # kits.json BMI 16.2-49.6
KIDNEY_ML = {"male": (463.0, 108.0), "female": (362.0, 86.0)}  # both kidneys, label 1: mean, sd
TUMOR_LOG_ML = (3.25, 1.73)        # per tumor: log(volume mL) mean, sd (real range 0.8-1464 mL)
N_TUMORS_P = (0.90, 0.07, 0.03)    # 1, 2, 3 tumors (real: 201, 7, 2 of 210; enriched a little)
P_OTHER_KIDNEY = 0.5               # extra tumor in the contralateral kidney (5 of 9 real cases)
P_ANISOTROPIC = 143 / 210          # KiTS19 cases with z/xy spacing ratio > 3
KIDNEY_OFFSET_MM = (60.0, 88.0)    # kidney centroid to midline (half the real 117-177 mm spread)

# Grid: the default (64, 128, 128) covers a fixed 256 mm of z and a body-sized (~300-500 mm)
# square in-plane field of view, i.e. ~3 mm pixels and 3.4-15 mm slices (~0.3-1.2 M voxels per
# case): coarse enough for a CPU demo, fine enough that kidneys (~120 mm) and most tumors span
# many voxels. Any `shape` keeps the same physical field of view, so (16, 32, 32) is still a whole
# abdomen (12 mm pixels) for fast tests.
DEFAULT_SHAPE = (64, 128, 128)
FOV_Z_MM = 256.0

# Field of view of the written image. "abdomen": the whole grid above. "kidneys": the scan cropped
# to a box around the kidneys and tumors with KIDNEY_FOV_MARGIN_MM on every side, as a renal-mass
# protocol reconstructs it: the same anatomy, noise and draws, about half the voxels, so a CPU run
# spends its patches where the labels are. The box comes from the plan (never the rendered
# labels) and is shared by a case and its twin.
FIELDS_OF_VIEW = ("abdomen", "kidneys")
KIDNEY_FOV_MARGIN_MM = 25.0


@dataclass
class ProceduralCase:
    """Everything drawn for one procedural case before rasterising (cheap to make)."""
    case_id: str
    index: int
    seed: int
    gender: str
    age: int
    bmi: float
    spacing: tuple[float, float, float]        # (z, y, x) mm
    shape: tuple[int, int, int]                # (z, y, x) voxels
    kidneys: list[dict] = field(default_factory=list)   # centre, axes (3x3 rows), radii, volume_ml
    tumors: list[dict] = field(default_factory=list)    # centre, radii, kidney, volume_ml
    shape_seed: int = 0                                 # seeds the outline wobble of the shapes
    field_extent_mm: tuple | None = None                # box of the wobble field (None: the grid's)

    @property
    def kidney_volume_ml(self) -> float:
        """Planned kidney volume (both kidneys, ellipsoid volumes before tumor and hilum carving)."""
        return float(sum(k["volume_ml"] for k in self.kidneys))

    @property
    def metadata(self) -> dict:
        sz, sy, sx = self.spacing
        return {"case_id": self.case_id, "gender": self.gender, "age_at_nephrectomy": self.age,
                "body_mass_index": self.bmi,
                "voxel_spacing": {"x_spacing": sx, "y_spacing": sy, "z_spacing": sz}}

    def labels(self) -> np.ndarray:
        """Rasterise kidneys and tumors on the case grid (uint8 {0, 1, 2}, (z, y, x))."""
        return _rasterize(self)

    def organ_box_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) in mm of the reach of every kidney and tumor (what _rasterize may label)."""
        reaches = [(k["centre"], k["radii"].max() * 1.3) for k in self.kidneys]
        reaches += [(t["centre"], t["radii"].max() * 1.4) for t in self.tumors]
        lo = np.min([c - r for c, r in reaches], axis=0)
        hi = np.max([c + r for c, r in reaches], axis=0)
        return lo, hi

    def with_effect(self, effect: CaseEffect) -> "ProceduralCase":
        """The same patient under `effect`'s slice_mm and tumor_scale (self when neither is set).

        slice_mm: the same anatomy in mm on a grid of that z spacing (slice i at i * slice_mm,
        max(4, round(old extent / slice_mm)) slices). tumor_scale: every tumor's axes x
        factor^(1/3) (planned volume x factor), its centre at the same place relative to the
        kidney surface (an exophytic tumor stays attached). Every random draw is the twin's."""
        if effect.slice_mm is None and effect.tumor_scale == 1.0:
            return self
        sz, sy, sx = self.spacing
        nz, ny, nx = self.shape
        case = replace(self, kidneys=self.kidneys, tumors=list(self.tumors),
                       field_extent_mm=tuple(np.asarray(self.spacing) * np.asarray(self.shape)))
        if effect.slice_mm is not None:
            case.spacing = (float(effect.slice_mm), sy, sx)
            case.shape = (max(4, int(round(nz * sz / effect.slice_mm))), ny, nx)
        if effect.tumor_scale != 1.0:
            k = effect.tumor_scale ** (1.0 / 3.0)
            case.tumors = []
            for t in self.tumors:
                kid = self.kidneys[t["kidney"]]
                r = t["r"] * k
                centre = kid["centre"] + kid["axes"].T @ (t["surface"] + t["normal"] * r * t["exo"])
                case.tumors.append(dict(t, centre=centre, radii=t["radii"] * k, r=r,
                                        volume_ml=t["volume_ml"] * effect.tumor_scale))
        return case


def _from_bins(rng, bins) -> float:
    counts = np.array([c for _, _, c in bins], dtype=np.float64)
    lo, hi, _ = bins[rng.choice(len(bins), p=counts / counts.sum())]
    return float(rng.uniform(lo, hi))


def _kidney_axes(rng, side: float) -> np.ndarray:
    """Rows: long axis (upper -> lower pole), medial (towards the hilum), anterior-ish third axis.
    Upper poles lie medial and posterior (as in the real label maps), hilum turned anteriorly."""
    alpha, beta, gamma = (math.radians(rng.uniform(*r)) for r in ((8, 20), (8, 22), (15, 40)))
    lat = side * LEFT   # +x is the patient's left, so lateral for the left kidney is +x
    long_ax = np.array([1.0, -math.tan(beta), lat * math.tan(alpha)])
    long_ax /= np.linalg.norm(long_ax)
    med = np.array([0.0, 0.0, -lat])
    med -= long_ax * (med @ long_ax)
    med /= np.linalg.norm(med)
    ant = np.cross(long_ax, med)
    if ant[1] > 0:      # make it point anteriorly (-y)
        ant = -ant
    m2 = math.cos(gamma) * med + math.sin(gamma) * ant
    a2 = np.cross(long_ax, m2)
    if a2[1] > 0:
        a2 = -a2
    return np.stack([long_ax, m2, a2])


def plan_procedural_case(index: int, *, seed: int = 0, shape: tuple[int, int, int] | None = None) -> ProceduralCase:
    """Draw demographics, grid and kidney / tumor geometry of procedural case `index`."""
    nz0, ny, nx = (int(s) for s in (shape or DEFAULT_SHAPE))
    if min(nz0, ny, nx) < 4:
        raise ValueError(f"shape {shape} is too small (need at least 4 voxels per axis)")
    rng = np.random.default_rng([seed, index])
    u = rng.uniform
    gender = "male" if rng.random() < MALE_FRACTION else "female"
    age = int(min(90, math.floor(_from_bins(rng, AGE_BINS))))
    bmi = round(_from_bins(rng, BMI_BINS), 2)
    # in-plane: fixed matrix, field of view sized to the body (as scanners do), so the pixel size
    # varies per case; body size estimated with the intensity model's nominal fat rules
    excess = max(bmi - 19.0, 0.0)
    half_w = 137.0 + 0.5 * 2.6 * excess + 1.2 * 2.0 * excess
    ant, post = 107.0 + 2.6 * excess + 2.0 * excess, 74.0 + 0.8 * 2.0 * excess
    fov_xy = float(np.clip(2.0 * half_w * u(1.0, 1.15), 300.0, 500.0))
    sxy = fov_xy / nx
    # z: thin (ratio < 3) or thick (ratio > 3) slices, as in KiTS19, so both of nnU-Net's
    # resampling paths get used; shape[0] sets the reference slice spacing
    sz_ref = FOV_Z_MM / nz0
    if rng.random() < P_ANISOTROPIC:
        sz = max(sz_ref * u(0.9, 1.1), sxy * u(3.3, 5.0))
    else:
        sz = min(sz_ref * u(0.9, 1.1), sxy * u(2.0, 2.8))
    nz = max(4, int(round(FOV_Z_MM / sz)))
    spacing = (round(sz, 4), round(sxy, 4), round(sxy, 4))
    # spine and kidneys in mm on this grid
    x_mid = nx * sxy / 2.0 + u(-10.0, 10.0)
    y_vb = ny * sxy / 2.0 + (ant - post) / 2.0 + u(-10.0, 10.0)
    z_mid = nz * sz * u(0.42, 0.55)
    mean, sd = KIDNEY_ML[gender]
    total = max(150.0, rng.normal(mean, sd))
    case = ProceduralCase(case_id=f"case_{index:05d}", index=index, seed=seed, gender=gender, age=age,
                          bmi=bmi, spacing=spacing, shape=(nz, ny, nx))
    drop = u(5.0, 25.0)   # the right kidney usually sits lower (liver above it)
    for side in (-1.0, 1.0):   # patient's right, left
        vol = total / 2.0 * u(0.85, 1.15)
        a = (3.0 * vol * 1000.0 / (4.0 * math.pi * 0.52 * 0.42)) ** (1.0 / 3.0)
        centre = np.array([z_mid - 8.0 + (drop if side < 0 else 0.0) + u(-8, 8),
                           y_vb + u(0.0, 10.0), x_mid + side * LEFT * u(*KIDNEY_OFFSET_MM)])
        case.kidneys.append({"side": side, "centre": centre, "axes": _kidney_axes(rng, side),
                             "radii": np.array([a, 0.52 * a, 0.42 * a]) * np.exp(rng.normal(0, 0.05, 3)),
                             "volume_ml": vol})
    n_tum = 1 + int(rng.choice(3, p=N_TUMORS_P))
    first = int(rng.integers(0, 2))
    for t in range(n_tum):
        k = first if t == 0 or rng.random() > P_OTHER_KIDNEY else 1 - first
        kid = case.kidneys[k]
        vol = float(np.clip(math.exp(rng.normal(*TUMOR_LOG_ML)), 0.5, 2500.0))
        r = (3.0 * vol * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
        while True:   # a surface direction away from the hilum (tumors rarely sit in the sinus)
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            if d[1] < 0.5:
                break
        radii = kid["radii"]
        s = 1.0 / math.sqrt(float(np.sum((d / radii) ** 2)))
        p_local = s * d
        normal = p_local / radii ** 2
        normal /= np.linalg.norm(normal)
        exo = u(-0.6, 0.7)    # > 0: centre outside the kidney (exophytic), < 0: endophytic
        centre = kid["centre"] + kid["axes"].T @ (p_local + normal * r * exo)
        case.tumors.append({"centre": centre, "radii": r * np.exp(rng.normal(0, 0.1, 3)),
                            "kidney": k, "volume_ml": vol,
                            "r": r, "surface": p_local, "normal": normal, "exo": exo})  # for tumor_scale
    case.shape_seed = int(rng.integers(0, 2**63 - 1))
    return case


def _rasterize(case: ProceduralCase) -> np.ndarray:
    """Kidneys (deformed ellipsoids with a hilum dent) then tumors (deformed ellipsoids)."""
    sp = np.asarray(case.spacing)
    shape = case.shape
    labels = np.zeros(shape, dtype=np.uint8)
    coords = [np.arange(n) * s for n, s in zip(shape, sp)]
    rng = np.random.default_rng(case.shape_seed)
    extent = sp * np.asarray(shape) if case.field_extent_mm is None else np.asarray(case.field_extent_mm)
    wobble = random_field(rng, np.zeros(3), extent, 30.0)

    def window(centre, reach):
        sl = []
        for c, ax in zip(centre, coords):
            a, b = np.searchsorted(ax, c - reach), np.searchsorted(ax, c + reach, "right")
            if b <= a:
                return None
            sl.append(slice(int(a), int(b)))
        return tuple(sl)

    def local(w, centre, axes):
        zz, yy, xx = (coords[i][w[i]] - centre[i] for i in range(3))
        zz, yy, xx = zz[:, None, None], yy[None, :, None], xx[None, None, :]
        return [axes[j, 0] * zz + axes[j, 1] * yy + axes[j, 2] * xx for j in range(3)]

    for kid in case.kidneys:
        radii = kid["radii"]
        w = window(kid["centre"], radii.max() * 1.3)
        if w is None:
            continue
        u, v, t = local(w, kid["centre"], kid["axes"])
        q = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (t / radii[2]) ** 2
        noise = wobble.sample(coords[0][w[0]], coords[1][w[1]], coords[2][w[2]])
        inside = q < 1.0 + 0.12 * noise
        dent = (u / (0.3 * radii[0])) ** 2 + ((v - radii[1]) / (0.35 * radii[1])) ** 2 + (t / (0.3 * radii[2])) ** 2 < 1.0
        labels[w][inside & ~dent] = 1
    for tum in case.tumors:
        radii = tum["radii"]
        w = window(tum["centre"], radii.max() * 1.4)
        marked = False
        if w is not None:
            zz, yy, xx = (coords[i][w[i]] - tum["centre"][i] for i in range(3))
            q = ((zz / radii[0]) ** 2)[:, None, None] + ((yy / radii[1]) ** 2)[None, :, None] + \
                ((xx / radii[2]) ** 2)[None, None, :]
            noise = wobble.sample(coords[0][w[0]], coords[1][w[1]], coords[2][w[2]])
            m = q < 1.0 + 0.15 * noise
            labels[w][m] = 2
            marked = bool(m.any())
        if not marked:   # smaller than a voxel: still mark the nearest voxel (every KiTS19 case has a tumor)
            idx = tuple(int(np.clip(round(c / s), 0, n - 1)) for c, s, n in zip(tum["centre"], sp, shape))
            labels[idx] = 2
    return labels


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


# ---------------------------------------------------------------------------------------------
# Bias mechanisms acting on label maps (data/bias.py says which case gets what)
# ---------------------------------------------------------------------------------------------
def resample_z_nearest(labels: np.ndarray, z_mm: float, new_z_mm: float) -> np.ndarray:
    """slice_mm on a label map: max(1, round(nz * z_mm / new_z_mm)) slices, slice j taken from
    the original slice nearest to j * new_z_mm (slice 0 stays in place; nearest, never blended)."""
    nz = labels.shape[0]
    n_new = max(1, int(round(nz * z_mm / new_z_mm)))
    idx = np.minimum(np.floor(np.arange(n_new) * (new_z_mm / z_mm) + 0.5).astype(np.intp), nz - 1)
    return np.ascontiguousarray(labels[idx])


def _bbox(mask: np.ndarray, margin, shape) -> tuple[slice, ...] | None:
    """Index box of a mask's True voxels grown by margin (per axis), or None when empty."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(hits):
            return None
        box.append(slice(max(0, int(hits[0]) - margin[axis]), min(shape[axis], int(hits[-1]) + 1 + margin[axis])))
    return tuple(box)


def scale_tumor(labels: np.ndarray, spacing, factor: float) -> tuple[np.ndarray, float]:
    """tumor_scale on a real label map: each tumor (connected component of label 2) of n voxels
    keeps or gains max(1, round(factor * n)) voxels; returns (new labels, new / old tumor voxels).

    factor < 1: the tumor shrinks concentrically: its voxels deepest below its surface (distance
    in mm) stay tumor; each vacated voxel takes the label of the nearest non-tumor voxel of the
    original map (kidney where the tumor bordered kidney, background where it bulged out).
    factor > 1: it grows into the kidney only: the kidney voxels nearest to it (mm) become tumor,
    as many as there are (the ratio then falls short; it is returned)."""
    out = labels.copy()
    tumor = labels == 2
    n_old = int(np.count_nonzero(tumor))
    sp = np.asarray(spacing, dtype=np.float64)
    if n_old == 0 or factor == 1.0:
        return out, 1.0
    box = _bbox(tumor, [1, 1, 1], labels.shape)
    comps, n_comp = ndimage.label(tumor[box])
    for c in range(1, n_comp + 1):
        comp = comps == c
        n = int(np.count_nonzero(comp))
        keep = max(1, int(round(factor * n)))
        if keep < n:
            sub = _bbox(comp, [1, 1, 1], comp.shape)
            cm, lab = comp[sub], labels[box][sub]
            depth = ndimage.distance_transform_edt(cm, sampling=sp)
            order = np.argsort(-depth[cm], kind="stable")
            gone = np.zeros(int(cm.sum()), dtype=bool)
            gone[order[keep:]] = True
            vacated = np.zeros_like(cm)
            vacated[cm] = gone
            _, nearest = ndimage.distance_transform_edt(lab == 2, sampling=sp, return_indices=True)
            view = out[box][sub]
            view[vacated] = lab[tuple(i[vacated] for i in nearest)]
        elif keep > n:
            r_mm = (3.0 * n * float(np.prod(sp)) / (4.0 * math.pi)) ** (1.0 / 3.0)
            reach = [int(math.ceil(2.0 * r_mm * (factor ** (1.0 / 3.0) - 1.0) / s)) + 2 for s in sp]
            cb = _bbox(comp, [0, 0, 0], comp.shape)
            whole = tuple(slice(max(0, b.start + q.start - m), min(size, b.start + q.stop + m))
                          for b, q, m, size in zip(box, cb, reach, labels.shape))
            cm = np.zeros(tuple(w.stop - w.start for w in whole), dtype=bool)
            cm[tuple(slice(b.start + q.start - w.start, b.start + q.stop - w.start)
                     for b, q, w in zip(box, cb, whole))] = comp[cb]
            dist = ndimage.distance_transform_edt(~cm, sampling=sp)
            cand = np.flatnonzero(labels[whole] == 1)
            take = cand[np.argsort(dist.ravel()[cand], kind="stable")[:keep - n]]
            view = out[whole]
            idx = np.unravel_index(take, view.shape)
            view[idx] = 2
    return out, float(np.count_nonzero(out == 2)) / n_old


def jitter_labels(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """label_noise: the kidney outline (label > 0) and the tumor outline (label 2) each moved
    along the in-plane normal by d(x) = k * tanh(g(x)) voxels, g a smooth unit-variance random
    field (correlation ~8 voxels in-plane, ~3 slices); |d| < k. A voxel changes label exactly
    when the moved outline crosses its centre, so only voxels whose centres lie within k + 1/2
    voxel of the true outline change (at most k layers of voxels). Distances are in-plane in
    voxel units, as annotators draw slice by slice; the tumor stays inside the kidney outline."""
    box = _bbox(labels > 0, [0, k + 2, k + 2], labels.shape)
    out = labels.copy()
    if box is None:
        return out
    lab = labels[box]
    z_scale = 8.0 / 3.0     # the field's cells are 8 voxels in-plane and 3 slices along z
    hi = np.asarray(lab.shape, dtype=np.float64) * np.array([z_scale, 1.0, 1.0])
    fields = [random_field(rng, np.zeros(3), hi, 16.0) for _ in range(2)]   # kidney, tumor outline
    y, x = np.arange(lab.shape[1]), np.arange(lab.shape[2])
    edt = ndimage.distance_transform_edt
    for j in range(lab.shape[0]):     # slice by slice: bounded memory on 500-slice real cases
        moved = []
        for mask, f in ((lab[j] > 0, fields[0]), (lab[j] == 2, fields[1])):
            if not mask.any():
                moved.append(mask)
                continue
            d = k * np.tanh(f.sample(np.array([j * z_scale]), y, x)[0])
            sd = np.where(mask, edt(mask) - 0.5, 0.5 - edt(~mask))   # signed in-plane distance
            moved.append(sd + d > 0)
        fg, tumor = moved
        out[box][j] = np.where(fg, np.where(tumor & fg, 2, 1), 0)
    return out


def _label_dice(written: np.ndarray, true: np.ndarray) -> dict:
    """Dice of the jittered reference against the true labels (kidney = label > 0, tumor = 2)."""
    out = {}
    for name, a, b in (("kidney", written > 0, true > 0), ("tumor", written == 2, true == 2)):
        denom = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
        out[name] = round(2.0 * int(np.count_nonzero(a & b)) / denom, 4) if denom else 1.0
    return out
