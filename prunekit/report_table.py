"""Terminal tables (rich): run summaries beside the dense baseline, and model info."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _console() -> Console:
    # 100 columns keeps tables readable in a normal terminal and in CI logs.
    return Console(width=100, highlight=False)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def print_summary(results: dict[str, dict[str, Any]], title: str = "results") -> None:
    """One row per variant (pruned, dense): accuracy, sparsity, params kept, MACs, time."""
    table = Table(title=title)
    for col in ("variant", "test acc", "sparsity", "params kept", "MACs (sparse/dense)", "train s", "score s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for variant, s in results.items():
        table.add_row(
            variant, f"{100 * s['test_acc']:.2f}%", f"{100 * s['sparsity']:.2f}%",
            f"{human(s['params_nonzero'])}/{human(s['params_total'])}",
            f"{human(s['sparse_macs'])}/{human(s['dense_macs'])}",
            f"{s['train_time_s']:.1f}", f"{s['scoring_time_s']:.2f}")
    console = _console()
    console.print(table)
    pruned = results.get("pruned", {})
    if pruned.get("layers") and pruned.get("sparsity", 0) > 0:
        console.print(layer_density_table(pruned["layers"], pruned.get("collapsed_layers", [])))
    robust = {v: s["robustness"] for v, s in results.items() if s.get("robustness")}
    if robust:
        console.print(robustness_table(robust))


def density_bar(density: float, width: int = 20) -> str:
    """A text bar: one block per 1/width of density, at least one block when anything is kept."""
    blocks = round(density * width)
    if density > 0:
        blocks = max(blocks, 1)
    return "█" * blocks + "·" * (width - blocks)


def layer_density_table(layers: list[dict[str, Any]], collapsed: list[str] = ()) -> Table:
    """Per prunable tensor: shape, weights kept of total, density with a bar (what the method did)."""
    table = Table(title="what pruning kept, per layer")
    for col in ("layer", "kind", "shape", "kept", "density", ""):
        table.add_column(col, justify="left" if col in ("layer", "kind", "") else "right")
    for row in layers:
        mark = "  collapsed" if row["name"] in collapsed else ""
        kind = {2: "linear", 3: "conv1d", 4: "conv", 5: "conv3d"}.get(len(row["shape"]), "")
        table.add_row(row["name"], kind, "x".join(map(str, row["shape"])), f"{row['kept']:,}/{row['numel']:,}",
                      f"{100 * row['density']:.2f}%", density_bar(row["density"]) + mark)
    return table


def robustness_table(reports: dict[str, dict]) -> Table:
    """Clean / FGSM / PGD / noise accuracy per variant, one column per attack and radius."""
    first = next(iter(reports.values()))
    cols = [(kind, r) for kind in ("fgsm", "pgd", "noise") for r in first.get(kind, {})]
    table = Table(title=f"robustness ({first.get('units', 'normalized')} units, n={first.get('n')})")
    table.add_column("variant")
    table.add_column("clean", justify="right")
    for kind, r in cols:
        table.add_column(f"{kind} {r}", justify="right")
    for variant, rep in reports.items():
        table.add_row(variant, f"{100 * rep['clean']:.2f}%",
                      *(f"{100 * rep[kind][r]:.2f}%" if r in rep.get(kind, {}) else "-" for kind, r in cols))
    return table


def print_model_info(name: str, input_shape: tuple[int, int, int], num_classes: int, options: dict | None = None,
                     checkpoint: str | None = None) -> None:
    """Layers with parameter counts and MACs, marking the tensors pruning selects by default."""
    from prunekit.masks import select_prunable
    from prunekit.measure import count_flops, count_params
    from prunekit.models.external import build_model, is_factory

    model = build_model(name, options or {}, input_shape[0], num_classes, input_shape[1:], checkpoint,
                        name if is_factory(name) else None, log=_console().print)
    flops = count_flops(model, input_shape)
    prunable = set(select_prunable(model))
    table = Table(title=f"{name}: input {list(input_shape)}, {num_classes} classes")
    for col in ("layer", "type", "weight shape", "params", "MACs", "prunable"):
        table.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for mod_name, module in model.named_modules():
        if list(module.children()) or not any(True for _ in module.parameters(recurse=False)):
            continue
        w = getattr(module, "weight", None)
        table.add_row(mod_name, type(module).__name__, "x".join(map(str, w.shape)) if w is not None else "-",
                      human(sum(p.numel() for p in module.parameters(recurse=False))),
                      human(flops["per_layer"].get(mod_name, {}).get("macs", 0)),
                      "yes" if f"{mod_name}.weight" in prunable else "")
    console = _console()
    console.print(table)
    console.print(f"total params {count_params(model)['total']:,}, MACs {flops['dense_macs']:,}, "
                  f"prunable tensors {len(prunable)}")
