"""BatchNorm scale: rank a layer's output channels by |gamma| of the BatchNorm after it.

Network Slimming (Liu et al., ICCV 2017) reads the BN scaling factor gamma as the channel's
importance. The BatchNorm is found with torch.fx (`surgery.channel_chains`): the BN module
that directly consumes the conv/linear layer's output. Per-weight scores are |gamma_c| / n,
n = weights per output channel, so the channel `sum` reduction gives |gamma_c| exactly and
a global threshold compares gammas across layers as the paper does. A masked layer with no
BatchNorm after it (e.g. the classifier) is an error: exclude it from `prunable`.
"""

from __future__ import annotations

from prunekit.criteria.base import CRITERIA, Criterion, ScoringContext
from prunekit.errors import ConfigError


@CRITERIA.register("bn_scale", "bn-scale", "slimming")
class BNScale(Criterion):
    """|gamma| of the following BatchNorm, spread evenly over each output channel's weights."""

    def score(self, ctx: ScoringContext):
        from prunekit.surgery import channel_chains

        chains = channel_chains(ctx.model)
        modules = dict(ctx.model.named_modules())
        scores = {}
        for name, p in ctx.masks.params.items():
            layer = name.rsplit(".", 1)[0] if "." in name else ""
            chain = chains.get(layer)
            if chain is None or chain.norm is None:
                raise ConfigError(
                    f"bn_scale: layer '{layer}' is not followed by a BatchNorm, so it has no gamma to rank its "
                    f"channels. Exclude it (prunable.exclude: ['{layer}'], or prunable.last_layer: dense for the "
                    "classifier) or use another criterion such as magnitude."
                )
            gamma = modules[chain.norm].weight.detach().abs()
            per_row = p[0].numel()
            scores[name] = (gamma / per_row).view(-1, *([1] * (p.dim() - 1))).expand_as(p).to(p.dtype).clone()
        return scores
