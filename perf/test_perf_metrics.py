"""Speed of our pixel metrics against the references, on one MVTec-sized category.

150 maps of 256x256 (about 10M pixels), seed 0: 100 anomalous images whose blobs cover about
10% of their pixels, 50 good images; float32 maps in [0, 1] so every library sees the same
values. Each benchmark also checks that the value agrees with ours (correctness, not timing).
Run: ``.venv/bin/pytest perf/test_perf_metrics.py --benchmark-enable --benchmark-only``.
"""
import numpy as np
import pytest
import torch
from scipy import ndimage

from benchmark import metrics as M

N, SIZE, N_ANOMALOUS = 150, 256, 100


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    masks = np.zeros((N, SIZE, SIZE), bool)
    yy, xx = np.ogrid[:SIZE, :SIZE]
    for i in range(N_ANOMALOUS):
        while masks[i].mean() < 0.08:
            cy, cx = rng.integers(0, SIZE, 2)
            r = rng.integers(3, 30)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    noise = rng.random((N, SIZE, SIZE), dtype=np.float32)
    maps = ndimage.uniform_filter(noise + 0.6 * masks * rng.random((N, 1, 1)), size=(1, 7, 7))
    maps = (maps / maps.max()).astype(np.float32)
    return masks, maps


@pytest.fixture(scope="module")
def ours(data):
    return M.pixel_metrics(*data)


def test_ours_pixel_metrics_all(benchmark, data, ours):
    """AUROC + AP + F1-max + AUPRO together (one sort of the normal pixels)."""
    out = benchmark.pedantic(M.pixel_metrics, args=data, rounds=3, iterations=1)
    assert out == ours


def test_ours_auroc(benchmark, data, ours):
    assert benchmark.pedantic(M.auroc, args=data, rounds=3, iterations=1) == ours["pixel_auroc"]


def test_ours_ap(benchmark, data, ours):
    assert benchmark.pedantic(M.average_precision, args=data, rounds=3, iterations=1) == ours["pixel_ap"]


def test_ours_aupro(benchmark, data, ours):
    assert benchmark.pedantic(M.aupro, args=data, rounds=3, iterations=1) == ours["pixel_aupro"]


def test_ref_sklearn_auroc(benchmark, data, ours):
    from sklearn.metrics import roc_auc_score

    masks, maps = data
    v = benchmark.pedantic(roc_auc_score, args=(masks.ravel(), maps.ravel()), rounds=1, iterations=1)
    assert v == pytest.approx(ours["pixel_auroc"], abs=1e-9)


def test_ref_sklearn_ap(benchmark, data, ours):
    from sklearn.metrics import average_precision_score

    masks, maps = data
    v = benchmark.pedantic(average_precision_score, args=(masks.ravel(), maps.ravel()), rounds=1, iterations=1)
    assert v == pytest.approx(ours["pixel_ap"], abs=1e-9)


def _torchmetrics(metric_cls, masks, maps):
    metric = metric_cls(thresholds=None)
    metric.update(torch.from_numpy(maps.ravel()), torch.from_numpy(masks.ravel().astype(np.int64)))
    return float(metric.compute())


def test_ref_torchmetrics_auroc(benchmark, data, ours):
    from torchmetrics.classification import BinaryAUROC

    v = benchmark.pedantic(_torchmetrics, args=(BinaryAUROC, *data), rounds=1, iterations=1)
    assert v == pytest.approx(ours["pixel_auroc"], abs=1e-4)  # float32 inside torchmetrics


def test_ref_torchmetrics_ap(benchmark, data, ours):
    from torchmetrics.classification import BinaryAveragePrecision

    v = benchmark.pedantic(_torchmetrics, args=(BinaryAveragePrecision, *data), rounds=1, iterations=1)
    assert v == pytest.approx(ours["pixel_ap"], abs=1e-4)


def _anomalib_aupro(masks, maps):
    from anomalib.metrics.aupro import _AUPRO  # what anomalib.metrics.AUPRO computes with

    metric = _AUPRO(fpr_limit=0.3)
    metric.update(torch.from_numpy(maps), torch.from_numpy(masks.astype(np.int64)))
    return float(metric.compute())


def test_ref_anomalib_aupro(benchmark, data, ours):
    import anomalib.metrics.aupro  # noqa: F401  (import outside the timing)

    v = benchmark.pedantic(_anomalib_aupro, args=data, rounds=1, iterations=1)
    assert v == pytest.approx(ours["pixel_aupro"], abs=1e-3)
