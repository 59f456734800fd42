"""Surface metrics (fairness/surface.py) on hand cases: shifted boxes at anisotropic spacing, two
spheres of known radii and offset against their analytic distances, the empty-mask rules, and a
brute-force reference (every pair of surface voxels) on random shapes."""
import math

import numpy as np
import pytest

from fairness.surface import kits_case_surface, surface_distances, surface_metrics


def box(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def brute_force(pred, ref, spacing, tol):
    """Independent: surface by explicit 6-neighbour test on a zero-padded grid, distances over
    every pair of surface voxels."""
    def surface(m):
        p = np.pad(m, 1)
        inner = np.ones_like(m)
        for axis in range(3):
            for step in (-1, 1):
                inner &= np.roll(p, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inner) * np.asarray(spacing)
    a, b = surface(pred), surface(ref)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    to_ref, to_pred = d.min(1), d.min(0)
    n = len(to_ref) + len(to_pred)
    return {"nsd": ((to_ref <= tol).sum() + (to_pred <= tol).sum()) / n,
            "hd95": max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)),
            "assd": (to_ref.sum() + to_pred.sum()) / n}


def test_one_voxel_shift_costs_the_spacing_of_its_axis():
    ref = box((20, 30, 30), (4, 4, 4), (14, 24, 24))
    along_z = np.roll(ref, 1, axis=0)
    along_x = np.roll(ref, 1, axis=2)
    spacing = (3.0, 1.0, 1.0)
    z = surface_metrics(along_z, ref, spacing, tolerance_mm=2.0)
    x = surface_metrics(along_x, ref, spacing, tolerance_mm=2.0)
    assert z["hd95"] == pytest.approx(3.0) and x["hd95"] == pytest.approx(1.0)
    assert x["nsd"] == 1.0 and z["nsd"] < 0.75       # the z faces sit 3 mm from each other
    assert surface_metrics(along_z, ref, spacing, tolerance_mm=3.0)["nsd"] == 1.0
    assert 0 < x["assd"] < 1.0 and 1.0 < z["assd"] < 3.0
    for got, shifted in ((z, along_z), (x, along_x)):
        want = brute_force(shifted, ref, spacing, 2.0)
        assert got == pytest.approx(want)
    assert surface_metrics(ref, ref, spacing) == {"nsd": 1.0, "hd95": 0.0, "assd": 0.0}


def sphere(shape, centre, radius_vox):
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius_vox ** 2


def test_concentric_spheres_are_their_radius_difference_apart():
    spacing = (0.5, 0.5, 0.5)
    small, large = sphere((64,) * 3, (32, 32, 32), 16), sphere((64,) * 3, (32, 32, 32), 22)
    got = surface_metrics(small, large, spacing, tolerance_mm=2.0)
    gap = (22 - 16) * 0.5                                  # 3 mm between the surfaces everywhere
    assert got["hd95"] == pytest.approx(gap, abs=0.25)     # voxel surfaces: within half a voxel
    assert got["assd"] == pytest.approx(gap, abs=0.15)
    assert got["nsd"] < 0.05
    assert surface_metrics(small, large, spacing, tolerance_mm=3.6)["nsd"] > 0.95


def test_offset_spheres_match_the_analytic_distances():
    """Two spheres of radius r, centres d apart: a point at angle t from the offset axis lies
    |sqrt(r^2 + d^2 - 2 r d cos t) - r| from the other sphere, cos t uniform on the surface."""
    r_vox, d_vox, h = 18, 6, 0.5
    a = sphere((64,) * 3, (32, 32, 29), r_vox)
    b = sphere((64,) * 3, (32, 32, 29 + d_vox), r_vox)
    got = surface_metrics(a, b, (h, h, h), tolerance_mm=1.0)
    r, d = r_vox * h, d_vox * h
    cos_t = np.linspace(-1, 1, 200001)
    dist = np.abs(np.sqrt(r * r + d * d - 2 * r * d * cos_t) - r)
    assert got["assd"] == pytest.approx(dist.mean(), abs=0.15)          # 1.42 against 1.50 mm
    assert got["hd95"] == pytest.approx(np.percentile(dist, 95), abs=0.2)  # 2.77 against 2.85 mm
    assert got["nsd"] == pytest.approx((dist <= 1.0).mean(), abs=0.05)   # 0.37 against 0.33


def test_empty_mask_rules():
    empty = np.zeros((8, 8, 8), dtype=bool)
    full = box((8, 8, 8), (2, 2, 2), (5, 5, 5))
    both = surface_metrics(empty, empty, (1, 1, 1))
    assert all(math.isnan(v) for v in both.values())
    for pred, ref in ((full, empty), (empty, full)):
        one = surface_metrics(pred, ref, (1, 1, 1))
        assert one["nsd"] == 0.0 and math.isnan(one["hd95"]) and math.isnan(one["assd"])


