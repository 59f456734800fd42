"""Patches and augmentation: alignment of image and label, pos/neg crops, seeding, probabilities."""
import numpy as np
import pytest
import torch

from data.augment import Augmenter, AugmentSettings, gaussian_smooth, zoom
from data.patches import PatchDataset, crop_window, read_window
from data.preprocessing import PreprocessSettings, run_preprocessing
from mitigations import method_names
from mitigations.samplers import ResampledSampler, StratifiedSampler, uniform_sampler
from tests.kits_fixtures import write_tiny_cohort

ALL_ON = AugmentSettings(zoom_p=1.0, noise_p=0.0, smooth_p=0.0, scale_p=1.0, flip_p=0.5)


def test_spatial_transforms_keep_a_label_coloured_image_aligned():
    # The image *is* the label (as float): after zoom and flips they must still agree voxel by voxel.
    rng = np.random.default_rng(0)
    label = torch.from_numpy(rng.integers(0, 3, (12, 20, 24))).long()
    label = torch.nn.functional.max_pool3d(label[None, None].float(), 3, 1, 1)[0, 0].long()  # blobs
    aug = Augmenter(AugmentSettings(zoom_p=1.0, noise_p=0, smooth_p=0, scale_p=0, flip_p=0.5))
    for seed in range(10):
        image, out_label = aug(label[None].float(), label.clone(), np.random.default_rng(seed))
        assert image.shape == (1, 12, 20, 24) and out_label.shape == (12, 20, 24)
        interior = (image[0] - image[0].round()).abs() < 1e-6  # trilinear mixes at boundaries only
        agree = (image[0].round().long() == out_label)[interior].float().mean().item()
        assert agree > 0.97


def test_zoom_keeps_size_and_scales_about_the_centre():
    label = torch.zeros(20, 20, 20, dtype=torch.long)
    label[6:14, 6:14, 6:14] = 1
    image, zoomed = zoom(label[None].float(), label, 1.2)
    assert zoomed.shape == (20, 20, 20)
    assert 8 ** 3 < zoomed.sum() <= 10 ** 3          # the cube grew (8 -> 9.6 voxels per side)
    assert zoomed[10, 10, 10] == 1 and zoomed[0, 0, 0] == 0


def test_smoothing_preserves_mean_and_constants():
    const = torch.full((1, 8, 8, 8), 3.0)
    torch.testing.assert_close(gaussian_smooth(const, (0.5, 1.0, 1.15)), const)
    spike = torch.zeros(1, 9, 9, 9)
    spike[0, 4, 4, 4] = 1
    blurred = gaussian_smooth(spike, (1.0, 1.0, 1.0))
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and blurred.max() < 0.1


def test_transform_probabilities_match_the_settings():
    # flips fire with p = 0.5 per axis: count them over many seeds by flipping a ramp
    ramp = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 4, 4).contiguous()
    label = torch.zeros(4, 4, 4, dtype=torch.long)
    aug = Augmenter(AugmentSettings(zoom_p=0, noise_p=0, smooth_p=0, scale_p=0, flip_p=0.5))
    flipped = sum(aug(ramp, label, np.random.default_rng(s))[0][0, 0, 0, 0].item() == 3.0 for s in range(2000))
    assert abs(flipped / 2000 - 0.5) < 0.04
    scale = Augmenter(AugmentSettings(zoom_p=0, noise_p=0, smooth_p=0, scale_p=0.15, flip_p=0))
    ones = torch.ones(1, 2, 2, 2)
    scaled = [scale(ones, label[:2, :2, :2], np.random.default_rng(s))[0][0, 0, 0, 0].item() for s in range(4000)]
    changed = [v for v in scaled if v != 1.0]
    assert abs(len(changed) / 4000 - 0.15) < 0.02
    assert min(changed) >= 0.7 - 1e-6 and max(changed) <= 1.3 + 1e-6


def test_crop_window_pads_small_cases_and_stays_inside():
    starts, padded = crop_window((10, 50, 50), (16, 32, 32), centre=(0, 49, 25))
    assert padded == [16, 50, 50]
    assert starts == [-3, 18, 9]    # z: symmetric padding of 3; y: pushed back inside
    window = read_window(np.ones((10, 50, 50), np.float32), starts, (16, 32, 32))
    assert window.shape == (16, 32, 32) and window[:3].sum() == 0 and window[3:13].min() == 1


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    write_tiny_cohort(root / "raw", n_cases=4, shape=(24, 40, 48), spacing=(3.22, 1.62, 1.62))
    run_preprocessing(root / "raw", root / "cache", PreprocessSettings(), progress=False)
    return root / "cache"


def test_positive_crops_contain_foreground(cache):
    ids = ["case_00000", "case_00001"]
    pos_only = PatchDataset(cache, ids, patch_size=(8, 16, 16), augment=AugmentSettings.none(), neg_ratio=0.0)
    assert all(pos_only[(i % 2, s)]["label"].any() for i, s in enumerate(range(40)))
    balanced = PatchDataset(cache, ids, patch_size=(8, 16, 16), augment=AugmentSettings.none())
    with_fg = sum(bool(balanced[(0, s)]["label"].any()) for s in range(200))
    assert 0.45 < with_fg / 200 < 0.9  # half centred on foreground, plus background crops that touch it


