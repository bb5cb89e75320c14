"""Hostile inputs that need a finished run, a process, a pipe, a signal or a server: checkpoints,
resume with changed flags, run-directory ownership, a full disk, broken pipes, downloads."""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from prunekit import checkpoint
from prunekit.cli import main
from prunekit.data.base import DatasetSplits
from prunekit.data.download import download_file
from prunekit.errors import ConfigError, DataError, short
from prunekit.recipe import apply_overrides, recipe_from_dict
from prunekit.rundir import LOCK_NAME, claim

FAST = ["--dataset", "synthetic", "--model", "lenet300", "--epochs", "1", "--no-baseline", "--quiet",
        "--set", "data.options.n_train=100", "--set", "data.options.n_test=20"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One tiny finished run (copied by each test that changes it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", *FAST, "--run-dir", str(run)]) == 0
    return run


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(finished, dest)
    return dest


def _call(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


def _tamper(path: Path, **changes) -> None:
    state = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is KeyError:
            del state[key]
        else:
            state[key] = value
    torch.save(state, path)


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(b""), ["empty (0 bytes)"]),
    (lambda p: p.write_bytes(b"garbage" * 100), ["cannot be read", "corrupt"]),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), ["cannot be read"]),
    (lambda p: torch.save({"x": 1}, p), ["not a prunekit checkpoint"]),
    (lambda p: _tamper(p, history=KeyError), ["lacks the field 'history'"]),
    (lambda p: _tamper(p, position=[0, 1]), ["field 'position'", "got list"]),
    (lambda p: _tamper(p, position={"stage": "a", "epoch": 0}), ["field 'position'"]),
    (lambda p: _tamper(p, history="not json"), ["field 'history'", "JSON list"]),
    (lambda p: _tamper(p, timings=json.dumps([1])), ["field 'timings'"]),
    (lambda p: _tamper(p, model={"w": 1}), ["field 'model'", "tensors"]),
], ids=["empty", "garbage", "truncated", "foreign", "no-history", "position-list", "position-str",
        "history-not-json", "timings-list", "model-not-tensors"])
def test_damaged_checkpoint_on_resume(run_copy, capsys, damage, words):
    damage(run_copy / "pruned" / "checkpoint.pt")
    code, err = _call(["run", "--resume", str(run_copy)], capsys)
    assert code == 2
    for w in words:
        assert w in err
    assert not (run_copy / LOCK_NAME).exists()


@pytest.mark.parametrize("flags, change", [
    (["--epochs", "5"], "train.epochs: 1 -> 5"),
    (["--set", "train.lr=9"], "train.lr: 0.05 -> 9"),
    (["--seed", "3"], "seed: 0 -> 3"),
])
def test_resume_refuses_changed_recipe_unless_allowed(run_copy, capsys, flags, change):
    before = (run_copy / "recipe.yaml").read_bytes()
    code, err = _call(["run", "--resume", str(run_copy), *flags], capsys)
    assert code == 2 and change in err and "--allow-changes" in err
    assert (run_copy / "recipe.yaml").read_bytes() == before


def test_resume_with_allowed_change_records_it(run_copy, capsys):
    code, _ = _call(["run", "--resume", str(run_copy), "--seed", "3", "--allow-changes", "--quiet"], capsys)
    assert code == 0
    assert "seed: 3" in (run_copy / "recipe.yaml").read_text()


def test_finished_run_dir_is_not_overwritten(run_copy, capsys):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    code, err = _call(["run", *FAST, "--seed", "1", "--run-dir", str(run_copy)], capsys)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_the_run(run_copy, capsys):
    (run_copy / "stray.txt").write_text("old")
    code, _ = _call(["run", *FAST, "--seed", "1", "--run-dir", str(run_copy), "--overwrite"], capsys)
    assert code == 0 and not (run_copy / "stray.txt").exists()
    assert "seed: 1" in (run_copy / "recipe.yaml").read_text()


def test_a_claimed_run_dir_refuses_a_second_run(tmp_path, capsys):
    with claim(tmp_path / "run") as owned:
        code, err = _call(["run", *FAST, "--run-dir", str(owned)], capsys)
        assert code == 2 and f"in use by process {os.getpid()}" in err and LOCK_NAME in err
    assert not (tmp_path / "run").exists()  # released; the claim created it and nothing was written


