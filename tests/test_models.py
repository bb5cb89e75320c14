"""Model zoo invariants, parametrized over every registered name so new models are covered on registration."""

from __future__ import annotations

import pytest
import torch
import torch.fx

from prunekit.errors import ConfigError
from prunekit.models import MODELS, create_model

# Big models are built at a quarter width so the whole file stays fast on a shared CPU.
SMALL = {"width": 0.25}


def _kwargs(name: str) -> dict:
    return SMALL if name.startswith(("vgg", "resnet")) else {}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_output_shape(name, shape):
    torch.manual_seed(0)
    model = create_model(name, in_channels=shape[0], num_classes=7, image_size=shape[1:], **_kwargs(name))
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_fx_trace_matches_eager(name):
    torch.manual_seed(0)
    model = create_model(name, **_kwargs(name)).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", MODELS.names())
def test_deterministic_under_seed(name):
    torch.manual_seed(3)
    a = create_model(name, **_kwargs(name)).state_dict()
    torch.manual_seed(3)
    b = create_model(name, **_kwargs(name)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "name, expected",
    [("lenet300", 266_610), ("lenet-300-100", 266_610), ("lenet5", 431_080), ("lenet-5", 431_080)],
)
def test_lenet_param_counts(name, expected):
    assert _n_params(create_model(name)) == expected


def test_resnet20_size_and_option_b_shortcuts():
    model = create_model("resnet20", in_channels=3)
    # 269,722 with option-A shortcuts + two 1x1 conv/BN shortcuts (16*32 + 32*64 + 2*(32+64)).
    assert _n_params(model) == 269_722 + 2_560 + 192
    shortcuts = [m for n, m in model.named_modules() if n.endswith("shortcut.0")]
    assert len(shortcuts) == 2 and all(isinstance(m, torch.nn.Conv2d) for m in shortcuts)


def test_resnet_depth():
    for depth in (20, 32, 56):
        model = create_model(f"resnet{depth}", **SMALL)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(convs) + 1 == depth  # 3x3 convs + the final Linear (shortcuts not counted)


def test_width_scales_channels_with_floor_of_one():
    model = create_model("vgg11", width=0.001)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.out_channels == 1 for m in convs)
    assert create_model("vgg16", width=0.5).classifier.in_features == 256


def test_vgg_skips_pools_on_small_inputs():
    def pools(size):
        model = create_model("vgg11", image_size=size, **SMALL)
        return sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())

    assert pools((32, 32)) == 5  # 32 -> 1
    assert pools((28, 28)) == 4  # 28 -> 14 -> 7 -> 3 -> 1, the fifth is skipped


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match="Did you mean 'resnet20'"):
        create_model("resnet-20")


def test_unknown_option_is_config_error():
    with pytest.raises(ConfigError, match="widht"):
        create_model("vgg11", widht=0.5)
    with pytest.raises(ConfigError, match="image_size"):
        create_model("lenet5", image_size=(8, 8))
