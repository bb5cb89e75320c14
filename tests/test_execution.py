"""Execution modes of a train stage: channels-last, torch.compile with eager fallback, eval cadence.

Every mode must keep pruned weights exactly zero and change only speed, never the values a
layout conversion is asked to preserve.
"""

import json

import pytest
import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.execution import (Forward, has_conv2d, native_bf16, to_memory_format, training_layout, use_amp,
                                use_channels_last, use_compile)
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.pipeline import run_pipeline
from prunekit.recipe import TrainConfig, recipe_from_dict
from prunekit.train import TrainLoop, epoch_generator


def tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def half_masks(model: nn.Module) -> MaskSet:
    masks = MaskSet.from_model(model)
    g = torch.Generator().manual_seed(1)
    masks.set({n: (torch.rand(m.shape, generator=g) < 0.5).float() for n, m in masks.masks.items()})
    return masks


def test_auto_settings_follow_the_model_and_device():
    assert has_conv2d(create_model("lenet5")) and not has_conv2d(create_model("lenet300"))
    assert TrainConfig().channels_last is False  # opt-in: see prunekit/execution.py
    assert use_channels_last("auto", create_model("lenet5")) is True
    assert use_channels_last("auto", create_model("lenet300")) is False
    assert use_channels_last(False, create_model("lenet5")) is False
    assert use_compile("auto", "cpu") is False and use_compile("auto", "cuda") is True
    assert use_compile(True, "cpu") is True
    assert TrainConfig().amp is False  # fp32 by default: figures must not depend on the CPU's instruction set
    assert use_amp("auto", "cpu") is native_bf16("cpu")
    assert use_amp(True, "cpu") is True and use_amp(False, "cpu") is False


