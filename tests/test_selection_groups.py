"""Channel groups for greedy selection: residual streams, the global MACs budget, the data budget."""

import pytest
import torch

from prunekit.data import load_dataset
from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.measure import count_flops
from prunekit.models import create_model
from prunekit.models.init import perturb_batchnorm
from prunekit.selection.budget import allocate
from prunekit.selection.graph import GraphRunner, downstream
from prunekit.selection.greedy import GreedyConfig, greedy_select, selection_groups
from prunekit.selection.groups import Group, macs_model, uniform_counts
from prunekit.surgery import channel_chains, dead_channels, masked_copy, shrink, trace

SHAPE = (1, 12, 12)


def resnet20(width: float = 1.0):
    torch.manual_seed(0)
    return perturb_batchnorm(create_model("resnet20", 1, 10, (12, 12), width=width)).eval()


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_train=200, n_test=50, image_size=12)


def groups_of(model, streams=True):
    gm = trace(model)
    masks = MaskSet.from_model(model, types=["conv"])
    return selection_groups(model, gm, masks, channel_chains(model, gm), streams), gm


def test_resnet20_stream_groups_are_each_stages_coupled_writers_and_readers():
    groups, _ = groups_of(resnet20())
    streams = {g.name: g for g in groups if g.kind == "stream"}
    assert list(streams) == ["stream:conv1", "stream:layer2.0.shortcut.0", "stream:layer3.0.shortcut.0"]
    s1, s2, s3 = streams.values()
    assert s1.writers == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"] and s1.width == 16
    assert s2.writers == ["layer2.0.shortcut.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]
    assert s1.consumers == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.shortcut.0",
                            "layer2.0.conv1"]
    assert s3.consumers == ["layer3.1.conv1", "layer3.2.conv1", "fc"] and s3.width == 64
    assert [g.name for g in groups if g.kind == "free"] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert [g.kind for g in groups][:2] == ["stream", "free"]  # input to output: the stem's stream comes first


def test_stream_groups_need_every_writer_masked():
    model = resnet20()
    gm = trace(model)
    masks = MaskSet(model, [f"{n}.weight" for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Conv2d) and n != "layer1.1.conv2"])
    groups = selection_groups(model, gm, masks, channel_chains(model, gm), True)
    assert "stream:conv1" not in {g.name for g in groups} and "stream:layer2.0.shortcut.0" in {g.name for g in groups}


