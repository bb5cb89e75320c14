"""How a deployment bundle's facts read: the markdown of deploy.md and the lines `prunekit deploy` prints."""

from __future__ import annotations

from pathlib import Path


def fastest(latency_ms: dict[str, dict[str, float]]) -> dict[str, str]:
    """Batch size -> the runtime with the lowest latency there."""
    batches = next(iter(latency_ms.values())).keys()
    return {bs: min(latency_ms, key=lambda rt: latency_ms[rt][bs]) for bs in batches}


def _runtime_label(facts: dict, name: str) -> str:
    note = facts["runtimes"].get(name, {})
    if note.get("reason"):
        return f"{name} (fell back to eager: {note['reason']})"
    if note.get("first_call_s") is not None:
        return f"{name} (first call, compiling: {note['first_call_s']:.1f} s)"
    return name


def latency_table(facts: dict) -> list[str]:
    """Markdown rows: runtime x batch size, median ms, the fastest per batch in bold."""
    batches = [str(b) for b in facts["batches"]]
    rows = ["| runtime | " + " | ".join(f"batch {b} (ms)" for b in batches) + " |",
            "|---|" + "---|" * len(batches)]
    for name, per in facts["latency_ms"].items():
        cells = [f"**{per[b]:.2f}**" if facts["fastest"][b] == name else f"{per[b]:.2f}" for b in batches]
        rows.append(f"| {_runtime_label(facts, name)} | " + " | ".join(cells) + " |")
    return rows


def markdown(facts: dict) -> str:
    """deploy.md: what was deployed, sizes, checks, latency and the runtime to use."""
    checks = facts["checks"]
    big = str(max(facts["batches"]))
    rounded = facts["rounded_groups"]
    lines = [
        f"# Deployment of {facts['model']} ({facts['source']})", "",
        f"Command: `{facts['command']}`", "",
        f"- input {tuple(facts['input_shape'])}; {facts['params']:,} parameters ({facts['params_nonzero']:,} non-zero), "
        f"{facts['macs'] / 1e6:.2f} M MACs per sample",
        "- channel multiple " + str(facts["channel_multiple"]) + (
            f": {len(rounded)} channel group(s) rounded up, " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in rounded.items())
            if rounded else ": no group rounded"),
        "- files: " + ", ".join(f"{name} {size / 1024:.1f} KiB" for name, size in facts["disk_bytes"].items()),
        "- checks (max |difference| on 8 random inputs): " + ", ".join(f"{k.removesuffix('_max_abs_diff')} {v:.2g}"
                                                                         for k, v in checks.items()),
        f"- timed on {facts['machine']}, {facts['threads']} thread(s), torch {facts['torch']}"
        + (f", onnxruntime {facts['onnxruntime']}" if facts.get("onnxruntime") else "")
        + f"; lowest of {facts['rounds']} interleaved round medians of {facts['repeats']} calls; "
        f"load average {facts['load_average'][0]} before, {facts['load_average'][1]} after", "",
        *latency_table(facts), "",
        f"Fastest at batch {big}: **{facts['used']}**.", "",
    ]
    return "\n".join(lines)


def print_summary(facts: dict, bundle: Path) -> None:
    """The table and where the files are, for the terminal."""
    print()
    for row in latency_table(facts):
        if not row.startswith("|---"):
            print(row.replace("**", ""))
    print(f"\n{facts['params']:,} params, {facts['macs'] / 1e6:.2f} M MACs, {facts['threads']} thread(s); "
          f"fastest at batch {max(facts['batches'])}: {facts['used']}")
    print(f"bundle: {bundle}/ (" + ", ".join(facts["disk_bytes"]) + ")")
