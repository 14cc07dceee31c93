"""The shared feature cache (detectors.feature_cache): a hit gives the record a cold cell gives,
bit for bit; a damaged file is discarded and recomputed; the key moves with anything the
features depend on; the folder stays under its byte budget, least recently used out first."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from benchmark.weights import sha256_file
from detectors import feature_cache as fc
from detectors.feature_segmenter import FeatureSegmenter
from tests.test_feature_segmenter import _fit, weights_cache  # noqa: F401  (the fixture)

CFG = {"predict_batch_size": 3, "ensemble": 2, "linear_members": 1, "context": 1, "image_score": "members"}


@pytest.fixture
def count_encoder_calls(monkeypatch):
    calls = []
    real = FeatureSegmenter._features

    def counting(self, images):
        calls.append(len(images))
        return real(self, images)

    monkeypatch.setattr(FeatureSegmenter, "_features", counting)
    return calls


def test_a_hit_is_the_cold_result_bit_for_bit(weights_cache, monkeypatch, tmp_path, count_encoder_calls):  # noqa: F811
    """6 training normals and 4 evaluation images in batches of 3: a cold run writes both sets,
    a warm run of a new detector encodes only the pairs and returns identical scores and maps,
    and both equal a run without the cache."""
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(weights_cache[0]))
    _, (s0, m0) = _fit(seed=1, **CFG)
    count_encoder_calls.clear()
    _, (s1, m1) = _fit(seed=1, feature_cache=tmp_path, **CFG)
    assert count_encoder_calls == [6, 6, 4]            # normals, pairs, evaluation images
    assert len(list(tmp_path.glob("*.pt"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2
    count_encoder_calls.clear()
    _, (s2, m2) = _fit(seed=1, feature_cache=tmp_path, **CFG)
    assert count_encoder_calls == [6]                  # the pairs only
    for s, m in ((s1, m1), (s2, m2)):
        np.testing.assert_array_equal(s, s0)
        np.testing.assert_array_equal(m, m0)
    count_encoder_calls.clear()
    torch.set_num_threads(2)   # another thread count may round otherwise: a miss, never a hit
    try:
        _fit(seed=1, feature_cache=tmp_path, **CFG)
    finally:
        torch.set_num_threads(1)
    assert count_encoder_calls == [6, 6, 4] and len(list(tmp_path.glob("*.pt"))) == 4


def test_random_init_weights_are_never_cached(tmp_path):
    """``backbone_weights: none`` has no sha256 to key on."""
    _fit(seed=0, feature_cache=tmp_path, backbone_weights="none", steps=2)
    assert not list(tmp_path.iterdir())


def test_a_damaged_file_is_discarded_and_recomputed(weights_cache, monkeypatch, tmp_path,  # noqa: F811
                                                    count_encoder_calls):
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(weights_cache[0]))
    _, (s0, m0) = _fit(seed=2, feature_cache=tmp_path, **CFG)
    for p in tmp_path.glob("*.pt"):
        raw = bytearray(p.read_bytes())
        raw[-100] ^= 0xFF
        p.write_bytes(bytes(raw))
    count_encoder_calls.clear()
    with pytest.warns(UserWarning, match=r"feature cache .*\.pt' discarded \(ValueError: sha256 "):
        _, (s1, m1) = _fit(seed=2, feature_cache=tmp_path, **CFG)
    assert count_encoder_calls == [6, 6, 4]
    np.testing.assert_array_equal(s1, s0)
    np.testing.assert_array_equal(m1, m0)
    for p in tmp_path.glob("*.pt"):   # rewritten whole
        assert json.loads(p.with_suffix(".json").read_text())["sha256"] == sha256_file(p)


def test_the_key_moves_with_the_images_and_every_part():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    parts = {"weights_sha256": "a", "threads": 1, "size": 8}
    key = fc.features_key(parts, images)
    assert fc.features_key(dict(parts), images.copy()) == key
    moved = images.copy()
    moved[1, 7, 7, 2] = 1
    assert fc.features_key(parts, moved) != key
    assert fc.features_key(parts, images[:1]) != key
    for name, value in (("weights_sha256", "b"), ("threads", 2), ("size", 16)):
        assert fc.features_key({**parts, name: value}, images) != key


def test_prune_keeps_the_folder_under_budget_least_recently_used_first(tmp_path):
    for i, name in enumerate("abcd"):
        fc.save(tmp_path, name, [torch.zeros(250, dtype=torch.uint8)], {}, max_bytes=10**9)
        os.utime(tmp_path / f"{name}.pt", (1000 + i, 1000 + i))
    assert fc.load(tmp_path, "a") is not None          # a hit: now the most recently used
    size = (tmp_path / "b.pt").stat().st_size
    removed = fc.prune(tmp_path, max_bytes=2 * size)
    assert sorted(p.name for p in removed) == ["b.pt", "c.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.pt", "d.json", "d.pt"]
