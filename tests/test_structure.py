"""Granularities: N:M, block, window, kernel, window+kernel keep their shape invariants and exact counts."""

import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.pruning import compute_masks
from prunekit.structure import STRUCTURES, create_structure


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 8))


def conv_masks():
    return MaskSet.from_model(convnet(), types=["conv"])


def magnitude(ms):
    return {n: p.detach().abs() for n, p in ms.params.items()}


def windows(m):
    return m.reshape(m.shape[0] * m.shape[1], -1)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_nm_every_group_holds_exactly_n(allocation):
    ms = MaskSet.from_model(convnet())  # conv in=4/8 and linear in=256: all multiples of 4
    new = compute_masks(magnitude(ms), ms, 0.5, allocation, create_structure("nm", n=2, m=4))
    for m in new.values():
        groups = m.reshape(m.shape[0], m.shape[1], -1).permute(0, 2, 1).reshape(-1, 4)
        assert torch.all(groups.sum(1) == 2)
    # and within each group the kept ones are the two largest magnitudes
    w = ms.params["0.weight"].detach().abs()
    g = w.permute(0, 2, 3, 1).reshape(-1, 4)
    k = new["0.weight"].permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.all(g[k == 1].reshape(-1, 2).min(1).values >= g[k == 0].reshape(-1, 2).max(1).values)


def test_nm_1_of_4_and_density_below_pattern_is_an_error():
    ms = MaskSet.from_model(convnet())
    new = compute_masks(magnitude(ms), ms, 0.25, "global", create_structure("nm", n=1, m=4))
    assert sum(int(m.sum()) for m in new.values()) == ms.numel() // 4
    with pytest.raises(ConfigError, match="sparsity: 0.5"):
        compute_masks(magnitude(ms), ms, 0.3, "global", create_structure("nm", n=2, m=4))


def test_nm_on_indivisible_input_is_a_clear_error():
    ms = MaskSet.from_model(nn.Sequential(nn.Conv2d(3, 8, 3)))
    with pytest.raises(ConfigError, match="multiple of 4.*dense"):
        compute_masks(magnitude(ms), ms, 0.5, "global", "nm")


@pytest.mark.parametrize("shape", [(4, 1), (1, 4), (2, 2)])
def test_block_masks_are_whole_blocks(shape):
    ms = conv_masks()
    new = compute_masks(magnitude(ms), ms, 0.3, "global", create_structure("block", shape=list(shape)))
    bo, bi = shape
    for m in new.values():
        o, i = m.shape[:2]
        s = m.reshape(o, i, -1).permute(2, 0, 1).reshape(-1, o // bo, bo, i // bi, bi).sum((2, 4))
        assert torch.all((s == 0) | (s == bo * bi))
    kept = sum(int(m.sum()) for m in new.values())
    assert abs(kept - round(ms.numel() * 0.3)) <= shape[0] * shape[1]


@pytest.mark.parametrize("density", [0.5, 0.3, 0.1])
def test_window_every_kernel_holds_at_most_its_share_and_total_is_exact(density):
    ms = conv_masks()
    new = compute_masks(magnitude(ms), ms, density, "global", "window")
    cap = math.ceil(9 * density)
    for m in new.values():
        assert windows(m).sum(1).max() <= cap
    assert sum(int(m.sum()) for m in new.values()) == round(ms.numel() * density)


def test_window_m_fixes_the_pattern_and_keeps_each_windows_best():
    ms = conv_masks()
    scores = magnitude(ms)
    masks = {m: compute_masks(scores, ms, 0.2, "uniform", create_structure("window", m=m)) for m in (2, 4, 8)}
    for m, new in masks.items():
        for name, mask in new.items():
            assert windows(mask).sum(1).max() <= m
            assert int(mask.sum()) == round(mask.numel() * 0.2)
            # kept weights are the layer's best among each window's top-m
            w, k = windows(scores[name]), windows(mask)
            for row, keep in zip(w, k):
                if 0 < keep.sum() < 9:
                    assert row[keep == 1].min() >= torch.sort(row, descending=True).values[int(keep.sum()) - 1]
    assert not torch.equal(masks[2]["2.weight"], masks[8]["2.weight"])  # m changes the masks
    with pytest.raises(ConfigError, match=r"window m=1 keeps at most 1 of every 9.*raise m to 5"):
        compute_masks(scores, ms, 0.5, "uniform", create_structure("window", m=1))


def test_channel_global_keeps_every_layer_and_sum_ranks_like_mean():
    from prunekit.models import create_model

    ms = MaskSet.from_model(create_model("lenet5"))
    scores = magnitude(ms)
    alive = {}
    for reduce in ("sum", "mean"):
        new = compute_masks(scores, ms, 0.5, "global", create_structure("channel", reduce=reduce))
        alive[reduce] = {n: int(m.reshape(m.shape[0], -1).any(1).sum()) for n, m in new.items()}
    assert alive["sum"] == alive["mean"]
    assert alive["sum"]["9.weight"] == 10  # every class kept
    assert all(v > 0 for v in alive["sum"].values())
    # the raw sum ranking (normalize: none, no floor) is the dead network the normalisation prevents
    raw = compute_masks(scores, ms, 0.5, "global", "channel", prevent_collapse=False, normalize="none")
    assert int(raw["0.weight"].sum()) == 0 and int(raw["3.weight"].sum()) == 0


def test_output_layer_rows_are_kept_unless_asked():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(16 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 8))
    ms = MaskSet.from_model(net)
    scores = magnitude(ms)
    scores["7.weight"] = scores["7.weight"] * 1e-3  # the classifier scores lowest everywhere
    kept = compute_masks(scores, ms, 0.3, "global", "channel", normalize="none")
    assert bool(kept["7.weight"].all())
    assert sum(int(m.sum()) for m in kept.values()) == pytest.approx(round(ms.numel() * 0.3), abs=256)
    pruned = compute_masks(scores, ms, 0.3, "global", "channel", normalize="none", output_layer="prune")
    assert int(pruned["7.weight"].any(1).sum()) == 1  # only the collapse floor's best row


