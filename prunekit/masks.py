"""MaskSet: binary masks over a model's prunable weight tensors.

Masks are plain float tensors kept beside the parameters (no forward hooks, no
re-parametrization), so the model stays an ordinary `nn.Module`: optimizers, deepcopy,
torch.save and torch.fx all keep working. Pruned entries are held at exactly zero by
two cheap in-place multiplies per training step: gradients are masked after
`backward()` (so clipping and Adam statistics see the sparse gradient) and weights are
masked after `optimizer.step()` (so momentum and weight decay cannot revive them).

A channel whose whole weight row is masked is *dead*, but its layer bias and the
following BatchNorm's gamma/beta would still emit a constant: the masked network would not
be the one `shrink` produces. The MaskSet therefore also masks those entries (and resets
the BatchNorm's running statistics for them) whenever masks change, and holds them at
zero on every `apply()` / `mask_grads()` like the weights: a masked model and its shrunk
copy give the same outputs, during training too.

ConvTranspose weights are laid out [in, out, ...], the transpose of what every granularity
assumes, so masking one is refused with a clear error rather than pruning the wrong axis.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from prunekit.errors import CheckpointError, ConfigError, did_you_mean

#: Module types that can be selected by name in `types`.
PRUNABLE_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
}
LAYER_POLICIES = ("prune", "dense")
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.conv._ConvTransposeNd)


def select_prunable(
    model: nn.Module,
    types: Sequence[str] = ("conv", "linear"),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    first_layer: str = "prune",
    last_layer: str = "prune",
) -> list[str]:
    """Return the parameter names (`<module>.weight`) that pruning may touch, in model order.

    `include`/`exclude` are shell-style patterns matched against module names; a pattern
    that matches no candidate layer is an error (a silent no-op hides typos).
    `first_layer`/`last_layer` = "dense" keep the first/last prunable layer unpruned.
    """
    for t in types:
        if t not in PRUNABLE_TYPES:
            raise ConfigError(
                f"prunable.types: unknown layer type '{t}'.{did_you_mean(t, PRUNABLE_TYPES)} "
                f"Allowed: {', '.join(PRUNABLE_TYPES)}."
            )
    for key, value in (("first_layer", first_layer), ("last_layer", last_layer)):
        if value not in LAYER_POLICIES:
            raise ConfigError(f"prunable.{key}: '{value}' is not one of {', '.join(LAYER_POLICIES)}.")
    classes = tuple(c for t in types for c in PRUNABLE_TYPES[t])
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, classes) and getattr(module, "weight", None) is not None
    ]
    for pattern in (*include, *exclude):
        if not any(fnmatch.fnmatchcase(name, pattern) for name in candidates):
            raise ConfigError(
                f"prunable pattern '{pattern}' matches no {'/'.join(types)} layer. "
                f"Layers are: {', '.join(candidates) or '(none)'}."
            )
    chosen = [n for n in candidates if not include or any(fnmatch.fnmatchcase(n, p) for p in include)]
    chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if chosen and first_layer == "dense" and chosen[0] == candidates[0]:
        chosen = chosen[1:]
    if chosen and last_layer == "dense" and chosen[-1] == candidates[-1]:
        chosen = chosen[:-1]
    if not chosen:
        raise ConfigError(
            f"no prunable tensors: the model has no {'/'.join(types)} layers left after "
            f"include={list(include)}, exclude={list(exclude)}, first_layer={first_layer}, "
            f"last_layer={last_layer}. Widen `prunable.types` or the patterns."
        )
    return [f"{n}.weight" if n else "weight" for n in chosen]


class MaskSet:
    """Binary (0/1) masks for named parameters of one model."""

    def __init__(self, model: nn.Module, names: Iterable[str]):
        params = dict(model.named_parameters())
        self.names: list[str] = list(names)
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ConfigError(f"mask names {missing} are not parameters of the model.")
        self.params: dict[str, nn.Parameter] = {n: params[n] for n in self.names}
        modules = dict(model.named_modules())
        for n in self.names:
            owner = modules.get(n.rsplit(".", 1)[0] if "." in n else "")
            if isinstance(owner, nn.modules.conv._ConvTransposeNd):
                raise ConfigError(
                    f"'{n}' belongs to a {type(owner).__name__}, whose weight is laid out [in, out, ...]: channel, "
                    "kernel and N:M masks would prune the wrong axis. Leave it out (prunable.exclude) or use "
                    "unstructured pruning on a Conv/Linear layer."
                )
        layers = [name for name, m in modules.items() if isinstance(m, LAYER_TYPES) and getattr(m, "weight", None) is not None]
        #: weight name of the model's last conv/linear layer (its rows are the classes) when it is masked
        self.output: str | None = f"{layers[-1]}.weight" if layers and f"{layers[-1]}.weight" in self.names else None
        self.model = model
        self.masks: dict[str, Tensor] = {
            n: torch.ones_like(p, dtype=p.dtype, memory_format=torch.contiguous_format)
            for n, p in self.params.items()
        }
        self._chains = None  # fx channel analysis, traced the first time a channel dies
        self.silenced: list[tuple[Tensor, Tensor]] = []  # (bias / BN tensor, 0/1 per channel) of dead channels

    @classmethod
    def from_model(cls, model: nn.Module, **selection) -> "MaskSet":
        """Build all-ones masks over the tensors chosen by `select_prunable(**selection)`."""
        return cls(model, select_prunable(model, **selection))

    # -- enforcing -----------------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights in place (parameter identity is preserved)."""
        torch._foreach_mul_([self.params[n] for n in self.names], [self.masks[n] for n in self.names])
        if self.silenced:
            torch._foreach_mul_([t for t, _ in self.silenced], [k for _, k in self.silenced])

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of pruned weights in place (call after backward)."""
        pairs = [(p.grad, self.masks[n]) for n, p in self.params.items() if p.grad is not None]
        pairs += [(t.grad, k) for t, k in self.silenced if t.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def set(self, new_masks: dict[str, Tensor]) -> None:
        """Replace masks (values are coerced to 0/1 of the parameter dtype) and apply them."""
        for name, mask in new_masks.items():
            if name not in self.masks:
                raise ConfigError(f"'{name}' is not a masked tensor; masked: {', '.join(self.names)}.")
            if mask.shape != self.masks[name].shape:
                raise ConfigError(f"mask for '{name}' has shape {tuple(mask.shape)}, expected {tuple(self.masks[name].shape)}.")
            self.masks[name].copy_(mask != 0)
        self._find_dead_channels()
        self.apply()
        from prunekit.distributed import info, verify_agreement

        if info().enabled:  # every rank must hold the same masks after every change
            verify_agreement(self.checksum(), "pruning masks")

    def to(self, device: torch.device | str) -> "MaskSet":
        """Move masks to `device` (parameters are moved by the model)."""
        self.masks = {n: m.to(device) for n, m in self.masks.items()}
        self.silenced = [(t, k.to(device)) for t, k in self.silenced]
        return self

    @torch.no_grad()
    def _find_dead_channels(self) -> None:
        """Collect the bias and following-BatchNorm entries of fully masked output channels.

        Their running statistics are reset to mean 0 / var 1 here; with gamma = beta = 0
        any statistics give 0, and the channel's input stays 0 while training.
        """
        modules = dict(self.model.named_modules())
        self.silenced = []
        for name in self.names:
            mask = self.masks[name]
            alive = mask.reshape(mask.shape[0], -1).any(1)
            if bool(alive.all()):
                continue
            layer = name.rsplit(".", 1)[0] if "." in name else ""
            mod = modules.get(layer)
            if not name.endswith("weight") or mod is None:
                continue
            keep = alive.to(mask.dtype)
            if isinstance(getattr(mod, "bias", None), Tensor):
                self.silenced.append((mod.bias, keep.to(mod.bias.device)))
            norm = self._norm_after(layer)
            if norm is not None and norm.num_features == len(keep):
                for t in (norm.weight, norm.bias):
                    if t is not None:
                        self.silenced.append((t, keep.to(t.device)))
                if norm.running_mean is not None:
                    dead = ~alive.to(norm.running_mean.device)
                    norm.running_mean[dead] = 0
                    norm.running_var[dead] = 1

    def _norm_after(self, layer: str) -> nn.Module | None:
        """The BatchNorm right after `layer` in the traced graph (None if none, or the model cannot be traced)."""
        if self._chains is None:
            from prunekit.surgery import channel_chains

            try:
                self._chains = channel_chains(self.model)
            except ConfigError:  # untraceable forward: only the layer's own bias can be silenced
                self._chains = {}
        chain = self._chains.get(layer)
        return dict(self.model.named_modules())[chain.norm] if chain is not None and chain.norm else None

    # -- reporting -----------------------------------------------------------------
    def kept(self) -> int:
        """Number of unpruned entries across all masked tensors."""
        return int(sum(int(m.count_nonzero()) for m in self.masks.values()))

    def numel(self) -> int:
        """Number of entries across all masked tensors."""
        return sum(m.numel() for m in self.masks.values())

    def density(self) -> float:
        """Fraction of masked-tensor entries that are kept."""
        return self.kept() / max(1, self.numel())

    def sparsity(self) -> float:
        """Fraction of masked-tensor entries that are pruned."""
        return 1.0 - self.density()

    def report(self) -> list[dict]:
        """Per-tensor rows: name, shape, numel, kept, density."""
        rows = []
        for n, m in self.masks.items():
            kept = int(m.count_nonzero())
            rows.append({"name": n, "shape": list(m.shape), "numel": m.numel(), "kept": kept, "density": kept / m.numel()})
        return rows

    def collapsed(self) -> list[str]:
        """Names of masked tensors with no weight left (a disconnected network)."""
        return [n for n, m in self.masks.items() if not bool(m.any())]

    def checksum(self) -> str:
        """A short hash of all masks, to check that copies agree (e.g. across ranks)."""
        h = hashlib.sha256()
        for n in self.names:
            h.update(n.encode())
            h.update(self.masks[n].detach().to("cpu", torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    # -- persistence ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Masks as compact bool tensors keyed by parameter name."""
        return {n: m.detach().to("cpu", torch.bool).clone() for n, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load masks saved by `state_dict`; names and shapes must match exactly."""
        if set(state) != set(self.names):
            extra, missing = sorted(set(state) - set(self.names)), sorted(set(self.names) - set(state))
            raise CheckpointError(
                f"mask checkpoint does not fit this model: unexpected {extra}, missing {missing}. "
                "Was it saved from another model or prunable selection?"
            )
        for n, m in state.items():
            if tuple(m.shape) != tuple(self.masks[n].shape):
                raise CheckpointError(
                    f"mask '{n}' in checkpoint has shape {tuple(m.shape)}, the model has {tuple(self.masks[n].shape)}."
                )
        self.set({n: m.to(self.masks[n].device) for n, m in state.items()})


def export_model(model: nn.Module, masks: MaskSet) -> nn.Module:
    """Return a deep copy of `model` with pruned weights baked in as zeros (no masks needed)."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for n, m in masks.masks.items():
            params[n].mul_(m.to(params[n].device))
    return out
