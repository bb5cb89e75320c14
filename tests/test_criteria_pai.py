"""Pruning-at-initialization criteria: SNIP, GraSP, SynFlow against independent computations."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from prunekit.criteria import CRITERIA, ScoringContext, create_criterion
from prunekit.criteria.grasp import GraSP, hessian_gradient
from prunekit.data import DatasetSplits, load_dataset
from prunekit.errors import ConfigError, DataError
from prunekit.masks import MaskSet
from prunekit.pipeline import prune_densities, run_pipeline
from prunekit.pruning import compute_masks
from prunekit.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_train=200, n_test=50, image_size=8, seed=3)


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 10))


def ctx_for(model, data, seed=0):
    return ScoringContext(model, MaskSet.from_model(model), data, seed=seed)


# -- SNIP ---------------------------------------------------------------------------------

def test_snip_equals_theta_times_grad_and_mask_gradient(data):
    model = small_cnn()
    ctx = ctx_for(model, data, seed=5)
    crit = create_criterion("snip", batch_size=32)
    x, y = crit.batch(ctx)
    assert len(x) == 32
    scores = crit.score(ctx)

    # Independent: a fresh copy in train mode, gradients through torch.func.
    ref = copy.deepcopy(model).train()
    params = {n: p.detach() for n, p in ref.named_parameters()}
    names = ctx.masks.names

    def loss_of(weights):
        return nn.functional.cross_entropy(functional_call(ref, {**params, **weights}, (x,)), y)

    theta = {n: params[n].clone().requires_grad_() for n in names}
    grads = dict(zip(names, torch.autograd.grad(loss_of(theta), list(theta.values()))))
    # Explicit mask variables c (all ones): the layer sees c * theta, SNIP Eq. 5 uses |dL/dc|.
    c = {n: torch.ones_like(params[n], requires_grad=True) for n in names}
    loss_c = loss_of({n: c[n] * params[n] for n in names})
    mask_grads = dict(zip(names, torch.autograd.grad(loss_c, list(c.values()))))
    for n in names:
        torch.testing.assert_close(scores[n], (params[n] * grads[n]).abs(), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(scores[n], mask_grads[n].abs(), rtol=1e-5, atol=1e-8)


def test_snip_leaves_the_model_untouched_and_batch_is_seeded(data):
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    crit = create_criterion("snip", batch_size=16)
    crit.score(ctx_for(model, data))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats included
    x0, _ = crit.batch(ctx_for(model, data, seed=1))
    x1, _ = crit.batch(ctx_for(model, data, seed=1))
    x2, _ = crit.batch(ctx_for(model, data, seed=2))
    assert torch.equal(x0, x1) and not torch.equal(x0, x2)


# -- GraSP --------------------------------------------------------------------------------

def tiny_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_hg_matches_finite_differences(temperature):
    model = tiny_mlp()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    params = dict(model.named_parameters())
    weights = {n: params[n] for n in ("1.weight", "3.weight")}
    g, hg = hessian_gradient(model, weights, x, y, temperature, chunk_size=3)

    def grad_at(shift):
        m = copy.deepcopy(model)
        mp = dict(m.named_parameters())
        with torch.no_grad():
            for n in weights:
                mp[n].add_(shift * g[n])
        loss = nn.functional.cross_entropy(m(x) / temperature, y)
        return dict(zip(weights, torch.autograd.grad(loss, [mp[n] for n in weights])))

    eps = 1e-4 / max(float(torch.cat([v.flatten() for v in g.values()]).norm()), 1e-12)
    plus, minus = grad_at(eps), grad_at(-eps)
    for n in weights:
        fd = (plus[n] - minus[n]) / (2 * eps)
        torch.testing.assert_close(hg[n], fd, rtol=1e-5, atol=1e-7 * float(fd.abs().max()))


def test_grasp_chunking_does_not_change_scores_without_batchnorm():
    model = tiny_mlp()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    y = torch.arange(10) % 3
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    g1, hg1 = hessian_gradient(model, weights, x, y, 200.0, chunk_size=None)
    g3, hg3 = hessian_gradient(model, weights, x, y, 200.0, chunk_size=3)
    for n in weights:
        torch.testing.assert_close(g1[n], g3[n], rtol=1e-10, atol=0)
        torch.testing.assert_close(hg1[n], hg3[n], rtol=1e-10, atol=1e-30)


def two_weight_problem():
    """Logits [a, b] = w * x with w = [2, 1], one sample x = 1 of class 0 (and a zero input of class 1)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[2.0], [1.0]]))
    x = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    y = torch.tensor([0, 1])
    data = DatasetSplits("hand", x.float(), y, x.float(), y, 2, 1, (1, 1), "hand-checked")
    return model, data


