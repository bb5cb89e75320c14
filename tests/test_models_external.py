"""Models from outside the zoo: state_dict checkpoints (data only) and the user's own factory."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap

import pytest
import torch
from torch import nn

from prunekit.cli import main
from prunekit.errors import CheckpointError, ConfigError
from prunekit.models import create_model
from prunekit.models.external import build_from_factory, build_model, load_pretrained, parse_options, read_state_dict
from prunekit.recipe import recipe_from_dict

SMALL = {"width": 0.125, "stem": "small"}


def _save(model: nn.Module, path) -> None:
    torch.save(model.state_dict(), path)


def test_checkpoint_loads_every_entry(tmp_path):
    torch.manual_seed(0)
    src = create_model("resnet18", 3, 10, (32, 32), **SMALL)
    _save(src, tmp_path / "w.pth")
    torch.manual_seed(1)
    logs = []
    dst = build_model("resnet18", SMALL, 3, 10, (32, 32), checkpoint=str(tmp_path / "w.pth"), log=logs.append)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert logs == [f"checkpoint '{tmp_path / 'w.pth'}': all {len(src.state_dict())} entries loaded"]


def test_other_class_count_gets_a_new_head_and_says_so(tmp_path):
    torch.manual_seed(0)
    src = create_model("mobilenet_v2", 3, 1000, (32, 32), width=0.25)
    # wrapped the way training scripts often save it, from DataParallel
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    logs = []
    torch.manual_seed(1)
    dst = build_model("mobilenet_v2", {"width": 0.25}, 3, 7, (32, 32), checkpoint=str(tmp_path / "w.pth"),
                      log=logs.append)
    fresh = torch.manual_seed(1) and create_model("mobilenet_v2", 3, 7, (32, 32), width=0.25)
    assert torch.equal(dst.classifier[1].weight, fresh.classifier[1].weight)  # fresh initialisation
    assert dst.classifier[1].weight.shape == (7, 1280)
    assert torch.equal(dst.features[3].conv[1][0].weight, src.features[3].conv[1][0].weight)
    assert logs[0].endswith("new classifier (classifier.1.weight, classifier.1.bias re-initialised: the checkpoint "
                            "has (1000, 1280), the data needs (7, 1280))")


def test_mismatched_checkpoint_lists_missing_unexpected_and_shapes(tmp_path):
    _save(create_model("resnet18", 3, 10, (32, 32), width=0.25, stem="small"), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape conv1.weight \(16, 3, 3, 3\) vs \(8, 3, 3, 3\), bn1.weight"):
        build_model("resnet18", SMALL, 3, 10, (32, 32), checkpoint=str(tmp_path / "wide.pth"))
    _save(create_model("resnet18", 3, 10, (32, 32), **SMALL), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as e:
        build_model("resnet50", SMALL, 3, 10, (32, 32), checkpoint=str(tmp_path / "r18.pth"))
    assert "missing layer1.0.conv3.weight, layer1.0.bn3.weight" in str(e.value) and "unexpected none" in str(e.value)
    assert "in all" in str(e.value)  # long lists are cut, with the count


def test_checkpoint_is_read_as_data_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(CheckpointError, match="cannot be read as a state_dict"):
        read_state_dict(tmp_path / "evil.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        read_state_dict(tmp_path / "none.pth")
    model = nn.Linear(2, 2)
    with pytest.raises(CheckpointError):
        load_pretrained(model, tmp_path / "list.pth")


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """A package `user_nets` on sys.path, as a user's own code would be."""
    (tmp_path / "user_nets.py").write_text(textwrap.dedent('''
        from torch import nn

        def tiny(classes=10, hidden=8):
            return nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, classes))

        def not_a_model():
            return "a string"

        CONSTANT = 3
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_nets"
    sys.modules.pop("user_nets", None)


def test_factory_builds_and_checks(user_module):
    model = build_from_factory("user_nets:tiny", {"hidden": 4})
    assert model[0].out_channels == 4
    with pytest.raises(ConfigError, match="returned a str; it must return a torch.nn.Module"):
        build_from_factory("user_nets:not_a_model")
    with pytest.raises(ConfigError, match="has no 'tinny'. Callables there: .*tiny"):
        build_from_factory("user_nets:tinny")
    with pytest.raises(ConfigError, match="names a value of type int, not a function"):
        build_from_factory("user_nets:CONSTANT")
    with pytest.raises(ConfigError, match="rejected options"):
        build_from_factory("user_nets:tiny", {"depth": 3})
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.nets' \\(No module named 'no_such_pkg'\\)"):
        build_from_factory("no_such_pkg.nets:tiny")
    with pytest.raises(ConfigError, match="must look like 'package.module:function'"):
        build_from_factory("user_nets.tiny")
    with pytest.raises(ConfigError, match=r"returns \(2, 10\) for 2 images; the data has 3 classes"):
        build_model("x", {}, 1, 3, (8, 8), factory="user_nets:tiny")


def test_factory_recipe_runs_and_names_the_run(user_module, tmp_path):
    from prunekit.data import load_dataset
    from prunekit.pipeline import run_pipeline

    recipe = recipe_from_dict({
        "model": {"factory": "user_nets:tiny", "options": {"classes": 10, "hidden": 6}}, "baseline": False,
        "data": {"name": "synthetic", "batch_size": 20}, "train": {"epochs": 1},
        "stages": [{"prune": {"criterion": "magnitude", "sparsity": 0.5}}, {"train": {}}]})
    assert recipe.model.name == "user_nets:tiny"
    data = load_dataset("synthetic", n_train=40, n_test=20, image_size=8)
    summary = run_pipeline(recipe, tmp_path, data, progress=False, log=lambda s: None)
    assert summary["params_total"] == 9 * 6 + 6 + 2 * 6 + 6 * 10 + 10
    with pytest.raises(ConfigError, match="package.module:function"):
        recipe_from_dict({"model": {"factory": "user_nets"}})


def test_info_takes_options_and_factories(user_module, capsys):
    assert main(["info", "resnet50", "--input-shape", "3,32,32", "--option", "width=0.25",
                 "--option", "stem=small"]) == 0
    assert "layer4.2.conv3" in capsys.readouterr().out
    assert main(["info", "user_nets:tiny", "--option", "hidden=5", "--option", "classes=10"]) == 0
    # conv 1*5*9 + 5, BN 2*5, linear 5*10 + 10
    assert "total params 120," in capsys.readouterr().out
    assert main(["info", "resnet50", "--option", "stem"]) == 2
    assert "must be KEY=VALUE" in capsys.readouterr().err
    assert parse_options(["width=0.5", "stem=small", "dropout=0"]) == {"width": 0.5, "stem": "small", "dropout": 0}