def test_native_bf16_on_cpu_follows_onednn(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert native_bf16("cpu") is False and use_amp("auto", "cpu") is False
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert native_bf16("cpu") is torch.backends.mkldnn.is_available()


def test_layout_round_trip_keeps_values_and_parameter_identity():
    model = create_model("resnet20")
    masks = half_masks(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = [id(p) for p in model.parameters()]
    with training_layout(model, masks, True):
        conv = model.layer1[0].conv1.weight  # C_in > 1: NHWC differs from NCHW
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert [id(p) for p in model.parameters()] == ids
    for k, v in model.state_dict().items():
        assert v.is_contiguous(), k
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("channels_last", [False, True])
def test_masked_training_keeps_pruned_weights_zero_in_either_layout(channels_last):
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    model = tiny_convnet()
    masks = half_masks(model)
    cfg = TrainConfig(epochs=1, lr=0.1, channels_last=channels_last)  # explicit: the default is off
    loop = TrainLoop(model, masks, cfg, steps_per_epoch=4, log=lambda _: None)
    assert loop.net.mode == ("channels-last" if channels_last else "nchw")
    loop.train_epoch(x, y, 16, epoch_generator(0, 0, 0), progress=False)
    assert all(p.is_contiguous() for p in model.parameters())  # NCHW again outside the epoch
    for name, m in masks.masks.items():
        assert torch.count_nonzero(masks.params[name][m == 0]) == 0, name
    assert masks.density() == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_training_keeps_pruned_weights_zero_and_fp32_state(channels_last):
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    model = tiny_convnet()
    masks = half_masks(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = TrainLoop(model, masks, TrainConfig(epochs=1, lr=0.1, amp=True, channels_last=channels_last), 4,
                     log=lambda _: None)
    assert loop.net.mode.endswith("+bf16")
    stats = loop.train_epoch(x, y, 16, epoch_generator(0, 0, 0), progress=False)
    assert stats["train_loss"] > 0
    for name, m in masks.masks.items():
        assert torch.count_nonzero(masks.params[name][m == 0]) == 0, name
        assert torch.count_nonzero(masks.params[name][m == 1]) == int(m.sum()), name  # kept weights still train
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype, k  # master weights and BN statistics stay fp32
    moments = [s["momentum_buffer"] for s in loop.optimizer.state.values()]
    assert moments and all(b.dtype == torch.float32 for b in moments)


def test_channels_last_training_matches_nchw_up_to_rounding():
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    results = []
    for channels_last in (False, True):
        model = tiny_convnet()
        masks = half_masks(model)
        loop = TrainLoop(model, masks, TrainConfig(epochs=1, lr=0.1, channels_last=channels_last), 4, log=lambda _: None)
        loop.train_epoch(x, y, 16, epoch_generator(0, 0, 0), progress=False)
        results.append(model.state_dict())
    for k, v in results[0].items():
        torch.testing.assert_close(results[1][k], v, rtol=1e-4, atol=1e-5, msg=k)


class BrokenCompiled:
    """Stands in for a compiled module whose backend fails on first call."""

    calls = 0

    def __call__(self, x):
        BrokenCompiled.calls += 1
        raise RuntimeError("backend compiler failed\ndetails")


def test_compile_failure_falls_back_to_eager_with_one_message(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda net: BrokenCompiled())
    lines = []
    model = tiny_convnet()
    fwd = Forward(model, channels_last=False, compile=True, log=lines.append)
    x = torch.randn(2, 1, 8, 8)
    out1, out2 = fwd(x), fwd(x)
    torch.testing.assert_close(out1, model(x))
    torch.testing.assert_close(out2, model(x))
    assert BrokenCompiled.calls == 1 and len(lines) == 1
    assert "RuntimeError: backend compiler failed" in lines[0] and "train.compile: false" in lines[0]
    assert fwd.mode == "nchw"


@pytest.mark.slow
def test_compiled_training_keeps_pruned_weights_exactly_zero():
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    model = tiny_convnet()
    masks = half_masks(model)
    lines = []
    loop = TrainLoop(model, masks, TrainConfig(epochs=1, lr=0.1, compile=True), 2, log=lines.append)
    loop.train_epoch(x, y, 16, epoch_generator(0, 0, 0), progress=False)
    for name, m in masks.masks.items():
        assert torch.count_nonzero(masks.params[name][m == 0]) == 0, name
    # Either compiled or, without a working compiler, eager with exactly one message saying so.
    assert (loop.net.mode.endswith("+compile") and not lines) or len(lines) == 1


def test_memory_format_conversion_ignores_non_4d_tensors():
    model = nn.Sequential(nn.Linear(3, 2))
    to_memory_format(model, None, True)
    assert model[0].weight.is_contiguous()


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_train=256, n_test=128)


def conv_recipe(**train):
    return recipe_from_dict({"name": "t", "model": {"name": "lenet5"}, "data": {"name": "synthetic", "batch_size": 64},
                             "train": {"epochs": 3, "lr": 0.05, **train}, "baseline": False,
                             "stages": [{"prune": {"sparsity": 0.8}}, "train"]})


def test_eval_every_thins_evaluation_but_always_evaluates_the_last_epoch(tmp_path, data):
    run_pipeline(conv_recipe(eval_every=2), tmp_path, data, progress=False, log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [("test_acc" in r) for r in train_rows] == [False, True, True]


class Interrupt(Exception):
    pass


def test_channels_last_run_resumes_bit_identical(tmp_path, data):
    full = run_pipeline(conv_recipe(), tmp_path / "full", data, progress=False, log=lambda _: None)

    def stop_in_epoch_2(line):
        if "epoch 2/3" in line:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_pipeline(conv_recipe(), tmp_path / "cut", data, progress=False, log=stop_in_epoch_2)
    resumed = run_pipeline(conv_recipe(), tmp_path / "cut", data, resume=True, progress=False, log=lambda _: None)
    assert resumed["test_acc"] == full["test_acc"] and resumed["test_loss"] == full["test_loss"]
