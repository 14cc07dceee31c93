"""End to end on a fixture tree in the MVTec AD layout: grid -> records -> tables; resumable."""

import pytest

from benchmark import store
from benchmark.cell import run_cell
from benchmark.cli import main
from benchmark.config import build_config
from benchmark.runner import execute, plan
from tests.layouts import make_mvtec_ad_tree

TINY = ["detectors=unet", "detector_cfg.unet={base_width: 4, depth: 3, steps: 4, batch_size: 4}",
        "pairs_per_defect=3", "split.fraction=0.5", "image_size=32", "eval_size=32"]


@pytest.fixture()
def data_root(tmp_path):
    return make_mvtec_ad_tree(tmp_path / "mvtec", categories=("bottle", "carpet"), n_train=6, n_good=3,
                              defects={"broken": 4, "scratch": 4}, size=32)


def _cfg(tmp_path, data_root, **over):
    over = {"datasets": "mvtec_ad", "data_root": str(data_root), "results_dir": str(tmp_path / "runs"),
            "run": "t", "generators": "cutpaste", "seeds": "0", "jobs": 1, **over}
    cfg = build_config("quick", None, over, TINY)
    cfg.cache_dir = str(tmp_path / "cache")
    return cfg


def test_grid_runs_records_and_resumes(tmp_path, data_root):
    cfg = _cfg(tmp_path, data_root, seeds="0,1")
    p, recs = execute(cfg)
    assert len(p.cells) == 4 and len(recs) == 4  # 2 categories x 1 generator x 1 detector x 2 seeds
    assert all(r["status"] == "ok" for r in recs), [r.get("traceback") for r in recs]
    r = recs[0]
    for key in ("config", "hash", "metrics", "timings", "versions"):
        assert key in r
    assert 0.0 <= r["metrics"]["image_auroc"] <= 1.0 and 0.0 <= r["metrics"]["pixel_ap"] <= 1.0
    # evaluation never contains a few-shot image: 4 anomalies per defect -> 2 evaluated each
    assert r["split"] == {"train_normals": 6, "few_shot": 4, "eval_normals": 3, "eval_anomalies": 4}
    assert r["n_pairs"] == 6
    # weight-free generation quality: cutpaste edits a normal only inside its mask
    q = {row["defect_type"]: row for row in r["quality"]}
    assert set(q) == {"broken", "scratch"} and q["broken"]["binariness"] == 1.0
    assert q["broken"]["outside_change"] == 0.0 and q["broken"]["area_mean_gen"] > 0
    # a rerun plans nothing
    p2, recs2 = execute(cfg)
    assert len(p2.cells) == 4 and p2.todo == [] and recs2 == []
    # a lost record is the only cell that runs again
    files = sorted(store.cells_dir(cfg.run_dir).glob("*.json"))
    files[0].unlink()
    assert len(plan(cfg).todo) == 1


def test_same_seed_same_record_metrics(tmp_path, data_root):
    cfg = _cfg(tmp_path, data_root, categories="bottle")
    c = plan(cfg).cells[0]
    a = run_cell(c, tmp_path / "cacheA")
    b = run_cell(c, tmp_path / "cacheB")
    assert a["status"] == b["status"] == "ok"
    assert a["metrics"] == b["metrics"] and a["eval"]["score"] == b["eval"]["score"]
    c2 = run_cell(c, tmp_path / "cacheA")  # generated set now read from the cache
    assert c2["generated_from_cache"] is True and c2["metrics"] == a["metrics"]
    assert c2["quality"] == a["quality"]  # sources survive the cache


def test_generator_cost_is_kept_with_the_cached_set(tmp_path, data_root):
    import torch

    cfg = _cfg(tmp_path, data_root, categories="bottle")
    c = plan(cfg).cells[0]
    first = run_cell(c, tmp_path / "cache")
    again = run_cell(c, tmp_path / "cache")  # reads the set: its cost is the one measured when it was made
    assert (first["generated_from_cache"], again["generated_from_cache"]) == (False, True)
    t = first["generator_timings"]
    assert set(t) == {"fit_s", "generate_s", "threads"} and t["threads"] == (c.generate_threads or torch.get_num_threads())
    assert again["generator_timings"] == t and again["timings"]["generate"] < t["fit_s"] + t["generate_s"] + 1


