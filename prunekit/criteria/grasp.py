"""GraSP: Gradient Signal Preservation, theta ⊙ Hg (Wang, Zhang, Grosse, ICLR 2020)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from prunekit.criteria.base import CRITERIA, Criterion, ScoringContext
from prunekit.criteria.scoring_data import balanced_batch, chunks
from prunekit.errors import ConfigError
from prunekit.masks import select_prunable


def _grad(out: Tensor, weights: list[Tensor], create_graph: bool = False) -> list[Tensor]:
    """d out / d weights, with zeros (not None) for weights the output does not reach."""
    grads = torch.autograd.grad(out, weights, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]


def hessian_gradient(model: nn.Module, weights: dict[str, Tensor], x: Tensor, y: Tensor,
                     temperature: float = 200.0, chunk_size: int | None = None,
                     loss_fn: nn.Module | None = None,
                     g_masks: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(g, Hg) for L = mean loss of model(x)/T over all of (x, y), accumulated over chunks.

    Pass 1: g = ∇L, detached (chunk c adds (n_c/n)·∇L_c, so the sum is the full-set
    gradient whatever the chunking). Pass 2: per chunk, g'_c = ∇L_c with create_graph,
    z_c = Σ g·(n_c/n)g'_c, and ∇z_c summed over chunks is H g (GraSP paper, Eq. 8: the
    Hessian-gradient product by double backprop, never forming H). `g_masks` zeroes g on
    pruned weights, which are held at zero and so carry no gradient signal.
    Only one chunk's graph is alive at a time, which bounds the memory.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    names, params = list(weights), list(weights.values())
    n = len(x)
    g = [torch.zeros_like(p) for p in params]
    for xc, yc in chunks(x, y, chunk_size):
        loss = loss_fn(model(xc) / temperature, yc) * (len(xc) / n)
        for acc, gc in zip(g, _grad(loss, params)):
            acc.add_(gc.detach())
    if g_masks:
        g = [gi * g_masks[k] if k in g_masks else gi for k, gi in zip(names, g)]
    hg = [torch.zeros_like(p) for p in params]
    for xc, yc in chunks(x, y, chunk_size):
        loss = loss_fn(model(xc) / temperature, yc) * (len(xc) / n)
        g_prime = _grad(loss, params, create_graph=True)
        z = sum((gi * gpi).sum() for gi, gpi in zip(g, g_prime))
        for acc, hc in zip(hg, _grad(z, params)):
            acc.add_(hc.detach())
    return dict(zip(names, g)), dict(zip(names, hg))


@CRITERIA.register("grasp")
class GraSP(Criterion):
    """Keep the weights with the highest theta ⊙ Hg, i.e. remove the highest S = −theta ⊙ Hg.

    The paper's score S(−theta) = −theta ⊙ Hg (GraSP Eq. 8) is, to first order, the change
    in the gradient norm gᵀg caused by removing a weight (up to the factor 2); GraSP removes the
    weights with the HIGHEST S, whose removal hurts gradient flow least or even increases it
    (ranking lowest-first is a known wrong variant). Under prunekit's "higher = keep"
    contract this method therefore returns theta ⊙ Hg; `paper_scores` returns S itself.
    Logits are divided by `temperature` (T = 200) in both passes; g and Hg are those of
    the mean loss over a class-balanced set of `samples_per_class` train samples per class
    (`GraSP.batch` returns it; no augmentation), accumulated over chunks of `chunk_size`
    samples. g and H cover every conv/linear weight of the model (the original code's set);
    scores are returned for the masked tensors. Scoring runs on a deep copy in train mode
    (BatchNorm on batch statistics, as the original; with BatchNorm, each chunk is
    normalised by its own statistics, so the chunk size then slightly changes the scores).
    The original code sums per-chunk mean-loss gradients rather than averaging them and
    divides the scores by |Σ S|; both are positive factors and leave the ranking unchanged.
    `reinit_linear_xavier` reproduces the original default of re-initialising the copy's
    Linear weights with Xavier-normal before scoring (the masks then come from those weights).
    """

    needs_data = True

    def __init__(self, temperature: float = 200.0, samples_per_class: int = 10, chunk_size: int | None = 128,
                 reinit_linear_xavier: bool = False):
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"grasp: temperature must be a positive number (paper: 200), got {temperature!r}.")
        if not isinstance(reinit_linear_xavier, bool):  # "False" must not read as True
            raise ConfigError(f"grasp: reinit_linear_xavier must be true or false, got {reinit_linear_xavier!r}.")
        if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ConfigError(f"grasp: chunk_size must be a positive integer or null, got {chunk_size!r}.")
        self.temperature = float(temperature)
        self.samples_per_class = samples_per_class
        self.chunk_size = chunk_size
        self.reinit_linear_xavier = reinit_linear_xavier

    def batch(self, ctx: ScoringContext) -> tuple[Tensor, Tensor]:
        """The exact class-balanced (x, y) scoring set, in train-split order."""
        return balanced_batch(ctx, self.samples_per_class, "grasp")

    def scoring_copy(self, ctx: ScoringContext) -> nn.Module:
        """The model GraSP differentiates: a train-mode copy (Linear re-initialised on request)."""
        model = copy.deepcopy(ctx.model).train()
        if self.reinit_linear_xavier:
            gen = torch.Generator().manual_seed(int(ctx.seed))
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, nn.Linear):
                        m.weight.copy_(nn.init.xavier_normal_(torch.empty(m.weight.shape), generator=gen))
        params = dict(model.named_parameters())
        with torch.no_grad():  # pruned weights stay pruned in the copy, too
            for name, mask in ctx.masks.masks.items():
                params[name].mul_(mask)
        return model

    def paper_scores(self, ctx: ScoringContext) -> dict[str, Tensor]:
        """The paper's S = −theta ⊙ Hg per masked tensor (GraSP removes the highest)."""
        model = self.scoring_copy(ctx)
        params = dict(model.named_parameters())
        names = list(dict.fromkeys(select_prunable(model) + list(ctx.masks.names)))
        x, y = self.batch(ctx)
        _, hg = hessian_gradient(model, {n: params[n] for n in names}, x.to(ctx.device), y.to(ctx.device),
                                 self.temperature, self.chunk_size, ctx.loss_fn, ctx.masks.masks)
        return {n: -params[n].detach() * hg[n] for n in ctx.masks.names}

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        return {n: -s for n, s in self.paper_scores(ctx).items()}
