"""Streaming image folders: cached index, scoring pool by index, stream == in-memory, auto choice."""

import json

import pytest
import torch
from folder_maker import make_folder

import prunekit.data.stream as stream
from prunekit.checkpoint import load_checkpoint
from prunekit.data import load_dataset
from prunekit.errors import ConfigError
from prunekit.pipeline import build_context, run_recipe
from prunekit.recipe import recipe_from_dict

MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.25, 0.25]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"), classes=4, train=12, test=3)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "cache"))


def recipe(folder, **data):
    return recipe_from_dict({
        "name": "s", "seed": 3, "device": "cpu", "baseline": False, "model": {"name": "lenet5"},
        "data": {"name": "imagefolder", "data_dir": str(folder), "batch_size": 8, "eval_batch_size": 16,
                 "options": {"mean": MEAN, "std": STD}, "workers": 0, "scoring_pool": 8,
                 "augment": {"crop": {"padding": 4}, "flip": True}, **data},
        "train": {"epochs": 1, "lr": 0.05}, "stages": ["train"]})


def test_index_is_read_once_and_rebuilt_when_a_class_folder_changes(folder, tmp_path, monkeypatch):
    first = stream.folder_index(folder)
    assert first["classes"] == ["class00", "class01", "class02", "class03"] and len(first["train"]) == 48
    assert len(list((tmp_path / "cache" / "index").glob("*.json"))) == 1

    def no_listing(*a):
        raise AssertionError("listed the folder again")
    monkeypatch.setattr(stream, "_list_split", no_listing)
    assert stream.folder_index(folder) == first
    monkeypatch.undo()
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "cache"))
    extra = folder / "train" / "class02" / "zz_extra.png"
    extra.write_bytes((folder / "train" / "class02" / "0000.png").read_bytes())
    try:
        assert len(stream.folder_index(folder)["train"]) == 49
    finally:
        extra.unlink()


def test_scoring_pool_is_class_balanced_and_drawn_by_index(folder):
    data = stream.open_stream(str(folder), {"mean": MEAN, "std": STD}, scoring_pool=8, workers=0, seed=3)
    mem = load_dataset("imagefolder", str(folder), mean=MEAN, std=STD)
    assert torch.bincount(data.train_y).tolist() == [2, 2, 2, 2]
    assert torch.equal(data.train_x, mem.train_x[data.pool_indices]) and torch.equal(data.train_y, mem.train_y[data.pool_indices])
    assert torch.equal(data.test_x[:], mem.test_x) and data.train_size == 48
    assert data.image_size == (32, 32) and data.in_channels == 3


def test_streamed_training_is_bit_identical_to_in_memory_training(folder, tmp_path):
    for name, streaming, workers in (("mem", False, 0), ("s0", True, 0), ("s2", True, 2)):
        run_recipe(recipe(folder, streaming=streaming, workers=workers), tmp_path / name, progress=False,
                   log=lambda _: None)
    weights = {n: load_checkpoint(tmp_path / n / "pruned" / "checkpoint.pt")["model"] for n in ("mem", "s0", "s2")}
    assert all(torch.equal(weights["mem"][k], weights[n][k]) for n in ("s0", "s2") for k in weights["mem"])
    rows = [json.loads((tmp_path / n / "pruned" / "metrics.jsonl").read_text().splitlines()[0]) for n in ("mem", "s0")]
    assert rows[0]["train_loss"] == rows[1]["train_loss"] and rows[0]["test_acc"] == rows[1]["test_acc"]
    # augmentation really ran: without it the weights differ
    run_recipe(recipe(folder, streaming=False, augment=None), tmp_path / "plain", progress=False, log=lambda _: None)
    plain = load_checkpoint(tmp_path / "plain" / "pruned" / "checkpoint.pt")["model"]
    assert not all(torch.equal(plain[k], weights["mem"][k]) for k in plain)


def test_auto_streams_only_above_the_size_threshold(folder, monkeypatch):
    assert not isinstance(build_context(recipe(folder), None, progress=False).data, stream.StreamedSplits)  # 48 images of 32x32: in memory
    monkeypatch.setattr(stream, "AUTO_STREAM_BYTES", 48 * 3 * 32 * 32 * 4 - 1)
    assert isinstance(build_context(recipe(folder), None, progress=False).data, stream.StreamedSplits)


@pytest.mark.parametrize("data, message", [
    ({"name": "embedded", "streaming": True, "options": {}},
     "data.streaming: true needs dataset 'imagefolder' or one of fashion-mnist, mnist, cifar10, cifar100 (got 'embedded')"),
    # refused when the recipe is read, before any folder is indexed
    ({"streaming": True, "options": {"resize": 3}}, "data.options: unknown option 'resize'. Did you mean 'image_size'?"),
])
def test_bad_streaming_requests_are_clear(folder, data, message):
    with pytest.raises(ConfigError) as e:
        build_context(recipe(folder, **data), None, progress=False)
    assert message in str(e.value)
