"""The CT intensity model behind data/synthetic.py: synthetic abdomen around a real label map.

Public entry point: `render_ct(labels, spacing, bmi=..., rng=...)` (re-exported by
data/synthetic.py as `synthesize_ct`). Everything else here is internal.

Geometry. All anatomy is laid out in patient millimetres on KiTS19's array axes (SPEC §1):
    axis 0 (z): slice index; increasing z goes towards the feet (inferior),
    axis 1 (y): image row; increasing y goes towards the back (posterior),
    axis 2 (x): image column; increasing x goes towards the patient's left.
That is what kits_affine says (world = -spacing * index along each axis, in RAS), and it agrees
with the real label maps: in the 210 KiTS19 cases the kidney at small x (patient's right) lies
lower (larger z) than the other one in most cases, the upper poles (small z) lie closer to the
midline than the lower poles, and the kidneys sit in the posterior half of the image (large y).

How the picture is made, slab by slab along z (bounded memory: the 1059 x 512 x 512 case never
holds more than the label map, the int16 output and a few ~50-slice float32 slabs):
  1. `_Anatomy` reads the kidneys off a coarse copy of the label map and places everything else
     around them in millimetres: body outline with subcutaneous fat (thickness from BMI), an
     abdominal muscle wall, visceral fat, spine (vertebral bodies with cortical shell, discs,
     posterior arch, canal), psoas / quadratus / erector muscles, aorta and IVC anterior to the
     spine with renal arteries and veins to each hilum, liver on the patient's right above the
     right kidney, gallbladder, spleen and stomach on the left, pancreas, colon, small-bowel loops
     with air / fluid / (sometimes) oral contrast, lung bases, ribs, iliac wings, bladder.
  2. `_KidneyModel` computes, on a ~1.5 mm copy of the kidney region, the depth below the kidney
     surface (cortex vs medulla), the depth inside the tumor (enhancing rim, necrotic core) and the
     renal sinus (fat + collecting system in the hilum), as coarse fields.
  3. Each slab is painted back to front (`_render_slab`), the real labels painted last, then
     white noise (std growing with BMI), a Gaussian point-spread blur (partial volume; sigma from
     the voxel size), and a smooth multiplicative + additive bias field are applied.
Bias mechanisms (data/bias.py) enter as render_ct's `noise`, `contrast`, `blur_mm` and
`reference` (the twin's labels and grid, from which the anatomy is laid out when the painted
labels or grid differ); with their defaults the code path and the output are unchanged.
All smooth random fields are white noise on a coarse grid, Gaussian-smoothed and read back by
separable linear interpolation (two small matrix products per plane): ~3 flops per voxel, so a
277 M-voxel case stays within the time budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Patient's left is +x on KiTS19's array (see the module docstring); the liver goes to -x.
LEFT = 1.0

SLAB = 48  # slices rendered at once; bounds the working memory (float32 slabs of SLAB x Y x X)
UNENHANCED_HU = 40.0   # `contrast` scales kidney / tumor HU about this level (data/bias.py)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# ---------------------------------------------------------------------------------------------
# Smooth fields on a coarse grid
# ---------------------------------------------------------------------------------------------
def _interp_index(coords_mm, origin, cell, n):
    """Per fine coordinate: the lower coarse index and the weight of the upper one (clamped)."""
    t = (np.asarray(coords_mm, dtype=np.float64) - origin) / cell
    if n == 1:
        return np.zeros(t.shape, dtype=np.intp), np.zeros(t.shape, dtype=np.float32)
    i0 = np.clip(np.floor(t).astype(np.intp), 0, n - 2)
    w = np.clip(t - i0, 0.0, 1.0).astype(np.float32)
    return i0, w


def _interp_matrix(coords_mm, origin, cell, n):
    """Dense linear-interpolation matrix (fine x coarse), trimmed to the coarse columns it uses."""
    i0, w = _interp_index(coords_mm, origin, cell, n)
    lo = int(i0.min()) if i0.size else 0
    hi = min(n, int(i0.max()) + 2) if i0.size else 1
    m = np.zeros((len(i0), hi - lo), dtype=np.float32)
    rows = np.arange(len(i0))
    m[rows, i0 - lo] = 1.0 - w
    if n > 1:
        m[rows, i0 + 1 - lo] += w
    return m, lo, hi


class CoarseField:
    """Values on a coarse regular grid (origin and cell size in mm), sampled on fine windows."""

    def __init__(self, values, origin_mm, cell_mm):
        self.v = np.ascontiguousarray(values, dtype=np.float32)
        self.origin = np.asarray(origin_mm, dtype=np.float64)
        self.cell = np.asarray(cell_mm, dtype=np.float64)

    def sample(self, z_mm, y_mm, x_mm) -> np.ndarray:
        """Trilinear interpolation at the grid z_mm x y_mm x x_mm (1-D coordinate arrays)."""
        nz, ny, nx = self.v.shape
        iz, wz = _interp_index(z_mm, self.origin[0], self.cell[0], nz)
        iz1 = np.minimum(iz + 1, nz - 1)
        planes_needed = np.unique(np.concatenate([iz, iz1]))
        my, ylo, yhi = _interp_matrix(y_mm, self.origin[1], self.cell[1], ny)
        mx, xlo, xhi = _interp_matrix(x_mm, self.origin[2], self.cell[2], nx)
        coarse = self.v[planes_needed][:, ylo:yhi, xlo:xhi]
        m, cy, cx = coarse.shape
        # in-plane upsampling as two large GEMMs (a stacked matmul with a broadcast operand
        # would not go through BLAS): along x, then along y
        t = (coarse.reshape(m * cy, cx) @ mx.T).reshape(m, cy, -1)          # (m, cy, X)
        nxf = t.shape[2]
        t = my @ np.ascontiguousarray(t.transpose(1, 0, 2)).reshape(cy, m * nxf)  # (Y, m*X)
        planes = np.ascontiguousarray(t.reshape(-1, m, nxf).transpose(1, 0, 2))   # (m, Y, X)
        p0 = np.searchsorted(planes_needed, iz)
        p1 = np.searchsorted(planes_needed, iz1)
        out = np.empty((len(iz),) + planes.shape[1:], dtype=np.float32)
        for k in range(len(iz)):  # blend along z slice by slice (cache-sized temporaries)
            a, b, w = p0[k], p1[k], float(wz[k])
            if w == 0.0 or a == b:
                out[k] = planes[a]
            else:
                np.multiply(planes[a], 1.0 - w, out=out[k])
                out[k] += w * planes[b]
        return out


def random_field(rng: np.random.Generator, lo_mm, hi_mm, scale_mm: float) -> CoarseField:
    """Smooth Gaussian noise (unit std) with correlation length ~scale_mm over the box lo..hi."""
    cell = float(scale_mm) / 2.0
    lo = np.asarray(lo_mm, dtype=np.float64) - cell
    n = [max(2, int(math.ceil((h - l) / cell)) + 2) for l, h in zip(lo, hi_mm)]
    g = rng.standard_normal(n, dtype=np.float32)
    g = ndimage.gaussian_filter(g, 1.0, mode="wrap")
    g /= max(float(g.std()), 1e-6)
    return CoarseField(g, lo, (cell, cell, cell))


def _smooth_1d(rng, n_terms=3, period_mm=(150.0, 400.0)):
    """A smooth random function of z (sum of a few sines), unit-ish amplitude."""
    periods = rng.uniform(*period_mm, size=n_terms)
    phases = rng.uniform(0, 2 * np.pi, size=n_terms)
    amps = rng.uniform(0.5, 1.0, size=n_terms) / n_terms

    def f(z):
        z = np.asarray(z, dtype=np.float64)
        return sum(a * np.sin(2 * np.pi * z / p + ph) for a, p, ph in zip(amps, periods, phases))
    return f


# ---------------------------------------------------------------------------------------------
# Kidneys as seen in the label map
# ---------------------------------------------------------------------------------------------
class _Kidney:
    """One kidney (component of label > 0) in mm: centroid, extents and hilum."""

    def __init__(self, centroid, lo, hi, volume_ml):
        self.c = np.asarray(centroid, dtype=np.float64)
        self.lo = np.asarray(lo, dtype=np.float64)
        self.hi = np.asarray(hi, dtype=np.float64)
        self.volume_ml = volume_ml
        self.side = 0.0  # +LEFT or -LEFT, set once the midline is known
        self.hilum = self.c.copy()


def _find_kidneys(labels: np.ndarray, spacing) -> tuple[list[_Kidney], tuple, np.ndarray, np.ndarray]:
    """Kidney components on a ~4 mm strided copy (cheap even for 277 M voxels) + fg bounding box."""
    sp = np.asarray(spacing, dtype=np.float64)
    f = [max(1, int(round(4.0 / s))) for s in sp]
    small = np.asarray(labels[::f[0], ::f[1], ::f[2]])
    cell = sp * f
    fg = small > 0
    kidneys: list[_Kidney] = []
    if not fg.any():
        return kidneys, None, fg, cell
    idx = np.nonzero(fg)
    bbox = tuple((int(i.min()) * fi, min(int(i.max()) * fi + fi, n))
                 for i, fi, n in zip(idx, f, labels.shape))
    comp, n = ndimage.label(fg)
    voxel_ml = float(np.prod(cell)) / 1000.0
    sizes = ndimage.sum_labels(fg, comp, index=np.arange(1, n + 1)) * voxel_ml
    for k in np.argsort(-sizes):
        if sizes[k] < 8.0 or len(kidneys) == 2:  # ignore specks; at most two kidneys
            break
        pts = np.argwhere(comp == k + 1)
        kid_pts = pts[small[tuple(pts.T)] == 1]
        centre_pts = kid_pts if len(kid_pts) > 0.2 * len(pts) else pts  # big tumors skew the centroid
        kidneys.append(_Kidney(centre_pts.mean(0) * cell, pts.min(0) * cell, (pts.max(0) + 1) * cell,
                               float(sizes[k])))
    if len(kidneys) == 2 and abs(kidneys[0].c[2] - kidneys[1].c[2]) < 40.0:
        # two pieces on the same side (e.g. a tumor split off): keep the bigger as the kidney
        kidneys = kidneys[:1]
    return kidneys, bbox, fg, cell


# ---------------------------------------------------------------------------------------------
# Per-case anatomy and intensities
# ---------------------------------------------------------------------------------------------
def noise_std_hu(bmi: float, slice_mm: float) -> float:
    """Image noise (HU, after the blur) for a patient: grows with BMI (more attenuation, fewer
    photons) and for thin slices (fewer photons per voxel)."""
    base = 6.0 + 0.6 * max(float(bmi) - 16.0, 0.0)        # ~12 HU at BMI 26, ~24 HU at BMI 46
    thin = float(np.clip(math.sqrt(2.5 / max(slice_mm, 1e-3)), 0.75, 1.8))
    return base * thin


class _Anatomy:
    """All per-case parameters of the synthetic abdomen (mm, HU), drawn once from `rng`."""

    def __init__(self, labels, spacing, bmi, rng, target=None):
        self.shape = tuple(int(s) for s in labels.shape)
        self.sp = np.asarray(spacing, dtype=np.float64)
        self.extent = self.sp * np.asarray(self.shape)
        self.bmi = float(np.clip(bmi if bmi is not None and np.isfinite(bmi) else 28.0, 12.0, 70.0))
        u = rng.uniform
        kidneys, self.fg_bbox, fg_small, cell = _find_kidneys(labels, spacing)
        self._place_kidneys(kidneys)

        zc = self.z_ref
        # --- spine (vertebral body centre y, slight tilt along z) ---
        self.y_vb0 = self.y_kid - u(0.0, 8.0)
        self.vb_tilt = u(-0.08, 0.05)
        self.vb_rx, self.vb_ry = u(19.0, 24.0), u(14.0, 18.0)
        # labels crossing the midline (horseshoe kidney, huge tumor) lie in front of the aorta
        # and the spine: push the spine back behind them
        xs = np.arange(fg_small.shape[2]) * cell[2]
        near_mid = np.abs(xs - self.x_mid) < 30.0
        if fg_small[:, :, near_mid].any():
            y_front = (np.nonzero(fg_small[:, :, near_mid].any(axis=(0, 2)))[0].max() + 1) * cell[1]
            self.y_vb0 = max(self.y_vb0, y_front + self.vb_ry + 30.0)
        self.vert_period, self.disc_h = u(33.0, 40.0), u(7.0, 10.0)
        self.vert_phase = u(0.0, self.vert_period)
        # --- body outline: lean dimensions plus fat that scales with BMI ---
        excess = max(self.bmi - 19.0, 0.0)
        self.t_sc = max(2.0, 2.0 * excess * u(0.75, 1.3))          # subcutaneous fat, mm
        self.visceral = 2.6 * excess * u(0.6, 1.4)                 # extra anterior depth, mm
        self.t_mus = u(8.0, 14.0)                                  # abdominal wall muscle
        self.post_lean = u(68.0, 80.0)                             # spine centre -> back skin
        self.ant_lean = u(95.0, 120.0)                             # spine centre -> front skin
        self.half_w_lean = u(125.0, 150.0)
        # the body must hold the labelled organs: widen it if the kidneys/tumors reach far out
        if self.fg_lo is not None:
            need_w = max(abs(self.fg_lo[2] - self.x_mid), abs(self.fg_hi[2] - self.x_mid)) + self.t_mus + 15.0
            self.half_w_lean = max(self.half_w_lean, need_w)
            self.ant_lean = max(self.ant_lean, self.y_vb0 - self.fg_lo[1] + self.t_mus + 25.0)
            self.post_lean = max(self.post_lean, self.fg_hi[1] - self.y_vb0 + self.t_mus + 15.0)
        self.body_wobble = _smooth_1d(rng)
        self.body_wobble_amp = u(0.02, 0.06)
        # --- organ placements (centres relative to the kidneys and the spine) ---
        L, xm, yv = LEFT, self.x_mid, self.y_vb0
        zR, zL = self.z_top_right, self.z_top_left
        self.liver = [  # (centre z,y,x), radii (z,y,x), in-plane rotation
            ((zR - u(10, 35), yv - u(20, 45), xm - L * u(55, 80)), (u(75, 100), u(75, 95), u(85, 110)), 0.0),
            ((zR - u(20, 50), yv - u(80, 100), xm + L * u(0, 30)), (u(40, 60), u(25, 35), u(50, 70)), 0.0),
        ]
        if rng.random() < 0.7:  # inferior tip of the right lobe, lateral to the right kidney
            self.liver.append(((zR + u(20, 60), yv + u(-20, 0), xm - L * u(95, 115)),
                               (u(40, 70), u(30, 45), u(22, 32)), 0.0))
        self.gallbladder = (((zR + u(10, 40), yv - u(70, 100), xm - L * u(40, 70)), (u(25, 40), u(12, 18), u(12, 18)), 0.3)
                            if rng.random() < 0.75 else None)
        self.spleen = ((zL - u(0, 25), yv + u(0, 20), xm + L * u(85, 105)), (u(45, 65), u(35, 50), u(20, 30)),
                       L * math.radians(u(20, 45)))
        self.stomach = ((zL - u(20, 50), yv - u(65, 95), xm + L * u(30, 60)), (u(45, 70), u(30, 45), u(35, 60)), 0.0)
        self.stomach_air = u(-0.3, 0.6)  # air-fluid level (fraction of the y radius, anterior is air)
        self.pancreas = ((zL + u(20, 45), yv - u(35, 50), xm + L * u(5, 30)), (u(10, 16), u(10, 14), u(55, 75)),
                         -L * math.radians(u(10, 25)))
        # splenic vein -> portal confluence (behind the pancreas neck) -> portal vein to the liver
        # hilum; superior mesenteric vein and artery run down from there, in front of the aorta
        zp = self.pancreas[0][0]
        conf = np.array([zp, yv - self.vb_ry - u(28, 38), xm - L * u(5, 20)])
        sc = self.spleen[0]
        self.mesenteric = [
            ((sc[0] + u(0, 20), sc[1] - u(15, 30), sc[2] - L * u(20, 35)), conf, u(4.0, 6.0), "portal"),
            (conf, (zR + u(0, 25), yv - u(40, 60), xm - L * u(40, 60)), u(6.0, 8.5), "portal"),
            (conf, conf + np.array([u(70, 120), -u(5, 25), L * u(-10, 10)]), u(4.0, 6.0), "portal"),
            ((zp + u(5, 15), yv - self.vb_ry - 14.0, xm + L * 14.0),
             (zp + u(80, 130), yv - self.vb_ry - u(35, 55), xm + L * u(0, 15)), u(3.0, 4.5), "aorta"),
        ]
        self.colon_r = (u(18, 28), u(14, 22), u(16, 24))  # ascending, descending, transverse radii
        self.colon_asc = (self.z_mid_right - u(0, 40), yv - u(10, 35), xm - L * u(95, 115))
        self.colon_desc = (zL - u(0, 20), yv + u(-10, 10), xm + L * u(95, 115))
        self.colon_trans_z = zc + u(-40, 20)
        self.colon_sag = u(10.0, 70.0)
        self.colon_trans_dy = u(25, 55)   # behind the anterior cavity wall
        self.colon_air = u(0.15, 0.7)
        self.bowel_frac = float(np.clip(0.7 - 0.012 * (self.bmi - 20.0), 0.35, 0.75)) * u(0.8, 1.1)
        self.oral_contrast = rng.random() < 0.3
        self.lung_base = min(zR, zL) + u(-15.0, 15.0)
        self.rib_end = zc + u(-10.0, 30.0)
        self.rib_period, self.rib_phase = u(22.0, 28.0), u(0.0, 28.0)
        self.iliac_top = self.z_bottom + u(35.0, 70.0)
        self.bladder_top = self.z_bottom + u(140.0, 190.0)
        self.aorta_r = u(9.0, 13.0)
        self.bifurcation = self.z_bottom + u(10.0, 45.0)
        self.psoas_top = min(zR, zL) - u(10.0, 30.0)
        # --- intensities (contrast-enhanced CT, late arterial / corticomedullary phase) ---
        self.hu = dict(
            air=-1000.0, lung=u(-880, -800), fat=u(-115, -85), muscle=u(38, 62),
            marrow=u(140, 280), cortical=u(500, 900), disc=u(65, 100), csf=u(0, 20), bile=u(-5, 20),
            urine=u(0, 20), fluid=u(5, 30), chyme=u(20, 60), stool=u(-60, 40), oral=u(180, 450),
            gastric=u(5, 40), rib=u(300, 600),
        )
        # Contrast phase. KiTS19 scans are mostly late arterial (corticomedullary): bright aorta,
        # cortex brighter than medulla, enhancing bowel mucosa, spleen and pancreas; some are
        # nephrographic: kidney homogeneous, vessels and organs closer to it. Either way the
        # kidney is never the brightest soft tissue: the aorta at least matches it.
        if rng.random() < 0.8:
            cortex = u(160, 250)
            self.hu.update(
                cortex=cortex, medulla=u(70, 140), aorta=max(cortex + u(-10, 80), u(200, 350)),
                liver=u(75, 115), spleen=u(110, 175), pancreas=u(100, 155), bowel_wall=u(90, 185),
                portal=u(130, 200), ivc=u(90, 170), renal_vein=u(150, 230))
        else:
            cortex = u(145, 205)
            self.hu.update(
                cortex=cortex, medulla=cortex + u(-25, 10), aorta=cortex + u(-15, 40),
                liver=u(105, 145), spleen=u(120, 165), pancreas=u(100, 140), bowel_wall=u(100, 165),
                portal=u(140, 200), ivc=u(130, 180), renal_vein=u(140, 200))
        self.spleen_mottle = u(5.0, 35.0)   # arciform arterial-phase enhancement of the spleen
        self.cortex_mm = u(4.0, 7.0)
        # KiTS19's kidney label is filled: it includes the renal sinus (fat, pelvis, vessels),
        # which is what lies deeper than cortex + medulla below the surface
        self.sinus_frac = u(0.55, 0.7)   # sinus: deeper than this fraction of the deepest kidney point
        self.tumor = _tumor_params(rng)
        # --- image formation ---
        self.noise_u = u(0.85, 1.15)
        self.noise_hu = noise_std_hu(self.bmi, float(self.sp[0])) * self.noise_u
        self.bias_mult, self.bias_add = u(0.02, 0.06), u(4.0, 15.0)
        self.psf_mm = (u(0.4, 0.7), u(0.5, 0.8), u(0.5, 0.8))
        # --- random fields over the whole volume (and a seed for per-slice noise) ---
        lo, hi = np.zeros(3), self.extent
        self.f_tex = random_field(rng, lo, hi, 9.0)        # tissue texture
        self.f_shape = random_field(rng, lo, hi, 40.0)     # organ outline deformation
        self.f_bowel = random_field(rng, lo, hi, 28.0)     # bowel loops
        self.f_cont = random_field(rng, lo, hi, 14.0)      # bowel contents
        self.f_bias = random_field(rng, lo, hi, 160.0)     # scanner bias field
        self.noise_seed = int(rng.integers(0, 2**63 - 1))
        self.contrast = 1.0   # enhancement factor of kidney and tumor (a bias mechanism; not drawn)
        if target is None:
            self.kidney_model = (_KidneyModel(labels, self.sp, self.fg_bbox, self, rng)
                                 if self.fg_bbox is not None else None)
        else:
            self._retarget(labels, target, rng)

    def _retarget(self, ref_labels, target, rng):
        """Paint `target` = (labels, spacing) with the anatomy laid out from `ref_labels`.

        Everything drawn so far (placements, intensities, random fields in mm) came from the
        reference; the kidney model is built from the target's labels on the target's grid, with
        its random fields over the reference's box, so it consumes exactly the same draws. The
        noise level follows the target's slice thickness (same per-case draw)."""
        t_labels, t_sp = target
        t_sp = np.asarray(t_sp, dtype=np.float64)
        field_box = None
        if self.fg_bbox is not None:
            lo, hi = _kidney_window(self.fg_bbox, self.sp, ref_labels.shape)
            field_box = (self.sp * np.asarray(lo), self.sp * np.asarray(hi))
        t_bbox = _find_kidneys(t_labels, t_sp)[1]
        self.shape = tuple(int(s) for s in t_labels.shape)
        self.sp = t_sp
        self.extent = self.sp * np.asarray(self.shape)
        self.noise_hu = noise_std_hu(self.bmi, float(self.sp[0])) * self.noise_u
        self.kidney_model = (_KidneyModel(t_labels, self.sp, t_bbox, self, rng, field_box=field_box)
                             if t_bbox is not None else None)

    # -- kidneys -> midline, spine level, organ reference heights --
    def _place_kidneys(self, kidneys):
        ext = self.extent
        if kidneys:
            self.fg_lo = np.min([k.lo for k in kidneys], axis=0)
            self.fg_hi = np.max([k.hi for k in kidneys], axis=0)
        else:
            self.fg_lo = self.fg_hi = None
        if len(kidneys) == 2:
            self.x_mid = 0.5 * (kidneys[0].c[2] + kidneys[1].c[2])
        elif len(kidneys) == 1:
            k = kidneys[0]
            if k.hi[2] - k.lo[2] > 140.0:   # one wide component: horseshoe kidney across the midline
                self.x_mid = k.c[2]
            else:                           # a single kidney: the midline is towards the image centre
                toward = 1.0 if ext[2] / 2 >= k.c[2] else -1.0
                self.x_mid = k.c[2] + toward * 75.0
        else:
            self.x_mid = ext[2] / 2
        for k in kidneys:
            k.side = LEFT if (k.c[2] - self.x_mid) * LEFT > 0 else -LEFT
            medial = -k.side * LEFT
            half_w = 0.5 * (k.hi[2] - k.lo[2])
            k.hilum = k.c + np.array([0.0, -8.0, medial * min(0.6 * half_w, 25.0)])
        self.kidneys = kidneys
        if kidneys:
            self.y_kid = float(np.mean([k.c[1] for k in kidneys]))
            self.z_ref = float(np.mean([k.c[0] for k in kidneys]))
            self.z_bottom = float(max(k.hi[0] for k in kidneys))
        else:
            self.y_kid, self.z_ref, self.z_bottom = ext[1] * 0.6, ext[0] * 0.5, ext[0] * 0.5 + 60.0
        by_side = {k.side: k for k in kidneys}
        default_top = self.z_ref - 55.0
        right, left = by_side.get(-LEFT), by_side.get(LEFT)
        self.z_top_right = right.lo[0] if right is not None else (left.lo[0] + 15.0 if left is not None else default_top)
        self.z_top_left = left.lo[0] if left is not None else (right.lo[0] - 15.0 if right is not None else default_top)
        self.z_mid_right = right.c[0] if right is not None else self.z_top_right + 55.0

    # -- z-dependent quantities --
    def y_vb(self, z):
        return self.y_vb0 + self.vb_tilt * (np.asarray(z) - self.z_ref)

    def body(self, z):
        """Half-axes of the skin, fat-inner and cavity outlines at heights z: (W, A_ant, A_post)."""
        s = 1.0 + self.body_wobble_amp * self.body_wobble(z)
        pelvis = 1.0 + np.clip((np.asarray(z) - self.z_bottom - 60.0) * 0.002, 0.0, 0.15)
        w_lean = self.half_w_lean * s * pelvis
        a_ant_lean = self.ant_lean * s
        a_post_lean = self.post_lean * np.ones_like(s)
        skin = (w_lean + 0.5 * self.visceral + 1.2 * self.t_sc,
                a_ant_lean + self.visceral + self.t_sc, a_post_lean + 0.8 * self.t_sc)
        fat_in = (skin[0] - 1.2 * self.t_sc, skin[1] - self.t_sc, skin[2] - 0.8 * self.t_sc)
        cav = (fat_in[0] - self.t_mus, fat_in[1] - self.t_mus, fat_in[2] - self.t_mus)
        return skin, fat_in, cav


