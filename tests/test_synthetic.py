"""Synthetic CT generators (data/synthetic.py): layout, determinism, demographics, difficulty.

Procedural cases use tiny grids; from-labels cases use real KiTS19 label maps (skipped when
../shared/kits19 is absent) reduced by nearest-neighbour striding into a temporary folder, so the
whole file runs in well under a minute on two cores.
"""
import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data.errors import CaseError
from data.nifti import kits_affine, read_volume, write_volume
from data.synthetic import (DEFAULT_SHAPE, plan_procedural_case, synthesize_ct,
                            write_cohort_from_labels, write_procedural_cohort)

TINY = (16, 32, 32)
SMALL = (32, 48, 48)
META_KEYS = {"case_id", "gender", "age_at_nephrectomy", "body_mass_index", "voxel_spacing"}


def best_band_dice(image: np.ndarray, target: np.ndarray) -> float:
    """Best Dice of any intensity band lo < x < hi over all integer bounds; one-sided thresholds
    (x > t, x < t) are the bands that reach the ends of the range, so they are included."""
    x = np.asarray(image).astype(np.int64).ravel()
    t = np.asarray(target).ravel().astype(bool)
    g = float(t.sum())
    if g == 0:
        return 0.0
    x -= x.min()
    k = int(x.max()) + 1
    all_c = np.concatenate([[0], np.cumsum(np.bincount(x, minlength=k))]).astype(np.float64)
    fg_c = np.concatenate([[0], np.cumsum(np.bincount(x[t], minlength=k))]).astype(np.float64)
    best = 0.0
    for lo in np.unique(x[t]):   # an optimal band starts at a target value
        dice = 2.0 * (fg_c[lo + 1:] - fg_c[lo]) / (all_c[lo + 1:] - all_c[lo] + g)
        best = max(best, float(dice.max()))
    return best


def fat_noise(ct: np.ndarray) -> tuple[float, int]:
    """Noise std estimated in fat away from edges (fat-like -150..-50 HU, eroded in-plane): robust
    spread of differences between x-neighbours, divided by sqrt(2); and the number of pairs."""
    fat = ndimage.binary_erosion((ct > -150) & (ct < -50), np.ones((1, 3, 3), bool))
    both = fat[..., :-1] & fat[..., 1:]
    d = (ct[..., :-1].astype(np.float64) - ct[..., 1:])[both]
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)), int(both.sum())


# ---------------------------------------------------------------------------------------------
# procedural cohort
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("procedural")
    ids = write_procedural_cohort(out, n_cases=3, seed=5, shape=TINY, progress=False)
    return out, ids


def test_procedural_layout(tiny_cohort):
    out, ids = tiny_cohort
    assert ids == ["case_00000", "case_00001", "case_00002"]
    meta = json.loads((out / "kits.json").read_text())
    assert [m["case_id"] for m in meta] == ids
    for m in meta:
        assert META_KEYS <= set(m)
        assert m["gender"] in ("male", "female")
        assert isinstance(m["age_at_nephrectomy"], int) and 0 <= m["age_at_nephrectomy"] <= 90
        assert 15.0 <= m["body_mass_index"] <= 50.0
        img = nib.load(str(out / m["case_id"] / "imaging.nii.gz"))
        seg = nib.load(str(out / m["case_id"] / "segmentation.nii.gz"))
        assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
        assert img.shape == seg.shape and img.shape[1:] == TINY[1:]
        vs = m["voxel_spacing"]
        spacing = (vs["z_spacing"], vs["y_spacing"], vs["x_spacing"])
        for im in (img, seg):
            assert np.allclose(im.header.get_zooms(), spacing, rtol=1e-5)
            assert np.allclose(im.affine, kits_affine(spacing), atol=1e-4)
        assert spacing[0] > spacing[1]                      # z coarser than in-plane
        labels = np.asanyarray(seg.dataobj)
        assert set(np.unique(labels)) == {0, 1, 2}          # every case has kidney and tumor
        ct = np.asanyarray(img.dataobj)
        assert ct.min() < -900 and ct.max() > 300           # air outside, bone inside


