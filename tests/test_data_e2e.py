"""End to end on a generated ImageFolder: GraSP at init -> augmented streamed training -> greedy -> shrink,
in one process and on 2 gloo ranks (disjoint shards, identical masks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from folder_maker import make_folder

from prunekit.checkpoint import load_checkpoint
from prunekit.models import create_model

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    folder = make_folder(root / "imgs", classes=10, train=20, test=3, size=32)
    recipe = {
        "name": "e2e", "seed": 0, "device": "cpu", "baseline": False, "model": {"name": "lenet5"},
        "prunable": {"types": ["conv"]},
        "data": {"name": "imagefolder", "data_dir": str(folder), "streaming": True, "workers": 1,
                 "batch_size": 32, "scoring_pool": 100, "augment": {"crop": {"padding": 4}, "flip": True}},
        "train": {"epochs": 1, "lr": 0.05},
        "stages": [{"prune": {"criterion": "grasp", "sparsity": 0.5, "options": {"samples_per_class": 5}}},
                   "train",
                   {"greedy": {"target_macs_fraction": 0.6, "candidates": 4, "batch_size": 16}},
                   {"shrink": {}}]}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return root, path


def run(cmd, out, env_root):
    out.mkdir()
    # this checkout's prunekit, one thread per process (two ranks share the cores)
    env = {**os.environ, "PRUNEKIT_DATA": str(env_root / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]


def test_one_process_and_two_ranks(setup):
    root, recipe = setup
    run([sys.executable, str(HERE / "data_ddp_worker.py"), str(recipe), str(root / "one")], root / "one", root)
    one = json.loads((root / "one" / "rank0.json").read_text())
    assert one["kinds"] == ["prune", "train", "greedy", "shrink"]
    summary = json.loads((root / "one" / "run" / "summary.json").read_text())["pruned"]
    assert (root / "one" / "run" / "pruned" / "model_shrunk.pt").is_file()
    dense = create_model("lenet5", in_channels=3, num_classes=10, image_size=(32, 32))
    assert summary["params_total"] < sum(p.numel() for p in dense.parameters())  # shrink removed channels
    assert sorted(i for batch in one["seen"] for i in batch) == list(range(200))  # one epoch, every image once

    run(TORCHRUN + [str(HERE / "data_ddp_worker.py"), str(recipe), str(root / "two")], root / "two", root)
    r0, r1 = (json.loads((root / "two" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["masks"] == r1["masks"] and r0["params"] == r1["params"]
    assert len(r0["seen"]) == len(r1["seen"]) == len(one["seen"]) == 7  # 200 images / 32 per global batch
    a, b = ({i for batch in r["seen"] for i in batch} for r in (r0, r1))
    assert not a & b and a | b == set(range(200))  # disjoint shards covering the epoch (200 needs no padding)
    for x, y, glob in zip(r0["seen"], r1["seen"], one["seen"]):
        assert sorted(x + y) == sorted(glob)  # the ranks split the single-process global batch
    # streamed evaluation: each rank its part of the test split, sums all-reduced: the same accuracy
    # on both ranks as the in-memory evaluation, and as one process evaluating all 30 images
    assert one["eval"]["streamed"] == one["eval"]["memory"]
    assert r0["eval"] == r1["eval"] and r0["eval"]["streamed"] == r0["eval"]["memory"]
    assert r0["eval"]["streamed"]["acc"] == one["eval"]["streamed"]["acc"]
    assert r0["eval"]["streamed"]["loss"] == pytest.approx(one["eval"]["streamed"]["loss"], rel=1e-6)

    # 2 ranks stopped right after a mid-epoch checkpoint, then resumed: bit-identical to no stop
    full, cut = (load_checkpoint(root / "two" / "resume" / d / "pruned" / "checkpoint.pt") for d in ("full", "cut"))
    assert "step" not in cut["position"]  # the resumed run finished
    assert "at stage 1, epoch 1, step 3" in (root / "two" / "resume" / "resume.log").read_text()
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])
    assert all(torch.equal(full["masks"][k], cut["masks"][k]) for k in full["masks"])
