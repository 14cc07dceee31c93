"""Tables, report and comparisons from hand-made records: intervals, failed cells, honest averages."""
import math
import zlib

import numpy as np
import pytest
from scipy import stats as sps

from benchmark import compare, stats, tables
from benchmark.config import ConfigError
from benchmark.metrics import auroc as exact_auroc


def make_record(category="a", generator="g", detector="unet", seed=0, *, dataset="ds", status="ok",
                n_good=30, n_bad=20, shift=1.0, rng_seed=None, pixels=8, metrics=None, cfg=None):
    """A record as runner/cell write it, with per-image scores whose AUROC we know."""
    key = zlib.crc32(f"{category}/{generator}/{seed}".encode())  # stable across processes (not hash())
    rng = np.random.default_rng(key if rng_seed is None else rng_seed)
    labels = np.r_[np.zeros(n_good, int), np.ones(n_bad, int)]
    score = labels * shift + rng.normal(0, 1, labels.size)
    config = {"dataset": dataset, "category": category, "generator": generator, "detector": detector,
              "seed": seed, "image_size": 64, "eval_size": 64, "detector_cfg": {"steps": 10, "base_width": 8},
              "generator_cfg": {}, "device": "cpu", "threads": 1, **(cfg or {})}
    rec = {"hash": f"{dataset}-{category}-{generator}-{detector}-{seed}-{status}", "config": config,
           "status": status}
    if status != "ok":
        rec["error"] = "RuntimeError: boom"
        return rec
    plab = np.zeros((labels.size, pixels), int)
    plab[labels == 1, : pixels // 2] = 1
    pscore = plab * shift + rng.normal(0, 1, plab.shape)
    rec["eval"] = {"image_id": [f"img{i}" for i in range(labels.size)], "label": labels.tolist(),
                   "defect_type": ["good" if y == 0 else "cut" for y in labels], "score": score.tolist(),
                   "pixel_sample": {"k": pixels, "label": plab.tolist(), "score": pscore.tolist()}}
    m = {"image_auroc": exact_auroc(labels, score), "pixel_auroc": exact_auroc(plab, pscore) + 0.01,
         "image_ap": stats.curve_value(labels, score, "ap"), "pixel_ap": 0.5, "pixel_aupro": 0.6,
         "image_f1max": stats.curve_value(labels, score, "f1max"), "pixel_f1max": None}
    m.update(metrics or {})
    rec["metrics"] = m
    return rec


def grid(categories=("a", "b", "c"), generators=("g", "h"), seeds=(0,), **kw):
    return [make_record(c, g, seed=s, **kw) for c in categories for g in generators for s in seeds]


def test_aggregate_t_interval_over_seeds():
    recs = [make_record("a", "g", seed=s, metrics={"image_auroc": v}) for s, v in enumerate([0.7, 0.8, 0.9])]
    st = tables.aggregate(recs, "image_auroc")
    h = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert st.interval == "t" and st.n_ok == 3
    assert st.mean == pytest.approx(0.8) and st.lo == pytest.approx(0.8 - h) and st.hi == pytest.approx(0.8 + h)
    assert tables.format_stat(st) == f"80.0 ±{100 * h:.1f}"


def test_aggregate_one_seed_bootstrap_matches_stats():
    r = make_record("a", "g")
    st = tables.aggregate([r], "image_auroc")
    e = r["eval"]
    rng = tables.boot_rng(r)
    ref = stats.bootstrap_interval(e["label"], e["score"], "image_auroc", n_boot=1000, seed=rng)
    assert st.interval == "bootstrap" and (st.mean, st.lo, st.hi) == pytest.approx(ref, abs=1e-12)
    # pixel interval: from the pixel subsample, shifted onto the exact recorded value (+0.01 here)
    sp = tables.aggregate([r], "pixel_auroc")
    ps = e["pixel_sample"]
    est, lo, hi = stats.bootstrap_interval(ps["label"], ps["score"], "pixel_auroc", strata=e["label"],
                                           seed=tables.boot_rng(r))
    assert sp.mean == pytest.approx(est + 0.01) and sp.lo == pytest.approx(lo + 0.01) and sp.hi == pytest.approx(hi + 0.01)
    # AUPRO cannot be resampled from scores: value without an interval
    sa = tables.aggregate([r], "pixel_aupro")
    assert sa.interval == "none" and tables.format_stat(sa) == "60.0"


def test_aggregate_no_interval_when_scores_do_not_give_the_recorded_metric():
    r = make_record("a", "g", metrics={"image_auroc": 0.5})  # e.g. LOCO's per-group average
    st = tables.aggregate([r], "image_auroc")
    assert st.interval == "none" and math.isnan(st.lo) and st.mean == 0.5


def test_failed_cell_shown_and_average_over_complete_categories():
    recs = grid() + [make_record("d", "g"), make_record("d", "h", status="failed")]
    t = tables.build_table(recs, "ds", "auroc", run="quick")
    assert t.frame.at["d", "h"] == "failed"
    assert t.eligible == ["a", "b", "c"]
    avg_row = t.frame.index[-1]
    assert avg_row == "average (3/4 categories)†"
    assert any("left out: d" in n for n in t.notes)
    # the average is over a, b, c only, for every column alike
    mean_g = np.mean([t.stats[(c, "g", "image_auroc")].mean for c in "abc"])
    assert t.stats[("average", "g", "image_auroc")].mean == pytest.approx(mean_g)
    assert "stratified per-image bootstrap" in t.title and "run quick" in t.title
    assert "unet: base_width=8, steps=10" in t.title and "1 seed (0)" in t.title and "image 64 px" in t.title
    md = t.markdown()
    assert "failed" in md and "†" in md


def test_missing_category_gives_partial_average_and_full_one_otherwise():
    recs = grid() + [make_record("d", "g")]  # h never ran on d
    t = tables.build_table(recs, "ds", "auroc")
    assert t.frame.at["d", "h"] == "(–, –)" and t.frame.index[-1].startswith("average (3/4")
    full = tables.build_table(grid(), "ds", "auroc")
    assert full.frame.index[-1] == "average" and not any("†" in n for n in full.notes)


def test_partly_failed_seeds_and_t_interval_header():
    recs = grid(seeds=(0, 1, 2)) + [make_record("a", "g", seed=3, status="failed")]
    t = tables.build_table(recs, "ds", "ap")
    img, pix = t.frame.at["a", "g"][1:-1].split(", ")
    assert img.endswith(" (1 failed)") and "±" in img and pix == "50.0 ±0.0 (1 failed)"
    assert "t-interval over seeds" in t.title and "4 seeds" in t.title
    assert t.eligible == ["b", "c"]  # a has a failed seed in column g


def test_duplicate_config_refused_naming_both_files():
    recs = grid() + [make_record("a", "g", cfg={"image_size": 128})]
    recs[-1]["hash"] = "other"
    with pytest.raises(ConfigError, match=r"cells/ds-a-g-unet-0-ok\.json and cells/other\.json"):
        tables.build_table(recs, "ds", "auroc")


def test_different_configs_are_separate_columns():
    recs = grid(categories=("a",), generators=("g",)) + [make_record("a", "g", seed=1, cfg={"image_size": 128})]
    cols = tables.columns(recs, "ds")
    assert sorted(cols.records) == ["g [config 1]", "g [config 2]"]
    assert all(len(v) == 1 for v in cols.records.values()) and "image_size" in cols.notes[0]


def test_execution_fields_and_absent_fields_do_not_split_columns():
    # seed 0 written before generate_threads / detector_seed existed, seed 1 after: one column
    recs = [make_record("a", "g", seed=0), make_record("a", "g", seed=1, cfg={"generate_threads": 2, "detector_seed": None})]
    assert list(tables.columns(recs, "ds").records) == ["g"]
    recs.append(make_record("a", "g", seed=2, cfg={"detector_seed": 7}))  # a real setting still does
    assert sorted(tables.columns(recs, "ds").records) == ["g [config 1]", "g [config 2]"]


def test_columns_are_grouped_by_detector_with_the_unsupervised_column_first():
    recs = [make_record("a", g, d) for g, d in
            [("z", "unet"), ("none", "unet"), ("b", "anomalib:Padim"), ("none", "anomalib:Padim"), ("a", "unet")]]
    for order in (recs, recs[::-1]):  # the order the record files were read in does not matter
        assert list(tables.columns(order, "ds").records) == [
            "no augmentation / anomalib:Padim", "b / anomalib:Padim",
            "no augmentation / unet", "a / unet", "z / unet"]


def test_table_says_which_columns_ran_on_another_device_or_torch():
    def rec(g, seed, device, torch):
        r = make_record("a", g, seed=seed, cfg={"device": device})
        r["versions"] = {"torch": torch}
        return r

    same = [rec("g", s, "cpu", "2.14.1") for s in (0, 1)] + [rec("h", s, "cpu", "2.14.1") for s in (0, 1)]
    t = tables.build_table(same, "ds", "auroc")
    assert not any("devices" in n for n in t.notes) and tables.execution_note(tables.columns(same, "ds")) == ""
    gpu = [rec("g", s, "cpu", "2.14.1") for s in (0, 1)] + [rec("h", s, "cuda", "2.11.0") for s in (0, 1)]
    t = tables.build_table(gpu, "ds", "auroc")
    assert ("cells ran on different devices or torch versions: cpu, torch 2.14.1: g | cuda, torch 2.11.0: h"
            in t.notes)
    # a column whose own seeds ran in two places is named as mixed
    mixed = gpu[:3] + [rec("h", 1, "cpu", "2.14.1")]
    assert tables.execution_note(tables.columns(mixed, "ds")) == (
        "cells ran on different devices or torch versions: cpu, torch 2.14.1: g | "
        "mixed (cpu, torch 2.14.1 / cuda, torch 2.11.0): h")
    assert "mixed (cpu, torch 2.14.1 / cuda, torch 2.11.0): h" in tables.build_table(mixed, "ds", "auroc").markdown()


def test_header_says_whether_the_diffusion_generators_share_start_and_budget():
    prior = {"prior": {"steps": 400}, "steps": 180, "ddim_steps": 8}
    recs = [make_record("a", g, cfg={"generator_cfg": dict(prior)}) for g in ("dhdiff", "anomalydiffusion")]
    recs.append(make_record("a", "cutpaste"))                 # not a diffusion generator: not listed
    title = tables.build_table(recs, "ds", "auroc").title
    assert title.endswith("; diffusion generators, same start and budget: anomalydiffusion, dhdiff: "
                          "one tiny prior (400 pretraining steps), 180 optimiser + 8 sampling steps")
    recs[0] = make_record("a", "dhdiff", cfg={"generator_cfg": {"steps": 180, "ddim_steps": 8}})   # from scratch
    recs.append(make_record("a", "realnet_sdas", cfg={"generator_cfg": {"scale": "sd", "sd_path": "/m/sd15",
                                                                          "steps": 180, "ddim_steps": 8}}))
    assert tables.diffusion_budget(recs) == (
        "diffusion generators: realnet_sdas: checkpoint /m/sd15, 180 optimiser + 8 sampling steps | dhdiff: from "
        "scratch, 180 optimiser + 8 sampling steps | anomalydiffusion: one tiny prior (400 pretraining steps), 180 "
        "optimiser + 8 sampling steps")
    assert tables.diffusion_budget([make_record("a", "cutpaste")]) == ""


def test_write_tables_kinds(tmp_path):
    out = tables.write_tables(grid(), tmp_path, run="r")
    assert sorted(out) == ["ds_ap", "ds_aupro", "ds_auroc", "ds_f1max"]  # no sPRO without LOCO metrics
    assert (tmp_path / "ds_auroc_numbers.csv").is_file() and (tmp_path / "ds_aupro.md").is_file()
    f1 = out["ds_f1max"].frame.at["a", "g"]
    assert f1.startswith("(") and f1.endswith(", –)")  # image F1-max with its interval; no pixel F1-max recorded
    assert "image F1-max" in out["ds_f1max"].title


def test_method_summary_feeds_bars_with_table_intervals():
    recs = grid(seeds=(0, 1))
    recs[0]["metrics"]["pixel_auroc"] = None  # category a lacks a pixel value: out of the auroc average
    s = tables.method_summary(recs, "image_auroc")
    t = tables.build_table(recs, "ds", "auroc")
    assert t.eligible == ["b", "c"] and set(s["n_categories"]) == {2}
    assert t.frame.at["a", "g"].endswith(" (1 n/a))") and any("(k n/a)" in n for n in t.notes)
    for _, row in s.iterrows():
        st = t.stats[("average", row["method"], "image_auroc")]
        assert (row["mean"], row["lo"], row["hi"]) == (st.mean, st.lo, st.hi)


def test_compare_known_difference_and_none():
    good = [make_record(c, "good", seed=s, shift=2.0, rng_seed=10 * s + i) for i, c in enumerate("abc") for s in (0, 1)]
    bad = [make_record(c, "bad", seed=s, shift=0.3, rng_seed=10 * s + i) for i, c in enumerate("abc") for s in (0, 1)]
    df = compare.compare_runs(good + bad, "good", "bad", metrics=("image_auroc", "pixel_auroc", "pixel_aupro"))
    boot = df[(df.metric == "image_auroc") & (df.test.str.startswith("paired"))].iloc[0]
    truth = np.mean([r1["metrics"]["image_auroc"] - r2["metrics"]["image_auroc"] for r1, r2 in zip(good, bad)])
    assert boot["delta"] == pytest.approx(truth) and boot["lo"] < truth < boot["hi"] and boot["p"] < 0.01
    assert (boot["n_cells"], boot["n_categories"], boot["n_seeds"]) == (6, 3, 2)
    delong = df[df.test == "DeLong"].iloc[0]
    assert delong["delta"] == pytest.approx(truth) and delong["p"] < 0.01
    assert list(df[df.metric == "pixel_aupro"].test) == ["paired t over 6 cells", "none"]
    cells = df[(df.metric == "image_auroc") & (df.test == "paired t over 6 cells")].iloc[0]
    assert cells["delta"] == pytest.approx(truth) and cells["p"] < 0.001
    # A against itself under another name: no difference, p = 1
    same = [dict(r, config=dict(r["config"], generator="twin"), hash=r["hash"] + "t") for r in good]
    df0 = compare.compare_runs(good + same, "good", "twin", metrics=("image_auroc",))
    assert df0.iloc[0]["delta"] == 0 and df0.iloc[0]["p"] == 1.0
    md = compare.compare_markdown(df, run="r")
    assert "good − bad" in md and "DeLong" in md


def test_compare_refuses_other_eval_images():
    a = make_record("a", "g")
    b = make_record("a", "h")
    b["eval"]["image_id"][0] = "elsewhere"
    with pytest.raises(ConfigError, match="not evaluated on the same images"):
        compare.compare_runs([a, b], "g", "h")
    b = make_record("a", "h")
    b["eval"]["pixel_sample"]["score"] = b["eval"]["pixel_sample"]["score"][:-1]
    with pytest.raises(ConfigError, match=r"cells/ds-a-h-unet-0-ok\.json: eval.pixel_sample label \(50, 8\)"):
        compare.compare_runs([a, b], "g", "h", metrics=("pixel_auroc",))
    c = make_record("a", "h", cfg={"eval_size": 128})
    with pytest.raises(ConfigError, match="differ in eval_size"):
        compare.compare_runs([a, c], "g", "h")


def test_ranking_marks_ties_with_best():
    recs = []
    for i, c in enumerate("abcd"):
        recs.append(make_record(c, "best", shift=3.0, rng_seed=i, n_good=60, n_bad=60))
        recs.append(make_record(c, "twin", shift=3.0, rng_seed=i + 100, n_good=60, n_bad=60))
        recs.append(make_record(c, "poor", shift=0.0, rng_seed=i + 200, n_good=60, n_bad=60))
    r = compare.ranking(recs, "ds", "image_auroc")
    assert list(r["method"])[2] == "poor" and set(r["method"][:2]) == {"best", "twin"}
    assert r["same_as_best"].tolist() == [True, True, False]
    assert r["p_holm"].iloc[2] < 0.01
    p_twin, p_poor = r["p"].iloc[1], r["p"].iloc[2]
    assert r["p_holm"].iloc[2] == pytest.approx(min(1, 2 * p_poor))  # smallest of 2: times 2
    assert r["p_holm"].iloc[1] == pytest.approx(min(1, max(p_twin, 2 * p_poor)))
    assert r["delta_vs_best"].iloc[1:].to_numpy() == pytest.approx(r["tested_delta"].iloc[1:].to_numpy())
    md = compare.ranking_markdown(r, "ds", "image_auroc")
    assert "Holm" in md and "| 3 | poor |" in md


def seed_flipping_records():
    """A beats B clearly on the images of seeds 0 and 2, B beats A clearly on seed 1: a sure
    difference per trained model, no sure difference over training seeds."""
    recs = []
    for s, (sa, sb) in enumerate([(3.0, 0.5), (0.5, 3.0), (3.0, 0.5)]):
        recs.append(make_record("a", "A", seed=s, shift=sa, rng_seed=s, n_good=60, n_bad=60))
        recs.append(make_record("a", "B", seed=s, shift=sb, rng_seed=s + 50, n_good=60, n_bad=60))
    return recs


def test_seed_variation_is_tested_over_cells_not_only_over_images():
    recs = seed_flipping_records()
    df = compare.compare_runs(recs, "A", "B", metrics=("image_auroc", "pixel_aupro"))
    per_cell = [recs[2 * s]["metrics"]["image_auroc"] - recs[2 * s + 1]["metrics"]["image_auroc"] for s in range(3)]
    cells = df[(df.metric == "image_auroc") & (df.test == "paired t over 3 cells")].iloc[0]
    boot = df[(df.metric == "image_auroc") & df.test.str.startswith("paired bootstrap")].iloc[0]
    assert boot["p"] < 0.01  # the models of this run differ on these images ...
    assert cells["p"] == pytest.approx(sps.ttest_1samp(per_cell, 0).pvalue) and cells["p"] > 0.3  # ... seeds do not agree
    assert cells["lo"] < 0 < cells["hi"] and cells["delta"] == pytest.approx(boot["recorded_delta"])
    aupro = df[df.metric == "pixel_aupro"]
    assert list(aupro.test) == ["paired t over 3 cells", "none"] and aupro.iloc[0]["p"] == 1.0  # all 0.6
    r = compare.ranking(recs, "ds", "image_auroc")
    assert list(r.method) == ["A", "B"] and r.attrs["decided_by"] == "cells"
    assert r["p_holm"].iloc[1] < 0.01 and r["p_cells_holm"].iloc[1] > 0.3 and r["same_as_best"].iloc[1]
    md = compare.ranking_markdown(r, "ds", "image_auroc")
    assert "by p cells" in md and "| 2 | B |" in md and md.rstrip().endswith("| yes |")
    one = compare.ranking(recs[:2], "ds", "image_auroc")  # one cell: only the image test can decide
    assert one.attrs["decided_by"] == "images" and not one["same_as_best"].iloc[1]


def test_compare_cli_prints_markdown(tmp_path, capsys):
    import argparse

    from benchmark import store
    from benchmark.config import RECORD_SCHEMA, CellConfig

    run_dir = tmp_path / "runs" / "r1"
    for g, shift in (("good", 2.0), ("bad", 0.2)):
        r = make_record("a", g, shift=shift, rng_seed=1)
        cfg = CellConfig(dataset="ds", category="a", generator=g, detector="unet", seed=0)
        r.update(config=cfg.to_dict(), hash=cfg.hash(), schema=RECORD_SCHEMA)
        store.write_record(run_dir, r)
    ap = argparse.ArgumentParser()
    compare.add_parser(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["compare", "r1", "good", "bad", "--metric", "image_auroc", "--results-dir",
                          str(tmp_path / "runs")])
    assert compare.run(args, None) == 0
    out = capsys.readouterr().out
    assert "r1: good − bad" in out and "| image_auroc | DeLong |" in out and "1 cell (1 category × 1 seed)" in out
    args = ap.parse_args(["compare", "r1", "good", "nope", "--results-dir", str(tmp_path / "runs")])
    assert compare.run(args, None) == 2
    assert "no successful cell of generator 'nope'" in capsys.readouterr().err
    args = ap.parse_args(["compare", "r1", "good", "bad", "--metric", "pixel_apx", "--results-dir",
                          str(tmp_path / "runs")])
    assert compare.run(args, None) == 2 and "--metric pixel_apx not in the records" in capsys.readouterr().err


def test_one_seed_average_row_is_bootstrap_of_the_category_mean():
    recs = grid(categories=("a", "b"), generators=("g",))
    t = tables.build_table(recs, "ds", "auroc")
    dists = []
    for r in recs:
        e = r["eval"]
        dists.append(stats.bootstrap_distribution(stats.Sample(e["label"], e["score"]), "auroc", 1000,
                                                  tables.boot_rng(r))[1])
    def draw(r):
        return tables.boot_rng(r).integers(1 << 30)

    # categories draw independently; the columns of one row draw the same images
    assert draw(recs[0]) != draw(recs[1]) and draw(make_record("a", "g")) == draw(make_record("a", "h"))
    lo, hi = np.quantile(np.mean(dists, axis=0), [0.025, 0.975])
    avg = t.stats[("average", "g", "image_auroc")]
    assert (avg.lo, avg.hi) == pytest.approx((lo, hi), abs=1e-12)
    assert avg.mean == pytest.approx(np.mean([r["metrics"]["image_auroc"] for r in recs]))
    # categories draw independently: the average's interval is narrower than either category's
    assert avg.hi - avg.lo < min(t.stats[(c, "g", "image_auroc")].hi - t.stats[(c, "g", "image_auroc")].lo
                                 for c in "ab")


def test_loco_spro_table_and_per_group_auroc_without_bootstrap(tmp_path):
    recs = [make_record(c, g, dataset="mvtec_loco", metrics={"pixel_spro@0.05": 0.4 + 0.1 * i, "image_auroc": 0.77,
                                                              "image_auroc_pooled": 0.7})
            for i, c in enumerate(("breakfast_box", "pushpins")) for g in ("g", "h")]
    out = tables.write_tables(recs, tmp_path)
    t = out["mvtec_loco_spro"]
    assert "AU-sPRO at FPR 0.05" in t.title and t.frame.at["pushpins", "g"] == "50.0"
    # the per-group image AUROC is not the AUROC of the stored pooled scores: no bootstrap interval
    assert out["mvtec_loco_auroc"].frame.at["pushpins", "g"].startswith("(77.0, ")


def test_generator_costs_count_each_set_once():
    from benchmark.report import generator_costs

    recs = []
    for det, (g, root, fit, gen) in [("unet", ("dhdiff", "s0", 100.0, 80.0)), ("ssn", ("dhdiff", "s0", 100.0, 80.0)),
                                     ("unet", ("dhdiff", "s1", 140.0, 60.0)), ("unet", ("dhdiff", "s2", 120.0, 90.0)),
                                     ("unet", ("cutpaste", "c0", 0.0, 2.0))]:
        r = make_record("a", g, detector=det, seed=int(root[1]))
        r.update(generated_set=root, generator_timings={"fit_s": fit, "generate_s": gen, "threads": 2})
        recs.append(r)
    recs.append(make_record("a", "crop_paste"))  # no timings (an older cached set): left out
    df = generator_costs(recs, "ds").set_index("generator")
    assert list(df.index) == ["cutpaste", "dhdiff"]
    assert df.loc["dhdiff", "sets"] == 3  # s0 serves two detectors, counted once
    assert (df.loc["dhdiff", "fit s (median)"], df.loc["dhdiff", "generate s (median)"]) == (120.0, 80.0)
    assert df.loc["dhdiff", "total s (median)"] == 200.0 and df.loc["dhdiff", "threads"] == "2"
    assert generator_costs(recs, "other").empty


def test_build_report_end_to_end_from_stored_records(tmp_path):
    from benchmark import store
    from benchmark.config import RECORD_SCHEMA, CellConfig
    from benchmark.report import build_report

    run_dir = tmp_path / "r2"
    for c in ("bottle", "carpet", "wood"):
        for g, shift in (("cutpaste", 2.0), ("none", 0.5)):
            status = "failed" if (c, g) == ("wood", "none") else "ok"
            r = make_record(c, g, shift=shift, status=status)
            cfg = CellConfig(dataset="mvtec_ad", category=c, generator=g, detector="unet", seed=0)
            r.update(config=cfg.to_dict(), hash=cfg.hash(), schema=RECORD_SCHEMA)
            store.write_record(run_dir, r)
    shown = build_report(run_dir, figures=True)
    md = shown["mvtec_ad_auroc"]
    assert "| wood " in md and "failed" in md and "average (2/3 categories)†" in md
    assert "average over the same 2 categories (from the paper's rows)" in md  # bottle, carpet only
    assert "(97.3, 94.7)" in md  # DRAEM Table II, mean of its bottle and carpet rows
    assert "98.7‡" in md  # DRAEM's printed pixel AUROC average is not the mean of its rows
    rank = shown["mvtec_ad_ranking"]
    assert "Holm" in rank and "| 1 | cutpaste |" in rank and "| 2 | no augmentation |" in rank
    assert (run_dir / "tables" / "mvtec_ad_aupro.md").is_file() and (run_dir / "tables" / "mvtec_ad_f1max.md").is_file()
    assert (run_dir / "figures" / "bars_image_auroc.png").is_file()
