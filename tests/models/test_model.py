import contextlib
import io

import pytest
import torch

import seed_nin
from helpers import SEED_SHAPE_WALK
from nin.models.nin import NiN, feature_sizes, init_weights, layer_summary, min_resize, nin_block


def test_seed_shape_walk_runs_unchanged_and_prints_the_seeds_shapes():
    net = NiN()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # the seed's cell, unchanged
        X = torch.rand((1, 1, 224, 224))
        for layer in net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)
    assert out.getvalue().splitlines() == SEED_SHAPE_WALK.splitlines()


def test_parameter_count_is_the_seeds():
    assert sum(p.numel() for p in NiN().parameters()) == 1_992_166
    assert sum(p.numel() for p in seed_nin.seed_net().parameters()) == 1_992_166


def test_nin_block_matches_the_seed():
    assert repr(nin_block(3, 8, 5, 2, 1)) == repr(seed_nin.nin_block(3, 8, 5, 2, 1))
    assert repr(NiN()).replace("NiN", "Sequential") == repr(seed_nin.seed_net())


@pytest.mark.parametrize("direction", ["seed->ours", "ours->seed"])
def test_state_dict_moves_both_ways_with_identical_outputs(direction):
    torch.manual_seed(0)
    ours, seed = NiN(), seed_nin.seed_net()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in seed.state_dict().items()}
    src, dst = (seed, ours) if direction == "seed->ours" else (ours, seed)
    dst.load_state_dict(src.state_dict())  # strict: same keys, same shapes
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    x = torch.rand(2, 1, 224, 224)
    class_maps_src, class_maps_dst = src.eval()[:-2](x), dst.eval()[:-2](x)  # (2, 10, 5, 5), before pooling
    assert class_maps_src.abs().sum() > 0  # a real signal, not all-dead ReLUs
    assert torch.equal(class_maps_src, class_maps_dst)


def test_a_trained_checkpoint_loads_into_the_seeds_sequential(trained_run):
    """The README's recipe: a `nin train` checkpoint's weights in the notebook's own nn.Sequential."""
    from nin.api import load

    seed = seed_nin.seed_net().eval()
    seed.load_state_dict(torch.load(trained_run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"])
    run = load(trained_run)
    ours, config = run.model, run.config
    x = torch.rand(4, 1, config.resize, config.resize)
    with torch.no_grad():
        assert torch.equal(seed(x), ours(x))


def test_init_weights_is_xavier_uniform_on_conv_weights_only():
    torch.manual_seed(0)
    net = NiN()
    bias_before = net[0][0].bias.clone()
    net.apply(init_weights)
    conv = net[2][0]  # 96 -> 256, 5x5
    fan_in, fan_out = 96 * 25, 256 * 25
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.95 * bound  # spread over the whole Xavier range
    assert torch.equal(net[0][0].bias, bias_before)  # biases keep PyTorch's default, as in d2l


def test_summary_totals_and_shapes():
    rows = layer_summary(NiN(), 224)
    assert len(rows) == 10
    assert sum(r["params"] for r in rows) == 1_992_166
    assert round(sum(r["macs"] for r in rows) / 1e9, 3) == 0.762
    assert rows[0]["macs"] == 96 * 54 * 54 * 121 + 2 * 96 * 54 * 54 * 96  # 11x11 conv + two 1x1 convs
    assert rows[-1]["output_shape"] == (1, 10)


def test_min_resize_is_the_smallest_size_that_runs():
    net = NiN().eval()
    smallest = min_resize(net)
    assert smallest == 67
    assert feature_sizes(net, smallest)[-1] == 1
    with torch.no_grad():
        assert net(torch.zeros(1, 1, smallest, smallest)).shape == (1, 10)
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 1, smallest - 1, smallest - 1))


def test_configurable_classes_channels_dropout():
    net = NiN(in_channels=3, num_classes=7, dropout=0.2)
    assert net(torch.zeros(2, 3, 96, 96)).shape == (2, 7)
    assert net[6].p == 0.2


def test_nin_bn_is_a_nin_for_28x28_input():
    from nin.models.nin import nin_bn
    from nin.models.registry import build

    net = nin_bn(width=16)
    maps = net[:-2](torch.zeros(2, 1, 28, 28))
    assert maps.shape == (2, 10, 3, 3)  # 28 -> 14 -> 7 -> 3, then the class maps
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 12 and all(c.bias is None for c in convs)  # BatchNorm's shift replaces the bias
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 12
    assert [c.out_channels for c in convs[::3]] == [16, 32, 64, 10]
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())  # no fully connected layer
    assert type(build("nin")) is type(net) and build("nin-bn", width=16).state_dict().keys() == net.state_dict().keys()


def test_an_unknown_architecture_is_one_error_naming_the_known_ones():
    from nin.errors import NinError
    from nin.models.registry import ARCHS, build

    with pytest.raises(NinError, match="unknown architecture 'nin-pape'; choose from " + ", ".join(ARCHS)):
        build("nin-pape")
    assert [type(build(arch, width=4)).__name__ for arch in ARCHS] == ["NiN"] * len(ARCHS)