def test_grasp_sign_hand_checked_example():
    # For one sample of class 0 with logits (a, b): g = (-p1, p1) and H = p0 p1 [[1, -1], [-1, 1]],
    # so Hg = 2 p0 p1^2 (-1, 1). With a = 2, b = 1: p1 = 1/(1+e), Hg = (-0.1058, 0.1058).
    # The zero-input class-1 sample has constant loss, so the mean loss halves g and H: Hg / 4.
    model, data = two_weight_problem()
    p1 = 1 / (1 + math.e)
    c = 2 * (1 - p1) * p1**2 / 4
    crit = create_criterion("grasp", temperature=1.0, samples_per_class=1)
    ctx = ScoringContext(model.float(), MaskSet.from_model(model), data)
    keep = crit.score(ctx)["1.weight"].flatten().double()
    torch.testing.assert_close(keep, torch.tensor([2 * -c, 1 * c], dtype=torch.float64), rtol=1e-5, atol=0)
    # Paper's S = -theta * Hg: GraSP removes the highest S, i.e. the large correct-class weight a.
    paper = crit.paper_scores(ctx)["1.weight"].flatten()
    assert paper[0] > 0 > paper[1]
    mask = compute_masks(crit.score(ctx), ctx.masks, 0.5)["1.weight"].flatten()
    assert mask.tolist() == [0.0, 1.0]

    # The hand check of the intent: removing a raises the gradient norm, removing b lowers it.
    def grad_norm_sq(a, b):
        p = torch.softmax(torch.tensor([a, b], dtype=torch.float64), 0)
        return float((p[1] ** 2) * 2)  # |g|^2 = p1^2 + p1^2 for the class-0 sample

    assert grad_norm_sq(0, 1) > grad_norm_sq(2, 1) > grad_norm_sq(2, 0)


def test_grasp_needs_every_class_and_rejects_bad_options(data):
    model = small_cnn()
    y = data.train_y.clone()
    y[y == 3] = 4  # class 3 disappears
    broken = DatasetSplits("gap", data.train_x, y, data.test_x, data.test_y, 10, 1, data.image_size, "gap")
    with pytest.raises(DataError, match="class 3"):
        create_criterion("grasp").score(ctx_for(model, broken))
    with pytest.raises(ConfigError, match="reinit_linear_xavier"):
        create_criterion("grasp", reinit_linear_xavier="False")
    with pytest.raises(ConfigError, match="temperature"):
        create_criterion("grasp", temperature=0)
    with pytest.raises(ConfigError, match="no option 'temp'"):
        create_criterion("grasp", temp=200)


def test_grasp_reinit_option_scores_other_weights_and_keeps_the_model(data):
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = ctx_for(model, data, seed=4)
    plain = create_criterion("grasp", samples_per_class=2).score(ctx)
    re1 = create_criterion("grasp", samples_per_class=2, reinit_linear_xavier=True).score(ctx)
    re2 = create_criterion("grasp", samples_per_class=2, reinit_linear_xavier=True).score(ctx)
    assert not torch.allclose(plain["4.weight"], re1["4.weight"])
    torch.testing.assert_close(re1["4.weight"], re2["4.weight"])  # seeded re-initialization
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_grasp_balanced_batch_has_samples_per_class(data):
    x, y = GraSP(samples_per_class=3).batch(ctx_for(small_cnn(), data))
    assert torch.bincount(y, minlength=10).tolist() == [3] * 10