def _tumor_params(rng) -> dict:
    """Tumor appearance: subtype-like mixtures (clear-cell: bright, heterogeneous, enhancing rim
    and necrosis; papillary: hypo-enhancing, homogeneous; chromophobe-like: intermediate with a
    central scar; cystic: fluid with an enhancing wall and septa)."""
    u = rng.uniform
    kind = rng.choice(["clear", "papillary", "chromophobe", "cystic"], p=[0.6, 0.2, 0.1, 0.1])
    # necrosis / hypo: fractions of the tumor at its smallest size; `grow` is added in proportion
    # to size (large tumors outgrow their blood supply and turn heterogeneous)
    if kind == "clear":
        p = dict(base=u(80, 170), amp=u(15, 35), rim=u(0, 45), necrosis=u(0.0, 0.2), grow=0.45)
    elif kind == "papillary":
        p = dict(base=u(35, 80), amp=u(6, 15), rim=u(0, 15), necrosis=u(0.0, 0.08), grow=0.25)
    elif kind == "chromophobe":
        p = dict(base=u(70, 125), amp=u(8, 18), rim=u(0, 20), necrosis=u(0.05, 0.2), grow=0.25)
    else:
        p = dict(base=u(0, 25), amp=u(3, 8), rim=u(60, 140), necrosis=0.0, grow=0.0)
    p.update(kind=str(kind), rim_mm=u(1.5, 4.0), necro_hu=u(5, 35), septa=kind == "cystic",
             hypo=0.0 if kind == "cystic" else u(0.0, 0.2), hypo_drop=u(25.0, 60.0))
    return p


