"""FairDRO: the dMoE layers (routing by group, noisy top-k) and the subgroup-conditioned DRO loss."""
import math

import pytest
import torch

from mitigations.dro import GroupDRO, empirical_var, rockafellar_uryasev
from models import build_model
from mitigations.dmoe import DMoE, resolve_stages

TINY = {"name": "nnunet", "base_features": 4, "max_features": 16}
PATCH = (16, 32, 32)


# --- DRO loss ------------------------------------------------------------------------------------

def test_alpha_one_and_eta_zero_is_the_plain_mean():
    torch.manual_seed(0)
    dro = GroupDRO(n_groups=3, cvar_level=1.0, eta=0.0)
    for _ in range(4):
        losses = torch.rand(7)
        groups = torch.tensor([0, 0, 0, 1, 2, 2, 0])   # unequal groups
        torch.testing.assert_close(dro(losses, groups), losses.mean())
    torch.testing.assert_close(dro.q, torch.full((3,), 1 / 3))


def test_hand_made_batch_gives_the_hand_computed_cvar_and_gradient():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], requires_grad=True)
    assert empirical_var(losses, 0.4) == 4.0          # k = ceil(0.4 * 5) = 2 worst: 5 and 4
    cvar = rockafellar_uryasev(losses, 4.0, 0.4)
    assert cvar.item() == pytest.approx(4.5)          # their mean
    for tau in (2.0, 3.0, 3.5, 5.0):                  # the threshold form is never below the CVaR
        assert rockafellar_uryasev(losses, tau, 0.4).item() >= 4.5 - 1e-6
    # the gradient: 1 / (alpha n) on the samples above the threshold. At tau = 4 a sample sits
    # exactly on it, where (l - tau)+ has no derivative (torch versions pick different
    # subgradients), so take tau strictly inside the flat stretch [3, 4] of the RU objective,
    # where the value is the same CVaR and the gradient is unique: the two worst, as for the mean
    # of the worst two.
    inside = rockafellar_uryasev(losses, 3.5, 0.4)
    assert inside.item() == pytest.approx(4.5)
    inside.backward()
    torch.testing.assert_close(losses.grad, torch.tensor([0, 0, 0, 0.5, 0.5]))
    # the first batch of a group starts its threshold at that batch's quantile: the exact batch CVaR
    dro = GroupDRO(n_groups=1, cvar_level=0.4, eta=0.0)
    assert dro(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.zeros(5)).item() == pytest.approx(4.5)


def test_the_threshold_follows_the_groups_alpha_quantile_with_one_sample_per_step():
    torch.manual_seed(0)
    dro = GroupDRO(n_groups=1, cvar_level=0.2, eta=0.0, tau_lr=0.01)
    for _ in range(6000):
        dro(torch.rand(1), torch.zeros(1))           # uniform [0, 1): the 0.2-tail starts at 0.8
    assert dro.tau[0].item() == pytest.approx(0.8, abs=0.05)
    for _ in range(6000):
        dro(0.5 * torch.rand(1), torch.zeros(1))     # losses fall: the threshold follows them down
    assert dro.tau[0].item() == pytest.approx(0.4, abs=0.05)


def test_weights_move_toward_the_group_with_the_larger_loss():
    dro = GroupDRO(n_groups=2, cvar_level=0.5, eta=0.1)
    losses = torch.tensor([0.2, 0.4, 1.0, 3.0])   # first batch: group 0 tail 0.4, group 1 tail 3.0
    groups = torch.tensor([0, 0, 1, 1])
    loss = dro(losses, groups)
    q = torch.tensor([math.exp(0.1 * 0.4), math.exp(0.1 * 3.0)])
    q = q / q.sum()
    torch.testing.assert_close(dro.q, q)
    # w_g = q_g * n_g / sum(q_h * n_h), equal n: the tails weighted by q
    assert loss.item() == pytest.approx(float(q[0] * 0.4 + q[1] * 3.0))
    for _ in range(20):
        dro(losses, groups)
    assert dro.q[1] > 0.7


def test_a_group_missing_from_the_batch_keeps_its_weight_ratio():
    dro = GroupDRO(n_groups=3, cvar_level=1.0, eta=0.5)
    loss = dro(torch.tensor([2.0, 4.0]), torch.tensor([1, 1]))
    assert loss.item() == pytest.approx(3.0)
    assert dro.q[0] == pytest.approx(dro.q[2]) and dro.q[1] > dro.q[0]
    assert math.isnan(dro.last_tail[0]) and dro.last_tail[1] == pytest.approx(3.0)


