"""BatchNorm recalibration: statistics equal an independent computation, nothing else changes."""

import json

import pytest
import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.models import create_model
from prunekit.pipeline import run_pipeline
from prunekit.recipe import recipe_from_dict
from prunekit.stages.recalibrate import recalibrate_batchnorm


def conv_bn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5))


def test_statistics_are_the_average_over_the_batches():
    model = conv_bn().eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = torch.randn(48, 2, 6, 6)
    assert recalibrate_batchnorm(model, x, batch_size=16) == 2
    # Independent: per-batch mean and unbiased variance of the conv output, averaged over the 3 batches.
    conv = model[0]
    outs = [conv(x[i:i + 16]).detach() for i in range(0, 48, 16)]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert int(model[1].num_batches_tracked) == 3
    assert model[1].momentum == 0.3 and not model.training  # settings and mode restored
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_model_without_batchnorm_is_untouched():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    before = [p.clone() for p in model.parameters()]
    assert recalibrate_batchnorm(model, torch.randn(8, 4), 4) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_train=256, n_test=128)


def test_recalibrate_stage_after_channel_pruning_logs_accuracy_and_images(tmp_path, data):
    recipe = recipe_from_dict({
        "name": "t", "model": {"name": "resnet20", "options": {"width": 0.5}},
        "data": {"name": "synthetic", "batch_size": 64}, "train": {"epochs": 1, "lr": 0.05}, "baseline": False,
        "stages": [{"prune": {"criterion": "magnitude", "structure": "channel", "sparsity": 0.5,
                                       "allocation": "uniform"}},
                   {"recalibrate": {"batches": 3, "batch_size": 100}}]})
    lines = []
    run_pipeline(recipe, tmp_path, data, progress=False, log=lines.append)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    row = rows[-1]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in create_model("resnet20", width=0.5).modules())
    assert row["kind"] == "recalibrate" and row["images"] == 256 and row["bn_layers"] == n_bn
    assert row["sparsity"] == rows[-2]["sparsity"]  # masks untouched
    assert any("BatchNorm layers re-estimated on 256 training images" in line for line in lines), lines
