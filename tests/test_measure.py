"""Known values for parameter/MAC counting, and the contract of latency and disk size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure import count_flops, count_params, disk_size_bytes, measure_latency
from prunekit.models import create_model


def test_linear_macs():
    assert count_flops(nn.Linear(784, 300), (784,))["dense_macs"] == 784 * 300 == 235_200


def test_conv_macs():
    result = count_flops(nn.Conv2d(1, 20, 5), (1, 28, 28))
    assert result["dense_macs"] == 20 * 24 * 24 * 25 == 288_000


def test_lenet5_macs_equal_hand_sum():
    result = count_flops(create_model("lenet5"), (1, 28, 28))
    by_hand = {
        "0": 20 * 24 * 24 * 1 * 25,  # conv1: 24x24 outputs, 1x5x5 kernel
        "3": 50 * 8 * 8 * 20 * 25,  # conv2 on the 12x12 pooled map
        "7": 800 * 500,
        "9": 500 * 10,
    }
    assert {k: v["macs"] for k, v in result["per_layer"].items()} == by_hand
    assert result["dense_macs"] == result["sparse_macs"] == sum(by_hand.values()) == 2_293_000


def test_half_mask_halves_that_layer_exactly():
    model = create_model("lenet5")
    mask = torch.ones_like(model[3].weight)
    mask.view(-1)[: mask.numel() // 2] = 0
    dense = count_flops(model, (1, 28, 28))
    sparse = count_flops(model, (1, 28, 28), masks={"3.weight": mask})
    assert sparse["per_layer"]["3"]["density"] == 0.5
    assert sparse["dense_macs"] == dense["dense_macs"]
    assert sparse["sparse_macs"] == dense["dense_macs"] - 1_600_000 // 2


def test_count_params_with_masks():
    model = create_model("lenet300")
    assert count_params(model) == {"total": 266_610, "nonzero": 266_610}
    mask = torch.zeros_like(model[1].weight)
    mask[:, :10] = 1  # keep 300 * 10 weights of the first layer
    result = count_params(model, {"1.weight": mask})
    assert result == {"total": 266_610, "nonzero": 266_610 - 235_200 + 3_000}


def test_bad_mask_names_and_shapes():
    model = create_model("lenet300")
    with pytest.raises(ConfigError, match="Did you mean '1.weight'"):
        count_params(model, {"1.weigth": torch.ones(300, 784)})
    with pytest.raises(ConfigError, match="shape"):
        count_flops(model, (1, 28, 28), {"1.weight": torch.ones(3, 3)})


def test_flops_leave_model_state_alone():
    model = create_model("resnet20", width=0.25).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_flops(model, (1, 28, 28))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_latency_contract():
    model = create_model("lenet5").train()
    threads_before = torch.get_num_threads()
    result = measure_latency(model, (1, 28, 28), batch_size=3, repeats=4, warmup=1, threads=1)
    assert result["threads"] == 1 and result["batch_size"] == 3
    assert 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert torch.get_num_threads() == threads_before and model.training
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency(model, (1, 28, 28), batch_size=1, repeats=0)


def test_disk_size_tracks_parameter_bytes():
    model = create_model("lenet300")
    size = disk_size_bytes(model.state_dict())
    assert 266_610 * 4 < size < 266_610 * 4 + 20_000  # float32 payload + small archive overhead