def test_multi_gate_suffix_equals_full_runs_per_candidate(data):
    model = resnet20()
    groups, gm = groups_of(model)
    g = groups[0]  # stage-1 stream: 4 gates, one upstream of the others
    runner = GraphRunner(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    gates = {nodes[c.end] for c in g.chains}
    deps = downstream(gates)
    x = data.train_x[:8]
    alpha = torch.rand(3, g.width, generator=torch.Generator().manual_seed(1))
    alpha[0, :5] = 0
    out = runner.suffix(runner.prefix(x, deps), gates, deps, alpha, [runner.output_node()])[0].view(3, 8, -1)
    for k in range(3):
        torch.testing.assert_close(out[k], runner.run(x, gates, alpha[k]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("budget", ["uniform", "global"])
def test_stream_selection_masks_every_writer_alike_and_masked_equals_shrunk(data, budget):
    model = resnet20(width=0.5)  # streams of 8, 16, 32 channels: fast, same structure
    stage1 = ["conv1.weight"] + [f"layer1.{b}.conv{i}.weight" for b in range(3) for i in (1, 2)]
    masks = MaskSet(model, stage1)  # the stage-1 stream and its three inner groups
    cfg = GreedyConfig(candidates=3, batch_size=8, target_macs_fraction=0.85, streams=True, budget=budget,
                       curve_candidates=2)
    res = greedy_select(model, masks, data, cfg)
    assert [r.layer for r in res] == ["stream:conv1", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"]
    stream = res[0]
    dead = [dead_channels(masks.masks[f"{w}.weight"]) for w in stream.writers]
    assert all(torch.equal(d, dead[0]) for d in dead) and int((~dead[0]).sum()) == stream.kept < 8
    assert res.macs_fraction <= 0.85
    x = data.test_x[:16]
    small, report = shrink(model, masks.masks, x[:1])
    with torch.no_grad():
        diff = (masked_copy(model, masks.masks).eval()(x) - small.eval()(x)).abs().max()
    assert diff <= 1e-5
    assert report.channels["conv1"] == (8, stream.kept)
    assert count_flops(small, SHAPE)["dense_macs"] <= 0.85 * count_flops(model, SHAPE)["dense_macs"]


def test_allocate_takes_best_loss_decrease_per_mac_and_respects_the_budget():
    # two independent groups of 4 channels, 10 MACs per kept channel each
    a, b = (Group(n, "free", [n], [], width=4) for n in ("a", "b"))
    macs = lambda k: 10.0 * (k["a"] + k["b"])  # noqa: E731
    curves = {"a": [5.0, 1.0, 0.9, 0.8], "b": [5.0, 4.0, 3.5, 3.4]}
    # from (1, 1): a's 2nd channel gains 4.0, b's gains 1.0 -> a; then b 1.0 > a 0.1 -> b; then b 0.5 -> b
    assert allocate([a, b], curves, macs, goal=50.0) == {"a": 2, "b": 3}
    assert allocate([a, b], curves, macs, goal=20.0) == {"a": 1, "b": 1}  # the minimum fits exactly
    # a flat stretch is looked past: b gains nothing at 2 but 3.0 at 3 -> one jump of two channels
    curves = {"a": [5.0, 4.9, 4.8, 4.7], "b": [5.0, 5.0, 2.0, 2.0]}
    assert allocate([a, b], curves, macs, goal=40.0) == {"a": 1, "b": 3}
    # every curve flat: the budget is still spent, narrowest groups first
    assert allocate([a, b], {"a": [1.0], "b": [1.0]}, macs, goal=50.0) == {"a": 3, "b": 2}


def test_uniform_counts_over_streams_meet_the_budget():
    model = resnet20()
    groups, _ = groups_of(model)
    counts = uniform_counts(model, SHAPE, groups, 0.5)
    dense, macs = macs_model(model, SHAPE, groups)
    assert macs(counts) <= 0.5 * dense
    assert macs({g.name: min(g.width, counts[g.name] + 1) for g in groups}) > 0.5 * dense or \
        all(counts[g.name] == g.width for g in groups)


def test_samples_read_counts_distinct_training_samples(data):
    model = resnet20(width=0.5)
    masks = MaskSet(model, ["layer1.0.conv1.weight"])
    # tolerance 0.99: the first pick already stops the layer -> one minibatch of 16 + the 50 held-out samples
    res = greedy_select(model, masks, data, GreedyConfig(candidates=2, batch_size=16, tolerance=0.99,
                                                         eval_samples=50))
    assert res[0].kept == 1 and res.samples_read == 66
    masks = MaskSet(model, ["layer1.1.conv1.weight"])
    res = greedy_select(model, masks, data, GreedyConfig(candidates=2, batch_size=200, target_macs_fraction=0.95))
    assert res.samples_read == 200  # every step reads the whole (200-sample) split


def test_config_errors_name_the_value_and_the_fix():
    with pytest.raises(ConfigError, match="'sideways'.*uniform.*global"):
        GreedyConfig(target_macs_fraction=0.5, budget="sideways").check()
    with pytest.raises(ConfigError, match="target_macs_fraction"):
        GreedyConfig(tolerance=0.02, budget="global").check()
    with pytest.raises(ConfigError, match="curve_candidates"):
        GreedyConfig(target_macs_fraction=0.5, curve_candidates=0).check()