def test_output_layer_larger_than_the_budget_is_refused_with_the_options():
    ms = MaskSet.from_model(convnet())  # the 8 x 256 classifier holds 2048 of 3488 weights
    with pytest.raises(ConfigError, match=r"'5.weight' keeps all its 2048.*keeps 1046 in all.*output_layer: prune"):
        compute_masks(magnitude(ms), ms, 0.3, "global", "channel")


def test_collapse_floor_keeps_each_units_best_group_inside_the_budget():
    ms = conv_masks()  # 288 + 1152 weights; the floor is 8 + 16 kernels = 216 weights
    scores = magnitude(ms)
    scores["2.weight"] = scores["2.weight"] * 1e-6  # would be emptied by one raw threshold
    new = compute_masks(scores, ms, 0.2, "global", "kernel", normalize="none")  # floor on by default
    rows = windows(new["2.weight"]).reshape(16, 8, 9).sum((1, 2))
    assert bool((rows == 9).all())  # every output filter kept exactly its best kernel
    best = windows(scores["2.weight"]).reshape(16, 8, 9).sum(2).argmax(1)
    assert bool((windows(new["2.weight"]).reshape(16, 8, 9)[torch.arange(16), best].sum(1) == 9).all())
    assert sum(int(m.sum()) for m in new.values()) == round(ms.numel() * 0.2)  # floor inside the budget
    off = compute_masks(scores, ms, 0.2, "global", "kernel", normalize="none", prevent_collapse=False)
    assert int(off["2.weight"].sum()) == 0
    with pytest.raises(ConfigError, match=r"prevent_collapse keeps the best group of every output unit \(216"):
        compute_masks(scores, ms, 0.1, "global", "kernel", normalize="none")


def test_kernel_removes_whole_kernels_ranked_by_norm():
    ms = conv_masks()
    new = compute_masks(magnitude(ms), ms, 0.4, "uniform", create_structure("kernel", reduce="l2"))
    for name, m in new.items():
        s = windows(m).sum(1)
        assert torch.all((s == 0) | (s == 9))
        norms = windows(ms.params[name].detach()).norm(dim=1)
        assert norms[s == 9].min() >= norms[s == 0].max()
        assert int((s == 9).sum()) == round(len(s) * 0.4)


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
@pytest.mark.parametrize("density", [0.5, 0.3, 0.1])
def test_window_kernel_combines_both_with_the_layers_own_count(density, allocation):
    ms = conv_masks()
    struct = create_structure("window_kernel", reduce="l2")
    new = compute_masks(magnitude(ms), ms, density, allocation, struct)
    for name, m in new.items():
        count, n_k = int(m.sum()), windows(m).shape[0]
        if allocation == "uniform":
            assert count == round(m.numel() * density)  # exact per layer
        d = count / m.numel()
        kept_kernels = int((windows(m).sum(1) > 0).sum())
        assert kept_kernels <= max(math.ceil(count / 9), round(n_k * d**0.5))
        # every surviving kernel holds at most the even share of the layer's count
        assert windows(m).sum(1).max() <= math.ceil(count / kept_kernels)
        # kernels are ranked by L2 norm: every kept kernel outranks every removed one
        norms = windows(ms.params[name].detach()).norm(dim=1)
        alive = windows(m).sum(1) > 0
        assert norms[alive].min() >= norms[~alive].max()
    if allocation == "global":
        assert sum(int(m.sum()) for m in new.values()) == round(ms.numel() * density)


def test_window_kernel_uniform_lenet5_conv1_keeps_exactly_its_share():
    from prunekit.models import create_model

    ms = MaskSet.from_model(create_model("lenet5"), types=["conv"])
    new = compute_masks(magnitude(ms), ms, 0.1, "uniform", "window_kernel")
    assert [int(m.sum()) for m in new.values()] == [50, 2500]  # 500 and 25000 weights