def test_procedural_reproducible(tiny_cohort, tmp_path):
    out, _ = tiny_cohort
    # same seed and index -> identical case, whatever n_cases
    ids = write_procedural_cohort(tmp_path / "again", n_cases=2, seed=5, shape=TINY, progress=False)
    for cid in ids:
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            a = np.asanyarray(nib.load(str(out / cid / name)).dataobj)
            b = np.asanyarray(nib.load(str(tmp_path / "again" / cid / name)).dataobj)
            assert np.array_equal(a, b)
    first = json.loads((out / "kits.json").read_text())[:2]
    assert json.loads((tmp_path / "again" / "kits.json").read_text()) == first
    # another seed -> another case
    other = write_procedural_cohort(tmp_path / "other", n_cases=1, seed=6, shape=TINY, progress=False)
    a = np.asanyarray(nib.load(str(out / "case_00000" / "segmentation.nii.gz")).dataobj)
    b = np.asanyarray(nib.load(str(tmp_path / "other" / other[0] / "segmentation.nii.gz")).dataobj)
    assert a.shape != b.shape or not np.array_equal(a, b)
    assert json.loads((tmp_path / "other" / "kits.json").read_text())[0] != first[0]


def test_synthesize_ct_reproducible_and_seed_dependent():
    case = plan_procedural_case(3, seed=1, shape=TINY)
    labels = case.labels()
    a = synthesize_ct(labels, case.spacing, bmi=30.0, rng=np.random.default_rng(7))
    b = synthesize_ct(labels, case.spacing, bmi=30.0, rng=np.random.default_rng(7))
    c = synthesize_ct(labels, case.spacing, bmi=30.0, rng=np.random.default_rng(8))
    assert a.dtype == np.int16 and a.shape == labels.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # memory order does not change the picture (nibabel hands out Fortran-ordered arrays)
    f = synthesize_ct(np.asfortranarray(labels), case.spacing, bmi=30.0, rng=np.random.default_rng(7))
    assert np.array_equal(a, f)
    # a label map without kidneys still gives an abdomen
    empty = synthesize_ct(np.zeros((8, 24, 24), np.uint8), (5.0, 15.0, 15.0), bmi=25.0,
                          rng=np.random.default_rng(0))
    assert empty.shape == (8, 24, 24) and empty.max() > 0


def test_procedural_spacing_mix_and_default_size():
    ratios, voxels = [], []
    for i in range(40):
        case = plan_procedural_case(i, seed=0)
        sz, sy, sx = case.spacing
        assert sy == sx and sz > sy
        assert case.shape[1:] == DEFAULT_SHAPE[1:]
        ratios.append(sz / sy)
        voxels.append(int(np.prod(case.shape)))
    ratios = np.array(ratios)
    assert (ratios > 3).sum() >= 5 and (ratios < 3).sum() >= 5   # both nnU-Net resampling paths
    assert max(voxels) <= 1_500_000


def test_procedural_demographics():
    plans = [plan_procedural_case(i, seed=0) for i in range(200)]
    male = np.array([p.gender == "male" for p in plans])
    assert abs(male.mean() - 0.586) < 0.08                      # KiTS19: 123 of 210 male
    ages = np.array([p.age for p in plans])
    assert 1 <= ages.min() and ages.max() <= 90 and 53 < ages.mean() < 64   # KiTS19 mean 58.4
    bmi = np.array([p.bmi for p in plans])
    assert 16 <= bmi.min() and bmi.max() <= 50 and 28.5 < bmi.mean() < 34   # KiTS19 mean 31.2
    vol = np.array([p.kidney_volume_ml for p in plans])
    assert vol[~male].mean() < vol[male].mean()
    n_tumors = np.array([len(p.tumors) for p in plans])
    assert n_tumors.min() >= 1 and (n_tumors > 1).any()
    tumor_ml = np.array([t["volume_ml"] for p in plans for t in p.tumors])
    assert tumor_ml.min() < 3 and tumor_ml.max() > 300          # tiny to huge, log-normal-like
    bilateral = [p for p in plans if len({t["kidney"] for t in p.tumors}) == 2]
    assert bilateral
    # the rasterised kidneys follow the planned volumes (sizes in real millimetres)
    for p in plans[:3]:
        labels = p.labels()
        got = (labels > 0).sum() * np.prod(p.spacing) / 1000.0
        assert 0.6 * p.kidney_volume_ml < got < 1.6 * (p.kidney_volume_ml + sum(t["volume_ml"] for t in p.tumors))


