"""SynFlow: data-free synaptic saliency |theta ⊙ dR/dtheta| (Tanaka, Kunin, Yamins, Ganguli, NeurIPS 2020)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prunekit.criteria.base import CRITERIA, Criterion, ScoringContext
from prunekit.errors import ConfigError


@CRITERIA.register("synflow")
class SynFlow(Criterion):
    """Score S = |theta| ⊙ ∂R/∂|theta| with R = 1ᵀ(Π|W|)1 (SynFlow paper, Eq. 2-3, Algorithm 1).

    R is the sum of the outputs of the network with every parameter replaced by its
    absolute value, fed an all-ones input of batch 1 in eval mode. Because every weight,
    input and pre-activation is then non-negative, ReLUs pass everything and a bias-free
    ReLU MLP conserves the score: every layer's scores sum to R (paper Theorem 1), which
    tests/test_criteria_pai.py checks. The copy is float64 (deep nets overflow/underflow in
    float32) and has the current masks applied, so pruned weights count as zero; the real
    model is never modified (signs are never lost). Floating BatchNorm buffers are also
    made absolute, as the original (which abs()es the whole state dict) does; at
    initialization (running mean 0, variance 1) that changes nothing, and BN then acts
    as the per-channel positive affine map |gamma| x / sqrt(1 + eps) + |beta|.
    Run iteratively, 100 rounds by default (Algorithm 1): round i keeps density
    d^(i/100), re-scoring only surviving weights. Each round keeps exactly round(N·d_i)
    of the N masked weights (prunekit's one rounding convention, from `compute_masks`),
    and already-pruned weights never return. The input shape comes from the dataset
    (channels and image size), or from `input_shape` (C, H, W) when scoring without data.
    """

    default_iterations = 100

    def __init__(self, input_shape: Sequence[int] | None = None):
        if input_shape is not None and not (
            isinstance(input_shape, (list, tuple)) and all(isinstance(s, int) and s >= 1 for s in input_shape)
        ):
            raise ConfigError(f"synflow: input_shape must be a list of positive integers such as [1, 28, 28], "
                              f"got {input_shape!r}.")
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    def _input_shape(self, ctx: ScoringContext) -> tuple[int, ...]:
        if self.input_shape is not None:
            return self.input_shape
        if ctx.data is None:
            raise ConfigError("synflow needs the shape of one input: give a dataset or the option "
                              "input_shape: [C, H, W].")
        return (int(ctx.data.in_channels), *map(int, ctx.data.image_size))

    @staticmethod
    def linearized_copy(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        """A float64, eval-mode copy with masks applied and every parameter/float buffer made |.|."""
        net = copy.deepcopy(model).double().eval()
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask.to(params[name]))
            for t in [*net.parameters(), *net.buffers()]:
                if t.is_floating_point():
                    t.abs_()
        return net

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        net = self.linearized_copy(ctx.model, ctx.masks.masks)
        params = dict(net.named_parameters())
        weights = [params[n] for n in ctx.masks.names]
        x = torch.ones((1, *self._input_shape(ctx)), dtype=torch.float64, device=ctx.device)
        r = net(x).sum()
        grads = torch.autograd.grad(r, weights, allow_unused=True)
        return {n: (w.detach() * (torch.zeros_like(w) if g is None else g)).abs()
                for n, w, g in zip(ctx.masks.names, weights, grads)}
