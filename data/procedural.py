"""Procedural cases: demographics, kidney and tumor shapes planned from the real cohort's summary
numbers (KiTS19's 210 cases), and their label maps rasterised on a grid. No CT here: the picture is
data/synthetic_ct/'s, the cohort on disk data/synthetic.py's.

    plan = plan_procedural_case(7, seed=0)          # sex, age, BMI, spacing, kidneys, tumors
    labels = plan.labels()                          # (z, y, x) uint8: 0, 1 kidney, 2 tumor

Determinism: case i's plan comes from the generator seeded by (seed, i), whatever the cohort's size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from data.bias import CaseEffect
from data.synthetic_ct import LEFT, random_field

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
