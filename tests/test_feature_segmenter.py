"""The frozen-encoder segmenter: trains its decoder on the pairs, ranks a pasted square above
normals, is seeded, records its weights and refuses missing weights at plan time."""
import re

import numpy as np
import pytest
import torch

from benchmark import weights as W
from benchmark.schema import ConfigError
from detectors import DetectorContext, create_detector, get_detector_class
from generators.base import Pair
from tests.toys import flat, square

torch.set_num_threads(1)


def _flat(rng, n, size=64):
    return flat(rng, n, size)


_square = square


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("weights")
    meta = W.write_weights(W.build_resnet().state_dict(), {"source": "test", "stride": "v1.5"}, cache)
    return cache, meta


def _fit(seed):
    rng = np.random.default_rng(0)
    pairs = [Pair(*_square(_flat(rng, 1)[0], 4 + 5 * i, 6 + 4 * i, 16), "square") for i in range(6)]
    det = create_detector("feature_segmenter", steps=40, width=8, batch_size=4, lr=3e-3, pool_size=5)
    det.fit(_flat(rng, 6), pairs, DetectorContext("tex", seed=seed, image_size=64))
    anomalous, _ = _square(_flat(rng, 1)[0], 30, 20, 16)
    return det, det.predict(np.concatenate([_flat(rng, 3), anomalous[None]]))


def test_learns_pairs_seeded_and_records_weights(weights_cache, monkeypatch):
    cache, meta = weights_cache
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(cache))
    det, (scores, maps) = _fit(seed=0)
    assert scores.dtype == np.float64 and maps.shape == (4, 64, 64) and maps.dtype == np.float32
    assert scores[3] > scores[:3].max()
    assert maps[3, 30:46, 20:36].mean() > maps[3].mean()
    assert det.loss_history[-1] < det.loss_history[0]
    assert det.weights_info()["sha256"] == meta["sha256"]
    _, (scores2, maps2) = _fit(seed=0)
    np.testing.assert_array_equal(scores, scores2)
    np.testing.assert_array_equal(maps, maps2)


def test_missing_weights_found_on_the_resolved_config(tmp_path, monkeypatch):
    from benchmark.schema import resolved
    from detectors.backbones import check_weights

    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(tmp_path / "none_here"))
    where = "detector_cfg.feature_segmenter"
    cfg = resolved(get_detector_class("feature_segmenter").resolve_config({}, where))
    assert cfg["backbone_weights"] == "imagenet"
    assert re.match(r"^detector_cfg\.feature_segmenter\.backbone_weights: .*make weights", check_weights(cfg, where))
    with pytest.raises(ConfigError, match="steps"):
        get_detector_class("feature_segmenter").resolve_config({"steps": 0, "backbone_weights": "none"}, "d")
