"""The resampler against nnU-Net's rule and against independent references (scipy)."""
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from data.resample import resample_image, resample_image_slabs, resample_labels, resampled_shape, separate_axis


def centre_coords(old_shape, new_shape):
    """Pixel-centre aligned source coordinates, the convention of nnU-Net (skimage) and ours."""
    axes = [(np.arange(n) + 0.5) * (o / n) - 0.5 for o, n in zip(old_shape, new_shape)]
    return np.meshgrid(*axes, indexing="ij")


def test_new_shape_rule_on_largest_kits_geometry():
    # round(old_spacing / new_spacing * old_shape), per axis
    assert resampled_shape((611, 512, 512), (0.5, 0.919921875, 0.919921875), (3.22, 1.62, 1.62)) == (95, 291, 291)
    assert resampled_shape((1059, 512, 512), (0.5, 0.78, 0.78), (3.22, 1.62, 1.62)) == (164, 247, 247)


@pytest.mark.parametrize("old, new, axis", [
    ((5.0, 0.8, 0.8), (3.22, 1.62, 1.62), 0),      # source anisotropic: z separately
    ((0.5, 0.8, 0.8), (3.22, 1.62, 1.62), None),   # neither anisotropic: full 3D
    ((1.0, 1.0, 4.0), (1.0, 1.0, 1.0), 2),
    ((1.0, 1.0, 1.0), (4.0, 1.0, 1.0), 0),         # only the target is anisotropic
    ((4.0, 4.0, 1.0), (1.0, 1.0, 1.0), None),      # two coarse axes: nnU-Net falls back to 3D
])
def test_separate_axis(old, new, axis):
    assert separate_axis(old, new) == axis


