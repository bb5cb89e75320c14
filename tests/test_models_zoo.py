"""ImageNet-layout zoo: published sizes, torchvision's parameter names and shapes, small-input options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure import count_flops
from prunekit.models import create_model

# torchvision's published parameter counts at 1000 classes.
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                    "mobilenet_v2": 3_504_872, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta(name: str, **kw) -> nn.Module:
    """Build on the meta device: shapes only, no memory or init time (VGG is 138M params)."""
    with torch.device("meta"):
        return create_model(name, 3, 1000, (224, 224), **kw)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_param_counts(name):
    assert _params(_meta(name)) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name, macs", [("resnet18", 1_814_073_344), ("resnet50", 4_089_184_256),
                                        ("mobilenet_v2", 300_774_272)])
def test_published_macs_at_224(name, macs):
    # Published: 1.82 / 4.09 / 0.30 GMACs (torchvision's "GFLOPS" column).
    torch.manual_seed(0)
    assert count_flops(create_model(name, 3, 1000, (224, 224)), (3, 224, 224))["dense_macs"] == macs


# Spot checks against torchvision's state_dict: names, shapes and the entry count.
TORCHVISION_KEYS = {
    "resnet18": (122, {"conv1.weight": (64, 3, 7, 7), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                       "layer4.1.bn2.num_batches_tracked": (), "fc.weight": (1000, 512)}),
    "resnet50": (320, {"layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.conv3.weight": (256, 64, 1, 1),
                       "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer3.5.bn3.running_var": (1024,),
                       "fc.weight": (1000, 2048)}),
    "mobilenet_v2": (314, {"features.0.0.weight": (32, 3, 3, 3), "features.1.conv.0.0.weight": (32, 1, 3, 3),
                           "features.1.conv.1.weight": (16, 32, 1, 1), "features.2.conv.0.0.weight": (96, 16, 1, 1),
                           "features.2.conv.1.0.weight": (96, 1, 3, 3), "features.2.conv.2.weight": (24, 96, 1, 1),
                           "features.2.conv.3.running_mean": (24,), "features.18.0.weight": (1280, 320, 1, 1),
                           "classifier.1.weight": (1000, 1280)}),
    "vgg16_bn": (97, {"features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,), "features.1.running_var": (64,),
                      "features.7.weight": (128, 64, 3, 3), "features.40.weight": (512, 512, 3, 3),
                      "classifier.0.weight": (4096, 25088), "classifier.6.weight": (1000, 4096)}),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_torchvision_names_and_shapes(name):
    count, keys = TORCHVISION_KEYS[name]
    state = _meta(name).state_dict()
    assert len(state) == count
    assert {k: tuple(state[k].shape) for k in keys} == keys


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "vgg16_bn"])
def test_torchvision_state_dict_loads_strict(name):
    tv = pytest.importorskip("torchvision")
    theirs = getattr(tv.models, name)().state_dict()
    ours = create_model(name, 3, 1000, (224, 224))
    ours.load_state_dict(theirs, strict=True)


def test_resnet50_is_v1_5_stride_on_the_3x3():
    model = _meta("resnet50")
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_small_stems_keep_resolution():
    torch.manual_seed(0)
    r = create_model("resnet18", 3, 10, (32, 32), width=0.125, stem="small")
    assert r.conv1.kernel_size == (3, 3) and r.conv1.stride == (1, 1) and isinstance(r.maxpool, nn.Identity)
    shapes = []
    r.layer1.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    assert r(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shapes == [(2, 8, 32, 32)]
    m = create_model("mobilenet_v2", 3, 10, (32, 32), width=0.25, stem="small")
    assert m.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)  # total stride 8
    with pytest.raises(ConfigError, match="stem 'cifar' is unknown"):
        create_model("resnet50", stem="cifar")


def test_vgg_bn_on_small_images_keeps_parameter_names():
    small = create_model("vgg16_bn", 1, 10, (28, 28), width=0.125, pool_size=1)
    big = _meta("vgg16_bn")
    # The pool that would shrink 1x1 to 0x0 is an Identity at the same index: names are unchanged.
    assert isinstance(small.features[43], nn.Identity) and isinstance(big.features[43], nn.MaxPool2d)
    assert list(small.state_dict()) == list(big.state_dict())
    assert small.classifier[0].in_features == 64
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# -- every masking method on every block type of the zoo --------------------------------------------
# (BasicBlock ResNets hold the same layer kinds as the CIFAR ResNets, tested in test_pruning.py.)
METHOD_MODELS = {"resnet50": {"width": 0.0625, "stem": "small"},
                 "mobilenet_v2": {"width": 0.1, "stem": "small"}, "vgg16_bn": {"width": 0.0625, "pool_size": 1}}
METHODS = [("snip", "weight", 0.9), ("grasp", "weight", 0.9), ("synflow", "weight", 0.9),
           ("magnitude", "window_kernel", 0.7), ("magnitude", "kernel", 0.7), ("magnitude", "nm", 0.5)]


@pytest.fixture(scope="module")
def scoring_data():
    from prunekit.data import load_dataset
    return load_dataset("synthetic", n_train=40, n_test=10, image_size=16, channels=3)


@pytest.mark.parametrize("name", sorted(METHOD_MODELS))
@pytest.mark.parametrize("criterion, structure, sparsity", METHODS)
def test_every_method_reaches_its_exact_sparsity(name, criterion, structure, sparsity, scoring_data):
    from prunekit.criteria import ScoringContext, create_criterion
    from prunekit.masks import MaskSet
    from prunekit.pruning import compute_masks
    from prunekit.structure import create_structure

    torch.manual_seed(0)
    model = create_model(name, 3, 10, (16, 16), **METHOD_MODELS[name])
    # N:M runs along input channels: a depthwise conv has one per group, so it stays dense
    exclude = ["features.1.conv.0.0", "features.*.conv.1.0"] if name == "mobilenet_v2" and structure == "nm" else []
    masks = MaskSet.from_model(model, types=["conv"], first_layer="dense", exclude=exclude)
    options = {"grasp": {"samples_per_class": 2}, "snip": {"batch_size": 20}}.get(criterion, {})
    scores = create_criterion(criterion, **options).score(ScoringContext(model, masks, scoring_data))
    masks.set(compute_masks(scores, masks, 1 - sparsity, "global", create_structure(structure)))
    assert masks.sparsity() == pytest.approx(sparsity, abs=1e-4)


def test_nm_names_the_depthwise_conv_it_cannot_split():
    from prunekit.masks import MaskSet
    from prunekit.pruning import compute_masks
    from prunekit.structure import create_structure

    model = create_model("mobilenet_v2", 3, 10, (16, 16), width=0.1, stem="small")
    masks = MaskSet.from_model(model, types=["conv"], first_layer="dense")
    scores = {n: p.detach().abs() for n, p in masks.params.items()}
    with pytest.raises(ConfigError, match=r"'features.1.conv.0.0.weight' \(shape \(8, 1, 3, 3\)\).*prunable.exclude"):
        compute_masks(scores, masks, 0.5, "global", create_structure("nm"))
