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

Usage:
    from data.synthetic import write_cohort_from_labels, write_procedural_cohort, synthesize_ct
    done, failures = write_cohort_from_labels("../shared/kits19", "work/kits19_synth")
    ids = write_procedural_cohort("work/demo", n_cases=40, seed=0)             # default grid
    ids = write_procedural_cohort("/tmp/tiny", n_cases=4, shape=(16, 32, 32))  # fast tests
    ct = synthesize_ct(labels, (3.0, 0.8, 0.8), bmi=31.0, rng=np.random.default_rng(0))
    plan = plan_procedural_case(7, seed=0)   # demographics and sizes without rasterising

Cost: the largest real case (case_00151, 1059 x 512 x 512) takes ~50 s and ~1.6 GB peak RSS on
two cores (a third of it is gzip); a default procedural case ~0.4 s.

Determinism: from-labels case `case_00042` uses the generator seeded by (seed, 42); procedural
case i uses (seed, i) for its shapes and (seed, i, 1) for its intensities, so the same seed and
index always give the same case whatever n_cases / only are.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.atomic import atomic_write
from data.errors import CaseError
from data.nifti import kits_affine, read_volume, write_volume
from data.synthetic_anatomy import LEFT, random_field, render_ct

__all__ = ["synthesize_ct", "write_cohort_from_labels", "write_procedural_cohort",
           "plan_procedural_case", "ProceduralCase", "DEFAULT_SHAPE", "FOV_Z_MM"]


def synthesize_ct(labels: np.ndarray, spacing, *, bmi: float, rng: np.random.Generator) -> np.ndarray:
    """CT-like int16 HU volume (same shape as `labels`) around a KiTS label map.

    labels: (z, y, x) array with 0 background, 1 kidney, 2 tumor (any memory order; a 277 M-voxel
    case is processed in slabs, so memory stays ~ labels + output + a few hundred MB).
    spacing: (z, y, x) voxel size in mm. bmi: the patient's body-mass index (fat thickness,
    noise). rng: all random draws come from it (same state -> same image).
    Kidney and tumor voxels get kidney / tumor intensities; everything else (body, fat, muscle,
    organs, vessels, bone, bowel) is synthesised around the kidneys found in the labels.
    """
    return render_ct(labels, spacing, bmi=bmi, rng=rng)


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
            old = json.loads(path.read_text())
            merged = {d["case_id"]: d for d in old if isinstance(d, dict) and "case_id" in d}
        except (OSError, ValueError):
            merged = {}   # an unreadable old index is rebuilt from this run's cases
    for d in entries:
        merged[d["case_id"]] = d
    _write_json_atomic(path, [merged[k] for k in sorted(merged)])