def test_procedural_not_trivially_solvable():
    kid, tum = [], []
    for i in range(6):
        case = plan_procedural_case(i, seed=0, shape=SMALL)
        labels = case.labels()
        ct = synthesize_ct(labels, case.spacing, bmi=case.bmi, rng=np.random.default_rng([0, i, 1]))
        kid.append(best_band_dice(ct, labels > 0))
        tum.append(best_band_dice(ct, labels == 2))
    assert max(kid) < 0.8, kid
    assert max(tum) < 0.5, tum


def test_noise_grows_with_bmi():
    for i in (0, 2):
        case = plan_procedural_case(i, seed=0, shape=(24, 64, 64))
        labels = case.labels()
        lo, n_lo = fat_noise(synthesize_ct(labels, case.spacing, bmi=19.0, rng=np.random.default_rng(3)))
        hi, n_hi = fat_noise(synthesize_ct(labels, case.spacing, bmi=45.0, rng=np.random.default_rng(3)))
        assert min(n_lo, n_hi) > 100
        assert hi > 1.6 * lo, (lo, hi)


# ---------------------------------------------------------------------------------------------
# from real label maps
# ---------------------------------------------------------------------------------------------
# 00038 and 00030 gave the highest kidney and tumor best-band Dice over all 210 cases (at 2 mm);
# 00000 has a tiny tumor, 00114 a huge one. The first two are small (5 mm slices): used for layout.
REAL_CASES = ["case_00038", "case_00030", "case_00000", "case_00114"]


def _reduced_label_dir(kits19_dir, dest, cases, target_mm=3.0):
    """Real label maps strided to ~target_mm voxels, written to dest with the real metadata."""
    meta = {d["case_id"]: d for d in json.loads((kits19_dir / "kits.json").read_text())}
    for cid in cases:
        vol = read_volume(kits19_dir / cid / "segmentation.nii.gz")
        step = [max(1, int(round(target_mm / s))) for s in vol.spacing]
        labels = np.ascontiguousarray(vol.array[::step[0], ::step[1], ::step[2]])
        spacing = tuple(float(s) * k for s, k in zip(vol.spacing, step))
        write_volume(dest / cid / "segmentation.nii.gz", labels, affine=kits_affine(spacing), spacing=spacing)
    (dest / "kits.json").write_text(json.dumps([meta[c] for c in cases]))
    return meta


@pytest.fixture(scope="module")
def reduced_real(kits19_dir, tmp_path_factory):
    src = tmp_path_factory.mktemp("labels")
    meta = _reduced_label_dir(kits19_dir, src, REAL_CASES)
    return src, meta


