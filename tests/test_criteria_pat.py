"""Channel criteria for pruning after training: Taylor and BatchNorm scale give their defining values."""

import pytest
import torch
from torch import nn

from prunekit.criteria import ScoringContext, create_criterion
from prunekit.data import load_dataset
from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.structure import create_structure


def test_taylor_channel_sum_is_abs_of_summed_theta_grad():
    data = load_dataset("synthetic", n_train=64, n_test=10, image_size=16)
    torch.manual_seed(0)
    model = create_model("lenet5", 1, 10, (16, 16))
    masks = MaskSet.from_model(model)
    scores = create_criterion("taylor", batches=1, batch_size=64).score(ScoringContext(model, masks, data, seed=0))
    # the one scoring batch is a permutation of all 64 samples: the mean loss is the same
    model.zero_grad()
    nn.functional.cross_entropy(model.eval()(data.train_x), data.train_y).backward()
    w = model[3].weight
    want = (w.detach() * w.grad).flatten(1).sum(1).abs()
    got = create_structure("channel", reduce="sum").grouped(scores["3.weight"]).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_bn_scale_channel_sum_is_abs_gamma_and_needs_a_bn():
    model = create_model("vgg11", 1, 10, (28, 28), width=0.125)
    with torch.no_grad():
        model.features[1].weight.uniform_(-2, 2)
    masks = MaskSet.from_model(model, exclude=["classifier"])
    scores = create_criterion("bn_scale").score(ScoringContext(model, masks))
    got = create_structure("channel", reduce="sum").grouped(scores["features.0.weight"]).sum(1)
    torch.testing.assert_close(got, model.features[1].weight.detach().abs(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="classifier"):
        create_criterion("bn_scale").score(ScoringContext(model, MaskSet.from_model(model)))
