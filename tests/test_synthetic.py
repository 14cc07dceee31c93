"""The embedded data set: MVTec AD layout, determinism, exact masks, atomic one-time build."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmark.datasets import DataError, create_dataset, load_image, load_mask
from benchmark.datasets import synthetic as sy

SMALL = dict(image_size=64, n_train=3, n_test_good=2, n_test_defect=2)


def _files(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*.png"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    ds = create_dataset("synthetic", root=tmp_path_factory.mktemp("syn"), seed=0, **SMALL)
    ds.ensure()
    return ds


def test_mvtec_layout_and_adapter_counts(small):
    tree = small.root
    assert tree.name == f"{sy.VERSION}-s0-64px-n3-2-2" and sy.VERSION == "v3" and (tree / sy.MANIFEST).is_file()
    assert small.categories() == list(sy.CATEGORIES)
    assert len(sy.TEXTURES) >= 2 and len(sy.OBJECTS) >= 1
    assert small.object_categories == frozenset(sy.OBJECTS) and small.is_object("washer") and not small.is_object("weave")
    for cat in sy.CATEGORIES:
        assert len(sy.DEFECTS[cat]) >= 3
        assert (tree / cat / "train" / "good" / "002.png").is_file()
        assert (tree / cat / "test" / "good" / "001.png").is_file()
        df = small.samples(cat)
        assert ((df.split == "train") & (df.label == 0)).sum() == 3
        assert ((df.split == "test") & (df.label == 0)).sum() == 2
        for d in sy.DEFECTS[cat]:
            rows = df[df.defect_type == d]
            assert len(rows) == 2 and (rows.label == 1).all() and (rows.split == "test").all()
            for r in rows.itertuples():
                (mp,) = r.mask_paths
                assert Path(mp) == tree / cat / "ground_truth" / d / (Path(r.image_path).stem + "_mask.png")
                raw = cv2.imread(mp, cv2.IMREAD_UNCHANGED)
                assert raw.shape == (64, 64) and set(np.unique(raw)) <= {0, 255} and (raw == 255).any()
                assert load_image(r.image_path).shape == (64, 64, 3)


def test_tree_images_are_make_sample(small):
    for cat in ("weave", "washer"):
        d = sy.DEFECTS[cat][0]
        _, img, mask = sy.make_sample(cat, "test", d, 1, seed=0, size=64)
        path = small.root / cat / "test" / d / "001.png"
        assert np.array_equal(load_image(path), img)
        assert np.array_equal(load_mask([str(path.parent.parent.parent / "ground_truth" / d / "001_mask.png")]), mask)


def test_same_seed_identical_other_seed_differs(small, tmp_path):
    again = create_dataset("synthetic", root=tmp_path / "a", seed=0, **SMALL)
    other = create_dataset("synthetic", root=tmp_path / "b", seed=1, **SMALL)
    a, b = _files(again.ensure()), _files(other.ensure())
    ref = _files(small.root)
    assert a == ref
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) == len(a)


@pytest.mark.parametrize("cat", sy.CATEGORIES)
def test_masks_are_exactly_the_changed_pixels(cat):
    for d in sy.DEFECTS[cat]:
        for i in range(3):
            normal, img, mask = sy.make_sample(cat, "test", d, i, seed=3, size=64)
            changed = (img != normal).any(-1)
            assert mask.any(), (cat, d, i)
            assert np.array_equal(changed, mask), (cat, d, i)
    normal, img, mask = sy.make_sample(cat, "test", "good", 0, seed=3, size=64)
    assert np.array_equal(normal, img) and not mask.any()


def test_defects_vary_in_size():
    areas = {d: [sy.make_sample("granite", "test", d, i, size=64)[2].mean() for i in range(6)]
             for d in sy.DEFECTS["granite"]}
    assert all(max(a) > 1.5 * min(a) for a in areas.values())
    assert np.mean(areas["scratch"]) < np.mean(areas["stain"])   # thin vs blob-like


def test_second_call_reuses_tree(small):
    before = {p: p.stat().st_mtime_ns for p in small.root.rglob("*")}
    n = sy.builds
    again = create_dataset("synthetic", root=small.root.parent, seed=0, **SMALL)
    again.samples("granite")
    assert sy.builds == n
    assert {p: p.stat().st_mtime_ns for p in small.root.rglob("*")} == before


def test_interrupted_build_leaves_no_trusted_tree(tmp_path, monkeypatch):
    real, calls = sy._write_png, []

    def flaky(path, arr):
        calls.append(path)
        if len(calls) == 20:
            raise KeyboardInterrupt("simulated interruption")
        real(path, arr)

    monkeypatch.setattr(sy, "_write_png", flaky)
    ds = create_dataset("synthetic", root=tmp_path, seed=0, **SMALL)
    with pytest.raises(KeyboardInterrupt):
        ds.samples("weave")
    assert [p.name for p in tmp_path.iterdir()] == [ds.root.name]   # no temp folder beside the tree
    assert [p.name for p in ds.root.iterdir()] == [sy.MANIFEST]     # nor in it, and no category
    # a half category at the final path (e.g. written by hand) is not trusted either
    (ds.root / "weave" / "train" / "good").mkdir(parents=True)
    monkeypatch.setattr(sy, "_write_png", real)
    n = sy.builds
    assert len(ds.samples("weave")) == 3 + 2 + 2 * len(sy.DEFECTS["weave"])
    assert sy.builds == n + 1 and sorted(p.name for p in ds.root.iterdir()) == [sy.MANIFEST, "weave"]


def test_a_category_is_built_when_read_with_the_full_trees_bytes(small, tmp_path):
    """The bench reads one category: only it is written, byte for byte the full tree's; another
    category joins later without touching it; a tree of another manifest is replaced whole."""
    ds = create_dataset("synthetic", root=tmp_path, seed=0, **SMALL)
    ds.samples("weave")
    assert sorted(p.name for p in ds.root.iterdir()) == [sy.MANIFEST, "weave"]
    full = _files(small.root)
    assert _files(ds.root) == {k: v for k, v in full.items() if k.startswith("weave/")}
    before = {p: p.stat().st_mtime_ns for p in (ds.root / "weave").rglob("*")}
    ds.ensure(["wood", "weave"])
    assert sorted(p.name for p in ds.root.iterdir()) == [sy.MANIFEST, "weave", "wood"]
    assert {p: p.stat().st_mtime_ns for p in (ds.root / "weave").rglob("*")} == before
    assert _files(ds.ensure()) == full
    (ds.root / sy.MANIFEST).write_text('{"version": "v0"}')
    n = sy.builds
    ds.samples("granite")
    assert sy.builds == n + 1 and {p.name for p in ds.root.iterdir()} == {sy.MANIFEST, "granite"}


def test_object_poses_vary():
    for cat in sy.OBJECTS:
        poses = np.array([sy.pose(cat, "train", i, size=128) for i in range(6)])
        assert np.ptp(poses[:, 0]) > 3 and np.ptp(poses[:, 1]) > 3
        assert len(np.unique(np.round(poses[:, 2], 2))) == 6
        # the rendered part really moves: foreground centroids differ
        cents = []
        for i in range(3):
            g = sy.make_sample(cat, "train", "good", i, size=128)[0].mean(-1)
            ys, xs = np.nonzero(g > 90)
            cents.append((xs.mean(), ys.mean()))
        assert np.ptp(np.array(cents), 0).max() > 2


def test_default_cache_location_and_bad_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HELIXBENCH_CACHE", str(tmp_path))
    ds = create_dataset("synthetic")
    assert ds.root == tmp_path / "synthetic" / "v3-s0-128px" and not ds.root.exists()
    assert create_dataset("synthetic", seed=4, image_size=96).root.name == "v3-s4-96px"
    with pytest.raises(ValueError, match="image_size"):
        create_dataset("synthetic", image_size="big")
    with pytest.raises(ValueError, match="seed"):
        create_dataset("synthetic", seed=-1)
    with pytest.raises(DataError, match="no category"):
        ds.samples("bottle")


def test_default_size_gives_tight_auroc_intervals():
    """560 good and 4 x 155 anomalous test images per category: after the quick preset's 10% few-shot
    split (15 per defect type to the generators) 560 anomalies are evaluated. The quick detector's
    typical cell sits near image AUROC 0.75 (median of the stability study), not 0.85 as v2 was
    sized for: v2's 320 + 320 gave a Hanley-McNeil 95% half-width of 3.8 points there (measured
    per-image bootstrap: median 3.6), past the +-3 of issue 9; v3's 560 + 560 give 2.8."""
    from benchmark.config import build_config
    from benchmark.split import n_few_shot

    def half_width(a: float, n_pos: int, n_neg: int) -> float:
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        return 1.96 * np.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))

    cfg = sy.SyntheticConfig()
    assert (cfg.n_test_good, cfg.n_test_defect) == (560, 155)
    few = n_few_shot(cfg.n_test_defect, build_config("quick").split.fraction)
    assert few == 15                                       # still few-shot for the generators
    n_pos = 4 * (cfg.n_test_defect - few)
    assert half_width(0.75, n_pos, cfg.n_test_good) == pytest.approx(0.02845, abs=5e-5)
    assert half_width(0.75, 320, 320) == pytest.approx(0.03765, abs=5e-5)   # v2, for the record
    assert n_few_shot(cfg.n_test_defect, 0.33) == 51 and cfg.n_test_defect - 51 >= 100   # the paper's 1/3
    assert sy.build_workers(cfg) >= 1 and sy.build_workers(sy.SyntheticConfig(**SMALL)) == 1