def test_from_labels_layout_resume_and_errors(reduced_real, tmp_path):
    src, meta = reduced_real
    out = tmp_path / "synth"
    a, b = REAL_CASES[0], REAL_CASES[1]
    done, failures = write_cohort_from_labels(src, out, only=[a], seed=3, progress=False)
    assert done == [a] and failures == []
    seg_in, seg_out = src / a / "segmentation.nii.gz", out / a / "segmentation.nii.gz"
    assert seg_in.read_bytes() == seg_out.read_bytes()           # label map kept bit for bit
    lab, img = read_volume(seg_in), read_volume(out / a / "imaging.nii.gz")
    assert img.array.dtype == np.int16 and img.array.shape == lab.array.shape
    assert np.allclose(img.spacing, lab.spacing) and np.allclose(img.affine, lab.affine)
    assert np.allclose(img.affine, kits_affine(img.spacing), atol=1e-4)
    assert json.loads((out / "kits.json").read_text()) == [meta[a]]   # every real field

    # resume: a complete case is skipped, a half-written one is redone, kits.json is merged
    stamp = (out / a / "imaging.nii.gz").stat().st_mtime_ns
    done, failures = write_cohort_from_labels(src, out, only=[a, b], seed=3, progress=False)
    assert done == [a, b] and failures == []
    assert (out / a / "imaging.nii.gz").stat().st_mtime_ns == stamp
    assert [m["case_id"] for m in json.loads((out / "kits.json").read_text())] == sorted([a, b])
    first = np.asanyarray(nib.load(str(out / b / "imaging.nii.gz")).dataobj).copy()
    os.remove(out / b / "segmentation.nii.gz")
    write_cohort_from_labels(src, out, only=[b], seed=3, progress=False)
    assert np.array_equal(np.asanyarray(nib.load(str(out / b / "imaging.nii.gz")).dataobj), first)

    # per-case problems are collected, the other cases go on
    bad_src = tmp_path / "bad"
    (bad_src / a).mkdir(parents=True)
    (bad_src / a / "segmentation.nii.gz").write_bytes(seg_in.read_bytes())
    write_volume(bad_src / "case_09999" / "segmentation.nii.gz", np.full((4, 8, 8), 3, np.uint8),
                 affine=kits_affine((3, 3, 3)))
    (bad_src / "kits.json").write_text(json.dumps([meta[a], dict(meta[a], case_id="case_09999")]))
    done, failures = write_cohort_from_labels(bad_src, tmp_path / "errs", only=["case_09999", "case_09998", a],
                                              seed=3, progress=False)
    assert done == [a]
    assert [f.where for f in failures] == ["case_09999", "case_09998"]
    assert "label values" in failures[0].problem and "metadata" in failures[1].problem


def test_from_labels_reproducible(reduced_real, tmp_path):
    src, _ = reduced_real
    cid = REAL_CASES[0]
    for name, seed in (("x", 1), ("y", 1), ("z", 2)):
        write_cohort_from_labels(src, tmp_path / name, only=[cid], seed=seed, progress=False)
    load = lambda n: np.asanyarray(nib.load(str(tmp_path / n / cid / "imaging.nii.gz")).dataobj)
    assert np.array_equal(load("x"), load("y"))
    assert not np.array_equal(load("x"), load("z"))


def test_from_labels_not_trivially_solvable(reduced_real):
    src, meta = reduced_real
    for i, cid in enumerate(REAL_CASES):
        vol = read_volume(src / cid / "segmentation.nii.gz")
        ct = synthesize_ct(vol.array, vol.spacing, bmi=meta[cid]["body_mass_index"],
                           rng=np.random.default_rng([0, i]))
        kid, tum = best_band_dice(ct, vol.array > 0), best_band_dice(ct, vol.array == 2)
        assert kid < 0.8, (cid, kid)
        assert tum < 0.5, (cid, tum)


def test_from_labels_full_resolution_real_case(kits19_dir, tmp_path):
    """End to end on the smallest real case (29 x 512 x 512) read in place from kits19_dir."""
    cid = "case_00061"
    done, failures = write_cohort_from_labels(kits19_dir, tmp_path, only=[cid], seed=0, progress=False)
    assert done == [cid] and failures == []
    src = kits19_dir / cid / "segmentation.nii.gz"
    assert (tmp_path / cid / "segmentation.nii.gz").read_bytes() == src.read_bytes()
    lab, img = read_volume(src), read_volume(tmp_path / cid / "imaging.nii.gz")
    assert img.array.dtype == np.int16 and img.array.shape == lab.array.shape
    assert np.allclose(img.spacing, lab.spacing) and np.allclose(img.affine, lab.affine)
    real = {d["case_id"]: d for d in json.loads((kits19_dir / "kits.json").read_text())}[cid]
    assert json.loads((tmp_path / "kits.json").read_text()) == [real]
    assert best_band_dice(img.array, lab.array > 0) < 0.8
    assert best_band_dice(img.array, lab.array == 2) < 0.5


