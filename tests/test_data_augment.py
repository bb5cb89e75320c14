"""data.augment: batched pad+crop, resized crop and flip; per-position parameters; normalisation."""

import pytest
import torch
import torch.nn.functional as F

from prunekit.data.augment import AugmentConfig, augment_batch, normalize_batch
from prunekit.data.base import normalize_uint8
from prunekit.errors import ConfigError
from prunekit.recipe import recipe_from_dict


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


X = torch.arange(6 * 2 * 5 * 5, dtype=torch.float32).view(6, 2, 5, 5)


def test_padding_zero_is_identity_and_flip_only_flips():
    assert torch.equal(augment_batch(X, AugmentConfig(crop={"padding": 0}), gen()), X)
    out = augment_batch(X, AugmentConfig(flip=True), gen(0))
    # torch.rand(6) with seed 0 is [0.50, 0.77, 0.09, 0.13, 0.31, 0.63]: flip where below 0.5
    assert [bool(torch.equal(o, x.flip(2))) for o, x in zip(out, X)] == [True, False, True, True, True, False]
    assert [bool(torch.equal(o, x)) for o, x in zip(out, X)] == [False, True, False, False, False, True]


def test_every_pad_crop_is_a_window_of_the_zero_padded_image():
    cfg = AugmentConfig(crop={"padding": 2}, flip=True)
    x = X.repeat(20, 1, 1, 1)
    out = augment_batch(x, cfg, gen(1))
    padded = F.pad(x, (2, 2, 2, 2))
    seen = set()
    for o, p in zip(out, padded):
        hits = [(dy, dx, fl) for dy in range(5) for dx in range(5) for fl in (0, 1)
                if torch.equal(o, (p[:, dy:dy + 5, dx:dx + 5].flip(2) if fl else p[:, dy:dy + 5, dx:dx + 5]))]
        assert hits, "an output is not a (flipped) window of the padded input"
        seen.update(hits)
    assert len({(dy, dx) for dy, dx, _ in seen}) >= 20  # offsets 0..4 both ways are all drawn


@pytest.mark.parametrize("cfg", [{"crop": {"padding": 3}, "flip": True},
                                 {"resized_crop": {"scale": [0.3, 1.0]}, "flip": True}])
def test_a_part_of_the_global_batch_gets_the_parameters_of_its_positions(cfg):
    cfg = AugmentConfig(**cfg)
    whole = augment_batch(X, cfg, gen(7))
    pos = torch.tensor([1, 3, 5])  # rank 1 of 2 under the streaming sampler
    part = augment_batch(X[pos], cfg, gen(7), positions=pos, global_size=len(X))
    assert torch.equal(part, whole[pos])
    assert not torch.equal(augment_batch(X, cfg, gen(8)), whole)


def test_resized_crop_of_the_whole_image_is_exact_and_sizes_follow_size():
    full = AugmentConfig(resized_crop={"scale": [1, 1], "ratio": [1, 1]})
    assert torch.allclose(augment_batch(X, full, gen()), X, atol=1e-4)
    flip = AugmentConfig(resized_crop={"scale": [1, 1], "ratio": [1, 1]}, flip=True)
    out = augment_batch(X, flip, gen(3))
    assert all(torch.allclose(o, x, atol=1e-4) or torch.allclose(o, x.flip(2), atol=1e-4) for o, x in zip(out, X))
    assert augment_batch(X, AugmentConfig(resized_crop={"size": 3}), gen()).shape == (6, 2, 3, 3)
    # a crop of a constant image is that constant, wherever the box lands
    const = torch.full((4, 3, 8, 8), 0.25)
    assert torch.allclose(augment_batch(const, AugmentConfig(resized_crop={}), gen()), const)


def test_normalize_batch_matches_the_in_memory_loader_bit_for_bit():
    u8 = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8, generator=gen())
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    assert torch.equal(normalize_batch(u8, mean, std), normalize_uint8(u8.numpy(), mean, std))


@pytest.mark.parametrize("augment, fragments", [
    ({"crop": {"padding": 4}, "resized_crop": {}}, ["data.augment", "choose one of crop"]),
    ({"crop": {"pad": 4}}, ["data.augment.crop.pad", "Did you mean 'padding'"]),
    ({"resized_crop": {"scale": [0.5, 2]}}, ["data.augment.resized_crop.scale", "0 < low <= high <= 1"]),
    ({"crop": {"padding": -1}}, ["data.augment.crop.padding", "greater than or equal to 0"]),
    ({"flip": "sometimes"}, ["data.augment.flip", "'sometimes'"]),
])
def test_bad_augment_sections_name_the_key_and_the_fix(augment, fragments):
    with pytest.raises(ConfigError) as e:
        recipe_from_dict({"data": {"augment": augment}})
    assert all(f in str(e.value) for f in fragments), str(e.value)


def test_scoring_never_sees_augmentation_but_training_does(tmp_path):
    from prunekit.checkpoint import load_checkpoint
    from prunekit.data import load_dataset
    from prunekit.pipeline import run_pipeline

    data = load_dataset("synthetic", n_train=64, n_test=16, channels=3, image_size=12)
    out = {}
    for name, augment in (("plain", None), ("augmented", {"crop": {"padding": 2}, "flip": True})):
        r = recipe_from_dict({"name": name, "device": "cpu", "baseline": False, "model": {"name": "lenet300"},
                              "data": {"name": "synthetic", "batch_size": 16, "augment": augment},
                              "train": {"epochs": 1},
                              "stages": [{"prune": {"criterion": "snip", "sparsity": 0.8, "options": {"batch_size": 32}}},
                                         "train"]})
        run_pipeline(r, tmp_path / name, data, progress=False, log=lambda _: None)
        out[name] = load_checkpoint(tmp_path / name / "checkpoint.pt")
    masks = [out[n]["masks"] for n in ("plain", "augmented")]
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])  # SNIP scored the same images
    weights = [out[n]["model"] for n in ("plain", "augmented")]
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
