"""`prunekit deploy RUN_DIR` on tiny finished runs: the bundle, its equality checks, channel rounding, errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from prunekit.cli import main
from prunekit.deploy_cli import load_fused
from prunekit.deploy_run import check_inputs, load_run
from prunekit.measure import count_flops, count_params
from prunekit.models import create_model
from prunekit.pipeline import run_recipe
from prunekit.recipe import recipe_from_dict
from prunekit.surgery import load_shrunk, masked_copy

SHAPE = (1, 12, 12)
FAST = ["--batches", "1,4", "--rounds", "1", "--repeats", "1"]


def _recipe(shrink: bool) -> dict:
    """ResNet-20 at half width, one epoch on 64 synthetic images, 40% of channels pruned (+ shrink)."""
    stages = [{"train": {}}, {"prune": {"criterion": "magnitude", "structure": "channel", "sparsity": 0.4}}]
    return {"name": "tiny", "model": {"name": "resnet20", "options": {"width": 0.5}}, "baseline": False,
            "data": {"name": "synthetic", "batch_size": 32, "options": {"n_train": 64, "n_test": 32, "image_size": 12}},
            "prunable": {"types": ["conv"]}, "train": {"epochs": 1, "lr": 0.05},
            "stages": stages + ([{"shrink": {"facts": False}}] if shrink else [])}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs with the same masks: one ends with a shrink stage, one has masks only."""
    out = {}
    for kind in ("shrunk", "masks"):
        run_dir = tmp_path_factory.mktemp("runs") / kind
        run_recipe(recipe_from_dict(_recipe(kind == "shrunk")), run_dir, progress=False, log=lambda s: None)
        out[kind] = run_dir
    return out


def _deploy(*args: str) -> int:
    return main(["deploy", *map(str, args)])


def _facts(run_dir) -> dict:
    return json.loads((run_dir / "deploy" / "deploy.json").read_text())


@torch.no_grad()
def _run_output(run_dir) -> torch.Tensor:
    """What the run's own final model computes on the deploy check inputs."""
    run = load_run(run_dir)
    return masked_copy(run.model, run.masks).eval()(check_inputs(SHAPE))