def test_patches_are_a_function_of_their_seed(cache):
    ds = PatchDataset(cache, ["case_00000", "case_00001"], patch_size=(16, 32, 32), augment=AugmentSettings())
    a, b, c = ds[(1, 7)], ds[(1, 7)], ds[(1, 8)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    sampler = uniform_sampler(n_cases=2, batch_size=2, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2)
    first = [batch["image"] for batch in loader]
    again = [batch["image"] for batch in loader]
    assert all(torch.equal(x, y) for x, y in zip(first, again))   # same seed, same batches
    assert not torch.equal(first[0][0], first[0][1])                # no two workers/items alike


EVERY_TRANSFORM = AugmentSettings(zoom_p=0.5, noise_p=0.5, smooth_p=0.5, scale_p=0.5, flip_p=0.5)


@pytest.mark.parametrize("settings", [AugmentSettings(), EVERY_TRANSFORM], ids=["study", "every-transform"])
def test_augmenting_on_the_device_gives_the_loaders_patch_bit_for_bit(cache, settings):
    """train.augment_on: device draws each sample's plan in the worker (the same numbers, in the same
    order) and applies it on the trainer's device; on the CPU that is the loader's patch exactly."""
    from data.augment import PLAN_SIZE, apply_batch

    ids = ["case_00000", "case_00001", "case_00002"]
    loader_side = PatchDataset(cache, ids, patch_size=(16, 32, 32), augment=settings)
    device_side = PatchDataset(cache, ids, patch_size=(16, 32, 32), augment=settings, augment_on="device")
    keys = [(s % 3, 1000 + s) for s in range(24)]
    items = [device_side[k] for k in keys]
    assert all(item["augment"].shape == (PLAN_SIZE,) for item in items)
    batch = torch.utils.data.default_collate(items)
    image, label = apply_batch(settings, batch["image"], batch["label"], batch["augment"])
    expected = [loader_side[k] for k in keys]
    assert torch.equal(image, torch.stack([e["image"] for e in expected]))
    assert torch.equal(label, torch.stack([e["label"] for e in expected]))
    raw = PatchDataset(cache, ids, patch_size=(16, 32, 32), augment=AugmentSettings.none())
    assert sum(not torch.equal(i["image"], raw[k]["image"]) for i, k in zip(expected, keys)) >= 12   # they did act


def test_augment_on_names_its_choices():
    from config import ConfigError, load_config

    with pytest.raises(ConfigError, match="'train.augment_on' is one of loader, device"):
        load_config(None, ["train.augment_on=gpu"])
    with pytest.raises(ValueError, match="augment_on must be one of loader, device"):
        PatchDataset("unused", [], patch_size=(8, 8, 8), augment_on="gpu")


def test_uniform_sampler_epochs_and_ranks():
    sampler = uniform_sampler(n_cases=10, batch_size=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3
    assert sorted(i for b in batches for i, _ in b) == list(range(10))  # one pass over the cases
    sampler.set_epoch(1)
    assert [i for b in sampler for i, _ in b] != [i for b in batches for i, _ in b]
    ranks = [list(uniform_sampler(n_cases=10, batch_size=4, seed=0, rank=r, world_size=2))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    with pytest.raises(ValueError, match="unknown fairness.method 'balanced'; valid: none, resm, stratified"):
        method_names("balanced")
    with pytest.raises(ValueError, match="combines two samplers"):
        method_names(["resm", "stratified"])


SEX = ["male"] * 7 + ["female"] * 3                      # 10 training cases
AGE = ["[0,50)"] * 4 + ["[50,60)"] * 3 + ["[60,70)"] * 2 + [">=70"] * 5


def count_groups(sampler, groups, epochs=1):
    counts = {}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for index, _ in batch:
                counts[groups[index]] = counts.get(groups[index], 0) + 1
    return counts


@pytest.mark.parametrize("target, per_group", [("min", 3), ("max", 7), ("mean", 5)])
def test_resm_gives_every_group_the_same_count_each_epoch(target, per_group):
    sampler = ResampledSampler(target=target, redraw=True, n_cases=10, batch_size=2, seed=0, groups=SEX)
    assert sampler.group_counts() == {"female": per_group, "male": per_group}
    for epoch in range(3):
        assert count_groups(sampler, SEX) == {"male": per_group, "female": per_group}
        sampler.set_epoch(epoch + 1)
    # oversampling a group of 3 to 7 uses each of its cases twice or three times, never 0
    if target == "max":
        sampler.set_epoch(0)
        used = [i for b in sampler for i, _ in b if SEX[i] == "female"]
        assert sorted(set(used)) == [7, 8, 9] and max(used.count(i) for i in (7, 8, 9)) == 3


def test_resm_fixed_set_and_seed_reproducibility():
    make = lambda seed, redraw: ResampledSampler(target="min", redraw=redraw,  # noqa: E731
                                                 n_cases=10, batch_size=2, seed=seed, groups=SEX)
    fixed = make(0, False)
    males = []
    for epoch in range(3):
        fixed.set_epoch(epoch)
        males.append(sorted(i for b in fixed for i, _ in b if SEX[i] == "male"))
    assert males[0] == males[1] == males[2]               # the set is kept, only the order changes
    assert list(make(0, True)) == list(make(0, True))     # same seed, same batches
    assert list(make(0, True)) != list(make(1, True))


def test_stratified_batches_are_exactly_balanced():
    sampler = StratifiedSampler(n_cases=14, batch_size=4, seed=0, groups=AGE)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 4                            # ceil(14 / 4): one pass in batches
        for batch in batches:
            assert sorted(AGE[i] for i, _ in batch) == sorted(["[0,50)", "[50,60)", "[60,70)", ">=70"])
    sex = StratifiedSampler(n_cases=10, batch_size=4, seed=0, groups=SEX)
    assert count_groups(sex, SEX, epochs=5) == {"male": 30, "female": 30}   # 3 batches x (2 + 2) x 5
    with pytest.raises(ValueError, match="batch size divisible by the 4 groups"):
        StratifiedSampler(n_cases=14, batch_size=6, seed=0, groups=AGE)


def test_stratified_under_ddp_each_rank_stratified():
    ranks = [StratifiedSampler(n_cases=10, batch_size=2, seed=0, groups=SEX, rank=r,
                           world_size=2) for r in range(2)]
    for sampler in ranks:
        for batch in sampler:
            assert sorted(SEX[i] for i, _ in batch) == ["female", "male"]
    assert len(list(ranks[0])) == len(list(ranks[1]))


def _samplers(steps, **common):
    """Every sampler the study uses, with train.steps_per_epoch = steps (10 cases, 7 men, 3 women)."""
    base = dict(n_cases=10, batch_size=2, seed=3, steps_per_epoch=steps, **common)
    return {"uniform": uniform_sampler(**base),
            **{f"resm {t}{'' if r else ' once'}": ResampledSampler(groups=SEX, target=t, redraw=r, **base)
               for t in ("min", "max", "mean") for r in (True, False)},
            "stratified": StratifiedSampler(groups=SEX, **base)}


@pytest.mark.parametrize("steps", [1, 7, 16])
def test_steps_per_epoch_gives_every_sampler_the_same_number_of_batches(steps):
    for name, sampler in _samplers(steps).items():
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler) == steps, name
            assert all(len(b) == 2 for b in batches), name
            if name == "stratified":
                assert all(sorted(SEX[i] for i, _ in b) == ["female", "male"] for b in batches)
    # without it: one pass each, RESM's min target the shortest (3 women x 2 groups = 6 cases, 3 batches)
    passes = {name: len(s) for name, s in _samplers(None).items()}
    assert passes["uniform"] == passes["stratified"] == 5 and passes["resm min"] == 3 and passes["resm max"] == 7


def test_steps_per_epoch_runs_further_passes_like_fresh_epochs():
    sampler = uniform_sampler(n_cases=10, batch_size=2, seed=0, steps_per_epoch=12)   # 24 cases: 2.4 passes
    cases = [i for b in sampler for i, _ in b]
    assert sorted(cases[:10]) == sorted(cases[10:20]) == list(range(10)) and cases[:10] != cases[10:20]
    resm = ResampledSampler(groups=SEX, target="min", n_cases=10, batch_size=2, seed=0, steps_per_epoch=9)
    drawn = [SEX[i] for b in resm for i, _ in b]
    assert drawn[:6].count("female") == 3 and drawn[6:12].count("female") == 3     # each pass balanced
    with pytest.raises(ValueError, match="steps_per_epoch must be a whole number"):
        uniform_sampler(n_cases=10, batch_size=2, seed=0, steps_per_epoch=0)


@pytest.mark.parametrize("steps", [8, 7])
def test_steps_per_epoch_is_the_total_over_ddp_ranks(steps):
    single = {name: [tuple(map(tuple, b)) for b in s] for name, s in _samplers(steps).items()}
    ranks = [_samplers(steps, rank=r, world_size=2) for r in range(2)]
    for name in single:
        parts = [[tuple(map(tuple, b)) for b in r[name]] for r in ranks]
        assert len(parts[0]) == len(parts[1]) == len(ranks[0][name]) == -(-steps // 2), name
        together = [b for pair in zip(*parts) for b in pair]
        # the ranks share one plan: the single process's batches, padded by repeating from the start
        assert together[:steps] == single[name] and together[steps:] == single[name][:len(together) - steps], name


def test_an_epochs_plan_is_the_same_after_a_resume():
    for name, sampler in _samplers(9).items():
        sampler.set_epoch(4)
        again = _samplers(9)[name]
        again.set_epoch(4)
        assert list(sampler) == list(again), name