def _kidney_window(bbox, sp, shape):
    """Index bounds [lo, hi) of the kidney model's region: the label bounding box plus 15 mm."""
    margin = [int(math.ceil(15.0 / s)) for s in sp]
    lo = [max(0, b[0] - m) for b, m in zip(bbox, margin)]
    hi = [min(n, b[1] + m) for b, n, m in zip(bbox, shape, margin)]
    return lo, hi


class _KidneyModel:
    """Coarse (~1.5 mm) fields over the labelled region: depth below the kidney surface, depth
    inside the tumor, renal-sinus score, and texture / necrosis noise.

    field_box: (lo_mm, hi_mm) of the random fields; default the region itself (a biased render
    passes its twin's box, so both draw the same fields)."""

    def __init__(self, labels, sp, bbox, anat: _Anatomy, rng, field_box=None):
        lo, hi = _kidney_window(bbox, sp, labels.shape)
        f = [max(1, int(math.floor(1.5 / s))) for s in sp]
        sub = np.asarray(labels[lo[0]:hi[0]:f[0], lo[1]:hi[1]:f[1], lo[2]:hi[2]:f[2]])
        cell = sp * np.asarray(f)
        origin = sp * np.asarray(lo)
        self.lo_idx, self.hi_idx = lo, hi
        fg = sub > 0
        kid = sub == 1
        tum = sub == 2
        # renal sinus: background pocket enclosed by kidney tissue (the hilum), found as the
        # region where a smoothed kidney mask is still high although the label is 0
        sk = ndimage.gaussian_filter(kid.astype(np.float32), sigma=5.0 / cell)
        sinus = (sk > 0.5) & ~fg
        depth = ndimage.distance_transform_edt(fg | sinus, sampling=cell).astype(np.float32)
        tdepth = (ndimage.distance_transform_edt(tum, sampling=cell).astype(np.float32)
                  if tum.any() else np.zeros_like(depth))
        self.depth = CoarseField(depth, origin, cell)
        self.sinus_depth = max(8.0, anat.sinus_frac * float(depth[kid].max())) if kid.any() else np.inf
        self.tdepth = CoarseField(tdepth, origin, cell)
        self.sinus = CoarseField(sk * (~fg), origin, cell)
        f_lo, f_hi = field_box if field_box is not None else (origin, sp * np.asarray(hi))
        self.f_col = random_field(rng, f_lo, f_hi, 10.0)   # columns of Bertin / pyramids
        self.f_ttex = random_field(rng, f_lo, f_hi, 5.0)   # tumor texture
        self.f_nec = random_field(rng, f_lo, f_hi, 14.0)   # necrosis blobs
        self.f_sin = random_field(rng, f_lo, f_hi, 6.0)    # sinus content
        # necrosis and hypo-enhancing parts: the worst-perfused (deep + noise-high) fractions
        # of the tumor, growing with its size
        tp = anat.tumor
        maxdepth = float(tdepth.max())
        size = float(np.clip((maxdepth - 8.0) / 30.0, 0.0, 1.0))
        self.tumor_amp = tp["amp"] * (1.0 + 0.8 * size)
        nec = min(tp["necrosis"] + tp["grow"] * size, 0.45)
        hypo = 0.0 if tp["kind"] == "cystic" else min(tp["hypo"] + 0.25 * size, 0.35)
        # hypo-enhancing tissue stays solid (>= ~30 HU), above the fluid-like necrosis
        self.hypo_hu = max(tp["base"] - tp["hypo_drop"], tp["necro_hu"] + 15.0, 30.0)
        self.depth_norm = max(maxdepth, 1.0)
        self.nec_thr = self.hypo_thr = np.inf
        if tum.any() and nec + hypo > 0:
            score = (self.f_nec.sample(origin[0] + cell[0] * np.arange(sub.shape[0]),
                                       origin[1] + cell[1] * np.arange(sub.shape[1]),
                                       origin[2] + cell[2] * np.arange(sub.shape[2]))[tum]
                     + 2.0 * tdepth[tum] / self.depth_norm)
            if nec > 0:
                self.nec_thr = float(np.quantile(score, 1.0 - nec))
            if hypo > 0:
                self.hypo_thr = float(np.quantile(score, 1.0 - nec - hypo))
        self.anat = anat

    def paint(self, val, lab, z_mm, y_mm, x_mm, z_idx0, tex):
        """Paint kidney, tumor and sinus into the slab (val, lab: slab arrays; z_idx0: first slice)."""
        n = val.shape[0]
        z0 = max(self.lo_idx[0] - z_idx0, 0)
        z1 = min(self.hi_idx[0] - z_idx0, n)
        if z1 <= z0:
            return
        zs = slice(z0, z1)
        ys = slice(self.lo_idx[1], self.hi_idx[1])
        xs = slice(self.lo_idx[2], self.hi_idx[2])
        lw = lab[zs, ys, xs]
        kid = lw == 1
        tum = lw == 2
        zc, yc, xc = z_mm[zs], y_mm[ys], x_mm[xs]
        v = val[zs, ys, xs]
        t = tex[zs, ys, xs]
        hu = self.anat.hu
        ssub = self.f_sin.sample(zc, yc, xc)
        # holes in the label at the hilum (sinus outside the label): fat with the collecting
        # system (urine) in its deepest part
        s = self.sinus.sample(zc, yc, xc)
        sinus = (s > 0.5) & (lw == 0)
        if sinus.any():
            sval = np.where((s > 0.7) & (ssub > -0.2), hu["urine"], hu["fat"] + 25.0) + 6.0 * t
            np.copyto(v, sval, where=sinus)
        if kid.any():
            d = self.depth.sample(zc, yc, xc)
            col = self.f_col.sample(zc, yc, xc)
            thick = self.anat.cortex_mm * (1.0 + 0.45 * col)  # cortex dips in as columns of Bertin
            w = np.clip((thick - d) / 2.0 + 0.5, 0.0, 1.0)
            kval = hu["medulla"] + (hu["cortex"] - hu["medulla"]) * w + 8.0 * t
            if self.anat.contrast != 1.0:   # parenchyma enhancement x factor (the sinus below is not)
                kval = UNENHANCED_HU + self.anat.contrast * (kval - UNENHANCED_HU)
            # KiTS19's kidney label includes the renal sinus: deeper than cortex + medulla lies
            # fat, with the collecting system (urine) and hilar vessels (bright)
            deep = d > self.sinus_depth + 3.0 * col
            sval = np.where(ssub > 0.6, hu["urine"], np.where(ssub < -1.0, hu["renal_vein"], hu["fat"] + 30.0))
            kval = np.where(deep, sval + 6.0 * t, kval)
            np.copyto(v, kval, where=kid)
        if tum.any():
            tp = self.anat.tumor
            td = self.tdepth.sample(zc, yc, xc)
            tt = self.f_ttex.sample(zc, yc, xc)
            tval = tp["base"] + self.tumor_amp * tt
            tval += tp["rim"] * np.clip((tp["rim_mm"] - td) / 1.5 + 0.5, 0.0, 1.0)
            if tp["septa"]:
                tval = np.where(np.abs(tt) < 0.12, tp["base"] + tp["rim"], tval)
            if np.isfinite(self.hypo_thr):
                score = self.f_nec.sample(zc, yc, xc) + 2.0 * td / self.depth_norm
                tval = np.where(score > self.hypo_thr, tval + (self.hypo_hu - tp["base"]), tval)
                tval = np.where(score > self.nec_thr, tp["necro_hu"] + 6.0 * tt, tval)
            if self.anat.contrast != 1.0:
                tval = UNENHANCED_HU + self.anat.contrast * (tval - UNENHANCED_HU)
            np.copyto(v, tval, where=tum)


