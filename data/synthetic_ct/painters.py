"""The organ painters: one slab of the synthetic CT painted back to front from the layout of
data/synthetic_ct/anatomy.py, one function per organ, the real labels painted last (`_render_slab`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.synthetic_ct.anatomy import LEFT, _Anatomy


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