def test_jobs_run_cells_in_processes_with_the_same_records(tmp_path, data_root):
    """``jobs: 2`` runs cells in two spawned processes; with the same thread count each record's
    numbers equal the sequential run's, and the run resumes like any other."""
    seq = _cfg(tmp_path, data_root, seeds="0,1", threads=1, generate_threads=1, run="seq")
    par = _cfg(tmp_path, data_root, seeds="0,1", threads=1, generate_threads=1, run="par", jobs=2)
    par.cache_dir = str(tmp_path / "cache_par")
    _, a = execute(seq)
    _, b = execute(par)
    assert len(a) == len(b) == 4 and all(r["status"] == "ok" for r in a + b)
    assert not any(r["generated_from_cache"] for r in a)
    assert all(r["generated_from_cache"] for r in b)   # the sets were made first, in this process
    by = {r["hash"]: r for r in a}
    for r in b:
        assert r["threads"] == 1 and r["config"]["generate_threads"] == 1
        assert r["metrics"] == by[r["hash"]]["metrics"]
        assert r["eval"]["score"] == by[r["hash"]]["eval"]["score"]
    assert len(store.load_records(par.run_dir)) == 4 and execute(par)[0].todo == []


def _two_detector_cfg(tmp_path, data_root, **over):
    """CutPaste and Crop&Paste under two detectors: four cells, two generated sets."""
    sets = [s for s in TINY if not s.startswith("detectors=")] + [
        "detectors=[unet, feature_segmenter]",
        "detector_cfg.feature_segmenter={backbone_weights: none, width: 4, steps: 2, batch_size: 2}"]
    over = {"datasets": "mvtec_ad", "data_root": str(data_root), "results_dir": str(tmp_path / "runs"),
            "categories": "bottle", "generators": "cutpaste,crop_paste", "seeds": "0", "threads": 1, "jobs": 2, **over}
    cfg = build_config("quick", None, over, sets)
    cfg.cache_dir = str(tmp_path / "cache")
    return cfg


def test_pool_makes_each_set_once_as_a_task_before_its_cells(tmp_path, data_root, monkeypatch):
    """generate_threads <= threads: each generated set is a pool task of its own, made once for
    all the cells that read it (here two detectors), before them; none is made in this process."""
    import io

    from rich.console import Console

    import benchmark.cell

    here = []
    monkeypatch.setattr(benchmark.cell, "generate_only", lambda c, *a, **k: here.append(c))   # this process only
    cfg = _two_detector_cfg(tmp_path, data_root, generate_threads=1, run="pool")
    log = io.StringIO()
    _, recs = execute(cfg, Console(file=log, width=200))
    assert here == [] and len(recs) == 4 and all(r["status"] == "ok" for r in recs), recs
    assert all(r["generated_from_cache"] for r in recs)   # each set was made before its cells
    lines = log.getvalue().splitlines()
    assert [ln.split(" after ")[0] for ln in lines if ln.startswith("generated sets (1 thread each): ")] == \
        ["generated sets (1 thread each): 1/2", "generated sets (1 thread each): 2/2"]
    assert sum(ln.startswith("cells (2 processes): ") for ln in lines) == 4