# ---------------------------------------------------------------------------------------------
# Painting one slab
# ---------------------------------------------------------------------------------------------
F32 = np.float32


def _f32(a):
    """Per-slice parameters as float32 (n, 1, 1) so slab arithmetic stays in float32."""
    return np.asarray(a, dtype=F32)[:, None, None]


class _Painter:
    """A slab of HU values with its mm coordinates (float32); paints masks inside windows."""

    def __init__(self, an: _Anatomy, lab: np.ndarray, i0: int):
        n, ny, nx = lab.shape
        sz, sy, sx = an.sp
        self.z = ((i0 + np.arange(n)) * sz).astype(F32)
        self.y = (np.arange(ny) * sy).astype(F32)
        self.x = (np.arange(nx) * sx).astype(F32)
        self.val = np.full(lab.shape, an.hu["air"], dtype=F32)

    def win(self, zlo, zhi, ylo, yhi, xlo, xhi):
        """Index slices of the voxels whose centres fall in the mm box; None when empty."""
        out = []
        for c, lo, hi in ((self.z, zlo, zhi), (self.y, ylo, yhi), (self.x, xlo, xhi)):
            a = int(np.searchsorted(c, lo, "left"))
            b = int(np.searchsorted(c, hi, "right"))
            if b <= a:
                return None
            out.append(slice(a, b))
        return tuple(out)

    def coords(self, w):
        return (self.z[w[0]][:, None, None], self.y[w[1]][None, :, None], self.x[w[2]][None, None, :])

    def paint(self, w, mask, value):
        np.copyto(self.val[w], value, where=mask)


