"""Pipelines: the main job's outputs, exact sparsity, resume equals an uninterrupted run."""

import json

import pytest
import torch

from prunekit.checkpoint import load_checkpoint
from prunekit.data import load_dataset
from prunekit.errors import CheckpointError, ConfigError
from prunekit.pipeline import baseline_recipe, run_pipeline, run_recipe
from prunekit.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_train=600, n_test=200)


def small_recipe(**over):
    base = {"name": "t", "model": {"name": "lenet300"}, "data": {"name": "synthetic", "batch_size": 64},
            "train": {"epochs": 3, "lr": 0.05}, "baseline": False,
            "stages": [{"prune": {"sparsity": 0.8}}, "train"]}
    base.update(over)
    return recipe_from_dict(base)


def test_run_writes_results_and_reaches_the_exact_sparsity(tmp_path, data):
    s = run_pipeline(small_recipe(), tmp_path, data, progress=False, log=lambda _: None)
    assert s["prunable_kept"] == round(s["prunable_params"] * 0.2)
    assert s["sparsity"] == pytest.approx(0.8, abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["prune", "train", "train", "train"]
    assert all(r["sparsity"] == pytest.approx(0.8, abs=1e-6) for r in rows[1:])
    assert json.loads((tmp_path / "summary.json").read_text())["test_acc"] == s["test_acc"]
    assert s["test_acc"] > 0.5  # synthetic classes are easy; 10% would be chance
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["position"] == {"stage": 2, "epoch": 0}
    model_w = state["model"]["0.weight"] if "0.weight" in state["model"] else next(iter(state["model"].values()))
    assert model_w.dtype == torch.float32


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, data):
    full = run_pipeline(small_recipe(), tmp_path / "full", data, progress=False, log=lambda _: None)

    def stop_in_epoch_2(line):
        if "epoch 2/3" in line:  # logged before epoch 2's checkpoint: resume restarts epoch 2
            raise Interrupt

    with pytest.raises(Interrupt):
        run_pipeline(small_recipe(), tmp_path / "cut", data, progress=False, log=stop_in_epoch_2)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["position"] == {"stage": 1, "epoch": 1}
    resumed = run_pipeline(small_recipe(), tmp_path / "cut", data, resume=True, progress=False, log=lambda _: None)
    for key in ("test_acc", "test_loss", "sparsity", "prunable_kept"):
        assert resumed[key] == full[key], key
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_model_is_refused(tmp_path, data):
    run_pipeline(small_recipe(), tmp_path, data, progress=False, log=lambda _: None)
    with pytest.raises(ConfigError, match="lenet300"):
        run_pipeline(small_recipe(model={"name": "lenet5"}), tmp_path, data, resume=True, progress=False,
                     log=lambda _: None)


def test_corrupt_checkpoint_is_never_loaded(tmp_path, data):
    run_pipeline(small_recipe(), tmp_path, data, progress=False, log=lambda _: None)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # torn file
    with pytest.raises(CheckpointError, match="corrupt"):
        run_pipeline(small_recipe(), tmp_path, data, resume=True, progress=False, log=lambda _: None)


def test_lottery_ticket_rewinds_to_init_and_only_prunes(tmp_path, data):
    r = small_recipe(stages=["train", {"repeat": {"times": 2, "stages": [{"prune": {"sparsity": 0.75}}, "rewind", "train"]}}],
                     train={"epochs": 1, "lr": 0.05})
    s = run_pipeline(r, tmp_path, data, progress=False, log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    prunes = [row for row in rows if row["kind"] == "prune"]
    assert [p["target_sparsity"] for p in prunes] == pytest.approx([0.5, 0.75])  # 0.25^(1/2), 0.25^(2/2)
    assert s["sparsity"] == pytest.approx(0.75, abs=1e-6)


def test_baseline_is_the_first_train_stage_dense():
    r = small_recipe(stages=[{"prune": {}}, {"train": {"epochs": 5, "lr": 0.2}}], baseline=True)
    b = baseline_recipe(r)
    assert b.baseline is False and list(b.stages[0]) == ["train"] and b.stages[0]["train"]["epochs"] == 5


def test_run_recipe_compares_with_dense(tmp_path, data, monkeypatch):
    import prunekit.pipeline as pl

    monkeypatch.setattr(pl, "load_dataset", lambda *a, **k: data)
    res = run_recipe(small_recipe(baseline=True), tmp_path, progress=False, log=lambda _: None)
    assert set(res) == {"pruned", "dense"}
    assert res["dense"]["sparsity"] == 0.0 and res["dense"]["params_nonzero"] == res["dense"]["params_total"]
    assert (tmp_path / "recipe.yaml").exists() and (tmp_path / "summary.json").exists()
