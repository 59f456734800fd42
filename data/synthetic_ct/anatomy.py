"""The layout of a synthetic abdomen, in patient millimetres around the kidneys of a label map: where
every organ, vessel, bone and fat layer lies and its intensity (`_Anatomy`), and the kidney's inner
structure (cortex, medulla, sinus, the tumor's rim and core: `_KidneyModel`). No pixel is painted
here: data/synthetic_ct/painters.py paints from this layout.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from data.synthetic_ct.fields import CoarseField, _smooth_1d, random_field

# Patient's left is +x on KiTS19's array (data/synthetic_ct/__init__.py); the liver goes to -x.
LEFT = 1.0
UNENHANCED_HU = 40.0   # `contrast` scales kidney / tumor HU about this level (data/bias.py)


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
