"""Faults and bad input: SIGKILL + resume, atomic writes, divergence, unwritable/full disks."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
import torch

from prunekit.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from prunekit.cli import main
from prunekit.errors import CheckpointError, ConfigError, TrainingDiverged
from prunekit.pipeline import run_pipeline, run_recipe
from prunekit.recipe import recipe_from_dict

RUN = [sys.executable, "-m", "prunekit", "run", "--dataset", "synthetic", "--model", "lenet300", "--epochs", "3",
       "--no-baseline", "--quiet", "--sparsity", "0.8", "--set", "data.options.n_train=6000"]


def test_sigkill_at_a_random_point_then_resume_matches(tmp_path):
    full = subprocess.run(RUN + ["--run-dir", str(tmp_path / "full")], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen(RUN + ["--run-dir", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = cut / "pruned" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # prune + >= 1 epoch checkpointed
            break
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.8))  # somewhere inside a later epoch or checkpoint write
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([sys.executable, "-m", "prunekit", "run", "--resume", str(cut), "--quiet"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "summary.json").read_text())["pruned"]
    b = json.loads((cut / "summary.json").read_text())["pruned"]
    for key in ("test_acc", "test_loss", "sparsity", "prunable_kept"):
        assert a[key] == b[key], (key, killed)
    wa = load_checkpoint(tmp_path / "full" / "pruned" / "checkpoint.pt")["model"]
    wb = load_checkpoint(cut / "pruned" / "checkpoint.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [json.loads(x)["epoch"] for x in (cut / "pruned" / "metrics.jsonl").read_text().splitlines()[1:]] == [1, 2, 3]


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temp_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": torch.ones(3)})

    def torn(f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write_bytes(path, torn)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_torn_checkpoint_is_refused_and_code_is_never_run(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"format": "prunekit-checkpoint-v1", "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def small(**over):
    base = {"model": {"name": "lenet300"}, "data": {"name": "synthetic"}, "train": {"epochs": 2}, "baseline": False,
            "stages": [{"prune": {"sparsity": 0.5}}, "train"]}
    base.update(over)
    return recipe_from_dict(base)


def test_divergence_stops_and_points_at_the_last_good_checkpoint(tmp_path):
    from prunekit.data import load_dataset

    data = load_dataset("synthetic", n_train=500, n_test=100)
    r = small(train={"epochs": 3, "lr": 1e12, "momentum": 0.0})
    with pytest.raises(TrainingDiverged) as err:
        run_pipeline(r, tmp_path, data, progress=False, log=lambda _: None)
    assert str(tmp_path / "checkpoint.pt") in str(err.value)
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # the prune stage's checkpoint is intact
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_unwritable_run_dir_fails_before_anything_is_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["run", "--dataset", "synthetic", "--model", "lenet300", "--epochs", "1", "--quiet",
                 "--run-dir", str(blocker / "run")])
    assert code == 2
    assert "not writable" in capsys.readouterr().err


def test_full_disk_fails_early(tmp_path, monkeypatch):
    import prunekit.preflight as pf

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConfigError, match="MiB free"):
        run_recipe(small(), tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run" / "recipe.yaml").exists()


def test_bad_model_option_writes_nothing(tmp_path):
    with pytest.raises(ConfigError):
        run_recipe(small(model={"name": "lenet300", "options": {"widht": 2}}), tmp_path / "run", progress=False,
                   log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_density_that_rounds_to_zero_is_a_clear_error(tmp_path):
    from prunekit.data import load_dataset

    data = load_dataset("synthetic", n_train=100, n_test=50)
    with pytest.raises(ConfigError, match="keeps round"):
        run_pipeline(small(stages=[{"prune": {"sparsity": 0.9999999}}]), tmp_path, data, progress=False,
                     log=lambda _: None)
