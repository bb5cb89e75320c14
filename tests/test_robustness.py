"""Robustness metrics: PGD(eps=0) = clean, PGD <= FGSM <= clean on a trained model; 2:4 conversion message on CPU."""

import pytest
import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.errors import ConfigError
from prunekit.models import create_model
from prunekit.recipe import TrainConfig
from prunekit.robustness import fgsm_correct, pgd_correct, robustness_report
from prunekit.semi_structured import is_2_4, semi_structured_support, to_semi_structured
from prunekit.train import TrainLoop, epoch_generator, evaluate


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("synthetic", n_train=1000, n_test=300, image_size=16)
    torch.manual_seed(0)
    model = create_model("lenet300", 1, 10, (16, 16))
    loop = TrainLoop(model, None, TrainConfig(epochs=3, lr=0.05), 32)
    for e in range(3):
        loop.train_epoch(data.train_x, data.train_y, 32, epoch_generator(0, 0, e), progress=False)
    return model, data


def test_pgd_with_zero_eps_equals_clean_accuracy(trained):
    model, data = trained
    rep = robustness_report(model, data.test_x, data.test_y, eps=[0.0], noise_sigmas=[0.0])
    clean = evaluate(model, data.test_x, data.test_y)["acc"]
    assert rep["clean"] == pytest.approx(clean)
    assert rep["pgd"]["0.0"] == rep["fgsm"]["0.0"] == rep["noise"]["0.0"] == pytest.approx(clean)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_pgd_le_fgsm_le_clean_on_a_trained_model(trained, eps):
    model, data = trained
    rep = robustness_report(model, data.test_x, data.test_y, eps=[eps], steps=10)
    assert rep["clean"] > 0.7  # the model is trained
    assert rep["pgd"][str(eps)] <= rep["fgsm"][str(eps)] <= rep["clean"]
    assert rep["pgd"][str(eps)] < rep["clean"]  # the attack does something


def test_pgd_without_random_start_is_at_least_as_strong_as_fgsm_per_sample(trained):
    model, data = trained
    model.eval()
    x, y = data.test_x[:200], data.test_y[:200]
    fg = fgsm_correct(model, x, y, 0.2)
    pg = pgd_correct(model, x, y, 0.2, steps=5, step_size=0.2, random_start=False)
    assert torch.all(pg <= fg)  # the first PGD iterate is the FGSM point


def test_attacks_leave_model_mode_and_parameter_grads_alone(trained):
    model, data = trained
    model.train()
    robustness_report(model, data.test_x[:50], data.test_y[:50], eps=[0.1], steps=2)
    assert model.training
    assert all(p.grad is None or torch.all(p.grad == p.grad) for p in model.parameters())
    grads_before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    robustness_report(model, data.test_x[:50], data.test_y[:50], eps=[0.1], steps=2)
    for p, g in zip(model.parameters(), grads_before):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_pixel_units_divide_by_std(trained):
    model, data = trained
    a = robustness_report(model, data.test_x, data.test_y, eps=[0.05], noise_sigmas=[], pixel_std=0.5)
    b = robustness_report(model, data.test_x, data.test_y, eps=[0.1], noise_sigmas=[])
    assert a["fgsm"]["0.05"] == b["fgsm"]["0.1"] and a["units"] == "pixel"


def test_is_2_4_known_values():
    assert is_2_4(torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3]]))
    assert not is_2_4(torch.tensor([[1.0, 1, 2, 0, 0, 0, 0, 3]]))
    assert not is_2_4(torch.ones(2, 6))  # input dimension not a multiple of 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without sparse tensor cores")
def test_semi_structured_on_cpu_is_skipped_with_a_clear_message():
    assert "no CUDA device" in semi_structured_support()
    with pytest.raises(ConfigError, match="compute capability >= 8.0"):
        to_semi_structured(nn.Linear(8, 8))
