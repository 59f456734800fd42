"""The CT intensity model behind data/synthetic.py: a synthetic abdomen around a label map.

Public entry point: `render_ct(labels, spacing, bmi=..., rng=...)` (re-exported by
data/synthetic.py as `synthesize_ct`). Everything else here is internal. Here, by concept:
fields.py (smooth random fields), anatomy.py (the layout: shapes, positions and intensities),
painters.py (one painter per organ, a slab at a time), acquisition.py (noise, blur, bias field:
render_ct). The cohorts, their metadata and their label maps are data/synthetic.py's.

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
from data.synthetic_ct.acquisition import render_ct
from data.synthetic_ct.anatomy import LEFT, UNENHANCED_HU
from data.synthetic_ct.fields import random_field

__all__ = ["render_ct", "random_field", "LEFT", "UNENHANCED_HU"]
