"""The evaluation protocol of one cell (benchmark.evaluation): LOCO per-group image metrics, AU-sPRO
at ground-truth scale, a LOCO category without defects_config.json, and the pixel subsample."""
import math
import warnings

import cv2
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

import tests.layouts as L
from benchmark import evaluation as E
from benchmark import metrics as M
from benchmark.config import CellConfig
from benchmark.datasets import DataError, create_dataset, load_mask

CAT = "breakfast_box"


def _loco(tmp_path, size=32, aligned_to=None):
    """LOCO fixture tree; with ``aligned_to`` every ground-truth PNG is redrawn as whole blocks
    of size // aligned_to px, so a map at ``aligned_to`` px upsampled nearest is exact at full size."""
    root = L.make_mvtec_loco_tree(tmp_path / "loco", n_good=4,
                                  defects={"logical_anomalies": 4, "structural_anomalies": 4}, size=size)
    if aligned_to:
        f = size // aligned_to
        for p in sorted((root / CAT / "ground_truth").rglob("*.png")):
            m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            small = cv2.resize(m, (aligned_to, aligned_to), interpolation=cv2.INTER_NEAREST)
            assert small.any()
            cv2.imwrite(str(p), np.kron(small, np.ones((f, f), np.uint8)))
    adapter = create_dataset("mvtec_loco", str(root))
    df = adapter.samples(CAT)
    ev = df[df["split"] == "test"].reset_index(drop=True)
    return root, adapter, ev


def _cfg(eval_size, seed=0, generator="cutpaste"):
    return CellConfig(dataset="mvtec_loco", category=CAT, generator=generator, detector="unet",
                      seed=seed, eval_size=eval_size)


def _outputs(ev, eval_size, seed=0):
    """Scores and maps that rank anomalies imperfectly: maps are noise plus half of the defect."""
    rng = np.random.default_rng(seed)
    masks = np.stack([load_mask(tuple(mp), eval_size) for mp in ev["mask_paths"]])
    maps = np.round(rng.random(masks.shape) * 0.8 + 0.5 * masks * rng.random(masks.shape), 3)
    scores = np.round(maps.reshape(len(ev), -1).max(axis=1) + rng.normal(0, 0.1, len(ev)), 3)
    return scores, maps, masks


def test_loco_image_metrics_per_group_then_averaged(tmp_path):
    _, adapter, ev = _loco(tmp_path)
    scores, maps, masks = _outputs(ev, 32)
    res = E.evaluate_with_sample(_cfg(32), adapter, ev, scores, maps, masks)
    m = res.metrics
    y = ev["label"].to_numpy()
    sk = {"image_auroc": roc_auc_score, "image_ap": average_precision_score}
    for g in ("logical", "structural"):
        sel = ((ev["label"] == 0) | (ev["defect_group"] == g)).to_numpy()
        for k, fn in sk.items():
            assert m[f"{k}_{g}"] == pytest.approx(fn(y[sel], scores[sel]), abs=1e-9)
        assert m[f"image_f1max_{g}"] == pytest.approx(M.f1_max(y[sel], scores[sel]), abs=1e-12)
    for k in ("image_auroc", "image_ap", "image_f1max"):
        assert m[k] == pytest.approx((m[f"{k}_logical"] + m[f"{k}_structural"]) / 2, abs=1e-12)
    assert m["image_ap_pooled"] == pytest.approx(average_precision_score(y, scores), abs=1e-9)
    assert m["image_auroc_pooled"] == pytest.approx(roc_auc_score(y, scores), abs=1e-9)
    assert m["image_f1max_pooled"] == pytest.approx(M.f1_max(y, scores), abs=1e-12)
    assert res.warnings == []


def _spro_full_resolution(root, ev, maps_small, factor):
    """Slow reference: maps upsampled nearest to the ground truth's size, sPRO there with the
    native PNGs, per group against all good images, then averaged."""
    cfg = M.load_defects_config(root / CAT / "defects_config.json")
    up = np.repeat(np.repeat(maps_small.astype(np.float64), factor, axis=1), factor, axis=2)
    chans = []
    for label, paths in zip(ev["label"], ev["mask_paths"]):
        chans.append(None if not label else [
            (m > 0, int(m.max())) for m in (cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths)])
    per = []
    for g in ("logical", "structural"):
        sel = np.flatnonzero(((ev["label"] == 0) | (ev["defect_group"] == g)).to_numpy())
        # the per-threshold loop of test_metrics, at full resolution
        from tests.test_metrics import _spro_reference
        raw = [{"defect_name": c.defect_name, "pixel_value": c.pixel_value,
                "saturation_threshold": c.saturation_threshold,
                "relative_saturation": c.relative_saturation} for c in cfg.values()]
        per.append(_spro_reference(up[sel], [chans[i] for i in sel], raw, M.SPRO_FPR_LIMITS))
    return {f: float(np.mean([p[f] for p in per])) for f in M.SPRO_FPR_LIMITS}


