"""The README's post-training pruning recipe (greedy -> recalibrate -> shrink, no fine-tune) runs as written."""

import json
from pathlib import Path

import pytest
import yaml

from prunekit.data import load_dataset
from prunekit.pipeline import run_pipeline
from prunekit.recipe import recipe_from_dict

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_recipe() -> dict:
    text = README.read_text().split("# post-training pruning: no fine-tuning after the cut", 1)[1]
    return yaml.safe_load(text.split("```", 1)[0])


def test_readme_post_training_recipe_runs_and_reports_its_data_budget(tmp_path):
    spec = readme_recipe()
    assert [next(iter(s)) for s in spec["stages"]] == ["train", "greedy", "recalibrate", "shrink"]
    # the same recipe, sized for a test: tiny model and data, one epoch, two candidates
    spec["model"]["options"] = {"width": 0.125}
    spec["data"] = {"name": "synthetic", "batch_size": 25}
    spec["train"]["epochs"] = 1
    spec["stages"][1]["greedy"].update(candidates=2, batch_size=8, curve_candidates=2)
    spec["stages"][2]["recalibrate"].update(batches=2, batch_size=16)
    data = load_dataset("synthetic", n_train=100, n_test=40, image_size=12)
    summary = run_pipeline(recipe_from_dict(spec), tmp_path, data, progress=False, log=lambda s: None)
    rows = {r["kind"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    greedy, shrink = rows["greedy"], rows["shrink"]
    assert greedy["budget"] == "global" and {r["kind"] for r in greedy["layers"]} == {"free", "stream"}
    # 100 training samples: minibatches of 8 over 12 groups plus the curves' batch read all of them
    assert 0 < greedy["samples_read"] == summary["greedy_samples_read"] <= 100
    assert rows["recalibrate"]["images"] == summary["recalibrate_samples_read"] == 32
    assert greedy["macs_fraction"] <= 0.5
    assert summary["dense_macs"] == shrink["macs_after"] <= 0.5 * shrink["macs_before"]
    assert shrink["acc_shrunk"] == pytest.approx(shrink["acc_masked"], abs=1e-9)
