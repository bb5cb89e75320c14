"""Robustness metrics: FGSM / PGD (L-inf) adversarial accuracy and accuracy under Gaussian noise.

Campfire checks that structured sparsity does not make a network easier to attack; these
metrics work on any classifier and are reported by the pipeline when a recipe has an
`evaluate.robustness` section.

Units (a choice): prunekit's inputs are normalized tensors, so eps, step sizes and noise
sigmas are in *normalized* units by default, and no clamping to a pixel range is done.
To state them in [0, 1] pixel units instead, pass `pixel_std` (the dataset's std, 0.353
for Fashion-MNIST): every radius is divided by it, which is exact for a per-dataset std.

Robust accuracy counts a sample as correct only if it is classified correctly on the
clean input AND on every adversarial iterate the attack tried (the usual worst-case
bookkeeping). Hence FGSM accuracy <= clean accuracy always, and PGD without a random
start and with step size >= eps (its first iterate is the FGSM point) <= FGSM accuracy.
With eps = 0 every iterate is the clean input, so the attack accuracy equals clean accuracy.
All attacks run the model in eval mode and never touch parameter gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit.errors import ConfigError
from prunekit.train import batches


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """dL/dx of the summed cross-entropy (parameters' .grad stay untouched)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        return torch.autograd.grad(loss, x)[0]


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def fgsm_correct(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Per-sample bool: correct on x and on the FGSM point x + eps * sign(dL/dx) (Goodfellow et al. 2015)."""
    ok = _correct(model, x, y)
    if eps == 0:
        return ok
    return ok & _correct(model, x + eps * _input_grad(model, x, y).sign(), y)


def pgd_correct(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10, step_size: float | None = None,
                random_start: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample bool: correct on x and on every iterate of L-inf PGD (Madry et al. 2018).

    x_{k+1} = clip_{x, eps}(x_k + step_size * sign(dL/dx_k)); x_0 = x + U(-eps, eps) with
    `random_start`, else x. Default step size 2.5 * eps / steps.
    """
    ok = _correct(model, x, y)
    if eps == 0:
        return ok
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        adv = x + (2 * noise - 1) * eps
        ok &= _correct(model, adv, y)
    for _ in range(steps):
        adv = adv + alpha * _input_grad(model, adv, y).sign()
        adv = torch.max(torch.min(adv, x + eps), x - eps).detach()
        ok &= _correct(model, adv, y)
    return ok


def noise_correct(model: nn.Module, x: Tensor, y: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample bool: correct on x + sigma * N(0, 1) (noise drawn from `generator`)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return _correct(model, x + sigma * noise, y)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device, fn) -> float:
    was_training = model.training
    model.eval()
    try:
        correct = sum(int(fn(xb.to(device), yb.to(device)).sum()) for xb, yb in batches(x, y, batch_size))
    finally:
        model.train(was_training)
    return correct / max(1, len(x))


def robustness_report(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] = (0.1,), steps: int = 10,
                      step_size: float | None = None, random_start: bool = True,
                      noise_sigmas: Sequence[float] = (0.1,), pixel_std: float | None = None,
                      batch_size: int = 500, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Clean, FGSM, PGD and Gaussian-noise accuracy of `model` on (x, y), keyed by radius.

    Radii are in normalized input units, or in pixel units when `pixel_std` is given.
    """
    if any(e < 0 for e in eps) or any(s < 0 for s in noise_sigmas):
        raise ConfigError(f"robustness: eps {list(eps)} and noise_sigmas {list(noise_sigmas)} must be >= 0.")
    scale = 1.0 / pixel_std if pixel_std else 1.0
    gen = torch.Generator()
    out: dict = {"units": "pixel" if pixel_std else "normalized", "n": len(x), "steps": steps,
                 "random_start": random_start,
                 "clean": _accuracy(model, x, y, batch_size, device, lambda a, b: _correct(model, a, b))}
    out["fgsm"] = {str(e): _accuracy(model, x, y, batch_size, device,
                                     lambda a, b, e=e: fgsm_correct(model, a, b, e * scale)) for e in eps}
    gen.manual_seed(seed)
    out["pgd"] = {str(e): _accuracy(model, x, y, batch_size, device, lambda a, b, e=e: pgd_correct(
        model, a, b, e * scale, steps, step_size * scale if step_size else None, random_start, gen)) for e in eps}
    gen.manual_seed(seed + 1)
    out["noise"] = {str(s): _accuracy(model, x, y, batch_size, device,
                                      lambda a, b, s=s: noise_correct(model, a, b, s * scale, gen)) for s in noise_sigmas}
    return out