def test_loco_spro_with_ground_truth_larger_than_eval_size(tmp_path):
    # Ground truth at 128 px (block-aligned), evaluation at 32 px: equal to the full-resolution
    # reference. The fixture's absolute threshold of 40 px asks for 40 of a defect's 1024 px at
    # 128 px; the old path (masks resized first) asked for 40 of its 64 px at 32 px.
    root, adapter, ev = _loco(tmp_path, size=128, aligned_to=32)
    scores, maps, masks = _outputs(ev, 32, seed=3)
    m = E.evaluate_with_sample(_cfg(32), adapter, ev, scores, maps, masks).metrics
    ref = _spro_full_resolution(root, ev, maps, 4)
    for f in M.SPRO_FPR_LIMITS:
        assert m[f"pixel_spro@{f:g}"] == pytest.approx(ref[f], abs=1e-9), f
        assert m[f"pixel_spro@{f:g}"] == pytest.approx(
            (m[f"pixel_spro@{f:g}_logical"] + m[f"pixel_spro@{f:g}_structural"]) / 2, abs=1e-12)


def test_loco_vanishing_defect_gives_a_warning_not_a_failed_cell(tmp_path):
    root, adapter, ev = _loco(tmp_path, size=128, aligned_to=32)
    scores, maps, masks = _outputs(ev, 32, seed=3)
    before = E.evaluate_with_sample(_cfg(32), adapter, ev, scores, maps, masks).metrics
    # An extra one-pixel-high line in image 000 of logical_anomalies: row 1 is never sampled by
    # nearest-neighbour 128 -> 32 (rows 0, 4, 8, ...), so it vanishes at the evaluation size.
    line = np.zeros((128, 128), np.uint8)
    line[1, 20:100] = 254
    p = root / CAT / "ground_truth" / "logical_anomalies" / "000" / "009.png"
    cv2.imwrite(str(p), line)
    ev2 = adapter.samples(CAT)
    ev2 = ev2[ev2["split"] == "test"].reset_index(drop=True)
    assert any(str(p) in mp for mp in ev2["mask_paths"])
    res = E.evaluate_with_sample(_cfg(32), adapter, ev2, scores, maps, masks)
    assert len(res.warnings) == 1 and str(p) in res.warnings[0] and "vanishes" in res.warnings[0]
    for f in M.SPRO_FPR_LIMITS:  # left out: every other defect scores as before
        assert res.metrics[f"pixel_spro@{f:g}"] == pytest.approx(before[f"pixel_spro@{f:g}"], abs=1e-12)
    with pytest.warns(E.EvaluationWarning, match="vanishes"):  # the dict-only wrapper re-emits it
        E.evaluate(_cfg(32), adapter, ev2, scores, maps, masks)


def test_loco_without_defects_config(tmp_path):
    root, adapter, ev = _loco(tmp_path)
    assert E.check_ready(adapter, CAT) is None
    full = E.evaluate_with_sample(_cfg(32), adapter, ev, *_outputs(ev, 32)).metrics
    (root / CAT / "defects_config.json").unlink()
    warning = E.check_ready(adapter, CAT)
    assert "defects_config.json" in warning and CAT in warning
    res = E.evaluate_with_sample(_cfg(32), adapter, ev, *_outputs(ev, 32))
    assert res.warnings == [warning]
    for k, v in full.items():
        if k.startswith("pixel_spro@"):
            assert res.metrics[k] is None, k
        else:
            assert res.metrics[k] == v, k  # image and pixel metrics unchanged
    # A defects config that exists but is malformed is bad input, named at plan time.
    (root / CAT / "defects_config.json").write_text("[{\"defect_name\": 1}]")
    with pytest.raises(DataError, match="defects_config.json"):
        E.check_ready(adapter, CAT)


def test_check_ready_elsewhere_is_silent():
    adapter = create_dataset("synthetic", None)
    assert E.check_ready(adapter, adapter.categories()[0]) is None