def _ellipsoid(p: _Painter, shp, organ, deform=0.12):
    """Window and mask of a rotated (about z), noise-deformed ellipsoid: ((c), (r), angle)."""
    c, r, rot = organ
    reach = max(r) * (1.0 + deform * 3.0)
    w = p.win(c[0] - reach, c[0] + reach, c[1] - reach, c[1] + reach, c[2] - reach, c[2] + reach)
    if w is None:
        return None, None
    zz, yy, xx = p.coords(w)
    dy, dx = yy - F32(c[1]), xx - F32(c[2])
    if rot:
        cs, sn = math.cos(rot), math.sin(rot)
        dx, dy = cs * dx + sn * dy, -sn * dx + cs * dy
    q = ((zz - F32(c[0])) / r[0]) ** 2 + (dy / r[1]) ** 2 + (dx / r[2]) ** 2
    q -= deform * shp[w]
    return w, q < 1.0


def _tube(p: _Painter, z_lo, z_hi, cy, cx, ry, rx=None):
    """Window and normalised radius^2 of a tube along z (per-slice centres allowed)."""
    rx = ry if rx is None else rx
    cy_a, cx_a = np.atleast_1d(cy), np.atleast_1d(cx)
    w = p.win(z_lo, z_hi, cy_a.min() - ry, cy_a.max() + ry, cx_a.min() - rx, cx_a.max() + rx)
    if w is None:
        return None, None
    _, yy, xx = p.coords(w)
    cy = _f32(cy_a[w[0]]) if cy_a.size > 1 else F32(cy)
    cx = _f32(cx_a[w[0]]) if cx_a.size > 1 else F32(cx)
    return w, ((yy - cy) / F32(ry)) ** 2 + ((xx - cx) / F32(rx)) ** 2


