"""The four networks: stage planning, output and deep-supervision shapes, backward, init, registry."""
import pytest
import torch

from models import MODELS, build_model
from models.blocks import AttentionGate
from models.planning import plan_stages

TINY = {"base_features": 4, "max_features": 16}


def test_plan_matches_spec_for_the_study_patch():
    plan = plan_stages((80, 160, 160))
    assert plan.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert plan.features == (32, 64, 128, 256, 320, 320)
    assert plan.bottleneck_size == (5, 5, 5)
    assert plan_stages((32, 32, 32)).strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert plan_stages((16, 32, 32)).strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_deep_supervision_and_backward(name):
    torch.manual_seed(0)
    net = build_model({"name": name, **TINY}, patch_size=(16, 32, 32), in_channels=1, num_classes=3)
    x = torch.randn(2, 1, 16, 32, 32)
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 32, 32), (2, 3, 8, 16, 16), (2, 3, 4, 8, 8)]
    sum(o.float().pow(2).mean() for o in outputs).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.deep_supervision = False
    single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, 16, 32, 32)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{name}: {n_params} parameters at base 4")
    assert n_params > 0


@pytest.mark.parametrize("name", ["nnunet", "unet", "attention_unet"])
def test_first_stage_convs_changes_only_the_full_resolution_stage_whatever_the_stage_count(name):
    for patch, stages in (((16, 32, 32), 4), ((32, 64, 64), 5)):
        net = build_model({"name": name, "first_stage_convs": 1, **TINY}, patch_size=patch)
        assert net.encoder.n_convs == [1] + [2] * (stages - 1)
        plain = build_model({"name": name, **TINY}, patch_size=patch)
        # one 3x3x3 conv at base 4 features (weights 4*4*27, bias 4) and its norm's scale and shift (2*4),
        # in the encoder and in the decoder derived from it
        removed = sum(p.numel() for p in plain.parameters()) - sum(p.numel() for p in net.parameters())
        assert removed == 2 * (4 * 4 * 27 + 4 + 2 * 4)
    with pytest.raises(ValueError, match="first_stage_convs must be 1 or more"):
        build_model({"name": name, "first_stage_convs": 0, **TINY}, patch_size=(16, 32, 32))


def test_full_size_parameter_counts():
    # nnU-Net's KiTS19 3d_fullres plain U-Net has ~31 M parameters at 6 stages, 32..320 features.
    net = build_model({"name": "nnunet"}, patch_size=(80, 160, 160))
    assert 30e6 < sum(p.numel() for p in net.parameters()) < 32e6


def test_nnunet_init_zero_bias_and_kaiming_scale():
    net = build_model({"name": "nnunet", **TINY}, patch_size=(16, 32, 32))
    conv = net.encoder.stages[1][0][0].conv
    assert torch.count_nonzero(conv.bias) == 0
    fan_in = conv.weight[0].numel()
    expected_std = (2 / (1 + 0.01 ** 2) / fan_in) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.15)


def test_attention_gate_formula():
    gate = AttentionGate(skip_channels=2, gate_channels=3, inter_channels=4)
    x, g = torch.randn(1, 2, 4, 4, 4), torch.randn(1, 3, 4, 4, 4)
    psi = torch.sigmoid(gate.psi(torch.relu(gate.w_x(x) + gate.w_g(g))))
    torch.testing.assert_close(gate(x, g), x * psi)
    coarse = torch.randn(1, 3, 2, 2, 2)  # the gating signal comes from a coarser level
    assert gate(x, coarse).shape == x.shape


def test_registry_errors_list_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet'; valid: nnunet, unet, vnet, attention_unet"):
        build_model({"name": "resnet"}, patch_size=(16, 32, 32))
    with pytest.raises(ValueError, match=r"model 'nnunet' has no option\(s\) \['base_feature'\]"):
        build_model({"name": "nnunet", "base_feature": 8}, patch_size=(16, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the network's total stride"):
        build_model({"name": "nnunet", "strides": [[1, 1, 1], [2, 2, 2]], "features": [4, 8]}, patch_size=(15, 32, 32))


def test_amp_settings_on_cpu_autocast_only_when_asked():
    """auto stays fp32 on the CPU (results must not depend on the CPU model); bf16 is explicit."""
    from config import ConfigError
    from engine.runtime import amp_settings, cpu_has_native_bf16
    cpu = torch.device("cpu")
    assert amp_settings("auto", cpu) == (None, False)
    assert amp_settings("off", cpu) == (None, False)
    native = (torch.bfloat16, False) if cpu_has_native_bf16() else (None, False)
    assert amp_settings("bf16", cpu) == native
    assert amp_settings("fp16", cpu) == (None, False)
    with pytest.raises(ConfigError, match="train.amp must be auto, bf16, fp16 or off, got 'half'"):
        amp_settings("half", cpu)


def test_bf16_channels_last_step_matches_fp32_closely():
    """The demo's CPU setting (bf16 autocast, channels-last) computes the same network."""
    torch.manual_seed(0)
    net = build_model({"name": "nnunet", "base_features": 4, "max_features": 16}, patch_size=(16, 32, 32))
    x = torch.randn(2, 1, 16, 32, 32)
    ref = net(x)[0]
    fast = net.to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x.contiguous(memory_format=torch.channels_last_3d))[0].float()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_large_kernels_compute_in_fp32_under_cpu_bf16_autocast():
    """torch 2.13's CPU bf16 conv3d gave non-finite weight gradients at random for 5x5x5 kernels:
    those convolutions leave autocast; 3x3x3 ones stay in bf16."""
    from models.blocks import ConvNormAct
    big, small = ConvNormAct(2, 4, kernel_size=5), ConvNormAct(2, 4, kernel_size=3)
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert big.conv(x).dtype == torch.bfloat16          # what plain autocast would do
        assert big(x).dtype == torch.float32 and small(x).dtype == torch.bfloat16
    assert big.fp32_on_cpu and not small.fp32_on_cpu
