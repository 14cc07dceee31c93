"""Behaviour of the baseline anomaly generators on tiny synthetic inputs (64 px).

Normals are identical copies of one image, so the source of every edited pair is known and
"changes only inside the mask" can be checked exactly.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from generators import FitData, Pair, common, create_generator, get_generator_class, list_generators

BASELINES = ["cutpaste", "cutpaste_scar", "crop_paste", "draem", "nsa"]
SIZE = 64


def _texture(seed: int, size: int = SIZE) -> np.ndarray:
    """Smooth random colour texture (blurred noise), uint8 HxWx3."""
    r = np.random.default_rng(seed)
    small = r.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    big = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(big.astype(int) + r.integers(-20, 21, big.shape), 0, 255).astype(np.uint8)


def _blob(seed: int, size: int = SIZE) -> np.ndarray:
    r = np.random.default_rng(seed)
    m = np.zeros((size, size), np.uint8)
    c = tuple(int(v) for v in r.integers(size // 4, 3 * size // 4, 2))
    axes = tuple(int(v) for v in r.integers(4, size // 6, 2))
    cv2.ellipse(m, c, axes, float(r.uniform(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


@pytest.fixture(scope="module")
def base_image() -> np.ndarray:
    return _texture(0)


@pytest.fixture(scope="module")
def fit_data(base_image) -> FitData:
    anomalies = []
    for i, dt in enumerate(["crack", "crack", "scratch"]):
        img = _texture(100 + i)
        mask = _blob(200 + i)
        img[mask] = (255, 0, 0) if dt == "crack" else (0, 0, 255)  # type-specific colour
        anomalies.append(Pair(img, mask, dt))
    return FitData(category="toy", normals=[base_image.copy() for _ in range(3)],
                   anomalies=anomalies, defect_types=["crack", "scratch"],
                   aux_images=[_texture(10), _texture(11)], image_size=SIZE)


def _make(name: str, fit_data: FitData, seed: int = 0, **cfg):
    g = create_generator(name, **cfg)
    g.fit(fit_data, np.random.default_rng(seed))
    return g


def test_all_baselines_registered():
    assert set(BASELINES) <= set(list_generators())


@pytest.mark.parametrize("name", BASELINES)
def test_pairs_are_well_formed(name, fit_data):
    pairs = _make(name, fit_data).generate(4, "crack", np.random.default_rng(1))
    assert len(pairs) == 4
    for p in pairs:
        assert isinstance(p, Pair)
        assert p.image.dtype == np.uint8 and p.image.shape == (SIZE, SIZE, 3)
        assert p.mask.dtype == bool and p.mask.shape == (SIZE, SIZE)
        assert p.mask.any(), "mask must not be empty"
        assert p.defect_type == "crack"


@pytest.mark.parametrize("name", BASELINES)
def test_changes_only_inside_mask(name, fit_data, base_image):
    assert get_generator_class(name).edits_normal
    pairs = _make(name, fit_data).generate(6, "crack", np.random.default_rng(2))
    changed_any = False
    for p in pairs:
        diff = (p.image != base_image).any(axis=2)
        assert not diff[~p.mask].any(), f"{name}: pixels outside the mask changed"
        changed_any |= bool(diff.any())
    assert changed_any, f"{name}: no pair changed the image"


@pytest.mark.parametrize("name", BASELINES)
def test_deterministic_given_rng(name, fit_data):
    a = _make(name, fit_data, seed=5).generate(3, "crack", np.random.default_rng(7))
    b = _make(name, fit_data, seed=5).generate(3, "crack", np.random.default_rng(7))
    c = _make(name, fit_data, seed=5).generate(3, "crack", np.random.default_rng(8))
    for p, q in zip(a, b):
        assert p.image.tobytes() == q.image.tobytes() and p.mask.tobytes() == q.mask.tobytes()
    assert any(p.image.tobytes() != r.image.tobytes() for p, r in zip(a, c))


@pytest.mark.parametrize("name", BASELINES)
def test_unknown_config_key_is_a_clear_error(name):
    with pytest.raises(ValueError, match="no_such_key"):
        create_generator(name, no_such_key=1)


@pytest.mark.parametrize("name", BASELINES)
def test_generate_before_fit_raises(name):
    with pytest.raises(RuntimeError, match="fit"):
        create_generator(name).generate(1, "crack", np.random.default_rng(0))


def test_empty_normals_is_a_clear_error(fit_data):
    bad = FitData(category="toy", normals=[], anomalies=[], defect_types=[])
    with pytest.raises(ValueError, match="normals"):
        create_generator("cutpaste").fit(bad, np.random.default_rng(0))


def test_cutpaste_mask_is_a_rectangle_of_paper_area(fit_data):
    for p in _make("cutpaste", fit_data).generate(20, "x", np.random.default_rng(3)):
        ys, xs = np.nonzero(p.mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert p.mask.sum() == box  # a full axis-aligned rectangle
        assert 0.015 <= p.mask.mean() <= 0.17  # 0.02..0.15 up to rounding at 64 px


def test_cutpaste_foreground_only_pastes_on_foreground(fit_data, base_image):
    fg = np.zeros((SIZE, SIZE), bool)
    fg[20:44, 20:44] = True
    data = FitData(**{**fit_data.__dict__, "foreground": lambda im: fg})
    g = _make("cutpaste", data, foreground_only=True)
    for p in g.generate(10, "x", np.random.default_rng(4)):
        # the patch centre is drawn on the foreground (then shifted to stay in the image)
        ys, xs = np.nonzero(p.mask)
        assert fg[(ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2]


def test_color_jitter_zero_is_identity(base_image):
    out = common.color_jitter(base_image, np.random.default_rng(0), 0, 0, 0, 0)
    assert np.array_equal(out, base_image)


def test_cutpaste_scar_masks_are_thin(fit_data):
    size = 256
    data = FitData(**{**fit_data.__dict__, "normals": [_texture(3, size)]})
    limit = 16 * size / 256 + 2
    pairs = _make("cutpaste_scar", data).generate(20, "x", np.random.default_rng(5))
    for p in pairs:
        pts = np.argwhere(p.mask)[:, ::-1].astype(np.float32)
        (_, _), (w, h), _ = cv2.minAreaRect(pts)
        assert min(w, h) <= limit
        assert max(w, h) <= 25 * size / 256 + 3  # scar length bound (height 10..25 at 256 px)


def test_crop_paste_keeps_defect_type_and_pastes_real_defect(fit_data):
    g = _make("crop_paste", fit_data)
    colours = {"crack": (255, 0, 0), "scratch": (0, 0, 255)}
    for dt in ("crack", "scratch"):
        for p in g.generate(5, dt, np.random.default_rng(6)):
            assert p.defect_type == dt
            # the type-specific colour of the source defect dominates the pasted region
            # (edge pixels are interpolated by the scale/rotation jitter)
            mean = p.image[p.mask].astype(float).mean(axis=0)
            assert np.abs(mean - colours[dt]).max() < 50


def test_crop_paste_unknown_defect_type_and_missing_masks(fit_data):
    g = _make("crop_paste", fit_data)
    with pytest.raises(ValueError, match="hole"):
        g.generate(1, "hole", np.random.default_rng(0))
    no_masks = [Pair(a.image, np.zeros_like(a.mask), a.defect_type) for a in fit_data.anomalies]
    bad = FitData(**{**fit_data.__dict__, "anomalies": no_masks})
    with pytest.raises(ValueError, match="anomalies"):
        create_generator("crop_paste").fit(bad, np.random.default_rng(0))


def test_crop_paste_lands_on_given_foreground(fit_data):
    fg = np.zeros((SIZE, SIZE), bool)
    fg[8:56, 8:56] = True
    data = FitData(**{**fit_data.__dict__, "is_object": True, "foreground": lambda im: fg})
    pairs = _make("crop_paste", data).generate(10, "crack", np.random.default_rng(9))
    shares = [fg[p.mask].mean() for p in pairs]
    assert np.mean(shares) > 0.9


def test_draem_mask_area_is_plausible(fit_data):
    pairs = _make("draem", fit_data).generate(30, "x", np.random.default_rng(10))
    areas = np.array([p.mask.mean() for p in pairs])
    assert (areas < 0.8).all()
    assert np.mean((areas >= 0.001) & (areas <= 0.8)) >= 0.9
    assert len({round(a, 4) for a in areas}) > 10  # masks vary (Perlin scales, rotation)


def test_draem_foreground_only_restricts_mask(fit_data):
    fg = np.zeros((SIZE, SIZE), bool)
    fg[16:48, 16:48] = True
    data = FitData(**{**fit_data.__dict__, "is_object": True, "foreground": lambda im: fg})
    for p in _make("draem", data).generate(8, "x", np.random.default_rng(11)):
        assert not (p.mask & ~fg).any()


def test_draem_texture_dir(fit_data, tmp_path):
    cv2.imwrite(str(tmp_path / "t.png"), np.full((40, 50, 3), (0, 255, 0), np.uint8))
    g = _make("draem", fit_data, texture_dir=str(tmp_path), num_augmenters=1)
    assert g.generate(2, "x", np.random.default_rng(0))[0].mask.any()
    with pytest.raises(ValueError, match="texture_dir"):
        _make("draem", fit_data, texture_dir=str(tmp_path / "missing"))


def test_nsa_without_restore_stays_close_outside_mask(fit_data, base_image):
    """Raw Poisson blend: outside the mask the change is sub-threshold except where the
    open/close clean-up dropped specks, so we bound the share of such pixels, not their value."""
    g = _make("nsa", fit_data, restore_outside_mask=False)
    for p in g.generate(5, "x", np.random.default_rng(12)):
        change = np.abs(p.image.astype(int) - base_image).mean(axis=2)
        outside = change[~p.mask]
        assert np.mean(outside > g.config.change_threshold) < 0.02


def test_perlin_noise_range_and_scale():
    rng = np.random.default_rng(0)
    coarse = common.perlin_2d((64, 64), (1, 1), rng)
    fine = common.perlin_2d((64, 64), (16, 16), rng)
    assert np.abs(coarse).max() <= 1.5 and np.abs(fine).max() <= 1.5
    # finer lattice -> larger neighbouring differences
    assert np.abs(np.diff(fine, axis=1)).mean() > 3 * np.abs(np.diff(coarse, axis=1)).mean()
    assert common.perlin_2d((50, 70), (4, 8), rng).shape == (50, 70)  # not divisible is fine


def test_estimate_foreground_finds_object_and_falls_back_on_texture():
    img = np.full((64, 64, 3), 30, np.uint8)
    cv2.circle(img, (32, 32), 16, (200, 180, 40), -1)
    fg = common.estimate_foreground(img)
    truth = np.zeros((64, 64), np.uint8)
    cv2.circle(truth, (32, 32), 16, 1, -1)
    iou = (fg & truth.astype(bool)).sum() / (fg | truth.astype(bool)).sum()
    assert iou > 0.8
    assert common.estimate_foreground(np.full((64, 64, 3), 90, np.uint8)).all()