def test_kits_regions_and_the_class_mean():
    ref = np.zeros((12, 12, 12), dtype=np.uint8)
    ref[2:10, 2:10, 2:10] = 1
    ref[4:7, 4:7, 4:7] = 2
    pred = ref.copy()
    pred[pred == 2] = 1                                       # tumor missed, kidney region intact
    row = kits_case_surface(pred, ref, spacing=(2.0, 1.0, 1.0))
    assert row["nsd_kidney"] == 1.0 and row["hd95_kidney"] == 0.0
    assert row["nsd_tumor"] == 0.0 and math.isnan(row["hd95_tumor"])
    assert row["nsd_mean"] == 0.5 and row["hd95_mean"] == 0.0  # nanmean over the classes, like Dice
    no_tumor = ref.copy()
    no_tumor[no_tumor == 2] = 1
    assert math.isnan(kits_case_surface(no_tumor, no_tumor, (1, 1, 1))["nsd_tumor"])
    assert set(kits_case_surface(pred, ref, (1, 1, 1), metrics=("nsd",))) == {"nsd_kidney", "nsd_tumor", "nsd_mean"}


def test_random_shapes_and_the_grid_border_agree_with_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(6):
        shape = (10, 14, 12)
        pred = rng.random(shape) < 0.3
        ref = rng.random(shape) < 0.3
        if trial % 2:                                          # blobs touching the border
            pred[:, :3, :] = True
            ref[-2:, :, :] = True
        spacing = tuple(rng.uniform(0.5, 3.0, 3))
        tol = float(rng.uniform(0.5, 3.0))
        assert surface_metrics(pred, ref, spacing, tol) == pytest.approx(brute_force(pred, ref, spacing, tol))


def test_the_box_around_the_masks_gives_the_whole_grid_answer():
    small = box((40, 200, 200), (10, 90, 80), (20, 110, 120))
    other = box((40, 200, 200), (11, 92, 80), (22, 110, 118))
    to_ref, to_pred = surface_distances(small, other, (2.5, 0.8, 0.8))
    cut = (slice(5, 30), slice(80, 130), slice(70, 130))
    to_ref_cut, to_pred_cut = surface_distances(small[cut], other[cut], (2.5, 0.8, 0.8))
    assert np.allclose(np.sort(to_ref), np.sort(to_ref_cut)) and np.allclose(np.sort(to_pred), np.sort(to_pred_cut))


def test_distances_are_the_full_distance_maps_values_bit_for_bit():
    """The distances are taken at the surface voxels from the feature transform alone; they must be
    what the whole distance map (distance_transform_edt, the way they were computed before) holds
    there, to the last bit, in the same order: NSD, HD95 and ASSD are then unchanged too."""
    from scipy import ndimage

    from fairness.surface import _nearest_distances, _surface

    rng = np.random.default_rng(5)
    for trial in range(8):
        shape = (int(rng.integers(18, 40)), int(rng.integers(5, 30)), int(rng.integers(5, 30)))
        spacing = tuple(float(s) for s in rng.choice([0.5, 0.8105469, 0.7, 1.62, 3.0], 3))
        blobs = [ndimage.gaussian_filter(rng.random(shape), 2) for _ in range(2)]
        pred, ref = [b > np.quantile(b, rng.uniform(0.6, 0.95)) for b in blobs]
        pred[tuple(int(rng.integers(0, s)) for s in shape)] = True       # a far false positive
        s_pred, s_ref = _surface(pred), _surface(ref)
        expected = ndimage.distance_transform_edt(~s_ref, sampling=spacing)[s_pred]
        for rows in (1, 3, 16):                                           # a few rows at a time, or one
            np.testing.assert_array_equal(_nearest_distances(s_ref, s_pred, spacing, rows=rows), expected)


def test_a_case_is_scored_in_its_kidney_box_with_the_whole_grid_answer():
    """kits_case_surface crops both label maps to the kidney box first; the numbers are those of
    the whole-grid masks, a speck at the grid's border included."""
    rng = np.random.default_rng(2)
    ref = np.zeros((30, 40, 36), np.uint8)
    ref[8:20, 10:25, 12:30] = 1
    ref[10:15, 12:18, 14:20] = 2
    pred = np.roll(ref, 1, axis=2)
    pred[29, 39, 0] = 2                                                  # a false positive in a corner
    pred[rng.random(ref.shape) < 0.001] = 1
    spacing = (2.5, 0.8, 0.8)
    got = kits_case_surface(pred, ref, spacing)
    for cls, p, r in (("kidney", pred > 0, ref > 0), ("tumor", pred == 2, ref == 2)):
        whole = surface_metrics(p, r, spacing)
        assert all(got[f"{m}_{cls}"] == whole[m] for m in ("nsd", "hd95", "assd"))


def test_bad_arguments_say_what_is_wrong():
    m = box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(m, m, (1, 0, 1))
    with pytest.raises(ValueError, match="tolerance"):
        surface_metrics(m, m, (1, 1, 1), tolerance_mm=-1)
    with pytest.raises(TypeError, match="integer or bool"):
        surface_metrics(m.astype(float), m, (1, 1, 1))
    with pytest.raises(ValueError, match="unknown surface metric"):
        kits_case_surface(m.astype(np.uint8), m.astype(np.uint8), (1, 1, 1), metrics=("hd99",))