def test_linear_image_matches_scipy_reference():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 40, 50)).astype(np.float32)
    new_shape = (21, 55, 33)
    ours = resample_image(img, (1, 1, 1), (30 / 21, 40 / 55, 50 / 33), new_shape=new_shape, order=1)
    ref = map_coordinates(img, centre_coords(img.shape, new_shape), order=1, mode="nearest")
    assert ours.shape == new_shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_cubic_is_keys_kernel_on_every_axis():
    # Cubic is torch's bicubic (Keys, a = -0.75) in-plane; along z our own taps must agree with it,
    # so full-3D cubic is the same kernel on all three axes.
    import torch
    rng = np.random.default_rng(2)
    img = rng.normal(size=(20, 12, 14)).astype(np.float32)
    ours = resample_image(img, (1, 1, 1), (20 / 31, 1, 1), new_shape=(31, 12, 14), order=3)
    planes = torch.from_numpy(img).permute(2, 0, 1)[:, None]  # (x, 1, z, y): z, y as a 2D image
    ref = torch.nn.functional.interpolate(planes, size=(31, 12), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(ours, ref[:, 0].permute(1, 2, 0).numpy(), atol=1e-5)
    const = resample_image(np.full((9, 9, 9), 7.0, np.float32), (1, 1, 1), (0.6, 0.7, 1.3), order=3)
    np.testing.assert_allclose(const, 7.0, atol=1e-5)  # weights sum to one


def test_cubic_is_close_on_a_smooth_field():
    z, y, x = np.meshgrid(np.arange(20.0), np.arange(24.0), np.arange(28.0), indexing="ij")
    def smooth(z, y, x):
        return np.sin(z / 4) + np.cos(y / 5) * np.sin(x / 6)
    new_shape = (30, 36, 42)
    ours = resample_image(smooth(z, y, x).astype(np.float32), (1, 1, 1), (2 / 3,) * 3, new_shape=new_shape, order=3)
    exact = smooth(*centre_coords((20, 24, 28), new_shape))
    inner = (slice(3, -3),) * 3
    assert np.abs(ours[inner] - exact[inner]).max() < 0.03  # 1.5 % of the range


def test_anisotropic_image_is_nearest_along_z():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(6, 16, 16)).astype(np.float32)
    out = resample_image(img, (5.0, 1.0, 1.0), (2.5, 1.0, 1.0))
    assert out.shape == (12, 16, 16)
    # each output slice is a copy of input slice floor((i + 0.5) / 2)
    for i in range(12):
        np.testing.assert_array_equal(out[i], img[(2 * i + 1) // 4])


def test_labels_isotropic_match_one_hot_linear_reference():
    lab = np.zeros((40, 60, 60), np.uint8)
    lab[10:30, 15:45, 20:50] = 1
    lab[15:25, 20:30, 25:40] = 2
    out = resample_labels(lab, (1.0, 1.0, 1.0), (1.5, 0.7, 1.3))
    ref = np.zeros(out.shape, np.uint8)
    coords = centre_coords(lab.shape, out.shape)
    for c in (1, 2):
        ref[map_coordinates((lab == c).astype(np.float64), coords, order=1, mode="nearest") >= 0.5] = c
    # Only exact 0.5 ties may differ (float32 versus float64 arithmetic).
    assert (out == ref).mean() > 0.995
    assert set(np.unique(out)) == {0, 1, 2}


def test_labels_anisotropic_keep_classes_and_volume():
    lab = np.zeros((20, 64, 64), np.uint8)
    lab[5:15, 10:50, 12:44] = 1
    lab[6:14, 18:40, 18:38] = 2
    old, new = (5.0, 0.8, 0.8), (3.22, 1.62, 1.62)
    out = resample_labels(lab, old, new)
    assert out.shape == resampled_shape(lab.shape, old, new) == (31, 32, 32)
    for c in (1, 2):
        vol_in = np.count_nonzero(lab == c) * np.prod(old)
        vol_out = np.count_nonzero(out == c) * np.prod(new)
        assert abs(vol_out - vol_in) / vol_in < 0.10


def test_identity_and_channels_first():
    img = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    same = resample_image(img, (1, 1, 1), (1, 1, 1))
    np.testing.assert_array_equal(same, img)
    half = resample_image(img, (1, 1, 1), (1, 2, 2), order=1)
    assert half.shape == (2, 4, 2, 3)
    np.testing.assert_allclose(half[1], resample_image(img[1], (1, 1, 1), (1, 2, 2), order=1))


@pytest.mark.parametrize("old, new, order", [
    ((1.0, 1.0, 1.0), (0.6, 0.7, 1.3), 1),   # isotropic: every axis linear, z done last
    ((1.0, 1.0, 1.0), (0.6, 0.7, 1.3), 3),
    ((5.0, 0.8, 0.8), (3.22, 1.62, 1.62), 1),  # anisotropic z: nearest along z, done last
    ((0.8, 0.8, 4.0), (1.5, 1.5, 2.0), 1),   # anisotropic x: x done last, so slabs are ranges of x
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 1),   # same grid
])
def test_slabs_are_resample_image_exactly(old, new, order):
    """resample_image_slabs hands over the very numbers resample_image computes, slab by slab,
    whatever the slab size (1 voxel: one output slice per slab)."""
    rng = np.random.default_rng(3)
    channels = rng.random((3, 7, 9, 8)).astype(np.float32)
    whole = resample_image(channels, old, new, order=order, order_z=0)
    for slab_voxels in (1, 200, 10 ** 6):
        out = np.full(whole.shape, np.nan, np.float32)
        regions = []
        for region, values in resample_image_slabs(channels, old, new, order=order, order_z=0,
                                                   slab_voxels=slab_voxels):
            out[(slice(None),) + region] = values.numpy()
            regions.append(region)
        np.testing.assert_array_equal(out, whole)  # bit for bit, and every voxel written
        if slab_voxels == 1:  # one output slice per slab, along the axis done last (the separate one, else z)
            assert len(regions) == whole.shape[1 + (separate_axis(old, new) or 0)]