@pytest.mark.parametrize("name", ["window", "kernel", "window_kernel"])
def test_kernel_granularities_on_linear_error_or_fall_back(name):
    ms = MaskSet.from_model(convnet())
    with pytest.raises(ConfigError, match="linear layer has no kernels"):
        compute_masks(magnitude(ms), ms, 0.5, "global", name)
    new = compute_masks(magnitude(ms), ms, 0.5, "uniform", create_structure(name, linear="weight"))
    assert int(new["5.weight"].sum()) == pytest.approx(new["5.weight"].numel() * 0.5, abs=1)


@pytest.mark.parametrize("name", sorted(set(STRUCTURES.names()) - {"n:m", "window+kernel", "filter", "unstructured"}))
def test_every_structure_only_removes_and_never_revives(name):
    ms = conv_masks()
    opts = {"shape": [2, 2]} if name == "block" else {}
    struct = create_structure(name, **opts)
    previous = {n: m.clone() for n, m in ms.masks.items()}
    g = torch.Generator().manual_seed(1)
    for density in (0.75, 0.5):
        scores = {n: torch.rand(p.shape, generator=g) for n, p in ms.params.items()}
        ms.set(compute_masks(scores, ms, density, "global", struct))
        for n in ms.names:
            assert torch.all(ms.masks[n] <= previous[n])
        previous = {n: m.clone() for n, m in ms.masks.items()}


def test_unknown_structure_option_is_a_clear_error():
    with pytest.raises(ConfigError, match="no option 'mm'.*Did you mean 'm'"):
        create_structure("window", mm=2)


@pytest.mark.parametrize("prevent_collapse", [False, None])
def test_train_stage_warns_when_its_mask_updates_empty_a_layer(prevent_collapse, tmp_path):
    from prunekit.data import load_dataset
    from prunekit.pipeline import run_pipeline
    from prunekit.recipe import recipe_from_dict

    sparsify = {"method": "gradual", "sparsity": 0.7, "every": 1, "end_epoch": 1, "structure": "channel",
                "normalize": "none", "prevent_collapse": prevent_collapse}
    recipe = recipe_from_dict({
        "model": {"name": "lenet300"}, "data": {"name": "synthetic", "batch_size": 32, "options": {"image_size": 12}},
        "baseline": False, "train": {"epochs": 1, "lr": 0.05}, "stages": [{"train": {"sparsify": sparsify}}]})
    data = load_dataset("synthetic", n_train=64, n_test=32, image_size=12)
    logged = []
    summary = run_pipeline(recipe, tmp_path, data, progress=False, log=logged.append)
    warned = [line for line in logged if "WARNING layer collapse" in line]
    if prevent_collapse is False:  # raw sums rank the small output layer's rows last: it empties
        assert summary["collapsed_layers"] and warned and summary["collapsed_layers"][0] in warned[0]
    else:  # default for structured global: the floor keeps every layer
        assert summary["collapsed_layers"] == [] and warned == []


def test_im2col_conv_equals_the_conv_and_a_2_4_conv_is_a_2_4_matrix():
    from prunekit.semi_structured import Im2colConv2d, conv_matrix, is_2_4

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1, dilation=1)
    ms = MaskSet(nn.Sequential(conv), ["0.weight"])
    ms.set(compute_masks(magnitude(ms), ms, 0.5, "uniform", "nm"))
    assert is_2_4(conv_matrix(conv.weight)) and not is_2_4(conv.weight.reshape(6, -1))  # the layout matters
    x = torch.randn(2, 8, 9, 7)
    assert torch.allclose(Im2colConv2d(conv)(x), conv(x), atol=1e-5)


def test_gradual_window_m_must_start_inside_the_pattern_and_ends_at_m_per_kernel():
    from prunekit.recipe import SparsifyConfig
    from prunekit.schedules import SparsifyEnv, build_sparsify_hooks

    model = convnet()
    masks = MaskSet.from_model(model, types=["conv"])
    env = SparsifyEnv(model, masks, None, torch.device("cpu"), 0, steps_per_epoch=10, total_steps=30)
    cfg = dict(sparsity=0.9, start_epoch=0, end_epoch=2, every=5, structure="window", structure_options={"m": 2})
    with pytest.raises(ConfigError, match=r"window m=2 keeps at most 0.2222 of '0.weight'.*initial_sparsity >= 0.7778"):
        build_sparsify_hooks(SparsifyConfig(**cfg), env, epochs=3)
    (hook,) = build_sparsify_hooks(SparsifyConfig(**cfg, initial_sparsity=0.8), env, epochs=3)
    for step in range(0, 21):
        hook(None, step)
    assert masks.sparsity() == pytest.approx(0.9, abs=1 / masks.numel())
    for m in masks.masks.values():
        assert windows(m).sum(1).max() <= 2
