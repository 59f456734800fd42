"""Dice + CE and deep supervision against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, downsample_target


def test_deep_supervision_weights_follow_nnunet():
    # 1, 1/2, 1/4, 0 normalised by 1.75
    assert deep_supervision_weights(4) == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert deep_supervision_weights(1) == [1.0]


def test_perfect_confident_prediction_has_near_zero_loss():
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3, 1:3] = 1
    target[0, 1, 1, 1] = 2
    logits = F.one_hot(target, 3).movedim(-1, 1).float() * 50
    loss = DiceCELoss()(logits, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_soft_dice_and_ce():
    # uniform logits: p = 1/3 everywhere; 8 voxels, 2 of class 1, none of class 2
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    target[0, 0, 0, :] = 1
    logits = torch.zeros(1, 3, 2, 2, 2)
    loss_fn = DiceCELoss(smooth=1e-5)
    ce = math.log(3)
    dice1 = (2 * 2 / 3 + 1e-5) / (8 / 3 + 2 + 1e-5)
    dice2 = (0 + 1e-5) / (8 / 3 + 0 + 1e-5)
    expected = ce + 1 - (dice1 + dice2) / 2
    assert loss_fn(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert loss_fn.per_sample(logits, target).shape == (1,)


def test_per_sample_versus_batch_dice():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 4, 4, 4)
    target = torch.randint(0, 3, (3, 4, 4, 4))
    per_sample = DiceCELoss().per_sample(logits, target)
    assert DiceCELoss()(logits, target).item() == pytest.approx(per_sample.mean().item(), rel=1e-6)
    for i in range(3):  # each sample's loss is the loss of that sample alone
        assert per_sample[i].item() == pytest.approx(DiceCELoss()(logits[i:i + 1], target[i:i + 1]).item(), rel=1e-6)
    batch = DiceCELoss(batch_dice=True)(logits, target)
    assert batch.item() != pytest.approx(per_sample.mean().item(), rel=1e-3)


def test_deep_supervision_combines_levels_with_weights():
    torch.manual_seed(1)
    target = torch.randint(0, 3, (2, 8, 8, 8))
    outputs = [torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2)]
    base = DiceCELoss()
    criterion = DeepSupervisionLoss(base, n_outputs=3)
    total, per_level = criterion(outputs, target)
    w = deep_supervision_weights(3)  # 2/3, 1/3, 0
    expected = w[0] * base(outputs[0], target) + w[1] * base(outputs[1], downsample_target(target, (4, 4, 4)))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert len(per_level) == 3
    assert criterion.per_sample(outputs, target).mean().item() == pytest.approx(total.item(), rel=1e-5)


def test_downsampled_target_is_nearest():
    target = torch.arange(8).repeat_interleave(2).reshape(1, 1, 1, 16).expand(1, 2, 2, 16) % 3
    small = downsample_target(target, (1, 1, 8))
    assert small.tolist() == [[[[0, 1, 2, 0, 1, 2, 0, 1]]]]


def test_skip_absent_leaves_classes_missing_from_a_sample_out_of_its_dice():
    loss = DiceCELoss(ce_weight=0.0)
    target = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    target[0, :2] = 1                       # sample 0: kidney only; sample 1: background only
    logits = torch.full((2, 3, 4, 4, 4), -5.0)
    logits[:, 0] = 5.0
    logits[0, 1, :2], logits[0, 0, :2] = 5.0, -5.0   # kidney predicted exactly where it is
    plain = loss.per_sample(logits, target)
    skip = loss.per_sample(logits, target, skip_absent=True)
    # smooth 1e-5: an absent class's soft Dice is ~0 however right the prediction is
    assert plain[0] == pytest.approx(0.5, abs=0.01) and plain[1] == pytest.approx(1.0, abs=0.01)
    assert skip[0] == pytest.approx(0.0, abs=0.01) and skip[1] == 0.0   # only kidney counts; nothing to score
