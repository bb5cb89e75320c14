"""Deployment facts: ONNX export of a shrunken model matches torch; counts and latency are stated."""

import pytest
import torch

from prunekit.measure import count_params
from prunekit.models import create_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from prunekit.deploy import check_onnx, deployment_facts, fuse_for_inference  # noqa: E402
from prunekit.masks import MaskSet  # noqa: E402
from prunekit.surgery import shrink  # noqa: E402


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    model = create_model("resnet20", 1, 10, (16, 16), width=0.25)
    masks = MaskSet.from_model(model)
    new = {}
    for name, m in masks.masks.items():
        m = m.clone()
        if name.endswith("conv1.weight") and name.startswith("layer"):
            m[: m.shape[0] // 2] = 0  # half of every block's inner channels
        new[name] = m
    masks.set(new)
    small, _ = shrink(model, masks.masks, torch.zeros(1, 1, 16, 16))
    return small.eval()


@pytest.fixture(scope="module")
def facts(small_resnet, tmp_path_factory):
    """One deployment_facts run (the ONNX export is the slow part, so it is shared)."""
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    return deployment_facts(small_resnet, (1, 16, 16), batch_sizes=(1, 4), threads=1, repeats=2, warmup=1,
                            onnx_path=path, fuse=True)


def test_onnx_matches_torch(small_resnet, facts):
    assert facts["onnx"]["max_abs_diff"] <= 1e-4
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(3))  # another batch size than exported
    assert check_onnx(small_resnet, facts["onnx"]["path"], x, atol=1e-4) <= 1e-4


def test_facts_report_counts_latency_threads(small_resnet, facts):
    assert facts["params"] == count_params(small_resnet)["total"]
    assert facts["macs"] > 0 and facts["disk_bytes"] > 0
    assert facts["threads"] == 1
    for bs in (1, 4):
        for key in ("latency", "latency_fused"):
            assert facts[key][bs]["threads"] == 1 and facts[key][bs]["batch_size"] == bs
            assert facts[key][bs]["median_ms"] > 0


def test_fused_model_computes_the_same(small_resnet):
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(small_resnet)(x), small_resnet(x), atol=1e-4, rtol=1e-4)