def test_a_dead_owners_lock_file_is_taken_over(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).write_text("999999999 elsewhere\n")  # no process holds its flock
    with claim(tmp_path / "run") as owned:
        assert (owned / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_generated_run_dirs_never_collide(tmp_path):
    with claim(tmp_path / "r", explicit=False) as a, claim(tmp_path / "r", explicit=False) as b:
        assert a != b and b.name == "r-2"


def test_torn_temp_files_are_removed_on_resume(run_copy, capsys):
    torn = run_copy / "pruned" / ".checkpoint.pt.abc123.tmp"
    torn.write_bytes(b"half")
    code, _ = _call(["run", "--resume", str(run_copy), "--quiet"], capsys)
    assert code == 0 and not torn.exists()


def test_full_disk_mid_run_is_a_message_and_the_last_checkpoint_survives(tmp_path, capsys, monkeypatch):
    calls = []
    real_save = torch.save

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the prune stage's checkpoint is written; the epoch's one hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run = tmp_path / "run"
    code, err = _call(["run", *FAST, "--run-dir", str(run)], capsys)
    assert code == 2 and "No space left on device" in err and "checkpoint.pt" in err and "--resume" in err
    state = checkpoint.load_checkpoint(run / "pruned" / "checkpoint.pt", run_state=True)
    assert state["position"] == {"stage": 1, "epoch": 0}
    assert not list(run.rglob("*.tmp")) and not (run / LOCK_NAME).exists()


def test_dry_run_into_a_closed_pipe_is_quiet():
    res = subprocess.run(f"{sys.executable} -m prunekit run --dry-run | true", shell=True, capture_output=True,
                         text=True, timeout=120)
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_to_a_full_device_is_a_message():
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "prunekit", "info", "--list"], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    assert res.returncode == 2 and "No space left on device writing the output" in res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr


def test_two_runs_started_together_never_share_a_directory(tmp_path):
    cmd = [sys.executable, "-m", "prunekit", "run", *FAST, "--run-dir", str(tmp_path / "run")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2]
    loser = next(err for code, err in results if code == 2)
    assert "in use by process" in loser or "already holds a run" in loser
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["pruned"]["sparsity"] > 0


class _Endless(http.server.BaseHTTPRequestHandler):
    """A mirror that never stops sending (and announces nothing)."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\0" * 65536)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endless_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/x.gz"
    server.shutdown()


def test_endless_download_stops_at_its_cap_and_leaves_no_part_file(tmp_path, endless_url):
    with pytest.raises(DataError, match="passed 1.0 MiB"):
        download_file(endless_url, tmp_path / "x.gz", "md5:" + "0" * 32, max_bytes=1 << 20)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_mid_download_removes_the_part_file(tmp_path, endless_url):
    code = ("import sys; from prunekit.data.download import download_file; "
            f"download_file({endless_url!r}, {str(tmp_path / 'x.gz')!r}, 'md5:' + '0' * 32, max_bytes=1 << 40)")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".x.gz.*.part")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".x.gz.*.part"))
    time.sleep(0.3)  # well inside the transfer loop
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_unwritable_download_folder_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot write downloads to .*file"):
        download_file("http://127.0.0.1:9/x", tmp_path / "file" / "x.gz", "md5:" + "0" * 32)


def _splits(train_x, train_y, test_n=2):
    return DatasetSplits("t", train_x, train_y, torch.zeros(test_n, 1, 2, 2), torch.zeros(test_n, dtype=torch.long),
                         2, 1, (2, 2), "")


@pytest.mark.parametrize("train_x, train_y, test_n, words", [
    (torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), 0, "test split is empty"),
    (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), 2, "train split is empty"),
    (torch.full((4, 1, 2, 2), float("nan")), torch.tensor([0, 1, 0, 1]), 2, "16 train input values are NaN"),
    (torch.full((4, 1, 2, 2), float("inf")), torch.tensor([0, 1, 0, 1]), 2, "NaN or infinite"),
    (torch.zeros(4, 1, 2, 2), torch.tensor([1, 1, 1, 1]), 2, "every training image has label 1"),
])
def test_data_problems_are_named_as_data_problems(train_x, train_y, test_n, words):
    with pytest.raises(DataError, match="dataset 't'") as err:
        _splits(train_x, train_y, test_n).check_sane()
    assert words in str(err.value) and "learning rate" not in str(err.value)


def test_short_quotes_any_value_in_bounded_space_and_time():
    leaf = ["x"] * 10
    for _ in range(9):  # 10^10 leaves by reference, like a YAML alias bomb once loaded
        leaf = [leaf] * 10
    t0 = time.perf_counter()
    text = short(leaf)
    assert len(text) <= 80 and time.perf_counter() - t0 < 5
    quoted = short("y" * 10**6)
    assert "..." in quoted and len(quoted) <= 80 and quoted.startswith("'yyy")


def test_readme_quick_start_overrides_index_the_default_stages(capsys):
    assert main(["run", "--set", "train.lr=0.1", "--set", "stages.0.prune.prevent_collapse=true", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "prevent_collapse: true" in out and "criterion: grasp" in out and "lr: 0.1" in out
    r = recipe_from_dict(apply_overrides({}, ["stages.0.prune.sparsity=0.5"]))
    assert r.stages == [{"prune": {"criterion": "grasp", "sparsity": 0.5}}, {"train": {}}]


def test_an_unknown_prune_option_through_set_is_a_clean_error():
    with pytest.raises(ConfigError, match=r"stages\[0\]\.prune\.no_such_option: unknown key"):
        recipe_from_dict(apply_overrides({}, ["stages.0.prune.no_such_option=true"]))