def _copy_atomic(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a convenience, not a requirement
        return items
    return tqdm(items, desc=desc, unit="case")


def _complete(case_dir: Path) -> bool:
    return (case_dir / "imaging.nii.gz").is_file() and (case_dir / "segmentation.nii.gz").is_file()


# ---------------------------------------------------------------------------------------------
# From real label maps
# ---------------------------------------------------------------------------------------------
def _load_metadata(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CaseError(str(path), f"cannot read the metadata file ({type(exc).__name__}: {exc})")
    if not isinstance(data, list):
        raise CaseError(str(path), "expected a list of per-case dicts")
    return {d["case_id"]: d for d in data if isinstance(d, dict) and "case_id" in d}


def _bmi_of(case_id: str, meta: dict) -> float:
    try:
        bmi = float(meta["body_mass_index"])
    except (KeyError, TypeError, ValueError):
        raise CaseError(case_id, f"body_mass_index missing or not a number: {meta.get('body_mass_index')!r}")
    if not math.isfinite(bmi) or not 8.0 <= bmi <= 90.0:
        raise CaseError(case_id, f"body_mass_index {bmi} is not a plausible BMI")
    return bmi


def write_cohort_from_labels(label_dir, out_dir, *, only: list[str] | None = None, seed: int = 0,
                             metadata_path=None, progress: bool = True) -> tuple[list[str], list[CaseError]]:
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
    """
    label_dir, out_dir = Path(label_dir), Path(out_dir)
    meta_by_id = _load_metadata(Path(metadata_path) if metadata_path else label_dir / "kits.json")
    if only is not None:
        case_ids = list(dict.fromkeys(only))
    else:
        case_ids = sorted(p.name for p in label_dir.glob("case_*") if p.is_dir())
    done: list[str] = []
    failures: list[CaseError] = []
    for case_id in _progress(case_ids, progress, "synthetic CT"):
        case_out = out_dir / case_id
        try:
            meta = meta_by_id.get(case_id)
            if meta is None:
                raise CaseError(case_id, "no entry in the metadata file")
            if not _complete(case_out):
                bmi = _bmi_of(case_id, meta)
                seg_path = label_dir / case_id / "segmentation.nii.gz"
                vol = read_volume(seg_path, where=case_id)
                labels = vol.array
                if labels.dtype.kind not in "biu":
                    raise CaseError(case_id, f"label map has non-integer dtype {labels.dtype}")
                top = int(labels.max()) if labels.size else 0
                if top > 2 or (labels.dtype.kind == "i" and int(labels.min()) < 0):
                    raise CaseError(case_id, f"label values outside the scheme {{0, 1, 2}} (max {top})")
                rng = np.random.default_rng([seed, _case_number(case_id)])
                ct = synthesize_ct(labels, vol.spacing, bmi=bmi, rng=rng)
                labels = vol.array = None   # free the label map before writing
                case_out.mkdir(parents=True, exist_ok=True)
                write_volume(case_out / "imaging.nii.gz", ct, affine=vol.affine, header=vol.header)
                del ct
                _copy_atomic(seg_path, case_out / "segmentation.nii.gz")
            done.append(case_id)
        except CaseError as err:
            failures.append(err)
    entries = [meta_by_id[c] for c in done]
    if entries or not (out_dir / "kits.json").exists():
        _merge_metadata(out_dir, entries)
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
                            "kidney": k, "volume_ml": vol})
    case.shape_seed = int(rng.integers(0, 2**63 - 1))
    return case


def _rasterize(case: ProceduralCase) -> np.ndarray:
    """Kidneys (deformed ellipsoids with a hilum dent) then tumors (deformed ellipsoids)."""
    sp = np.asarray(case.spacing)
    shape = case.shape
    labels = np.zeros(shape, dtype=np.uint8)
    coords = [np.arange(n) * s for n, s in zip(shape, sp)]
    rng = np.random.default_rng(case.shape_seed)
    wobble = random_field(rng, np.zeros(3), sp * np.asarray(shape), 30.0)

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


def write_procedural_cohort(out_dir, *, n_cases: int, seed: int = 0,
                            shape: tuple[int, int, int] | None = None, progress: bool = True) -> list[str]:
    """Write n_cases procedural cases (case_00000 ...) with kits.json; returns their ids.

    shape: (z, y, x) grid; default DEFAULT_SHAPE. The in-plane matrix is exact; the slice count
    varies per case (thin / thick slices over a fixed FOV_Z_MM, see plan_procedural_case).
    """
    if n_cases < 0:
        raise ValueError(f"n_cases must be >= 0, got {n_cases}")
    out_dir = Path(out_dir)
    ids, entries = [], []
    for i in _progress(range(n_cases), progress, "procedural CT"):
        case = plan_procedural_case(i, seed=seed, shape=shape)
        labels = case.labels()
        ct = synthesize_ct(labels, case.spacing, bmi=case.bmi, rng=np.random.default_rng([seed, i, 1]))
        affine = kits_affine(case.spacing)
        case_out = out_dir / case.case_id
        write_volume(case_out / "imaging.nii.gz", ct, affine=affine, spacing=case.spacing)
        write_volume(case_out / "segmentation.nii.gz", labels, affine=affine, spacing=case.spacing)
        ids.append(case.case_id)
        entries.append(case.metadata)
    _merge_metadata(out_dir, entries)
    return ids
