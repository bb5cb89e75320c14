"""The structured-sparsity benchmark's own logic: section splicing and the equal-MACs Torch-Pruning match."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_structure = pytest.importorskip("bench_structure")
bench_tp = pytest.importorskip("bench_structure_tp")
pytest.importorskip("torch_pruning")

from prunekit.models import create_model  # noqa: E402

HEADER = bench_structure.TP_HEADER


def test_section_is_appended_then_replaced_never_duplicated():
    first = bench_structure.with_section("## Table\n\n| a |\n", f"{HEADER}\n\nrow 1\n")
    assert first == f"## Table\n\n| a |\n\n{HEADER}\n\nrow 1\n"
    second = bench_structure.with_section(first, f"{HEADER}\n\nrow 2\n")
    assert second == f"## Table\n\n| a |\n\n{HEADER}\n\nrow 2\n"
    assert second.count(HEADER) == 1


def test_regenerating_the_main_table_keeps_the_comparison_section():
    old = f"## Table\n\nold rows\n\n{HEADER}\n\nmeasured\n"
    assert bench_structure.tp_section(old) == f"{HEADER}\n\nmeasured\n"
    assert bench_structure.with_section("## Table\n\nnew rows\n", bench_structure.tp_section(old)) == (
        f"## Table\n\nnew rows\n\n{HEADER}\n\nmeasured\n")
    assert bench_structure.with_section("## Table\n\nnew rows\n", "") == "## Table\n\nnew rows\n"
    # The header quoted inside a line is not a section start.
    assert bench_structure.tp_section(f"see `{HEADER}\n`") == ""


def lenet5() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("lenet5").eval()


def test_torch_pruning_is_matched_to_prunekit_macs_within_two_percent():
    dense = lenet5()
    example = torch.zeros(1, 1, 28, 28)
    small, channels = bench_tp.prunekit_channel(dense, 0.5, "layer", example)
    target, _ = bench_tp.macs_params(small, example)
    dense_macs, _ = bench_tp.macs_params(dense, example)
    assert target < dense_macs
    assert set(channels) == {"0.weight", "3.weight", "7.weight"}  # the classifier keeps every class
    assert all(0 < live < total for live, total in channels.values())
    tp_model, ratio = bench_tp.torch_pruning_matched(dense, target, example)
    macs, _ = bench_tp.macs_params(tp_model, example)
    assert abs(macs - target) <= bench_tp.MACS_TOLERANCE * target
    assert 0 < ratio < 1
    kept = bench_tp.physical_channels(tp_model, dense)
    assert set(kept) == {"0", "3", "7"}
    assert all(1 <= now <= before for now, before in kept.values())
    assert tp_model(example).shape == (1, 10)
    # The dense model is untouched by either pruner.
    assert bench_tp.physical_channels(dense, dense) == {"0": (20, 20), "3": (50, 50), "7": (500, 500)}


def test_random_masks_at_99_5_percent_reach_every_class_only_with_the_floor():
    # Exact values for seed 0 (benchmarks/results/structure_collapse.md prints the same rows).
    assert bench_structure.random_mask_signal("lenet300", 0.005, 0, floor=False)[0] == 2
    reach, spread = bench_structure.random_mask_signal("lenet300", 0.005, 0, floor=True)
    assert reach == 10 and 1e-4 < spread < 1e-3
    reach, spread = bench_structure.random_mask_signal("lenet5", 0.005, 0, floor=True)
    assert reach == 10 and spread < 1e-4
