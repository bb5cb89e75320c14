"""Chunked per-channel contributions for greedy's fast local imitation (memory-bounded at 224x224)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.models.init import perturb_batchnorm
from prunekit.selection import GreedyConfig, greedy_select
from prunekit.selection.losses import local_losses_linear as _local_losses_linear
from prunekit.selection.local_chunks import _chunk, local_losses_chunked


def _case(module: nn.Module, act_shape: tuple[int, ...], seed: int = 0):
    """(act, consumers, modules, ref) for one consumer reading the gated activation directly."""
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(act_shape, generator=g)
    with torch.no_grad():
        ref = [module(act) + 0.1 * torch.randn(module(act).shape, generator=g)]
    return act, [SimpleNamespace(target="c")], {"c": module}, ref


CONSUMERS = {
    "conv3x3 stride 2": lambda: nn.Conv2d(12, 7, 3, stride=2, padding=1, bias=False),
    "conv1x1 with bias": lambda: nn.Conv2d(12, 20, 1),
    "linear": lambda: nn.Linear(12, 5),
}


@pytest.mark.parametrize("kind", list(CONSUMERS))
@pytest.mark.parametrize("selected", [[], [3], [0, 5, 11, 2]])
@pytest.mark.parametrize("max_elements", [1, 700, 2**25])  # one channel per chunk, a few, all at once
def test_chunked_losses_equal_the_all_channels_losses(kind, selected, max_elements):
    torch.manual_seed(0)
    module = CONSUMERS[kind]()
    act, consumers, modules, ref = _case(module, (4, 12, 9, 9) if kind != "linear" else (4, 12))
    cands = torch.tensor([1, 4, 6, 7, 8, 9, 10])
    with torch.no_grad():
        want = _local_losses_linear(act, consumers, modules, ref, selected, cands, 3.0)
        got = local_losses_chunked(act, consumers, modules, ref, selected, cands, 3.0, max_elements)
    assert got.shape == (len(cands),)
    assert torch.allclose(got, want, rtol=1e-5, atol=0)
    assert int(got.argmin()) == int(want.argmin())


def test_losses_by_hand():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    act, ref, node = torch.ones(1, 2), [torch.zeros(1, 1)], SimpleNamespace(target="c")
    with torch.no_grad():  # greedy runs under no_grad
        # candidate j alone, gate 2: output 2 * w_j -> squared error (2 w_j)^2; with S = {0}: (2 * (1 + 2))^2
        assert local_losses_chunked(act, [node], {"c": lin}, ref, [], torch.tensor([0, 1]), 2.0, 1).tolist() == [4.0, 16.0]
        assert local_losses_chunked(act, [node], {"c": lin}, ref, [0], torch.tensor([1]), 2.0, 1).tolist() == [36.0]


def test_chunk_size_keeps_the_contributions_within_the_bound():
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1)
    act = torch.zeros(4, 8, 10, 10)  # output 5x5: one channel's contributions = 4 * 6 * 25 = 600 values
    assert _chunk(act, conv, 1800) == 3
    assert _chunk(act, conv, 1799) == 2
    assert _chunk(act, conv, 10) == 1  # never zero channels
    assert _chunk(torch.zeros(4, 8), nn.Linear(8, 5), 60) == 3  # 4 * 5 values per channel


def test_greedy_on_a_bottleneck_resnet_fast_path_equals_the_general_path():
    data = load_dataset("synthetic", n_train=48, n_test=8, image_size=16, channels=3)
    picks = []
    for fast in (True, False):
        torch.manual_seed(0)
        model = perturb_batchnorm(create_model("resnet50", 3, 10, (16, 16), width=0.125, stem="small")).eval()
        # the first bottleneck's inner convs: 1x1 reduce -> 3x3 consumer, 3x3 -> 1x1 expand consumer
        masks = MaskSet(model, ["layer1.0.conv1.weight", "layer1.0.conv2.weight"])
        res = greedy_select(model, masks, data, GreedyConfig(candidates=4, batch_size=8, target_macs_fraction=0.5,
                                                             local_imitation=True, fast_local=fast))
        picks.append([(r.layer, r.picks, r.losses) for r in res])
    assert [p[0] for p in picks[0]] == ["layer1.0.conv1", "layer1.0.conv2"]
    for (la, pa, lossa), (lb, pb, lossb) in zip(*picks):
        assert (la, pa) == (lb, pb)
        assert lossa == pytest.approx(lossb, rel=1e-4)