# ---------------------------------------------------------------------------------------------
# the kidney field of view
# ---------------------------------------------------------------------------------------------
def test_kidney_fov_is_a_crop_of_the_abdomen_with_every_label(tmp_path):
    """The same voxels, every labelled one kept, the affine's origin where the crop sits."""
    write_procedural_cohort(tmp_path / "a", n_cases=3, seed=2, shape=SMALL, progress=False)
    write_procedural_cohort(tmp_path / "k", n_cases=3, seed=2, shape=SMALL, progress=False, fov="kidneys")
    meta = {m["case_id"]: m for m in json.loads((tmp_path / "k" / "kits.json").read_text())}
    voxels = []
    for cid, m in meta.items():
        assert m["synthetic_fov"] == "kidneys"
        full_seg, crop_seg = (nib.load(str(tmp_path / d / cid / "segmentation.nii.gz")) for d in ("a", "k"))
        full_img, crop_img = (np.asarray(nib.load(str(tmp_path / d / cid / "imaging.nii.gz")).dataobj) for d in ("a", "k"))
        start = np.linalg.solve(full_seg.affine, crop_seg.affine @ np.array([0.0, 0.0, 0.0, 1.0]))[:3]
        assert np.allclose(start, np.round(start)) and (start >= 0).all()
        box = tuple(slice(int(round(s)), int(round(s)) + n) for s, n in zip(start, crop_seg.shape))
        full, crop = np.asarray(full_seg.dataobj), np.asarray(crop_seg.dataobj)
        assert np.array_equal(full[box], crop) and np.array_equal(full_img[box], crop_img)
        for c in (1, 2):
            assert (crop == c).sum() == (full == c).sum() > 0
        voxels.append(crop.size / full.size)
    assert max(voxels) < 0.8, voxels


def test_kidney_fov_cases_stay_hard_for_a_threshold(tmp_path):
    """Cropping removes most of the body, not the difficulty (the realism bar above)."""
    write_procedural_cohort(tmp_path, n_cases=6, seed=0, shape=SMALL, progress=False, fov="kidneys")
    for cid in sorted(p.name for p in tmp_path.glob("case_*")):
        ct = np.asarray(nib.load(str(tmp_path / cid / "imaging.nii.gz")).dataobj)
        labels = np.asarray(nib.load(str(tmp_path / cid / "segmentation.nii.gz")).dataobj)
        assert best_band_dice(ct, labels > 0) < 0.8 and best_band_dice(ct, labels == 2) < 0.5, cid


def test_unknown_fov_is_refused(tmp_path):
    with pytest.raises(ValueError, match="valid: abdomen, kidneys"):
        write_procedural_cohort(tmp_path, n_cases=1, shape=TINY, progress=False, fov="pelvis")


def test_from_labels_maps_a_kits23_cyst_by_the_label_scheme(tmp_path):
    """A KiTS21/23 label map (3 = cyst) is refused without a scheme, and with one the written
    reference holds the mapped values and kits.json records the scheme."""
    src = tmp_path / "kits23"
    write_procedural_cohort(src, n_cases=1, seed=5, shape=TINY, progress=False)
    cid = "case_00000"
    seg = read_volume(src / cid / "segmentation.nii.gz")
    labels = seg.array.copy()
    kidney = np.argwhere(labels == 1)
    cyst = tuple(kidney[: max(1, len(kidney) // 4)].T)
    labels[cyst] = 3
    write_volume(src / cid / "segmentation.nii.gz", labels, affine=seg.affine, header=seg.header)

    done, failures = write_cohort_from_labels(src, tmp_path / "none", seed=1, progress=False)
    assert done == [] and "--label-scheme" in failures[0].problem

    for scheme, cyst_becomes in (("kits23-cyst-kidney", 1), ("kits23-cyst-background", 0)):
        out = tmp_path / scheme
        done, failures = write_cohort_from_labels(src, out, seed=1, progress=False, label_scheme=scheme)
        assert done == [cid] and failures == []
        written = read_volume(out / cid / "segmentation.nii.gz").array
        want = labels.copy()
        want[cyst] = cyst_becomes
        assert written.dtype == np.uint8 and np.array_equal(written, want)
        entry = json.loads((out / "kits.json").read_text())[0]
        assert entry["synthetic_label_scheme"] == {"kits23-cyst-kidney": "0:0,1:1,2:2,3:1",
                                                   "kits23-cyst-background": "0:0,1:1,2:2,3:0"}[scheme]
    with pytest.raises(ValueError, match="label scheme"):
        write_cohort_from_labels(src, tmp_path / "bad", seed=1, progress=False, label_scheme="3:7")