def _capsule(p: _Painter, a, b, r):
    """Window and mask of a cylinder of radius r between 3-D points a and b (mm)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
    w = p.win(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])
    if w is None:
        return None, None
    zz, yy, xx = p.coords(w)
    zz, yy, xx = zz - F32(a[0]), yy - F32(a[1]), xx - F32(a[2])
    d = (b - a).astype(F32)
    dd = max(float(d @ d), 1e-9)
    t = np.clip((zz * d[0] + yy * d[1] + xx * d[2]) / F32(dd), 0.0, 1.0)
    dist2 = (zz - t * d[0]) ** 2 + (yy - t * d[1]) ** 2 + (xx - t * d[2]) ** 2
    return w, dist2 < r * r


_FULL = (slice(None),) * 3


@dataclass(eq=False)
class _Slab:
    """Per-slab state shared by the painters, built once per slab (coordinates in mm, float32)."""
    an: _Anatomy
    lab: np.ndarray
    i0: int                 # index of the slab's first slice
    p: _Painter
    tex: np.ndarray         # tissue texture (unit std)
    shp: np.ndarray         # organ outline deformation (unit std)
    yv: np.ndarray          # per-slice y of the vertebral body centre (float64)
    vr: np.ndarray          # per-slice vertebral body half-axes in x and y (float64)
    vry: np.ndarray
    skin: tuple             # per-slice (half width, anterior, posterior) half-axes of the skin,
    fat_in: tuple           # the inner border of the subcutaneous fat
    cav: tuple              # and the abdominal cavity (inside the muscle wall)
    dx2: np.ndarray         # (x - midline)^2, (1, 1, X)
    dy: np.ndarray          # y from the body's widest line, (n, Y, 1)
    body: np.ndarray = None     # inside the skin
    cavity: np.ndarray = None   # inside the muscle wall

    @classmethod
    def build(cls, an: _Anatomy, lab: np.ndarray, i0: int) -> "_Slab":
        """Sample the shared fields and outline the body for slices i0 .. i0 + len(lab)."""
        p = _Painter(an, lab, i0)
        z, y, x = p.z, p.y, p.x
        tex = an.f_tex.sample(z, y, x)
        shp = an.f_shape.sample(z, y, x)
        yv = an.y_vb(z).astype(np.float64)
        zr = np.clip(z.astype(np.float64) - an.z_ref, -60, 120)
        skin, fat_in, cav = an.body(z)
        dx2 = ((x - F32(an.x_mid)) ** 2)[None, None, :]
        dy = y[None, :, None] - (_f32(yv) - 15.0)   # widest part of the body: just anterior of the spine
        s = cls(an, lab, i0, p, tex, shp, yv, an.vb_rx + 0.04 * zr, an.vb_ry + 0.03 * zr,
                skin, fat_in, cav, dx2, dy)
        q = s.outline(skin)
        q -= 0.04 * shp                      # an irregular skin line
        s.body = q < 1.0
        del q
        s.cavity = s.outline(cav) < 1.0
        return s

    def outline(self, axes):
        """Normalised radius^2 of a body outline (per-slice half-axes: width, anterior, posterior)."""
        wdt, a_ant, a_post = (_f32(a) for a in axes)
        return self.dx2 / wdt ** 2 + (self.dy / np.where(self.dy < 0, a_ant, a_post)) ** 2


class _BowelWindow:
    """Bowel-loop and bowel-content fields, sampled only in the box where bowel can lie."""

    def __init__(self, s: _Slab, w):
        z, y, x = s.p.z, s.p.y, s.p.x
        self.w = w
        self.bowel = s.an.f_bowel.sample(z[w[0]], y[w[1]], x[w[2]])
        self.cont = s.an.f_cont.sample(z[w[0]], y[w[1]], x[w[2]])
        self.tex, self.cav = s.tex[w], s.cavity[w]

    @classmethod
    def of(cls, s: _Slab) -> "_BowelWindow | None":
        """The anterior cavity down to just behind the spine front; None when off the slab."""
        cav_front = float(np.min(s.yv - 15.0 - np.asarray(s.cav[1])))      # most anterior cavity y
        w = s.p.win(-np.inf, np.inf, cav_front, float(np.max(s.yv)) + 40.0, -np.inf, np.inf)
        return None if w is None else cls(s, w)

    def sub(self, w):
        """A window clipped to this one: (in the slab's frame, in this window's frame), or Nones."""
        bw = self.w
        w = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(w, bw))
        if any(s.stop <= s.start for s in w):
            return None, None
        return w, tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(w, bw))


def _paint_body(s: _Slab):
    """Subcutaneous fat, the abdominal muscle wall and the visceral fat of the cavity."""
    hu, p, tex = s.an.hu, s.p, s.tex
    p.paint(_FULL, s.body, hu["fat"] + 6.0 * tex)
    wall = s.outline(s.fat_in) < 1.0
    wall &= s.body
    p.paint(_FULL, wall, hu["muscle"] + 5.0 * tex)
    del wall
    p.paint(_FULL, s.cavity, hu["fat"] + 10.0 + 10.0 * tex)
    p.paint(_FULL, s.cavity & (tex > 2.3), 0.8 * hu["renal_vein"])  # small mesenteric vessels


def _paint_small_bowel(s: _Slab, bw: _BowelWindow):
    """Small-bowel loops: anterior cavity below the liver / stomach, walls enhance."""
    an, p, hu = s.an, s.p, s.an.hu
    z_top = min(an.z_top_right, an.z_top_left) - 30.0
    below = p.win(z_top, np.inf, -np.inf, np.inf, -np.inf, np.inf)
    w, wb = bw.sub(below) if below is not None else (None, None)
    if w is None:
        return
    thr = float(_ndtri(1.0 - an.bowel_frac))
    b, c = bw.bowel[wb], bw.cont[wb]
    _, yy, _ = p.coords(w)
    loops = (b > thr) & bw.cav[wb] & (yy < _f32(s.yv[w[0]]) - 20.0)
    lumen = np.where(c > 1.0, hu["air"] + 60.0 * c,
                     np.where(c < -0.3, hu["fluid"], hu["chyme"] + 15.0 * bw.tex[wb]))
    if an.oral_contrast:
        lumen = np.where(c < -0.9, hu["oral"], lumen)
    lumen = np.where(b < thr + 0.25, hu["bowel_wall"] + 10.0 * bw.tex[wb], lumen)
    p.paint(w, loops, lumen)


def _colon_segments(s: _Slab):
    """Window, normalised radius^2 and radius of each colon segment: ascending (right),
    descending (left), transverse (anterior); (None, None, r) for a segment off the slab."""
    an, p, z = s.an, s.p, s.p.z
    r_asc, r_desc, r_tr = an.colon_r
    za, ya, xa = an.colon_asc
    yield *_tube(p, za, np.inf, ya + 6.0 * np.sin(z / 40.0), xa, r_asc), r_asc
    zd, yd, xd = an.colon_desc
    yield *_tube(p, zd, np.inf, yd, xd + 6.0 * np.sin(z / 50.0), r_desc), r_desc
    # the transverse colon hangs between the flexures: lowest and most anterior mid-way
    ztc, sag = an.colon_trans_z, an.colon_sag
    w = p.win(ztc - r_tr, ztc + sag + r_tr, -np.inf, np.inf, min(xa, xd), max(xa, xd))
    if w is not None:
        zz, yy, xx = p.coords(w)
        bend = np.cos(np.pi * (xx - F32(0.5 * (xa + xd))) / F32(abs(xd - xa)))   # 1 mid-way, 0 at flexures
        ytc = _f32(s.yv[w[0]] - 15.0 - np.asarray(s.cav[1])[w[0]] + an.colon_trans_dy) - 10.0 * bend
        yield w, ((zz - F32(ztc) - sag * bend) / r_tr) ** 2 + ((yy - ytc) / r_tr) ** 2, r_tr


def _paint_colon(s: _Slab, bw: _BowelWindow):
    """The colon: stool and gas inside an enhancing wall."""
    p, hu = s.p, s.an.hu
    air_thr = float(_ndtri(1.0 - s.an.colon_air))
    for w, q, r in _colon_segments(s):
        if w is None:
            continue
        w2, wb = bw.sub(w)
        if w2 is None:
            continue
        q = q[tuple(slice(a.start - o.start, a.stop - o.start) for a, o in zip(w2, w))]
        c = bw.cont[wb]
        lumen = np.where(c > air_thr, hu["air"] + 60.0 * c, hu["stool"] + 30.0 * bw.tex[wb])
        lumen = np.where(q > (1.0 - 3.0 / r) ** 2, hu["bowel_wall"], lumen)
        q = q - 0.08 * s.shp[w2]
        p.paint(w2, (q < 1.0) & bw.cav[wb], lumen)


def _paint_solid_organs(s: _Slab):
    """Liver (with portal branches), gallbladder and spleen."""
    an, p, hu, tex, cavity = s.an, s.p, s.an.hu, s.tex, s.cavity
    for organ in an.liver:
        w, m = _ellipsoid(p, s.shp, organ)
        if w is not None:
            t = tex[w]
            lv = np.where(np.abs(t - 1.2) < 0.12, hu["portal"], hu["liver"] + 7.0 * t)  # portal branches
            p.paint(w, m & cavity[w], lv)
    if an.gallbladder is not None:
        w, m = _ellipsoid(p, s.shp, an.gallbladder, deform=0.05)
        if w is not None:
            p.paint(w, m & cavity[w], hu["bile"] + 4.0 * tex[w])
    w, m = _ellipsoid(p, s.shp, an.spleen)
    if w is not None:
        p.paint(w, m & cavity[w], hu["spleen"] + an.spleen_mottle * tex[w])


def _paint_stomach(s: _Slab):
    """The stomach: gas anterior, gastric fluid posterior, an enhancing wall."""
    an, p, hu, tex, shp = s.an, s.p, s.an.hu, s.tex, s.shp
    w, m = _ellipsoid(p, shp, an.stomach, deform=0.15)
    if w is None:
        return
    c0, r0, _ = an.stomach
    zz, yy, xx = p.coords(w)
    rr = ((zz - F32(c0[0])) / r0[0]) ** 2 + ((yy - F32(c0[1])) / r0[1]) ** 2 + ((xx - F32(c0[2])) / r0[2]) ** 2
    air = yy < F32(c0[1] - an.stomach_air * r0[1])     # supine: gas rises anteriorly
    lumen = np.where(air, hu["air"] + 30.0 * tex[w], hu["gastric"] + 12.0 * tex[w])
    lumen = np.where(rr - 0.12 * shp[w] > 0.8, hu["bowel_wall"] + 8.0 * tex[w], lumen)
    p.paint(w, m & s.cavity[w], lumen)


def _paint_pancreas_and_mesenteric_vessels(s: _Slab):
    """The pancreas, then the splenic / portal / mesenteric veins and the SMA around it."""
    an, p, hu, cavity = s.an, s.p, s.an.hu, s.cavity
    w, m = _ellipsoid(p, s.shp, an.pancreas, deform=0.2)
    if w is not None:
        p.paint(w, m & cavity[w], hu["pancreas"] + 12.0 * s.tex[w])
    for a, b, r, kind in an.mesenteric:
        w, m = _capsule(p, a, b, r)
        if w is not None:
            p.paint(w, m & cavity[w], hu[kind])


def _paint_bladder(s: _Slab):
    """The urinary bladder, widening from its dome downwards."""
    an, p = s.an, s.p
    if not an.bladder_top < p.z[-1]:
        return
    w, q = _tube(p, an.bladder_top, np.inf, float(an.y_vb(an.bladder_top)) - 70.0, an.x_mid, 45.0, 55.0)
    if w is not None:
        zz = p.coords(w)[0]
        grow = np.clip((zz - F32(an.bladder_top)) / 40.0, 0.0, 1.0)
        p.paint(w, (q < grow) & s.cavity[w], an.hu["urine"] + 3.0 * s.tex[w])


def _paint_lung_bases(s: _Slab):
    """Lung bases (posterior costophrenic recesses) with a diaphragm rim."""
    an, p, hu, yv, xm, z = s.an, s.p, s.an.hu, s.yv, s.an.x_mid, s.p.z
    if not z[0] < an.lung_base:
        return
    d = np.clip(an.lung_base - z.astype(np.float64), 0.0, None)
    ry, rx = np.maximum(np.minimum(65.0, 7.0 * np.sqrt(d)), 1e-3), np.maximum(np.minimum(55.0, 6.0 * np.sqrt(d)), 1e-3)
    for side in (-1.0, 1.0):
        w = p.win(-np.inf, an.lung_base, float(yv.min()) - 60.0, float(yv.max()) + 95.0,
                  xm + side * 80.0 - 65.0, xm + side * 80.0 + 65.0)
        if w is None:
            continue
        _, yy, xx = p.coords(w)
        k = w[0]
        ddy, ddx = yy - _f32(yv[k] + 20.0), xx - F32(xm + side * 80.0)
        rim = (ddy / _f32(ry[k] + 4.0)) ** 2 + (ddx / _f32(rx[k] + 4.0)) ** 2
        p.paint(w, (rim < 1.0) & s.cavity[w], hu["muscle"])
        qq = (ddy / _f32(ry[k])) ** 2 + (ddx / _f32(rx[k])) ** 2 - 0.1 * s.shp[w]
        p.paint(w, (qq < 1.0) & s.cavity[w], hu["lung"] + 25.0 * s.tex[w])


def _paint_back_muscles(s: _Slab):
    """Retroperitoneal and back muscles: psoas, quadratus lumborum, erector spinae."""
    an, p, yv, xm, z = s.an, s.p, s.yv, s.an.x_mid, s.p.z
    muscle, tex, shp, body = s.an.hu["muscle"], s.tex, s.shp, s.body
    for side in (-1.0, 1.0):
        r_ps = np.clip(4.0 + 0.17 * (z - an.psoas_top), 0.0, 26.0)
        if r_ps.max() > 0:
            w = p.win(an.psoas_top, np.inf, float(yv.min()) - 30.0, float(yv.max()) + 30.0,
                      xm + side * 15.0 - 60.0, xm + side * 15.0 + 60.0)
            if w is not None:
                _, yy, xx = p.coords(w)
                k = w[0]
                rr = _f32(np.maximum(r_ps[k], 1e-3))
                m = ((yy - _f32(yv[k] + 4.0)) / (0.85 * rr)) ** 2 + \
                    ((xx - _f32(xm + side * (s.vr[k] + 0.9 * r_ps[k]))) / rr) ** 2 - 0.1 * shp[w]
                p.paint(w, (m < 1.0) & body[w], muscle + 5.0 * tex[w])
        w, q = _tube(p, an.psoas_top + 10.0, an.iliac_top + 20.0, yv + 30.0, xm + side * 62.0, 12.0, 18.0)
        if w is not None:
            p.paint(w, (q - 0.15 * shp[w] < 1.0) & body[w], muscle + 5.0 * tex[w])
        w, q = _tube(p, -np.inf, np.inf, yv + 50.0, xm + side * 30.0, 24.0, 25.0)
        if w is not None:
            p.paint(w, (q - 0.1 * shp[w] < 1.0) & body[w], muscle + 5.0 * tex[w])


def _paint_great_vessels(s: _Slab):
    """Aorta (anterior-left of the spine), IVC (anterior-right) and, below the bifurcation, iliacs."""
    an, p, hu, yv, xm, L, z = s.an, s.p, s.an.hu, s.yv, s.an.x_mid, LEFT, s.p.z
    ya = yv - an.vb_ry - 14.0
    w, q = _tube(p, -np.inf, an.bifurcation, ya, xm + L * 14.0, an.aorta_r)
    if w is not None:
        p.paint(w, q < 1.0, hu["aorta"] + 6.0 * s.tex[w])
    w, q = _tube(p, -np.inf, an.bifurcation + 10.0, yv - an.vb_ry - 8.0, xm - L * (an.vb_rx - 2.0), 9.0, 13.0)
    if w is not None:
        p.paint(w, q < 1.0, hu["ivc"] + 8.0 * s.tex[w])
    if not z[-1] > an.bifurcation:
        return
    off = np.clip(z.astype(np.float64) - an.bifurcation, 0.0, None)
    for side in (-1.0, 1.0):
        w, q = _tube(p, an.bifurcation, np.inf, ya + 0.25 * off, xm + L * 14.0 + side * (4.0 + 0.45 * off),
                     0.62 * an.aorta_r)
        if w is not None:
            p.paint(w, q < 1.0, hu["aorta"])
        w, q = _tube(p, an.bifurcation + 10.0, np.inf, ya + 8.0 + 0.3 * off, xm + side * (2.0 + 0.42 * off), 7.0)
        if w is not None:
            p.paint(w, q < 1.0, hu["ivc"])


def _paint_renal_vessels(s: _Slab):
    """Renal arteries from the aorta, veins to the IVC (the left vein crosses in front of the aorta)."""
    an, p, hu, xm, L = s.an, s.p, s.an.hu, s.an.x_mid, LEFT
    for k in an.kidneys:
        zh = k.hilum[0]
        yvh = float(an.y_vb(zh))
        aorta_pt = (zh - 5.0, yvh - an.vb_ry - 14.0, xm + L * 14.0)
        ivc_pt = (zh, yvh - an.vb_ry - 8.0, xm - L * (an.vb_rx - 2.0))
        w, m = _capsule(p, aorta_pt, k.hilum + np.array([-5.0, 3.0, 0.0]), 3.0)
        if w is not None:
            p.paint(w, m, hu["aorta"])
        if k.side == LEFT:
            front = (zh, yvh - an.vb_ry - 14.0 - an.aorta_r - 5.0, xm + L * 14.0)
            segs = [(k.hilum, front), (front, ivc_pt)]
        else:
            segs = [(k.hilum, ivc_pt)]
        for a, b in segs:
            w, m = _capsule(p, a, b, 5.0)
            if w is not None:
                p.paint(w, m, hu["renal_vein"])


def _vertebra_phase(s: _Slab):
    """Per slice: mm below the top of the current vertebra's disc (float64)."""
    return np.mod(s.p.z.astype(np.float64) - s.an.vert_phase, s.an.vert_period)


