"""Fair meta-learning branch: the classifier shapes the segmenter only through its softmax."""
import pytest
import torch

from mitigations.fairmeta import FairMetaBranch
from models.densenet import DenseNet3d


def test_densenet_shapes_and_channels():
    net = DenseNet3d(in_channels=4, num_classes=4, growth_rate=4, block_config=(2, 3), init_features=8)
    assert net(torch.randn(3, 4, 16, 32, 32)).shape == (3, 4)
    # channels: 8 + 2*4 = 16 -> transition 8 -> + 3*4 = 20 features into the linear layer
    assert net.classifier.in_features == 20


def _grads(branch, seg_logits, image, groups):
    seg_logits = seg_logits.clone().requires_grad_(True)
    loss, logits = branch(image, seg_logits, groups)
    loss.backward()
    return loss, logits, seg_logits.grad


def test_input_modes_and_gradient_reversal():
    torch.manual_seed(0)
    image, seg = torch.randn(2, 1, 8, 16, 16), torch.randn(2, 3, 8, 16, 16)
    groups = torch.tensor([0, 1])
    branch = FairMetaBranch(groups=["male", "female"], input="softmax+image", growth_rate=4)
    loss, logits, grad = _grads(branch, seg, image, groups)
    assert logits.shape == (2, 2)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, groups).item())
    assert grad is not None and grad.abs().sum() > 0          # L_cls reaches the segmenter
    branch.adversarial = True
    _, _, reversed_grad = _grads(branch, seg, image, groups)
    torch.testing.assert_close(reversed_grad, -grad)          # gradient reversal flips it exactly
    image_only = FairMetaBranch(groups=["male", "female"], input="image", growth_rate=4)
    _, _, no_grad = _grads(image_only, seg, image, groups)
    assert no_grad is None                                    # the control leaves the segmenter alone
    with pytest.raises(ValueError, match="unknown fair-meta input 'mask'; valid: softmax\\+image, image"):
        FairMetaBranch(groups=["a", "b"], input="mask")
