"""The Campfire benchmark's own logic: every grid recipe validates, studies change what they say, the claim check."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_campfire = pytest.importorskip("bench_campfire")

from prunekit.pipeline import plan_stages  # noqa: E402
from prunekit.recipe import recipe_from_dict  # noqa: E402


@pytest.mark.parametrize("model", sorted(bench_campfire.SETTINGS))
@pytest.mark.parametrize("variant", sorted(bench_campfire.VARIANTS))
def test_every_grid_recipe_validates(model, variant):
    (stage,) = plan_stages(recipe_from_dict(bench_campfire.recipe(model, variant, 0.7, 6)))
    sparsify = stage.settings.sparsify
    if variant == "dense":
        assert sparsify is None
    else:
        assert sparsify.sparsity == 0.7 and sparsify.end_epoch == pytest.approx(3.6)  # 60% of 6 epochs


@pytest.mark.parametrize("model,name", [(m, n) for m, studies in bench_campfire.STUDIES.items() for n in studies])
def test_each_study_changes_only_its_own_setting(model, name):
    variant, study = bench_campfire.STUDIES[model][name]
    base = bench_campfire.recipe(model, variant, 0.7, 8)
    changed = bench_campfire.recipe(model, variant, 0.7, 8, study)
    (stage,) = plan_stages(recipe_from_dict(changed))
    assert stage.settings.epochs == 8
    base_sp, sp = base["stages"][0]["train"]["sparsify"], changed["stages"][0]["train"]["sparsify"]
    if "end_fraction" in study:
        assert sp["end_epoch"] == pytest.approx(study["end_fraction"] * 8) and sp["end_epoch"] != base_sp["end_epoch"]
        assert sp["start_epoch"] < sp["end_epoch"]
        assert changed["train"] == base["train"]
    else:
        assert sp == base_sp
        diff = {k for k in changed["train"] if changed["train"].get(k) != base["train"].get(k)}
        assert diff and diff <= {"lr", "schedule", "milestones"}
        if changed["train"].get("schedule") == "step":
            assert changed["train"]["milestones"] == [4, 6]  # half and three quarters of 8 epochs


def run(variant, acc, sparsity=0.7, study=""):
    return {"variant": variant, "test_acc": acc, "target_sparsity": sparsity, "study": study}


def test_claim_check_says_which_rows_are_within_one_point_of_dense():
    lines = bench_campfire.claim_lines([run("dense", 0.9250, 0.0), run("campfire-window", 0.9160),
                                        run("campfire-kernel", 0.9140), run("campfire-window", 0.90, 0.9),
                                        run("campfire-window", 0.9100, study="end30")])
    text = "\n".join(lines)
    assert "92.50%" in text and "above 92%" in text
    assert "campfire-window at 70%: 0.90 points below dense: within 1% of dense (claim holds)" in text
    assert "campfire-kernel at 70%: 1.10 points below dense: more than 1% below dense" in text
    assert "mask frozen at 30% of training" in text and "its own row is the default" in text
    assert len(lines) == 6  # blank, dense, three 70% rows (the 90% row is not part of the claim), studies note
    above = "\n".join(bench_campfire.claim_lines([run("dense", 0.9250, 0.0), run("campfire-window", 0.9260)]))
    assert "0.10 points above dense: within 1% of dense (claim holds)" in above
    assert "NOT above 92%" in "\n".join(bench_campfire.claim_lines([run("dense", 0.9150, 0.0)]))


def test_a_second_worker_skips_a_run_claimed_by_a_live_process(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_campfire, "RUNS", tmp_path)
    (tmp_path / "a.claim").write_text(str(os.getppid()))  # a live process that is not this one
    assert bench_campfire._claim("a") is False
    (tmp_path / "b.claim").write_text("999999999")  # no such process: the run is taken over
    assert bench_campfire._claim("b") is True and (tmp_path / "b.claim").read_text() == str(os.getpid())
    assert bench_campfire._claim("c") is True
