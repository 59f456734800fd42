"""Sliding-window inference (models/inference.py): importance map, tiling, stitching, padding, mirroring."""
import itertools

import numpy as np
import pytest
import torch

from models import build_model
from models.inference import gaussian_importance, predict_case, tile_starts

TINY = {"name": "nnunet", "base_features": 4, "max_features": 16}
PATCH = (8, 16, 16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is fastest, and steady when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model(TINY, patch_size=PATCH, in_channels=1, num_classes=3)


def image(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def softmax_full(model, x):
    """Softmax of the full-resolution output of one forward of the whole (1, 1, Z, Y, X) input, in eval()."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was)
    return torch.softmax((out[0] if isinstance(out, (list, tuple)) else out).float(), dim=1)[0]


def reference_predict(model, img, patch, overlap):
    """The plain definition, tile by tile: sum_t w_t p_t / sum_t w_t with the Gaussian map, zero padding."""
    x = torch.from_numpy(img)[None]
    shape = x.shape[1:]
    pads = [max(0, p - s) for s, p in zip(shape, patch)]
    x = torch.nn.functional.pad(x, [v for a in (2, 1, 0) for v in (pads[a] // 2, pads[a] - pads[a] // 2)])
    full = x.shape[1:]
    w = gaussian_importance(patch)
    acc, norm = torch.zeros((3,) + tuple(full)), torch.zeros(full)
    for z, y, xx in itertools.product(*(tile_starts(s, p, overlap) for s, p in zip(full, patch))):
        win = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(xx, xx + patch[2]))
        acc[(slice(None),) + win] += softmax_full(model, x[(slice(None),) + win][None]) * w
        norm[win] += w
    out = acc / norm
    return out[:, pads[0] // 2:pads[0] // 2 + shape[0], pads[1] // 2:pads[1] // 2 + shape[1],
               pads[2] // 2:pads[2] // 2 + shape[2]]


# --- the importance map ---------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [(16, 32, 32), (7, 12, 9), (5, 9, 11), (1, 5, 4)])
def test_gaussian_importance_symmetric_positive_max_one(patch):
    g = gaussian_importance(patch)
    assert g.shape == patch and g.dtype == torch.float32
    assert (g > 0).all()
    assert g.max().item() == 1.0
    for axis in range(3):
        torch.testing.assert_close(g.flip(axis), g, rtol=0, atol=1e-7)
    for centre in itertools.product(*({(p - 1) // 2, p // 2} for p in patch)):  # the central voxel(s)
        assert g[centre].item() == 1.0
    # sigma = patch / 8: one sigma from the centre along z the weight is exp(-1/2) of the peak line
    if patch[0] % 2 == 0 and patch[0] >= 16:
        line = g[:, patch[1] // 2, patch[2] // 2] / g[:, patch[1] // 2, patch[2] // 2].max()
        x = torch.arange(patch[0]) - (patch[0] - 1) / 2
        ref = torch.exp(-0.5 * (x / (patch[0] / 8)) ** 2)
        torch.testing.assert_close(line, ref / ref.max(), rtol=1e-5, atol=1e-6)


def test_gaussian_importance_is_separable():
    # predict_case normalises with the per-axis sums, which relies on the map being the outer product
    # of its three 1-D profiles.
    g = gaussian_importance((16, 24, 40))
    outer = g[:, 12, 20][:, None, None] * g[8, :, 20][None, :, None] * g[8, 12, :][None, None, :]
    outer = outer / (g[8, 12, 20] ** 2)  # = 1: (8, 12, 20) is a central voxel
    torch.testing.assert_close(g, outer, rtol=1e-5, atol=1e-9)


# --- the tiling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,patch,overlap", [(100, 32, 0.5), (96, 48, 0.5), (240, 96, 0.5), (33, 32, 0.5),
                                                (70, 16, 0.25), (50, 7, 0.5), (64, 64, 0.5), (20, 32, 0.5)])
def test_tile_starts_cover_the_axis(size, patch, overlap):
    starts = tile_starts(size, patch, overlap)
    if size <= patch:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] == size - patch
    steps = np.diff(starts)
    assert (steps > 0).all() and (steps <= int(patch * (1 - overlap))).all()
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all()


# --- stitching ------------------------------------------------------------------------------------

def test_patch_covering_the_volume_is_one_forward(net):
    img = image(PATCH)
    probs = predict_case(net, img, patch_size=PATCH)
    assert probs.shape == (3,) + PATCH and probs.dtype == torch.float32 and probs.device.type == "cpu"
    torch.testing.assert_close(probs, softmax_full(net, torch.from_numpy(img)[None, None]), rtol=0, atol=1e-5)
    assert net.training  # the model's mode is restored


def test_pointwise_model_gives_its_own_softmax_everywhere():
    # A 1x1x1 conv predicts each voxel from that voxel alone: every tile agrees, so the blend (weights
    # divided by their sum over all tiles) must give back the single-voxel softmax exactly, border to border.
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(1, 3, kernel_size=1)
    img = image((20, 35, 45), seed=1)
    expected = softmax_full(conv, torch.from_numpy(img)[None, None])
    for overlap, batch in ((0.5, 2), (0.25, 3), (0.0, 1)):
        probs = predict_case(conv, img, patch_size=PATCH, overlap=overlap, tile_batch=batch)
        torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,overlap,batch", [((16, 28, 40), 0.5, 2), ((12, 24, 21), 0.25, 3), ((10, 16, 30), 0.5, 1)])
def test_matches_the_tile_by_tile_definition(net, shape, overlap, batch):
    img = image(shape, seed=2)
    probs = predict_case(net, img, patch_size=PATCH, overlap=overlap, tile_batch=batch)
    torch.testing.assert_close(probs, reference_predict(net, img, PATCH, overlap), rtol=0, atol=1e-5)
    torch.testing.assert_close(probs.sum(0), torch.ones(shape), rtol=0, atol=1e-5)


def test_small_case_is_padded_and_cropped_back(net):
    shape = (5, 10, 24)  # smaller than the patch along z and y
    img = image(shape, seed=3)
    probs = predict_case(net, img, patch_size=PATCH)
    assert probs.shape == (3,) + shape
    torch.testing.assert_close(probs, reference_predict(net, img, PATCH, 0.5), rtol=0, atol=1e-5)
    # the padding is zeros, centred: predicting the padded volume and cropping gives the same
    padded = np.pad(img, [(1, 2), (3, 3), (0, 0)])
    torch.testing.assert_close(probs, predict_case(net, padded, patch_size=PATCH)[:, 1:6, 3:13], rtol=0, atol=1e-5)


def test_inputs_read_only_channel_first_and_strided(net, tmp_path):
    img = image((10, 24, 20), seed=4)
    expected = predict_case(net, img, patch_size=PATCH)
    path = tmp_path / "img.npy"
    np.save(path, img)
    mm = np.load(path, mmap_mode="r")  # how the cache hands images over
    torch.testing.assert_close(predict_case(net, mm, patch_size=PATCH), expected, rtol=0, atol=0)
    torch.testing.assert_close(predict_case(net, img[None], patch_size=PATCH), expected, rtol=0, atol=0)
    flipped = img[:, ::-1]  # negative strides
    torch.testing.assert_close(predict_case(net, flipped, patch_size=PATCH),
                               predict_case(net, flipped.copy(), patch_size=PATCH), rtol=0, atol=0)
    before = img.copy()
    predict_case(net, img, patch_size=PATCH)
    assert np.array_equal(img, before)  # the caller's array is never written


# --- mirroring ------------------------------------------------------------------------------------

def test_mirroring_averages_the_eight_flips(net):
    img = image(PATCH, seed=5)
    x = torch.from_numpy(img)[None, None]
    flips = [axes for r in (0, 1, 2, 3) for axes in itertools.combinations((2, 3, 4), r)]  # 8, no flip first
    # softmax_full drops the batch axis: input axis d is output axis d - 1
    expected = sum(softmax_full(net, x.flip(a)).flip([d - 1 for d in a]) for a in flips) / len(flips)
    probs = predict_case(net, img, patch_size=PATCH, mirror=True)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("axes, dims", [((2,), [(), (4,)]), ((1, 2), [(), (3,), (4,), (3, 4)])])
def test_mirroring_over_chosen_axes_averages_only_their_flips(net, axes, dims):
    """eval.mirror_axes [2] (left-right): the plain and the x-flipped prediction, 2 passes instead of 8."""
    img = image(PATCH, seed=7)
    x = torch.from_numpy(img)[None, None]
    expected = sum(softmax_full(net, x.flip(a)).flip([d - 1 for d in a]) for a in dims) / len(dims)
    probs = predict_case(net, img, patch_size=PATCH, mirror=True, mirror_axes=axes)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(probs, predict_case(net, img, patch_size=PATCH, mirror=True), atol=1e-4)


def test_mirroring_a_flip_equivariant_model_changes_nothing():
    torch.manual_seed(2)
    conv = torch.nn.Conv3d(1, 3, kernel_size=1)  # pointwise: commutes with every flip
    img = image((12, 20, 20), seed=6)
    torch.testing.assert_close(predict_case(conv, img, patch_size=PATCH, mirror=True),
                               predict_case(conv, img, patch_size=PATCH), rtol=0, atol=1e-6)
