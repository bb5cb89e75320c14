"""Proof on small inputs: every zoo model runs prune -> train -> greedy -> shrink (-> ONNX) through a recipe."""

from __future__ import annotations

import json

import pytest

from prunekit.data import load_dataset
from prunekit.deploy import check_onnx, export_onnx
from prunekit.pipeline import run_pipeline
from prunekit.recipe import recipe_from_dict
from prunekit.surgery import load_shrunk

# Narrow versions with small-input stems so one run takes seconds; the layout (block types, groups,
# residual adds, depthwise convs, the VGG classifier) is the full one. Pruning is limited to the
# first stage(s), which hold every kind of channel group of the model; benchmarks/bench_zoo.py
# runs greedy + shrink over whole networks.
ZOO = {
    "resnet18": ({"width": 0.125, "stem": "small"}, ["conv1", "layer1.*", "layer2.0.*"]),
    "resnet34": ({"width": 0.0625, "stem": "small"}, ["layer1.*", "layer2.0.*"]),
    "resnet50": ({"width": 0.0625, "stem": "small"}, ["conv1", "layer1.*"]),
    "mobilenet_v2": ({"width": 0.1, "stem": "small"}, ["features.[0-4].*"]),
    "vgg16_bn": ({"width": 0.125, "pool_size": 1}, ["features.[0-9]"]),
    "vgg19_bn": ({"width": 0.125, "pool_size": 1}, ["features.[0-9]"]),
}
# ONNX export costs about 15 s a model on one core: it is checked on the shrunken MobileNetV2, the
# one zoo model with ops the CIFAR models lack (depthwise convs, ReLU6 = clip); a Bottleneck
# exports the same ops as the CIFAR ResNets (tests/test_deploy.py).
ONNX = {"mobilenet_v2"}


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_train=64, n_test=32, image_size=16, channels=3)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_prune_train_greedy_shrink(name, data, tmp_path):
    options, include = ZOO[name]
    onnx = name in ONNX
    if onnx:
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    recipe = recipe_from_dict({
        "name": f"zoo-{name}", "model": {"name": name, "options": options}, "baseline": False,
        "data": {"name": "synthetic", "batch_size": 32}, "prunable": {"types": ["conv"], "include": include},
        "train": {"epochs": 1, "lr": 0.02},
        "stages": [{"prune": {"criterion": "grasp", "sparsity": 0.5, "options": {"samples_per_class": 2}}},
                   {"train": {}}, {"greedy": {"target_macs_fraction": 0.85, "candidates": 2, "batch_size": 8}},
                   {"shrink": {"facts": False}}],
    })
    summary = run_pipeline(recipe, tmp_path, data, progress=False, log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    greedy = next(r for r in rows if r["kind"] == "greedy")
    shrunk = next(r for r in rows if r["kind"] == "shrink")
    assert greedy["layers"] and any(r["kept"] < r["channels"] for r in greedy["layers"])
    # every selected group is physically smaller by exactly its unselected channels
    cut = {r["layer"]: [r["channels"], r["kept"]] for r in greedy["layers"] if r["kept"] < r["channels"]}
    assert cut.items() <= shrunk["layers"].items()
    assert shrunk["acc_shrunk"] == pytest.approx(shrunk["acc_masked"], abs=1e-9)
    assert summary["dense_macs"] == shrunk["macs_after"] <= 0.85 * shrunk["macs_before"]
    if onnx:
        small = load_shrunk(tmp_path / "model_shrunk.pt").eval()
        export_onnx(small, tmp_path / "small.onnx", (3, 16, 16))
        assert check_onnx(small, tmp_path / "small.onnx", data.test_x[:4]) <= 1e-4
