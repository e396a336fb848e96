"""The classic CNNs of d2l's chapters: their layers, shapes and parameter counts at d2l's input sizes."""

import pytest
import torch

from nin.models.classic import alexnet, lenet, vgg11


def shapes(net, size):
    x, out = torch.zeros(1, 1, size, size), []
    for layer in net:
        x = layer(x)
        out.append(tuple(x.shape[1:]))
    return out


def test_lenet_is_d2ls():
    net = lenet()
    assert sum(p.numel() for p in net.parameters()) == 61_706  # d2l 7.6
    assert shapes(net, 28) == [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10), (16, 5, 5), (400,),
                               (120,), (120,), (84,), (84,), (10,)]  # fmt: skip


def test_alexnet_is_d2ls():
    net = alexnet()
    # conv 11712 + 614656 + 885120 + 1327488 + 884992, dense 26218496 + 16781312 + 40970
    assert sum(p.numel() for p in net.parameters()) == 46_764_746
    out = shapes(net, 224)
    assert [out[i] for i in (0, 2, 3, 5, 6, 8, 10, 12, 13, 14)] == [
        (96, 54, 54), (96, 26, 26), (256, 26, 26), (256, 12, 12), (384, 12, 12), (384, 12, 12), (256, 12, 12),
        (256, 5, 5), (6400,), (4096,)]  # fmt: skip


def test_vgg11_blocks_halve_the_size_and_ratio_divides_the_channels():
    assert shapes(vgg11(), 224)[:6] == [
        (64, 112, 112),
        (128, 56, 56),
        (256, 28, 28),
        (512, 14, 14),
        (512, 7, 7),
        (25088,),
    ]
    small = vgg11(224, ratio=4)
    assert shapes(small, 224)[:6] == [(16, 112, 112), (32, 56, 56), (64, 28, 28), (128, 14, 14), (128, 7, 7), (6272,)]
    # 8 conv layers; the dense head keeps its 4096 width
    assert sum(isinstance(m, torch.nn.Conv2d) for m in small.modules()) == 8
    assert small[6].out_features == 4096


@pytest.mark.parametrize("build", [lenet, alexnet, vgg11])
@pytest.mark.parametrize("size", [67, 99])
def test_the_dense_head_is_sized_for_the_input(build, size):
    assert build(size)(torch.zeros(2, 1, size, size)).shape == (2, 10)
