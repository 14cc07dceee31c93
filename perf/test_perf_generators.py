"""Throughput of the baseline generators at 256 px: one benchmark per generator making 20
pairs; pairs/s = 20 / mean (printed in extra_info)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from generators import FitData, Pair, create_generator

SIZE = 256
N_PAIRS = 20


def _texture(seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    small = r.integers(0, 256, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
    big = cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return np.clip(big.astype(int) + r.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fit_data() -> FitData:
    anomalies = []
    for i in range(3):
        img, mask = _texture(100 + i), np.zeros((SIZE, SIZE), np.uint8)
        cv2.ellipse(mask, (128, 128), (30 + 5 * i, 12), 30.0 * i, 0, 360, 1, -1)
        anomalies.append(Pair(img, mask.astype(bool), "crack"))
    return FitData(category="toy", normals=[_texture(i) for i in range(8)], anomalies=anomalies,
                   defect_types=["crack"], aux_images=[_texture(50), _texture(51)],
                   image_size=SIZE)


@pytest.mark.parametrize("name", ["cutpaste", "cutpaste_scar", "crop_paste", "draem", "nsa"])
def test_generate_throughput(benchmark, fit_data, name):
    g = create_generator(name)
    g.fit(fit_data, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    pairs = benchmark(g.generate, N_PAIRS, "crack", rng)
    assert len(pairs) == N_PAIRS
    benchmark.extra_info["pairs_per_s"] = N_PAIRS / benchmark.stats.stats.mean