def _paint_vertebral_bodies(s: _Slab):
    """Vertebral bodies (cortical shell around marrow) and the discs between them."""
    an, p, hu, yv, xm, vr, vry = s.an, s.p, s.an.hu, s.yv, s.an.x_mid, s.vr, s.vry
    disc = _vertebra_phase(s) < an.disc_h
    w = p.win(-np.inf, np.inf, float(yv.min() - vry.max()), float(yv.max() + vry.max()),
              xm - float(vr.max()), xm + float(vr.max()))
    if w is None:
        return
    _, yy, xx = p.coords(w)
    k = w[0]
    q = ((yy - _f32(yv[k])) / _f32(vry[k])) ** 2 + ((xx - F32(xm)) / _f32(vr[k])) ** 2
    shell = _f32((1.0 - 2.5 / vr[k]) ** 2)
    v = np.where(q > shell, hu["cortical"], hu["marrow"] + 25.0 * s.tex[w])
    v = np.where(disc[k][:, None, None], hu["disc"] + 5.0 * s.tex[w], v)
    p.paint(w, q < 1.0, v)


def _paint_vertebral_arches(s: _Slab):
    """Posterior arches, spinous and transverse processes, and the spinal canal (CSF)."""
    an, p, hu, xm = s.an, s.p, s.an.hu, s.an.x_mid
    u_phase = _vertebra_phase(s)
    arch = (u_phase > an.disc_h + 2.0) & (u_phase < an.vert_period - 5.0)
    transverse = (u_phase > an.disc_h + 7.0) & (u_phase < an.disc_h + 15.0)
    canal_y = s.yv + s.vry + 11.0
    w = p.win(-np.inf, np.inf, float(canal_y.min()) - 16.0, float(canal_y.max()) + 55.0, xm - 45.0, xm + 45.0)
    if w is None:
        return
    _, yy, xx = p.coords(w)
    k = w[0]
    cy = _f32(canal_y[k])
    r2 = (yy - cy) ** 2 + (xx - F32(xm)) ** 2
    a3 = arch[k][:, None, None]
    adx = np.abs(xx - F32(xm))
    bone = a3 & (r2 < 15.0 ** 2)
    bone |= a3 & (yy > cy) & (yy < cy + 45.0) & (adx < 4.0)                          # spinous process
    bone |= transverse[k][:, None, None] & (np.abs(yy - cy + 4.0) < 4.0) & (adx > 10.0) & (adx < 42.0)
    p.paint(w, bone, 0.5 * (hu["cortical"] + hu["marrow"]) + 40.0 * s.tex[w])
    p.paint(w, r2 < 9.0 ** 2, hu["csf"])


def _paint_ribs(s: _Slab):
    """Ribs in the upper slices, along the posterolateral body wall."""
    an, p, yv, xm, fat_in = s.an, s.p, s.yv, s.an.x_mid, s.fat_in
    if not p.z[0] < an.rib_end:
        return
    w = p.win(-np.inf, an.rib_end, -np.inf, np.inf, -np.inf, np.inf)
    zz, yy, xx = p.coords(w)
    k = w[0]
    wdt = _f32(np.asarray(fat_in[0])[k])
    ddy = yy - _f32(yv[k] - 15.0)
    qq = (xx - F32(xm)) ** 2 / wdt ** 2 + ddy ** 2 / np.where(ddy < 0, _f32(np.asarray(fat_in[1])[k]),
                                                             _f32(np.asarray(fat_in[2])[k])) ** 2
    ring = (qq < 1.0) & (qq > (1.0 - 9.0 / wdt) ** 2) & (ddy > -0.3 * _f32(np.asarray(fat_in[1])[k]))
    level = np.mod(zz - F32(an.rib_phase) - 0.3 * np.abs(xx - F32(xm)) + 0.2 * ddy, F32(an.rib_period)) < 9.0
    p.paint(w, ring & level & (np.abs(xx - F32(xm)) > 35.0) & s.body[w], an.hu["rib"] + 40.0 * s.tex[w])