@pytest.fixture(scope="module")
def bundle(runs):
    """The full bundle (ONNX included) of the masks-only run."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert _deploy(runs["masks"], "--runtimes", "eager,fused-nhwc,onnxruntime", *FAST) == 0
    return runs["masks"] / "deploy"


def test_bundle_holds_models_onnx_and_facts(bundle):
    assert {p.name for p in bundle.iterdir()} >= {"model_shrunk.pt", "model_fused.pt", "model.onnx", "deploy.json",
                                                  "deploy.md"}
    assert not list(bundle.parent.glob(".deploy.*"))  # no temporary directory left behind
    facts = _facts(bundle.parent)
    small = load_shrunk(bundle / "model_shrunk.pt")
    assert facts["params"] == count_params(small)["total"]
    assert facts["macs"] == count_flops(small, SHAPE)["dense_macs"]
    assert facts["macs"] < count_flops(create_model("resnet20", 1, 10, SHAPE[1:], width=0.5), SHAPE)["dense_macs"]
    assert facts["source"] == "masks only, shrunk by deploy" and facts["threads"] == 1
    assert facts["disk_bytes"]["model_shrunk.pt"] == (bundle / "model_shrunk.pt").stat().st_size
    assert set(facts["latency_ms"]) == {"eager", "fused-nhwc", "onnxruntime"}
    for per in facts["latency_ms"].values():
        assert set(per) == {"1", "4"} and all(ms > 0 for ms in per.values())
    for bs, name in facts["fastest"].items():  # the fastest runtime is the one with the lowest figure
        assert facts["latency_ms"][name][bs] == min(per[bs] for per in facts["latency_ms"].values())
    assert facts["used"] == facts["fastest"]["4"]
    assert all(v <= 1e-4 for v in facts["checks"].values()) and len(facts["checks"]) == 4
    md = (bundle / "deploy.md").read_text()
    assert "1 thread(s)" in md and f"Fastest at batch 4: **{facts['used']}**" in md


def test_fused_and_shrunk_models_compute_what_the_run_computes(runs, bundle):
    x = check_inputs(SHAPE)
    small, fused = load_shrunk(bundle / "model_shrunk.pt").eval(), load_fused(bundle / "model_fused.pt")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())  # every BN folded into its conv
    assert fused.get_submodule("conv1").weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = small(x)
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), want, atol=1e-4, rtol=0)
    torch.testing.assert_close(want, _run_output(runs["masks"]), atol=1e-4, rtol=0)


def test_onnx_file_computes_what_torch_computes(bundle):
    import onnxruntime as ort

    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))  # a batch size never exported
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, load_shrunk(bundle / "model_shrunk.pt").eval()(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["masks", "shrunk"])
def test_channel_multiple_gives_multiples_and_keeps_masked_equal_shrunk(runs, kind):
    assert _deploy(runs[kind], "--channel-multiple", "8", "--no-onnx", "--runtimes", "eager", *FAST) == 0
    facts = _facts(runs[kind])
    small = load_shrunk(runs[kind] / "deploy" / "model_shrunk.pt").eval()
    widths = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths == {k: v for k, v in facts["widths"].items() if k != "fc"}
    assert all(w % 8 == 0 for w in widths.values()), widths  # half-width ResNet-20: full widths 8/16/32
    assert facts["rounded_groups"] and all(b % 8 == 0 and b > a for a, b in facts["rounded_groups"].values())
    assert facts["checks"]["masked_vs_shrunk_max_abs_diff"] <= 1e-4
    with torch.no_grad():  # re-admitted channels are zeros: the deployed model computes what the run computes
        torch.testing.assert_close(small(check_inputs(SHAPE)), _run_output(runs[kind]), atol=1e-4, rtol=0)


def test_shrunk_and_masks_only_runs_round_to_the_same_widths(runs):
    for kind in ("masks", "shrunk"):
        assert _deploy(runs[kind], "--channel-multiple", "8", "--no-onnx", "--runtimes", "eager", *FAST) == 0
    assert _facts(runs["masks"])["widths"] == _facts(runs["shrunk"])["widths"]
    assert _facts(runs["shrunk"])["source"] == "shrunk run"


def test_rounding_readmits_the_highest_magnitude_dead_channels():
    from prunekit.channel_round import round_up_masks
    from prunekit.masks import MaskSet

    torch.manual_seed(0)
    model = create_model("resnet20", 1, 10, SHAPE[1:], width=0.5).eval()  # layer1 inner convs: 8 channels
    masks = {n: m.bool() for n, m in MaskSet.from_model(model, types=["conv"]).masks.items()}
    masks["layer1.0.conv1.weight"][:5] = False  # 5 dead, 3 kept
    with torch.no_grad():
        model.layer1[0].conv1.weight[3] *= 10  # the largest dead row
        model.layer1[0].conv1.weight[1] *= 5   # the second largest
    new, rounded = round_up_masks(model, masks, 4, torch.zeros(1, *SHAPE))
    assert rounded == {"layer1.0.conv1": (3, 4)}
    alive = new["layer1.0.conv1.weight"].reshape(8, -1).any(1)
    assert alive.tolist() == [False, False, False, True, False, True, True, True]
    new5, rounded5 = round_up_masks(model, masks, 5, torch.zeros(1, *SHAPE))
    assert rounded5["layer1.0.conv1"] == (3, 5)
    assert new5["layer1.0.conv1.weight"].reshape(8, -1).any(1)[[1, 3]].all()
    assert all(torch.equal(new[n], masks[n]) for n in masks if n != "layer1.0.conv1.weight")


def test_compile_failure_falls_back_to_eager_with_the_reason(runs, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    assert _deploy(runs["masks"], "--runtimes", "compile,eager", "--no-onnx", *FAST) == 0
    facts = _facts(runs["masks"])
    assert facts["runtimes"]["compile"] == {"used": "eager (fused-nhwc)", "reason": "RuntimeError: no C++ compiler found"}
    assert set(facts["latency_ms"]) == {"compile", "eager"}  # the fallback is still timed
    assert set(facts["fastest"].values()) == {"eager"}  # but never named fastest: its figures are eager's
    assert "compile (fell back to eager: RuntimeError: no C++ compiler found)" in \
        (runs["masks"] / "deploy" / "deploy.md").read_text()


def test_a_failed_deploy_keeps_the_previous_bundle(runs, monkeypatch):
    assert _deploy(runs["shrunk"], "--no-onnx", "--runtimes", "eager", *FAST) == 0
    before = (runs["shrunk"] / "deploy" / "deploy.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", "model_fused.pt")

    monkeypatch.setattr("prunekit.deploy_cli.save_fused", broken)
    assert _deploy(runs["shrunk"], "--no-onnx", "--runtimes", "fused-nhwc", *FAST) == 2
    assert (runs["shrunk"] / "deploy" / "deploy.json").read_bytes() == before
    assert not list(runs["shrunk"].glob(".deploy.*"))


def _error(capsys, *args) -> str:
    assert _deploy(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunekit: error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    return err


def test_bad_inputs_give_one_line_messages(runs, tmp_path, capsys, monkeypatch):
    assert "does not exist" in _error(capsys, tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "recipe.yaml").write_text("name: half\n")
    assert "has no model" in _error(capsys, tmp_path / "half")
    assert "Its parent" in _error(capsys, runs["masks"] / "pruned")
    assert "--channel-multiple must be a whole number >= 1, got 0" in _error(
        capsys, runs["masks"], "--channel-multiple", "0")
    assert "Did you mean 'eager'" in _error(capsys, runs["masks"], "--runtimes", "eagr")
    assert "--batches '1,x'" in _error(capsys, runs["masks"], "--batches", "1,x")
    assert "--threads must be at least 1" in _error(capsys, runs["masks"], "--threads", "0")
    assert "drop one of them" in _error(capsys, runs["masks"], "--runtimes", "onnxruntime", "--no-onnx")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the deploy extras were not installed
    assert "pip install 'prunekit[deploy]', or pass --no-onnx" in _error(capsys, runs["masks"])


def test_dry_run_says_what_it_would_do(runs, capsys):
    assert _deploy(runs["shrunk"], "--dry-run", "--channel-multiple", "16") == 0
    out = capsys.readouterr().out
    assert "already shrunk" in out and "channel multiple 16" in out and "1 thread(s)" in out


def test_fused_file_naming_a_factory_is_refused_without_importing(tmp_path):
    """A fused file is data: a factory name inside it is refused, never imported."""
    from prunekit.deploy_cli import FUSED_FORMAT
    from prunekit.errors import CheckpointError

    path = tmp_path / "model_fused.pt"
    torch.save({"format": FUSED_FORMAT, "model_name": "os:system", "in_channels": 1, "num_classes": 10,
                "image_size": [28, 28], "options": {}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="factory 'os:system'"):
        load_fused(path)
