"""Students: every architecture builds and trains (forward + backward) at every resolution."""

from functools import partial

import pytest
import torch
from torch import nn

from eval.students import (
    RESOLUTIONS,
    AvgPool2,
    ConvNet,
    ResNet18,
    ResNetAP,
    arch_name,
    convnet_depth,
    timm_student,
    with_normalization,
)


def forward_backward(net: nn.Module, channels: int, res: int, batch: int = 2) -> torch.Tensor:
    out = net(torch.rand(batch, channels, res, res))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    return out


@pytest.mark.parametrize("res", RESOLUTIONS)
@pytest.mark.parametrize(
    "build",
    [partial(ConvNet, width=8), partial(ResNetAP, width=8), partial(ResNet18, width=8)],
    ids=["convnet", "resnet_ap10", "resnet18"],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_students_run_at_every_resolution(build, res, channels):
    out = forward_backward(build(channels, 10, res), channels, res)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("build", [ConvNet, ResNetAP, ResNet18])
def test_students_at_paper_width(build):
    out = forward_backward(build(3, 10, 32), 3, 32)
    assert out.shape == (2, 10)


def test_convnet_uses_instance_norm_and_one_pool_per_layer():
    net = ConvNet(3, 10, 224)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert convnet_depth(224) == 6 and len(norms) == 6
    assert all(m.num_groups == m.num_channels == 128 for m in norms)


@pytest.mark.parametrize("shape", [(4, 3, 28, 28), (4, 3, 7, 7), (2, 5, 6, 8), (2, 5, 6, 9), (3, 2, 3, 4)])
def test_avg_pool2_is_bitwise_the_library_kernel(shape):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 1e3).requires_grad_()
    ref = nn.functional.avg_pool2d(x, 2)
    ours = AvgPool2()(x)
    grad = torch.randn_like(ref)
    assert ours.shape == ref.shape and torch.equal(ours, ref)
    assert torch.equal(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])


def test_convnet_trains_identically_with_the_library_pool():
    nets = [ConvNet(1, 10, 28, width=8) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for i, m in enumerate(nets[1].features):
        if isinstance(m, AvgPool2):
            nets[1].features[i] = nn.AvgPool2d(2)
    x = torch.rand(6, 1, 28, 28)
    for net in nets:
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            net(x).logsumexp(1).sum().backward()
            opt.step()
    ours, library = (net.state_dict().values() for net in nets)
    assert all(torch.equal(a, b) for a, b in zip(ours, library))


@pytest.mark.parametrize("res, pools_in_intro, kernel", [(32, 0, 3), (64, 0, 3), (128, 1, 3), (224, 1, 7)])
def test_resnet_ap10_intro_block_by_resolution(res, pools_in_intro, kernel):
    net = ResNetAP(3, 10, res)
    assert net.layer0[0].kernel_size == (kernel, kernel) and net.layer0[0].stride == (1, 1)
    assert sum(isinstance(m, (nn.AvgPool2d, AvgPool2)) for m in net.layer0) == pools_in_intro
    if res == 224:
        assert net.layer0[3].kernel_size == 4
    blocks = [m for m in net.modules() if m.__class__.__name__ == "APBlock"]
    assert len(blocks) == 4 and [b.conv1.out_channels for b in blocks] == [64, 128, 256, 512]
    # no strided convolutions: downsampling is average pooling
    assert all(m.stride == (1, 1) for m in net.modules() if isinstance(m, nn.Conv2d))
    assert all(m.num_groups == m.num_channels for m in net.modules() if isinstance(m, nn.GroupNorm))


def test_resnet18_matches_torchvision_layout():
    import torchvision

    ours = ResNet18(3, 1000, 224, norm="batch").state_dict()
    theirs = torchvision.models.resnet18().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    small = ResNet18(3, 10, 32)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    assert isinstance(small.bn1, nn.GroupNorm)


@pytest.mark.parametrize(
    "name, res",
    [
        ("resnet50", 32),
        ("resnet101", 32),
        ("mobilenetv2_100", 32),
        ("efficientnet_b0", 32),
        ("swin_tiny_patch4_window7_224", 64),
        ("vit_base_patch16_224", 32),
        ("resnet50", 224),
    ],
)
def test_timm_students_by_name(name, res):
    net = timm_student(3, 10, res, name=name, width=16)  # width is ignored for timm models
    assert forward_backward(net, 3, res, batch=1 if res == 224 else 2).shape[-1] == 10


def test_unknown_timm_model_is_one_line_error():
    from ddcore.errors import UserError

    with pytest.raises(UserError, match="unknown timm model 'resnet5O'"):
        timm_student(3, 10, 32, name="resnet5O")


def test_normalization_is_inside_the_network_and_names_are_stable():
    net = with_normalization(nn.Identity(), 3)
    x = torch.full((1, 3, 2, 2), 0.485)
    assert net(x)[0, 0].abs().max() < 1e-6
    assert (
        arch_name(partial(ResNet18, width=64, norm="batch", small_stem=None))
        == "ResNet18(norm=batch,width=64)"
    )
    assert arch_name(partial(timm_student, name="resnet50", width=None)) == "timm:resnet50()"
