"""Per-layer patterns: N:M, window (Campfire) and window + kernel.

These granularities constrain weights *inside* a layer (every M consecutive inputs keep N;
every kh x kw kernel keeps a few), so ranking them across layers by one threshold is
meaningless: a 1x1 kernel has one weight, a 3x3 kernel nine, and their local ranks do not
compare. prunekit therefore combines them with every allocation in two steps:

1. the allocation decides how many weights each layer keeps (`prunekit.allocate.layer_counts`):
   uniform: round(n_l * d); erk: round(n_l * d_l) with the ERK densities; global: one
   threshold over per-layer normalised weight scores (no layer's scale wins), with the
   collapse floor (every output unit keeps its best weight) when prevent_collapse is on;
2. `select_layer` applies the pattern inside each layer with exactly that count. The
   per-group cap is derived from the layer's own count: the smallest cap c with
   sum_g min(c, live_g) >= count (the even share of the count over the layer's groups).

N:M is per-layer by definition: every layer keeps the same density whatever the
allocation, so a 2:4 run ends with exactly 2 of every 4 in every group.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunekit.allocate import select_top, unit_floor
from prunekit.errors import ConfigError
from prunekit.structure import STRUCTURES, KernelStructure, Structure, WeightStructure, _check_conv, _check_fallback


def rank_in_group(score: Tensor, alive: Tensor) -> Tensor:
    """Long [groups, size]: 0 for the best live entry of each row, 1 for the next... (dead last; ties: earlier first)."""
    s = torch.where(alive, score.double(), torch.full_like(score, float("-inf"), dtype=torch.float64))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order).contiguous())
    return rank


def even_cap(live: Tensor, count: int, size: int) -> int:
    """Smallest c in [0, size] with sum_g min(c, live_g) >= count: the even share of `count` over groups."""
    caps = torch.arange(size + 1, device=live.device)
    totals = torch.minimum(live.view(1, -1), caps.view(-1, 1)).sum(1)
    reach = torch.nonzero(totals >= count).flatten()
    return int(reach[0]) if len(reach) else size


def top_weights(score: Tensor, alive: Tensor, count: int, floor: bool = False) -> Tensor:
    """0/1 mask keeping the `count` best live weights of one tensor (unstructured fallback).

    With `floor`, every output unit's best live weight is kept first (the collapse floor).
    """
    key = torch.where(alive.bool(), score.double(), torch.full_like(score, float("-inf"), dtype=torch.float64))
    key = key.reshape(-1).cpu()
    if floor:
        rows = torch.arange(alive.shape[0]).repeat_interleave(alive[0].numel())
        key[unit_floor(key, rows)] = float("inf")
    keep = select_top(key, torch.ones(key.numel(), dtype=torch.long), count)
    return keep.view(alive.shape).to(alive.device).float()


def _percentile(score: Tensor) -> Tensor:
    """Each entry's rank in the tensor divided by its size, in [0, 1) (ties: earlier lower)."""
    flat = score.reshape(-1).double()
    pct = torch.empty_like(flat)
    pct[torch.sort(flat, stable=True).indices] = torch.arange(len(flat), dtype=torch.float64, device=flat.device) / len(flat)
    return pct.view(score.shape)


