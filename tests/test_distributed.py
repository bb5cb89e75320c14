"""torch.distributed (gloo, 2 CPU processes under torchrun): identical masks, same metrics, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit.checkpoint import load_checkpoint

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ARGS = ["--dataset", "synthetic", "--model", "lenet300", "--no-baseline", "--quiet", "--batch-size", "100",
        "--set", "data.options.n_train=2000", "--set", "data.options.n_test=400"]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_masks_identical_on_every_rank_and_divergence_is_caught(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "bad").mkdir()
    res = run(TORCHRUN + [str(HERE / "ddp_worker.py"), str(tmp_path / "ok")])
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / "ok" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and "divergence" not in r0
    assert {"after-snip", "after-grasp", "after-gradual", "after-rigl"} <= set(r0)
    assert r0["gradual-changed-masks"] and r0["rigl-changed-masks"]  # the updates really happened
    res = run(TORCHRUN + [str(HERE / "ddp_worker.py"), str(tmp_path / "bad"), "diverge"])
    assert res.returncode == 0, res.stderr[-3000:]
    for r in (0, 1):
        assert "differ between ranks" in json.loads((tmp_path / "bad" / f"rank{r}.json").read_text())["divergence"]


def test_two_ranks_with_global_batch_b_match_one_process_with_batch_b(tmp_path):
    two = run(TORCHRUN + ["-m", "prunekit", "run", *ARGS, "--epochs", "2", "--run-dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    one = run([sys.executable, "-m", "prunekit", "run", *ARGS, "--epochs", "2", "--run-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "summary.json").read_text())["pruned"]
    b = json.loads((tmp_path / "two" / "summary.json").read_text())["pruned"]
    # Equal shards make DDP's averaged gradient the global-batch gradient; only the float
    # summation order differs, so metrics agree to a tight tolerance.
    assert a["sparsity"] == b["sparsity"] and a["prunable_kept"] == b["prunable_kept"]
    assert abs(a["test_acc"] - b["test_acc"]) <= 0.005
    assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-3)
    wa = load_checkpoint(tmp_path / "one" / "pruned" / "checkpoint.pt")["model"]
    wb = load_checkpoint(tmp_path / "two" / "pruned" / "checkpoint.pt")["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    assert not (tmp_path / "two" / "pruned" / "rank1").exists()  # only rank 0 writes


def test_resume_under_ddp_after_a_kill(tmp_path):
    cmd = TORCHRUN + ["-m", "prunekit", "run", *ARGS, "--epochs", "3"]
    full = run(cmd + ["--run-dir", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-3000:]
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd + ["--run-dir", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = cut / "pruned" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait()
    resumed = run(TORCHRUN + ["-m", "prunekit", "run", "--resume", str(cut), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "full" / "summary.json").read_text())["pruned"]
    b = json.loads((cut / "summary.json").read_text())["pruned"]
    assert (a["test_acc"], a["test_loss"], a["sparsity"]) == (b["test_acc"], b["test_loss"], b["sparsity"])