# -- SynFlow ------------------------------------------------------------------------------

def bias_free_relu_mlp():
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 20, bias=False), nn.ReLU(), nn.Linear(20, 15, bias=False),
                         nn.ReLU(), nn.Linear(15, 4, bias=False))


@pytest.mark.parametrize("pruned", [False, True])
def test_synflow_conservation_per_layer(pruned):
    model = bias_free_relu_mlp()
    masks = MaskSet.from_model(model)
    crit = create_criterion("synflow", input_shape=[1, 3, 4])
    ctx = ScoringContext(model, masks)
    if pruned:  # conservation holds for the masked network too
        masks.set(compute_masks(crit.score(ctx), masks, 0.3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = crit.score(ctx)
    assert all(s.dtype == torch.float64 for s in scores.values())
    totals = torch.stack([s.sum() for s in scores.values()])
    # Every layer's total equals R = 1^T (prod |W|) 1 (SynFlow Theorem 1).
    net = crit.linearized_copy(model, masks.masks)
    r = net(torch.ones(1, 1, 3, 4, dtype=torch.float64)).sum()
    torch.testing.assert_close(totals, r.detach().expand(len(totals)), rtol=1e-6, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # signs (and values) of the real model untouched


def test_synflow_iterative_masks_only_lose_weights_with_exact_counts():
    model = bias_free_relu_mlp()
    masks = MaskSet.from_model(model)
    crit = create_criterion("synflow", input_shape=[12])
    ctx = ScoringContext(model, masks)
    n = masks.numel()
    prev = {k: m.clone() for k, m in masks.masks.items()}
    for d in prune_densities(1.0, 0.05, 20):
        masks.set(compute_masks(crit.score(ctx), masks, d))
        assert masks.kept() == round(n * d)
        for k, m in masks.masks.items():
            assert bool((m <= prev[k]).all()), k
            prev[k] = m.clone()
    assert crit.default_iterations == 100


def test_synflow_pipeline_runs_100_iterations_and_masks_count_as_zero(tmp_path):
    recipe = recipe_from_dict({
        "model": {"name": "lenet300"}, "device": "cpu", "baseline": False,
        "data": {"name": "synthetic", "options": {"n_train": 20, "n_test": 10, "image_size": 6}},
        "stages": [{"prune": {"criterion": "synflow", "sparsity": 0.9}}, {"train": {"epochs": 0}}]})
    summary = run_pipeline(recipe, tmp_path, progress=False, log=lambda s: None)
    assert summary["prunable_kept"] == round(summary["prunable_params"] * 0.1)
    prune_row = [h for h in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"prune"' in h][0]
    assert '"iterations": 100' in prune_row


def test_synflow_without_data_needs_an_input_shape():
    model = bias_free_relu_mlp()
    with pytest.raises(ConfigError, match="input_shape"):
        create_criterion("synflow").score(ScoringContext(model, MaskSet.from_model(model)))


# -- every criterion ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["random", "magnitude", "snip", "grasp", "synflow"])
def test_every_criterion_scores_every_masked_tensor_with_an_exact_cut(name, data):
    model = small_cnn()
    ctx = ctx_for(model, data)
    crit = create_criterion(name)
    scores = crit.score(ctx)
    assert set(scores) == set(ctx.masks.names)
    for n, s in scores.items():
        assert s.shape == ctx.masks.params[n].shape and torch.isfinite(s).all()
    new = compute_masks(scores, ctx.masks, 0.1)
    assert sum(int(m.sum()) for m in new.values()) == round(ctx.masks.numel() * 0.1)


def test_pai_criteria_are_registered():
    assert {"snip", "grasp", "synflow", "magnitude", "random"} <= set(CRITERIA.names())