class LocalStructure(WeightStructure):
    """Base for within-group top-k patterns: each local group (`local`) keeps at most `cap` weights.

    Without a fixed cap weights are ranked by their rank inside their local group first
    (key -(rank + 1) / size, tie-broken by the weight's score percentile), so every group
    keeps its even share of its best weights and N:M ends with exactly N in every group.
    With a fixed cap (`by_score`) the layer keeps its best weights among each group's top-cap.
    """

    per_layer = True
    by_score = False

    def local(self, t: Tensor) -> Tensor:
        """View `t` as [local groups, local group size]."""
        raise NotImplementedError

    def unlocal(self, g: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of `local`."""
        raise NotImplementedError

    def applies(self, shape: torch.Size) -> bool:
        """Whether the local pattern applies to a tensor of `shape` (fallbacks return False)."""
        return True

    def cap(self, name: str, count: int, live: Tensor, size: int) -> int:
        """Most weights one local group may keep when the layer keeps `count` (default: the even share)."""
        return even_cap(live, count, size)

    def select_layer(self, name: str, score: Tensor, alive: Tensor, count: int, floor: bool = False) -> Tensor:
        """0/1 mask of one layer keeping exactly `count` live weights in the pattern.

        `floor` (the collapse floor) applies to the unstructured fallback of linear layers;
        inside the pattern the even share already spreads the count over every output unit.
        """
        alive = alive.bool()
        if count <= 0:
            return torch.zeros_like(alive, dtype=torch.float32)
        if not self.applies(alive.shape):
            return top_weights(score, alive, count, floor)
        la, ls = self.local(alive), self.local(score.double())
        size = la.shape[1]
        rank = rank_in_group(ls, la)
        eligible = la & (rank < self.cap(name, count, la.sum(1), size))
        if self.by_score:
            key = ls
        else:
            key = -(rank.double() + 1) / size + 1e-7 * self.local(_percentile(score))
        key = torch.where(eligible, key, torch.full_like(key, float("-inf")))
        keep = select_top(key.reshape(-1).cpu(), torch.ones(key.numel(), dtype=torch.long), count)
        return self.unlocal(keep.view(la.shape).to(alive.device), alive.shape).float()


@STRUCTURES.register("nm", "n:m")
class NMStructure(LocalStructure):
    """N:M sparsity: every M consecutive weights along the input dimension keep exactly N.

    For a conv weight [out, in/groups, kh, kw] the groups run along the input channels at
    each kernel position (the im2col layout with channels last that sparse tensor cores
    expect). The pattern fixes the density at N/M in every layer (whatever the allocation);
    on the way there (a gradual schedule) each group keeps at most max(N, its even share).
    A density below N/M is an error. Depthwise convs (one input per group) do not fit.
    """

    name = "nm"
    same_density = True

    def __init__(self, reduce: str = "sum", n: int = 2, m: int = 4):
        super().__init__(reduce)
        if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m):
            raise ConfigError(f"nm structure: need integers 1 <= n <= m, got n={n!r}, m={m!r} (e.g. n: 2, m: 4).")
        self.n, self.m = n, m

    def check(self, name: str, shape: torch.Size) -> None:
        if len(shape) < 2 or shape[1] % self.m:
            raise ConfigError(
                f"{self.n}:{self.m} sparsity needs the input dimension of '{name}' (shape {tuple(shape)}) to be a "
                f"multiple of {self.m}. Keep that layer dense (prunable.exclude / first_layer: dense)."
            )

    def local(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], -1).permute(0, 2, 1).reshape(-1, self.m)

    def unlocal(self, g: Tensor, shape: torch.Size) -> Tensor:
        o, i = shape[0], shape[1]
        return g.reshape(o, -1, i).permute(0, 2, 1).reshape(shape)

    def check_density(self, density: float) -> None:
        """N:M keeps N/M at the end: a lower density cannot be reached."""
        if density < self.n / self.m - 1e-9:
            raise ConfigError(
                f"{self.n}:{self.m} sparsity keeps exactly {self.n / self.m:.4g} of the weights; density {density:.4g} "
                f"(sparsity {1 - density:.4g}) is below it. Set sparsity: {1 - self.n / self.m:.4g}."
            )

    def cap(self, name: str, count: int, live: Tensor, size: int) -> int:
        return max(self.n, even_cap(live, count, size))


@STRUCTURES.register("window")
class WindowStructure(LocalStructure):
    """Campfire's window sparsity: inside every kh x kw kernel only a few weights survive.

    Without `m` each window keeps at most its even share of the layer's count
    (ceil(kh*kw * d_l) on a fresh layer), so windows stay balanced and the count is exact.
    With `m` the pattern is fixed: every window keeps at most `m` weights, chosen with the
    layer's best scores among each window's top-m; a layer density above m/(kh*kw) cannot be
    reached and is an error (in a gradual schedule start from initial_sparsity >= 1 - m/(kh*kw),
    or leave m unset so the cap follows the density).
    """

    name = "window"

    def __init__(self, reduce: str = "sum", m: int | None = None, linear: str = "error"):
        super().__init__(reduce)
        if m is not None and not (isinstance(m, int) and m >= 1):
            raise ConfigError(f"window structure: m={m!r} must be a positive integer (weights kept per kernel).")
        self.m = m
        self.by_score = m is not None
        self.linear = _check_fallback(self.name, linear)

    def check(self, name: str, shape: torch.Size) -> None:
        _check_conv(self.name, self.linear, name, shape)

    def applies(self, shape: torch.Size) -> bool:
        return len(shape) >= 3

    def local(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0] * t.shape[1], -1)

    def unlocal(self, g: Tensor, shape: torch.Size) -> Tensor:
        return g.reshape(shape)

    def max_density(self, shape: torch.Size) -> float:
        """Highest density the pattern allows in a tensor of `shape` (m per kh*kw window; 1 without m)."""
        if self.m is None or not self.applies(shape):
            return 1.0
        return min(1.0, self.m / math.prod(shape[2:]))

    def cap(self, name: str, count: int, live: Tensor, size: int) -> int:
        if self.m is None:
            return even_cap(live, count, size)
        room = int(live.clamp(max=self.m).sum())
        if count > room:
            n = len(live) * size
            raise ConfigError(
                f"window m={self.m} keeps at most {self.m} of every {size} weights of '{name}' ({room} of {n} live, "
                f"density {room / n:.4g}); it was asked to keep {count} (density {count / n:.4g}). Raise the sparsity "
                f"to >= {1 - room / n:.4g}, raise m to {math.ceil(size * count / n)}, or leave m unset."
            )
        return self.m


@STRUCTURES.register("window_kernel", "window+kernel")
class WindowKernelStructure(Structure):
    """Campfire's combination: whole kernels first, then windows inside the surviving kernels.

    A layer keeping `count` = n_l * d_l weights keeps the round(kernels * d_l**split) best
    kernels (ranked by kernel score; at least enough to hold the count), then every kept
    kernel keeps at most its even share of the count (a window without `m`), or `m`.
    """

    name = "window_kernel"
    per_layer = True

    def __init__(self, reduce: str = "sum", m: int | None = None, split: float = 0.5, linear: str = "error"):
        super().__init__(reduce)
        if not (isinstance(split, (int, float)) and 0.0 <= split <= 1.0):
            raise ConfigError(f"window_kernel structure: split={split!r} must be in [0, 1] (share of sparsity taken by kernels).")
        self.m, self.split, self.linear = m, float(split), _check_fallback(self.name, linear)
        self.kernel = KernelStructure(reduce, linear)
        self.window = WindowStructure(m=m, linear=linear)

    def check(self, name: str, shape: torch.Size) -> None:
        _check_conv(self.name, self.linear, name, shape)

    def grouped(self, t: Tensor) -> Tensor:
        return self.kernel.grouped(t)

    def ungroup(self, g: Tensor, shape: torch.Size) -> Tensor:
        return self.kernel.ungroup(g, shape)

    def select_layer(self, name: str, score: Tensor, alive: Tensor, count: int, floor: bool = False) -> Tensor:
        """0/1 mask of one layer: kernels by kernel score, then windows, exactly `count` weights."""
        alive = alive.bool()
        if count <= 0:
            return torch.zeros_like(alive, dtype=torch.float32)
        if alive.dim() < 3:
            return top_weights(score, alive, count, floor)
        kscore = self.kernel.group_scores(score, alive)
        live = self.kernel.grouped(alive).sum(1).cpu()
        size = self.kernel.group_size(alive.shape)
        density = count / alive.numel()
        keep_k = max(math.ceil(count / size), round(live.numel() * density**self.split))
        order = torch.sort(kscore.cpu(), descending=True, stable=True).indices
        # Enough kernels that their live weights can hold the count (kernels thinned earlier hold fewer).
        keep_k = max(keep_k, int(torch.searchsorted(torch.cumsum(live[order], 0), torch.tensor(count))) + 1)
        keep_k = min(keep_k, int((live > 0).sum()))
        chosen = torch.zeros(live.numel(), dtype=torch.bool)
        chosen[order[:keep_k]] = True
        within = alive & self.kernel.expand(chosen.to(alive.device), alive.shape).bool()
        return self.window.select_layer(name, score, within, count)