def test_dro_state_travels_in_the_state_dict():
    a = GroupDRO(n_groups=2, cvar_level=0.5, eta=0.2)
    a(torch.tensor([1.0, 5.0, 2.0]), torch.tensor([0, 1, 1]))
    b = GroupDRO(n_groups=2, cvar_level=0.5, eta=0.2)
    b.load_state_dict(a.state_dict())
    batch = (torch.tensor([3.0, 1.0]), torch.tensor([0, 1]))
    assert a(*batch).item() == b(*batch).item()
    torch.testing.assert_close(a.q, b.q)
    torch.testing.assert_close(a.tau, b.tau)


def test_bad_settings_and_groups_are_clear_errors():
    with pytest.raises(ValueError, match="cvar_level must be in"):
        GroupDRO(2, cvar_level=0.0)
    with pytest.raises(ValueError, match="out of range"):
        GroupDRO(2)(torch.ones(2), torch.tensor([0, 2]))


# --- dMoE ----------------------------------------------------------------------------------------

def moe_net(**moe):
    return build_model({**TINY, "moe": {"stages": [-2, -1], "groups": ["male", "female"], **moe}}, patch_size=PATCH)


def test_dmoe_blocks_start_as_the_identity():
    torch.manual_seed(0)
    plain = build_model(TINY, patch_size=PATCH)
    with_moe = moe_net()
    missing, unexpected = with_moe.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".moe." in k for k in missing)
    x = torch.randn(2, 1, *PATCH)
    plain.eval(), with_moe.eval()
    torch.testing.assert_close(with_moe(x, groups=torch.tensor([0, 1]))[0], plain(x)[0])


def test_each_group_uses_its_own_router_and_exactly_top_k_experts():
    torch.manual_seed(0)
    layer = DMoE(8, n_groups=2, experts=8, top_k=2, noise=False)
    torch.nn.init.normal_(layer.router.gate.weight)
    h = torch.randn(1, 8, 2, 3, 3)
    g0 = layer.router(h, torch.tensor([0]))
    g1 = layer.router(h, torch.tensor([1]))
    assert not torch.allclose(g0, g1)
    for gates in (g0, g1):
        assert ((gates > 0).sum(1) == 2).all()
        torch.testing.assert_close(gates.sum(1), torch.ones(1, 2, 3, 3))
    # router 1's logits are the second block of 8 gate channels
    logits1 = torch.nn.functional.conv3d(h, layer.router.gate.weight[8:])
    top = logits1.topk(2, dim=1)
    torch.testing.assert_close(g1.gather(1, top.indices), torch.softmax(top.values, dim=1))


def test_noise_only_in_training():
    torch.manual_seed(0)
    layer = DMoE(4, n_groups=1, experts=4, top_k=1)
    torch.nn.init.normal_(layer.router.noise_scale.weight)
    h = torch.randn(2, 4, 2, 2, 2)
    layer.eval()
    assert torch.equal(layer.router(h, torch.zeros(2, dtype=torch.long)), layer.router(h, torch.zeros(2, dtype=torch.long)))
    layer.train()
    assert not torch.equal(layer.router(h, torch.zeros(2, dtype=torch.long)), layer.router(h, torch.zeros(2, dtype=torch.long)))


def test_group_routing_needs_groups_and_plain_moe_does_not():
    x = torch.randn(1, 1, *PATCH)
    with pytest.raises(ValueError, match="routes by group"):
        moe_net()(x)
    assert moe_net().routes_by_group and not moe_net(router="shared").routes_by_group
    moe_net(router="shared")(x)  # one router for everyone
    with pytest.raises(ValueError, match="out of range"):
        moe_net()(x, groups=torch.tensor([2]))
    with pytest.raises(ValueError, match=r"moe has no option\(s\) \['expert'\]"):
        moe_net(expert=4)
    with pytest.raises(ValueError, match="not a stage"):
        resolve_stages([7], 4)


def test_balance_loss_is_zero_for_even_routing_and_positive_when_collapsed():
    layer = DMoE(4, n_groups=1, experts=4, top_k=4, noise=False, router="shared")  # zero gate weights: even split
    layer(torch.randn(2, 4, 2, 2, 2), None)
    assert layer.aux_loss.item() == pytest.approx(0.0, abs=1e-9)
    layer = DMoE(4, n_groups=1, experts=4, top_k=1, noise=False, router="shared")
    with torch.no_grad():
        layer.router.gate.weight.zero_()
        layer.router.gate.weight[0] = 1.0  # expert 0 wins where the features sum positive
    layer(torch.ones(2, 4, 2, 2, 2), None)
    assert layer.aux_loss.item() == pytest.approx(3.0)  # all weight on one of 4: CV^2 = 4 - 1
