"""The stability study's verdict: sample std over seeds against the issue-9 limits."""
import numpy as np
import pytest

from benchmark.studies.stability import LIMITS, format_table, summarise


def _rec(img, pix):
    return {"metrics": {"image_auroc": img, "pixel_auroc": pix}, "timings": {"total": 10.0}}


def test_summarise_sample_std_and_verdict():
    img = [0.80, 0.82, 0.84, 0.81, 0.83]          # std (ddof=1) = 1.58 points
    pix = [0.90, 0.95, 0.91, 0.92, 0.93]          # std = 1.92 points
    row = summarise([_rec(a, b) for a, b in zip(img, pix)], 5)
    assert row["image_auroc"] == pytest.approx(82.0)
    assert row["image_auroc_std"] == pytest.approx(np.sqrt(2.5))
    assert row["pixel_auroc_std"] == pytest.approx(np.std([90, 95, 91, 92, 93], ddof=1))
    assert row["pass"] and LIMITS == {"image_auroc": 2.0, "pixel_auroc": 3.0}
    wide = summarise([_rec(a, b) for a, b in zip([0.80, 0.85, 0.84, 0.81, 0.83], pix)], 5)
    assert wide["image_auroc_std"] > 2 and not wide["pass"]
    missing = summarise([_rec(a, b) for a, b in zip(img[:4], pix[:4])], 5)   # a seed failed
    assert not missing["pass"]
    text = format_table([{"category": "wood", "generator": "cutpaste", **row},
                         {"category": "wood", "generator": "crop_paste", **missing}], 5)
    assert "| wood | cutpaste | 5 | 82.0 ± 1.6 | 92.2 ± 1.9 | 10 | PASS |" in text
    assert "incomplete (4/5)" in text
    one = summarise([_rec(0.80, 0.90)], 1)   # --seeds 0: values without a std, and no FAIL
    assert format_table([{"category": "wood", "generator": "cutpaste", **one}], 1).splitlines()[-1] == \
        "| wood | cutpaste | 1 | 80.0 | 90.0 | 10 | no std (1 seed) |"


def test_vary_detector_or_data_splits_the_seed():
    from benchmark.config import CellConfig, ConfigError
    from benchmark.studies.stability import study_cells

    cells = [CellConfig("synthetic", "wood", "cutpaste", "unet", seed=s) for s in (3, 4, 5)]
    det = study_cells(cells, "detector", [3, 4, 5])
    assert [(s, c.seed, c.detector_seed) for s, c in det] == [(3, 3, None), (4, 3, 4), (5, 3, 5)]
    data = study_cells(cells, "data", [3, 4, 5])
    assert [(s, c.seed, c.detector_seed) for s, c in data] == [(3, 3, None), (4, 4, 3), (5, 5, 3)]
    assert all(c.split_seed is None for _, c in det + data)
    pairs = study_cells(cells, "pairs", [3, 4, 5])
    assert [(s, c.seed, c.split_seed, c.detector_seed) for s, c in pairs] == [(3, 3, None, None), (4, 4, 3, 3),
                                                                             (5, 5, 3, 3)]
    assert [c for _, c in study_cells(cells, "all", [3, 4, 5])] == cells
    with pytest.raises(ConfigError, match="--vary"):
        study_cells(cells, "nope", [3, 4, 5])


def test_header_names_the_recipe_under_study(tmp_path, capsys):
    """A study run with --set (e.g. a 3-U-Net ensemble) says so above its table: its numbers are
    not the default recipe's."""
    from benchmark.studies.stability import main

    main(["--jobs", "0", "--categories", "weave", "--results-dir", str(tmp_path), "--run", "k3",
          "--set", "detectors=unet", "--set", "detector_cfg.unet.ensemble=3"])
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("Stability of the quick preset, with detectors=unet; detector_cfg.unet.ensemble=3 over "
                           "seeds 0,1,2,3,4")


def test_vary_run_takes_the_ordinary_seed0_records(tmp_path):
    """A --vary run's seed-0 cells are the `all` run's cells (same hash): their records are copied
    from that run, not trained again, but only when made with the same thread count and device."""
    import json

    from benchmark import store
    from benchmark.record import CellRecord
    from benchmark.runner import plan
    from benchmark.studies.stability import reuse_base_records, study_cells, study_config

    kw = dict(categories="weave", generators="cutpaste,crop_paste", seeds="0,1", results_dir=str(tmp_path),
              sets=["detectors=unet"])
    base, vary = study_config(run="s", **kw), study_config(run="s-detector", **kw)
    ordinary = plan(base).cells
    cells = [c for _, c in study_cells(plan(vary).cells, "detector", vary.seeds)]

    def rec(c, **cfg):
        return CellRecord(hash=c.hash(), config={**c.to_dict(), **cfg}, status="ok",
                          metrics={"image_auroc": 0.7 + c.seed / 10},
                          eval={"label": [0, 1], "score": [0.2, 0.9]}).to_dict()

    by = {(c.generator, c.seed): c for c in ordinary}
    store.write_record(base.run_dir, rec(by["cutpaste", 0]))                 # seed 0, as the vary run plans it
    store.write_record(base.run_dir, rec(by["crop_paste", 0], threads=2))    # made with 2 threads: not it
    store.write_record(base.run_dir, rec(by["cutpaste", 1]))                 # seed 1 of `all`: another cell
    assert reuse_base_records(vary, "s", cells) == 1
    copied = {r["hash"]: r for r in store.load_records(vary.run_dir)}
    assert list(copied) == [by["cutpaste", 0].hash()]
    assert json.loads(store.record_path(vary.run_dir, by["cutpaste", 0].hash()).read_text()) == \
        json.loads(store.record_path(base.run_dir, by["cutpaste", 0].hash()).read_text())
    assert reuse_base_records(vary, "s", cells) == 0                         # already there
    assert reuse_base_records(vary, "no_such_run", cells) == 0


def test_values_come_in_seed_order(tmp_path):
    """`--values` prints "each seed's values": they must be in seed order, not in the order the
    record files are read (hash order), or a doc quoting "seed 4 is the low one" names the wrong seed."""
    from benchmark import store
    from benchmark.record import CellRecord
    from benchmark.runner import plan
    from benchmark.studies.stability import study_config, table

    cfg = study_config(run="o", categories="weave", generators="cutpaste", seeds="0,1,2,3,4",
                       results_dir=str(tmp_path), sets=["detectors=unet"])
    cells = plan(cfg).cells
    assert [c.hash() for c in cells] != sorted(c.hash() for c in cells)   # file order is not seed order
    for c in cells:
        store.write_record(cfg.run_dir, CellRecord(hash=c.hash(), config=c.to_dict(), status="ok",
                                                   metrics={"image_auroc": 0.5 + c.seed / 100,
                                                            "pixel_auroc": 0.9 - c.seed / 100},
                                                   eval={"label": [0, 1], "score": [0.2, 0.9]},
                                                   timings={"total": 1.0}).to_dict())
    rows, _ = table(cfg)
    assert rows[0]["image_auroc_all"] == [50.0, 51.0, 52.0, 53.0, 54.0]
    assert rows[0]["pixel_auroc_all"] == [90.0, 89.0, 88.0, 87.0, 86.0]