class _FakePool:
    """A stand-in for the process pool: ``submit`` only queues, the patched ``wait`` runs the
    oldest queued task (None: as if another process had recorded the cell), and every step is
    logged. ``die_on_set``: the first set's worker dies, which breaks the pool for what follows."""

    def __init__(self, die_on_set: bool = False):
        self.queue, self.events, self.die_on_set, self.broken = [], [], die_on_set, False

    def __call__(self, *a, **k):   # the runner constructs the pool
        return self

    def submit(self, fn, cell, *args):
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        if self.broken:
            raise BrokenProcessPool("A child process terminated abruptly, the process pool is not usable anymore")
        f = Future()
        self.queue.append((f, fn.__name__, cell["generator"]))
        self.events.append(("queued", fn.__name__, cell["generator"]))
        return f

    def wait(self, fs, return_when=None):
        from concurrent.futures.process import BrokenProcessPool

        f, name, gen = self.queue.pop(0)
        self.events.append(("done", name, gen))
        if self.die_on_set and name == "_pool_set":
            self.broken = True
            f.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly"))
        else:
            f.set_result(None)
        return {f}, set(fs) - {f}

    def shutdown(self, **k):
        pass


def test_pool_queues_a_cell_only_once_its_set_is_made(tmp_path, data_root, monkeypatch):
    """A cell queued before its set is made would hold a worker waiting on the set's lock while a
    core idles: the pool gets every set first and each cell when its set is done."""
    import benchmark.runner as runner

    pool = _FakePool()
    monkeypatch.setattr(runner, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(runner, "wait", pool.wait)
    runner.execute(_two_detector_cfg(tmp_path, data_root, generate_threads=1, run="fake"))
    events = pool.events
    assert events[:2] == [("queued", "_pool_set", "cutpaste"), ("queued", "_pool_set", "crop_paste")]
    assert sum(e[1] == "_pool_set" for e in events) == 4   # each set queued once and done once
    for i, (what, name, gen) in enumerate(events):
        if (what, name) == ("queued", "_pool_cell"):
            assert ("done", "_pool_set", gen) in events[:i], (gen, events)
    assert sum(e == ("done", "_pool_cell", g) for e in events for g in ("cutpaste", "crop_paste")) == 4


def test_a_worker_dying_on_a_set_is_recorded_in_every_cell_it_stops(tmp_path, data_root, monkeypatch):
    """A set's worker that dies breaks the pool: each cell that can no longer run gets a failed
    record naming why (a rerun retries them), and the run ends normally instead of raising."""
    import benchmark.runner as runner

    pool = _FakePool(die_on_set=True)
    monkeypatch.setattr(runner, "ProcessPoolExecutor", pool)
    monkeypatch.setattr(runner, "wait", pool.wait)
    cfg = _two_detector_cfg(tmp_path, data_root, generate_threads=1, run="dies")
    _, recs = runner.execute(cfg)
    assert len(recs) == 4 and all(r["status"] == "failed" and r["error"].startswith("BrokenProcessPool: ")
                                  for r in recs)
    assert {r["hash"] for r in store.load_records(cfg.run_dir)} == {r["hash"] for r in recs}
    assert len(plan(cfg).todo) == 4


def test_sets_with_more_threads_than_a_cell_are_made_here_first(tmp_path, data_root, monkeypatch):
    """generate_threads > threads: two such sets at once would oversubscribe the cores, so they are
    made in this process, one after another, before the pool starts."""
    import benchmark.cell

    here = []
    real = benchmark.cell.generate_only
    monkeypatch.setattr(benchmark.cell, "generate_only", lambda c, *a, **k: (here.append(c), real(c, *a, **k))[1])
    cfg = _two_detector_cfg(tmp_path, data_root, generate_threads=2, run="first")
    _, recs = execute(cfg)
    assert sorted((c.generator, c.detector, c.generate_threads) for c in here) == [
        ("crop_paste", d, 2) for d in ("feature_segmenter", "unet")] + [("cutpaste", d, 2) for d in ("feature_segmenter", "unet")]
    assert len(recs) == 4 and all(r["generated_from_cache"] for r in recs)


def test_failed_cell_is_recorded_and_others_finish(tmp_path, data_root):
    # an unreadable image in one category fails that cell only, naming the file
    bad = data_root / "carpet" / "train" / "good" / "000.png"
    bad.write_bytes(b"not a png")
    cfg = _cfg(tmp_path, data_root)
    _, recs = execute(cfg)
    by_cat = {r["config"]["category"]: r for r in recs}
    assert by_cat["bottle"]["status"] == "ok"
    assert by_cat["carpet"]["status"] == "failed" and str(bad) in by_cat["carpet"]["error"]
    assert "fit" not in by_cat["carpet"]["timings"]  # failed before any training
    assert not store.is_done(cfg.run_dir, by_cat["carpet"]["hash"])  # a rerun retries it


def test_cli_writes_tables_and_reports(tmp_path, data_root, capsys):
    args = ["--dataset", "mvtec_ad", "--data-root", str(data_root), "--results-dir", str(tmp_path / "runs"),
            "--run", "cli", "--generators", "cutpaste,none", "--jobs", "1"] + sum((["--set", s] for s in TINY), []) + \
           ["--set", f"cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    cap = capsys.readouterr()
    out = cap.out
    assert "bottle" in out and "carpet" in out and "average" in out and "no augmentation" in out
    # not a terminal: one progress line per finished cell (rich's live bar would print nothing till the end)
    assert [ln.split(" after ")[0] for ln in cap.err.splitlines() if ln.startswith("cells: ")] == \
        [f"cells: {i}/12" for i in range(1, 13)]  # 2 categories x 2 generators x 3 seeds
    tdir = tmp_path / "runs" / "cli" / "tables"
    md = (tdir / "mvtec_ad_auroc.md").read_text()
    # the paper's numbers for the same categories sit beside ours, labelled as published
    assert "published: Ours (Table II)" in md and "(100.0, 99.6)" in md  # bottle, paper Table II
    pub = (tdir / "mvtec_ad_auroc_published.csv").read_text()
    assert "bottle" in pub and "carpet" in pub and "zipper" not in pub
    assert (tdir / "mvtec_ad_ap.csv").is_file() and (tdir / "mvtec_ad_auroc.tex").is_file()
    # `report` rebuilds identical tables from the records alone
    (tdir / "mvtec_ad_auroc.md").unlink()
    assert main(["report", str(tmp_path / "runs" / "cli")]) == 0
    assert (tdir / "mvtec_ad_auroc.md").read_text() == md


def test_default_run_without_weights_stops_before_any_work(tmp_path, monkeypatch, capsys):
    """The quick preset's detector reads the ImageNet ResNet-50 (`make bench` builds it first);
    a bare `run_benchmark.py` without it stops at planning with one line naming `make weights`,
    before any cache or run folder is made (`runner.plan` checks weights before opening a data set)."""
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(tmp_path / "no_weights"))
    assert main(["--results-dir", str(tmp_path / "runs"), "--set", f"cache_dir={tmp_path / 'cache'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: detector_cfg.feature_segmenter.backbone_weights: ")
    assert "make weights" in err[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--generators", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "cutpaste" in err[0]
    assert main(["--dataset", "mvtec_ad", "--data-root", str(tmp_path / "no" / "such"), "--detectors", "unet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "no" / "such") in err[0]


@pytest.mark.parametrize("dataset", ["mvtec_loco", "visa", "mpdd"])
def test_cells_on_other_layouts(tmp_path, dataset):
    import tests.layouts as L

    make = {"mvtec_loco": lambda r: L.make_mvtec_loco_tree(r, n_train=6, n_good=3, size=32),
            "visa": lambda r: L.make_visa_tree(r, n_train=6, n_good=3, n_bad=4, size=32),
            "mpdd": lambda r: L.make_mpdd_tree(r, n_train=6, n_good=3, size=32)}[dataset]
    root = make(tmp_path / dataset)
    cfg = _cfg(tmp_path, root, datasets=dataset)
    cell = plan(cfg).cells[0]
    rec = run_cell(cell, tmp_path / "cache")
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert 0 <= m["pixel_auroc"] <= 1
    if dataset == "mvtec_loco":  # groups scored separately against all good images, then averaged
        assert {"image_auroc_logical", "image_auroc_structural", "pixel_spro@0.05"} <= set(m)
        assert m["image_auroc"] == pytest.approx((m["image_auroc_logical"] + m["image_auroc_structural"]) / 2)
        assert 0 <= m["pixel_spro@0.05"] <= 1


def test_samples_command_writes_a_grid(tmp_path, data_root, capsys):
    out = tmp_path / "grid.png"
    args = ["samples", "--generator", "crop_paste", "--dataset", "mvtec_ad", "--data-root", str(data_root),
            "--categories", "bottle", "--n", "3", "--out", str(out), "--set", "image_size=32",
            "--set", f"cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    import cv2
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 32
    assert main(["samples", "--generator", "nope"]) == 2


def test_mask_generators_refused_on_image_level_data(tmp_path):
    # in a grid: skipped with a message naming the generator, the other generators still run
    cfg0 = build_config("elpv", None, {"generators": "cutpaste,crop_paste", "results_dir": str(tmp_path / "r")},
                        TINY)
    p = plan(cfg0)
    assert {c.generator for c in p.cells} == {"cutpaste"}
    assert len(p.skipped) == 1 and "crop_paste" in p.skipped[0] and "image-level" in p.skipped[0]
    # run directly: the cell is refused with the same reason
    cfg = build_config("elpv", None, {"generators": "crop_paste", "results_dir": str(tmp_path / "r"),
                                      "categories": "mono"}, TINY)
    cfg.cache_dir = str(tmp_path / "cache")
    rec = run_cell(cfg.cell("elpv", "mono", "crop_paste", "unet", 0), cfg.cache_dir)
    assert rec["status"] == "failed" and "image-level" in rec["error"] and "crop_paste" in rec["error"]
    assert "fit" not in rec["timings"]


def test_interrupted_run_keeps_finished_cells(tmp_path, data_root, monkeypatch):
    import benchmark.runner as R

    cfg = _cfg(tmp_path, data_root)
    calls = []
    real = R.run_cell

    def flaky(c, *a, **k):
        calls.append(c.category)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the second cell
        return real(c, *a, **k)

    monkeypatch.setattr(R, "run_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg)
    assert len(store.load_records(cfg.run_dir)) == 1  # the finished cell is on disk, whole
    assert not list(store.cells_dir(cfg.run_dir).glob(".tmp-*"))
    monkeypatch.setattr(R, "run_cell", real)
    p, recs = execute(cfg)
    assert len(p.todo) == 1 and [r["config"]["category"] for r in recs] == [calls[1]]


def test_library_progress_bars_are_off_in_logs(tmp_path):
    """Into a file, tqdm bars (anomalib's coreset selection) would fill the log with carriage
    returns: the CLI turns them off before any library imports tqdm; a terminal keeps them."""
    import subprocess
    import sys

    code = ("import os, sys; os.environ.pop('TQDM_DISABLE', None)\n"
            "from benchmark.cli import main\n"
            "assert main(['list']) == 0\n"
            "from tqdm import tqdm\n"
            "print('bars off' if tqdm(range(3)).disable else 'bars on', file=sys.__stdout__)\n")
    with open(tmp_path / "log", "w") as log:
        out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "bars off"


def _sleep(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_stop_pool_ends_running_and_queued_cells_now():
    """What Ctrl-C does to a --jobs run: running workers are killed, queued cells never start."""
    import multiprocessing as mp
    import signal
    import time
    from concurrent.futures import ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from benchmark.runner import stop_pool

    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    running, queued = pool.submit(_sleep, 600), pool.submit(_sleep, 600)
    while not running.running():
        pass
    procs = list(pool._processes.values())
    stop_pool(pool)
    deadline = time.monotonic() + 5  # the pool's own thread may reap the killed worker first
    while any(p.exitcode is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.exitcode for p in procs] == [-signal.SIGKILL]
    # the queued cell never ran: cancelled, or (already handed to the dead worker) broken. The
    # pool's management thread marks a handed-over future broken only once it has seen the
    # worker die, so wait for that rather than race it (CI lost that race once).
    wait([queued], timeout=30)
    assert queued.done() and (queued.cancelled() or isinstance(queued.exception(), BrokenProcessPool))