def _paint_iliac_wings(s: _Slab):
    """Iliac wings in the lower slices, growing in from their crests."""
    an, p, xm, z = s.an, s.p, s.an.x_mid, s.p.z
    if not z[-1] > an.iliac_top:
        return
    grow = np.clip((z - F32(an.iliac_top)) / 50.0, 0.0, 1.0)
    for side in (-1.0, 1.0):
        w, q = _tube(p, an.iliac_top, np.inf, s.yv + 10.0, xm + side * 85.0, 50.0, 30.0)
        if w is None:
            continue
        g = grow[w[0]][:, None, None]
        xx = p.coords(w)[2]
        wing = (q < g) & (q > 0.55 * g) & ((xx - F32(xm)) * side > 60.0)
        p.paint(w, wing & s.body[w], an.hu["rib"] + 60.0 * s.tex[w])


def _paint_labelled_kidneys(s: _Slab):
    """The labelled kidneys and tumors (cortex, medulla, sinus, tumor) from the real label map."""
    if s.an.kidney_model is not None:
        s.an.kidney_model.paint(s.p.val, s.lab, s.p.z, s.p.y, s.p.x, s.i0, s.tex)


def _render_slab(an: _Anatomy, lab: np.ndarray, i0: int) -> np.ndarray:
    """Noise-free, unblurred HU for slices i0 .. i0 + len(lab) (painted back to front)."""
    # painting order matters: each painter overwrites what it covers, the labels go last
    s = _Slab.build(an, lab, i0)
    _paint_body(s)
    bw = _BowelWindow.of(s)
    if bw is not None:
        _paint_small_bowel(s, bw)
        _paint_colon(s, bw)
        del bw      # slab-sized fields: free them before the rest is painted
    _paint_solid_organs(s)
    _paint_stomach(s)
    _paint_pancreas_and_mesenteric_vessels(s)
    _paint_bladder(s)
    _paint_lung_bases(s)
    _paint_back_muscles(s)
    _paint_great_vessels(s)
    _paint_renal_vessels(s)
    _paint_vertebral_bodies(s)
    _paint_vertebral_arches(s)
    _paint_ribs(s)
    _paint_iliac_wings(s)
    _paint_labelled_kidneys(s)
    return s.p.val


def _ndtri(q):
    from scipy.special import ndtri
    return ndtri(q)


# ---------------------------------------------------------------------------------------------
# Image formation: noise, point-spread blur, bias field
# ---------------------------------------------------------------------------------------------
TRUNCATE = 3.0


def _gauss_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    r = int(truncate * sigma + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur_axis(src: np.ndarray, kern: np.ndarray, axis: int, dst: np.ndarray) -> None:
    """dst = src correlated with a symmetric kernel along axis (edge values repeated), as a few
    whole-array shifted adds: much faster than a line-by-line filter along the strided axes."""
    r = len(kern) // 2
    n = src.shape[axis]

    def sl(a, b):
        idx = [slice(None)] * src.ndim
        idx[axis] = slice(a, b)
        return tuple(idx)

    np.multiply(src, kern[r], out=dst)
    for s in range(1, r + 1):
        k = kern[r + s]
        if s < n:
            dst[sl(0, n - s)] += k * src[sl(s, n)]
            dst[sl(s, n)] += k * src[sl(0, n - s)]
        m = min(s, n)
        dst[sl(n - m, n)] += k * src[sl(n - 1, n)]     # beyond the ends: the edge value
        dst[sl(0, m)] += k * src[sl(0, 1)]


def _slice_noise(seed: int, index: int, shape) -> np.ndarray:
    """Unit-variance white noise for one slice from (seed, slice index): a slice gets the same
    noise whichever slab draws it. Sum of two uniform bytes (triangular, ~5x cheaper than a normal
    draw); after the point-spread blur it is close to Gaussian."""
    g = np.random.default_rng([seed, index])
    n = int(np.prod(shape))
    b = np.frombuffer(g.bytes(2 * n), dtype=np.int8).reshape(2, n)
    out = b[0].astype(F32)
    out += b[1]
    out += 1.0          # each int8 has mean -0.5
    out *= F32(1.0 / math.sqrt(2.0 * (256.0 ** 2 - 1.0) / 12.0))
    return out.reshape(shape)


def _check_grid(labels, spacing, what="labels"):
    labels = np.asanyarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{what} must be a 3-D (z, y, x) array, got shape {labels.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or sp.min() <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    return labels, sp


def render_ct(labels: np.ndarray, spacing, *, bmi: float, rng: np.random.Generator, noise: float = 1.0,
              contrast: float = 1.0, blur_mm: float = 0.0, reference=None) -> np.ndarray:
    """Synthetic int16 HU volume around `labels` (see data/synthetic.synthesize_ct).

    Acquisition effects (data/bias.py; the defaults change nothing): `noise` multiplies the noise
    std; `contrast` scales the HU of kidney parenchyma and tumor about UNENHANCED_HU (the kidney /
    tumor difference x contrast exactly, before blur and noise); `blur_mm` adds a Gaussian point
    spread of that FWHM (mm, in quadrature with the case's own), the noise std staying the case's.
    reference: (labels, spacing) of the unbiased twin: the anatomy is laid out from it, so the
    render shares every random draw with the twin although the labels (tumor_scale) or the grid
    (slice_mm) differ; None: from `labels` themselves.
    """
    labels, sp = _check_grid(labels, spacing)
    if reference is None:
        an = _Anatomy(labels, sp, bmi, rng)
    else:
        ref_labels, ref_sp = _check_grid(*reference, what="reference labels")
        an = _Anatomy(ref_labels, ref_sp, bmi, rng, target=(labels, sp))
    an.contrast = float(contrast)
    # point spread: slice profile (~slice-thickness FWHM) combined with the in-plane kernel, so
    # coarse grids get voxel-sized partial volume and fine grids a ~1 mm blur
    psf2 = (0.425 * sp) ** 2 + np.asarray(an.psf_mm) ** 2
    if blur_mm > 0:
        psf2 = psf2 + (float(blur_mm) / FWHM_PER_SIGMA) ** 2
    sigma = np.sqrt(psf2) / sp
    kernels = [_gauss_kernel(s) for s in sigma]
    white_gain = math.sqrt(float(np.prod([np.sum(k.astype(np.float64) ** 2) for k in kernels])))
    noise_hu = an.noise_hu if noise == 1.0 else an.noise_hu * float(noise)
    pre_std = F32(noise_hu / white_gain)   # white-noise std before the blur
    halo = len(kernels[0]) // 2
    nz, ny, nx = labels.shape
    order = "F" if (labels.flags.f_contiguous and not labels.flags.c_contiguous) else "C"
    out = np.empty(labels.shape, dtype=np.int16, order=order)
    yc, xc = np.arange(ny) * sp[1], np.arange(nx) * sp[2]
    for z0 in range(0, nz, SLAB):
        z1 = min(nz, z0 + SLAB)
        a, b = max(0, z0 - halo), min(nz, z1 + halo)
        lab = np.ascontiguousarray(labels[a:b])
        val = _render_slab(an, lab, a)
        del lab
        for k in range(b - a):
            noise = _slice_noise(an.noise_seed, a + k, (ny, nx))
            noise *= pre_std
            val[k] += noise
        buf = np.empty_like(val)
        if len(kernels[0]) > 1:
            _blur_axis(val, kernels[0], 0, buf)
            val, buf = buf, val
        if len(kernels[1]) > 1:
            _blur_axis(val, kernels[1], 1, buf)
            val, buf = buf, val
        del buf
        if len(kernels[2]) > 1:   # along the contiguous axis the line filter is fast
            ndimage.correlate1d(val, kernels[2], axis=2, output=val, mode="nearest")
        core = val[z0 - a:z1 - a]
        # smooth scanner bias: multiplicative (gain drift) and additive (cupping-like offsets)
        bias = an.f_bias.sample(np.arange(z0, z1) * sp[0], yc, xc)
        core *= 1.0 + an.bias_mult * bias
        bias *= an.bias_add
        core += bias
        del bias
        np.clip(core, -1024.0, 3071.0, out=core)
        np.rint(core, out=core)
        out[z0:z1] = core
    return out
