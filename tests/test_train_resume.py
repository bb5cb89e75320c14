"""train.checkpoint_every: a run stopped after a mid-epoch checkpoint resumes bit-identical on CPU."""

import json

import pytest
import torch
from folder_maker import make_folder

from prunekit.checkpoint import load_checkpoint
from prunekit.data import load_dataset
from prunekit.pipeline import RunContext, run_pipeline, stream_if_asked
from prunekit.recipe import recipe_from_dict


class Killed(Exception):
    """Stands for SIGKILL: raised right after the chosen checkpoint reached the disk."""


def recipe(data):
    return recipe_from_dict({
        "name": "r", "seed": 1, "device": "cpu", "baseline": False, "model": {"name": "lenet5"},
        "data": {"batch_size": 16, "augment": {"crop": {"padding": 2}, "flip": True}, "workers": 0, **data},
        "train": {"epochs": 2, "lr": 0.05, "checkpoint_every": 2},
        "stages": [{"prune": {"criterion": "snip", "sparsity": 0.7, "options": {"batch_size": 16}}}, "train"]})


def kill_after(monkeypatch, position):
    real = RunContext.checkpoint

    def checkpoint(self, stage, epoch, loop_state=None, step=0):
        real(self, stage, epoch, loop_state, step)
        if (stage, epoch, step) == position:
            raise Killed
    monkeypatch.setattr(RunContext, "checkpoint", checkpoint)


@pytest.mark.parametrize("source", ["memory", "stream"])
def test_kill_after_a_mid_epoch_checkpoint_then_resume_is_bit_identical(source, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "cache"))
    if source == "memory":
        r = recipe({"name": "synthetic", "options": {"n_train": 100, "n_test": 40, "channels": 3, "image_size": 16}})
        data = load_dataset("synthetic", n_train=100, n_test=40, channels=3, image_size=16)
    else:
        folder = make_folder(tmp_path / "imgs", classes=4, train=25, test=2, size=16)
        r = recipe({"name": "imagefolder", "data_dir": str(folder), "streaming": True, "scoring_pool": 16})
        data = stream_if_asked(r.data)
    full = run_pipeline(r, tmp_path / "full", data, progress=False, log=lambda _: None)
    kill_after(monkeypatch, (1, 1, 4))  # stage 1 (train), epoch 2 of 2, after step 4 of 7
    with pytest.raises(Killed):
        run_pipeline(r, tmp_path / "cut", data, progress=False, log=lambda _: None)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["position"] == {"stage": 1, "epoch": 1, "step": 4}
    monkeypatch.undo()
    lines = []
    resumed = run_pipeline(r, tmp_path / "cut", data, resume=True, progress=False, log=lines.append)
    assert "resuming" in lines[0] and lines[0].endswith("at stage 1, epoch 1, step 4")
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "cut"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["masks"].keys() == b["masks"].keys() and all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    for key in ("test_acc", "test_loss", "sparsity"):
        assert resumed[key] == full[key]
    rows = [[{k: v for k, v in json.loads(line).items() if not k.endswith("time_s")}
             for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("full", "cut")]
    assert rows[0] == rows[1]  # the epoch's loss/accuracy sums were carried across the stop too