def test_parallel_build_writes_the_same_bytes(tmp_path):
    """Each image has its own seeded generator, so the process count must not change a byte."""
    cfg = sy.SyntheticConfig(seed=2, **SMALL)
    sy._build(tmp_path / "one", cfg, workers=1)
    sy._build(tmp_path / "two", cfg, workers=2)
    sy._build(tmp_path / "weave", cfg, ("weave",), workers=2)   # one category, its images split over both
    assert len(sy._image_chunks(sy.SyntheticConfig(), ("weave",))) == 1 + 6 + 4 * 2
    assert _files(tmp_path / "weave") == {k: v for k, v in _files(tmp_path / "one").items() if k.startswith("weave/")}
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(a) == len(sy.CATEGORIES) * (3 + 2) + sum(len(d) for d in sy.DEFECTS.values()) * 2 * 2
    assert a == b


def test_diffusion_baselines_preset_runs_on_v2_counts():
    """docs/diffusion_baselines.md was measured on data v2 (320 good, 88 per defect type). Its preset
    pins those counts; images are drawn per index (``make_sample`` takes no count), so v3's tree
    at these counts holds v2's images and that page's numbers are what the preset runs."""
    from benchmark.config import build_config

    syn = sy.SyntheticConfig.from_cfg(build_config("diffusion_baselines").dataset_cfg["synthetic"])
    assert (syn.n_test_good, syn.n_test_defect) == (320, 88)
    assert syn.tree_name() == "v3-s0-128px-n80-320-88"
    assert sy.SyntheticConfig.from_cfg(build_config("quick").dataset_cfg.get("synthetic", {})).tree_name() == "v3-s0-128px"
