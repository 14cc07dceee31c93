"""Contract tests over every registry, driven by `list_*()` (timm's `list_models()` shape).

A newly registered generator, detector or data set is tested here with no list to edit. A
component may declare `contract_settings` (a dict of small settings) so its fit fits a test.
"""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from benchmark.datasets import DATASETS, list_datasets
from benchmark.registry import NAME_PATTERN
from benchmark.schema import ConfigError, resolved
from detectors import DETECTORS, get_detector_class, list_detectors
from generators import GENERATORS, FitData, Pair, create_generator, get_generator_class, list_generators

SIZE = 64


def _texture(seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    small = r.integers(0, 256, (SIZE // 4, SIZE // 4, 3), dtype=np.uint8)
    return cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def fit_data() -> FitData:
    anomalies = []
    for i, dt in enumerate(["crack", "crack", "scratch", "scratch"]):
        img = _texture(100 + i)
        mask = np.zeros((SIZE, SIZE), bool)
        mask[20 + 3 * i:34 + 3 * i, 18:30 + 2 * i] = True
        img[mask] = (250, 30, 30)
        anomalies.append(Pair(img, mask, dt))
    base = _texture(0)
    return FitData(category="toy", normals=[base.copy() for _ in range(6)], anomalies=anomalies,
                   defect_types=["crack", "scratch"], aux_images=[_texture(10), _texture(11)], image_size=SIZE)


def _settings(cls) -> dict:
    return dict(getattr(cls, "contract_settings", {}))


@pytest.mark.parametrize("registry,names", [(GENERATORS, list_generators), (DETECTORS, list_detectors),
                                            (DATASETS, list_datasets)], ids=["generators", "detectors", "datasets"])
def test_names_follow_one_convention(registry, names):
    bad = [n for n in names() if not NAME_PATTERN.match(n)]
    assert not bad, f"{registry.kind} names breaking lower snake_case: {bad}"


def test_old_names_are_aliases_that_warn():
    for old, new in GENERATORS._aliases.items():
        with pytest.warns(DeprecationWarning, match=new):
            assert GENERATORS.get(old) is GENERATORS.get(new)


@pytest.mark.parametrize("name", list_generators())
def test_generator_config_resolves_idempotently_and_names_unknown_keys(name):
    cls = get_generator_class(name)
    where = f"generator_cfg.{name}"
    first = resolved(cls.resolve_config(_settings(cls), where))
    assert resolved(cls.resolve_config(first, where)) == first  # what the record stores rebuilds itself
    with pytest.raises(ConfigError, match=rf"{where}.*'no_such_key'"):
        cls.resolve_config({"no_such_key": 1}, where)
    # the defaults need no local file (a generator naming a checkpoint by default could not run offline)
    assert cls.missing_files(resolved(cls.resolve_config({}, where)), where) is None


@pytest.mark.parametrize("name", list_generators())
def test_generator_pairs_are_well_formed_and_deterministic(name, fit_data):
    cls = get_generator_class(name)

    def run(seed_fit: int, seed_gen: int) -> list[Pair]:
        g = create_generator(name, **_settings(cls))
        g.fit(fit_data, np.random.default_rng(seed_fit))
        return g.generate(3, "crack", np.random.default_rng(seed_gen))

    a, b, c = run(5, 7), run(5, 7), run(5, 8)
    margin = int(create_generator(name, **_settings(cls)).edit_margin)
    assert len(a) == 3
    for p, q in zip(a, b):
        assert p.image.dtype == np.uint8 and p.image.shape == (SIZE, SIZE, 3)
        assert p.mask.dtype == bool and p.mask.shape == (SIZE, SIZE) and p.defect_type == "crack"
        assert p.image.tobytes() == q.image.tobytes() and p.mask.tobytes() == q.mask.tobytes()
        if cls.edits_normal:
            assert p.source is not None
            near = cv2.dilate(p.mask.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)
            outside = (p.image != fit_data.normals[p.source]).any(axis=2) & ~near
            assert not outside.any(), f"{name}: pixels outside the mask changed"
    assert any(p.image.tobytes() != r.image.tobytes() for p, r in zip(a, c))
    assert isinstance(create_generator(name, **_settings(cls)).stats(), dict)


@pytest.mark.parametrize("name", list_generators())
def test_generate_before_fit_raises(name):
    cls = get_generator_class(name)
    with pytest.raises(RuntimeError, match="fit"):
        create_generator(name, **_settings(cls)).generate(1, "crack", np.random.default_rng(0))


@pytest.mark.parametrize("name", list_detectors())
def test_detector_config_resolves_idempotently_and_names_unknown_keys(name):
    cls = get_detector_class(name)
    variant = "Padim" if name.endswith(":*") else None  # a family: one member stands for it
    where = f"detector_cfg.{name}"
    resolve = (lambda c: cls.resolve_config(c, where, variant)) if variant else \
        (lambda c: cls.resolve_config(c, where))
    first = resolved(resolve(_settings(cls)))
    assert resolved(resolve(first)) == first
    with pytest.raises(ConfigError, match="no_such_key"):
        resolve({"no_such_key": 1})


@pytest.mark.parametrize("name", list_datasets())
def test_dataset_settings_are_validated(name):
    cls = DATASETS.get(name)
    where = f"dataset_cfg.{name}"
    first = resolved(cls.resolve_config({}, where))
    assert resolved(cls.resolve_config(first, where)) == first
    with pytest.raises(ConfigError, match=rf"{where}.*'no_such_key'"):
        cls.resolve_config({"no_such_key": 1}, where)


def test_list_functions_import_every_builtin():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert {"cutpaste", "cutpaste_scar", "crop_paste", "draem", "nsa", "dhdiff"} <= set(list_generators())
        assert "unet" in list_detectors()
        assert {"synthetic", "mvtec_ad", "mpdd", "visa", "mvtec_loco", "elpv"} <= set(list_datasets())