def test_pixel_sample_same_positions_for_every_generator(tmp_path):
    _, adapter, ev = _loco(tmp_path)
    scores, _, masks = _outputs(ev, 32)
    index = np.broadcast_to(np.arange(32 * 32, dtype=np.float64).reshape(32, 32), masks.shape)

    def sample(seed, generator, maps):
        cfg = _cfg(32, seed, generator)
        return E.evaluate_with_sample(cfg, adapter, ev, scores, maps, masks).pixel_sample

    s = sample(0, "cutpaste", index)  # each score reveals its pixel position
    assert s["k"] == 256 and len(s["score"]) == len(s["label"]) == len(ev)
    pos = np.array(s["score"], np.int64)
    for i in range(len(ev)):
        assert len(set(pos[i])) == 256  # without replacement
        assert s["label"][i] == masks[i].reshape(-1)[pos[i]].astype(int).tolist()
    assert not (pos[0] == pos[1]).all()  # positions differ between images
    other = sample(0, "draem", index + 0.5)  # another generator of the same seed: same pixels
    assert np.array_equal(np.array(other["score"]) - 0.5, pos) and other["label"] == s["label"]
    assert not np.array_equal(np.array(sample(1, "cutpaste", index)["score"], np.int64), pos)
    rounded = sample(0, "cutpaste", index / 3.0)["score"]  # 6 significant digits
    assert rounded[0][0] == float(f"{pos[0][0] / 3.0:.6g}")
    # A confident detector: the same ranking with every score below 1e-5. The sample keeps it, so
    # its pixel AUROC is the unscaled map's (5 decimals made every score 0: AUROC 0.5).
    _, noisy, _ = _outputs(ev, 32)
    plain, confident = sample(0, "cutpaste", noisy), sample(0, "cutpaste", noisy * 1e-7)
    labels = np.concatenate(plain["label"])
    assert M.auroc(labels, np.concatenate(confident["score"])) == M.auroc(labels, np.concatenate(plain["score"]))
    assert M.auroc(labels, np.concatenate(plain["score"])) > 0.6


def test_pixel_sample_size_and_image_level(tmp_path):
    _, adapter, ev = _loco(tmp_path)
    scores, maps, _masks = _outputs(ev, 32)
    cfg = _cfg(8)
    small = np.stack([load_mask(tuple(mp), 8) for mp in ev["mask_paths"]])
    s = E.evaluate_with_sample(cfg, adapter, ev, scores, maps, small).pixel_sample
    assert s["k"] == 64 and all(len(r) == 64 for r in s["score"])  # capped at every pixel
    res = E.evaluate_with_sample(cfg, adapter, ev, scores, maps, None)  # image-level data set
    assert res.pixel_sample is None
    assert all(res.metrics[k] is None for k in E.PIXEL_KEYS)


def test_one_class_evaluation_is_nan_with_a_warning(tmp_path):
    _, adapter, ev = _loco(tmp_path)
    good = ev[ev["label"] == 0].reset_index(drop=True)
    scores, maps, masks = _outputs(good, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # collected, not raised
        res = E.evaluate_with_sample(_cfg(32), adapter, good, scores, maps, masks)
    assert math.isnan(res.metrics["image_auroc"]) and math.isnan(res.metrics["pixel_auroc"])
    assert any("undefined" in w for w in res.warnings)


def test_loco_cell_without_defects_config_keeps_its_metrics(tmp_path):
    # The whole cell (train, predict, evaluate): before, it trained and then failed, losing
    # every metric; now it is ok with AU-sPRO None.
    from benchmark.cell import run_cell
    from benchmark.config import build_config
    from benchmark.runner import plan

    root = L.make_mvtec_loco_tree(tmp_path / "loco", n_train=6, n_good=3, size=32)
    (root / CAT / "defects_config.json").unlink()
    over = {"datasets": "mvtec_loco", "data_root": str(root), "results_dir": str(tmp_path / "runs"),
            "run": "t", "generators": "cutpaste"}
    tiny = ["detectors=unet", "detector_cfg.unet={base_width: 4, depth: 3, steps: 4, batch_size: 4}", "pairs_per_defect=3",
            "image_size=32", "eval_size=32"]
    cfg = build_config("quick", None, over, tiny)
    cfg.cache_dir = str(tmp_path / "cache")
    p = plan(cfg)  # found before any training, said once
    assert sum("defects_config.json" in note for note in p.skipped) == 1
    rec = run_cell(p.cells[0], tmp_path / "cache")
    assert rec["status"] == "ok", rec.get("traceback")
    assert sum("defects_config.json" in w for w in rec["warnings"]) == 1
    m = rec["metrics"]
    assert m["pixel_spro@0.05"] is None and m["pixel_spro@0.05_logical"] is None
    assert 0 <= m["image_auroc"] <= 1 and 0 <= m["pixel_auroc"] <= 1 and 0 <= m["image_ap_logical"] <= 1
