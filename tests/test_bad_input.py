"""Bad input and faults, as a new user and an adversary would produce them.

Every case either exits 2 with ONE line naming the file, field or value (no traceback, never a
silent exit 0), or, for a data fault found mid-grid, records a named cell failure; faults in
stored records and caches are named, moved aside or discarded, and recomputed.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmark import store
from benchmark.cli import main
from benchmark.config import build_config
from benchmark.runner import execute, plan
from tests.layouts import make_mvtec_ad_tree

TINY = ["detector_cfg.unet={base_width: 4, depth: 3, steps: 4, batch_size: 4}", "pairs_per_defect=3",
        "image_size=32", "eval_size=32", "split.fraction=0.5"]


@pytest.fixture()
def data_root(tmp_path):
    return make_mvtec_ad_tree(tmp_path / "mvtec", categories=("bottle", "carpet"), n_train=6, n_good=3,
                              defects={"broken": 4, "scratch": 4}, size=32)


def _args(tmp_path, data_root, *extra, sets=TINY, run="t"):
    out = ["--dataset", "mvtec_ad", "--data-root", str(data_root), "--results-dir", str(tmp_path / "runs"),
           "--run", run, "--generators", "cutpaste", "--detectors", "unet", "--categories", "bottle", "--seeds", "0",
           "--set", f"cache_dir={tmp_path / 'cache'}"]
    for s in sets:
        out += ["--set", s]
    return out + list(extra)


def _one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:") or ": error:" in ln]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return int(e.code)


# ----------------------------------------------------------------- refused before any work (exit 2)

CONFIG_CASES = [
    (["--set", "detector_cfg.unet.steps=abc"], ["detector_cfg.unet.steps", "'abc'"]),
    (["--set", "image_size=-5"], ["image_size", "-5"]),
    (["--set", "pairs_per_defect=0"], ["pairs_per_defect", "0"]),
    (["--set", "pairs_per_defect=-5"], ["pairs_per_defect", "-5"]),
    (["--set", "split.fraction=1.5"], ["split.fraction", "1.5"]),
    (["--set", "split.mode=odd"], ["split.mode", "odd"]),
    (["--device", "gpu"], ["device", "gpu"]),
    (["--set", "detector_cfg.uent.steps=5"], ["detector_cfg.uent", "unknown detector"]),
    (["--set", "detector_cfg.unet=5"], ["detector_cfg.unet", "mapping"]),
    (["--set", "detector_cfg.unet.stepz=5"], ["detector_cfg.unet", "'stepz'", "known:"]),
    (["--set", "generator_cfg.cutpaste.typo=1"], ["generator_cfg.cutpaste", "'typo'"]),
    (["--set", "generator_cfg.cutpaste.area_ratio=[0.5, 0.1]"], ["generator_cfg.cutpaste", "area_ratio"]),
    (["--set", "generator_cfg.draem.foreground_only=maybe"], ["generator_cfg.draem.foreground_only", "maybe"]),
    (["--generators", "nope"], ["unknown generator 'nope'"]),
    (["--detectors", "nope"], ["unknown detector 'nope'"]),
    (["--dataset", "nope"], ["unknown dataset 'nope'"]),
    (["--seeds", "a"], ["seeds", "'a'"]),
    (["--seeds", ","], ["seeds"]),
    (["--categories", "nope"], ["no categories", "nope"]),
    (["--set", "colour=red"], ["'colour'", "known:"]),
    (["--threads", "-1"], ["threads", "-1"]),
    (["--set", "eval_size=abc"], ["eval_size", "'abc'"]),
    (["--run", "a/b"], ["run", "a/b"]),
    (["--set", "executor=slurm"], ["executor", "slurm"]),
    (["--set", "ray.num_gpus=-1"], ["ray.num_gpus", "-1"]),
    (["--generators", "realnet_sdas", "--set", "generator_cfg.dhdiff={scale: sd, sd_path: /no/sd15}"],
     ["generator_cfg.realnet_sdas.sd_path", "'/no/sd15'", "unet/ and vae/"]),
    (["--generators", "dhdiff", "--set", "generator_cfg.dhdiff={scale: sd, sd_path: /no/sd15}"],
     ["generator_cfg.dhdiff.sd_path", "'/no/sd15'"]),
    (["--generators", "dhdiff", "--set", "generator_cfg.dhdiff.clip_path=/no/clip"],
     ["generator_cfg.dhdiff.clip_path", "'/no/clip'"]),
]


@pytest.mark.parametrize("extra,needles", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_config_is_one_named_line(tmp_path, data_root, capsys, extra, needles):
    assert _exit_code(_args(tmp_path, data_root, *extra)) == 2
    _one_error_line(capsys, *needles)
    assert not (tmp_path / "runs" / "t" / "cells").exists()  # nothing ran


def test_cuda_device_without_cuda_fails_before_work(tmp_path, data_root, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _exit_code(_args(tmp_path, data_root, "--device", "cuda")) == 2
    _one_error_line(capsys, "'cuda'", "not available")


def test_bad_files_and_commands(tmp_path, data_root, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("generators: [cutpaste\n  detectors: x: y\n")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    cases = [
        (_args(tmp_path, data_root, "--config", str(tmp_path / "missing.yaml")), ["missing.yaml", "does not exist"]),
        (_args(tmp_path, data_root, "--config", str(bad_yaml)), ["bad.yaml", "not valid YAML"]),
        (_args(tmp_path, data_root, "--config", str(listy)), ["list.yaml", "mapping"]),
        (["--dataset", "mvtec_ad", "--data-root", "/no/such/dir", "--detectors", "unet", "--results-dir",
          str(tmp_path / "r")],
         ["/no/such/dir", "does not exist"]),
        (["report", "no_such_run", "--results-dir", str(tmp_path / "r")], ["no_such_run"]),
        (["samples", "--generator", "cutpaste", "--n", "0"], ["--n", "0"]),
        (["samples", "--generator", "nope"], ["unknown generator 'nope'"]),
    ]
    for argv, needles in cases:
        assert _exit_code(argv) == 2, argv
        _one_error_line(capsys, *needles)


def test_dead_ray_address_fails_within_seconds(tmp_path, data_root, capsys):
    t = time.perf_counter()
    assert _exit_code(_args(tmp_path, data_root, "--address", "127.0.0.1:9", "--set", "ray.connect_timeout_s=3")) == 2
    assert time.perf_counter() - t < 20
    _one_error_line(capsys, "127.0.0.1:9", "cannot connect")


# ----------------------------------------------------------------- a run is one experiment

def test_changed_config_on_a_run_is_refused_not_averaged(tmp_path, data_root, capsys):
    assert _exit_code(_args(tmp_path, data_root)) == 0
    capsys.readouterr()
    steps = [s.replace("steps: 4", "steps: 6") for s in TINY]
    assert _exit_code(_args(tmp_path, data_root, sets=steps)) == 2
    _one_error_line(capsys, "detector_cfg.unet.steps 4 -> 6", "--run NAME")
    assert len(list((tmp_path / "runs" / "t" / "cells").glob("*.json"))) == 1  # nothing was added
    # the grid may grow: another seed and generator join the same experiment
    assert _exit_code(_args(tmp_path, data_root, "--seeds", "0,1")) == 0
    assert len(list((tmp_path / "runs" / "t" / "cells").glob("*.json"))) == 2
    # and the changed config runs as its own experiment under another name
    assert _exit_code(_args(tmp_path, data_root, sets=steps, run="t6")) == 0


def test_zero_pairs_never_makes_a_column(tmp_path, data_root, capsys):
    assert _exit_code(_args(tmp_path, data_root, "--set", "pairs_per_defect=0")) == 2
    _one_error_line(capsys, "pairs_per_defect")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------- records check themselves

def _cfg(tmp_path, data_root, **over):
    over = {"datasets": "mvtec_ad", "data_root": str(data_root), "results_dir": str(tmp_path / "runs"),
            "run": "t", "generators": "cutpaste", "detectors": "unet", "categories": "bottle,carpet", "seeds": "0",
            "jobs": 1, **over}
    cfg = build_config("quick", None, over, TINY)
    cfg.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.mark.parametrize("damage,why", [
    (lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2]), "not valid JSON"),
    (lambda p: p.write_text("[]"), "not a record"),
    (lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "config"})),
     "no 'config'"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "schema": 1})), "schema"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()),
                                        "config": {**json.loads(p.read_text())["config"], "seed": 7}})),
     "hashes to"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "UTF-8"),
])
def test_corrupt_record_is_named_moved_aside_and_recomputed(tmp_path, data_root, capsys, damage, why):
    cfg = _cfg(tmp_path, data_root)
    execute(cfg)
    files = sorted(store.cells_dir(cfg.run_dir).glob("*.json"))
    assert len(files) == 2
    damage(files[0])
    # `report` names it and says how many it skipped, and tables come from the good one only
    assert main(["report", "t", "--results-dir", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad record" in err and files[0].name in err and why in err
    assert (store.cells_dir(cfg.run_dir) / "rejected" / files[0].name).is_file()
    # the next run recomputes exactly that cell
    p, recs = execute(cfg)
    assert len(p.todo) == 1 and recs[0]["hash"] == files[0].stem and recs[0]["status"] == "ok"


def test_bad_record_found_by_run_is_named(tmp_path, data_root, capsys):
    cfg = _cfg(tmp_path, data_root)
    execute(cfg)
    f = sorted(store.cells_dir(cfg.run_dir).glob("*.json"))[0]
    f.write_text("{")
    assert main(_args(tmp_path, data_root, "--categories", "bottle,carpet")) == 0
    err = capsys.readouterr().err
    assert "bad record moved aside" in err and f.name in err and "not valid JSON" in err


# ----------------------------------------------------------------- generated sets check themselves

def _set_root(rec) -> Path:
    return Path(rec["generated_set"])


def _black(p: Path) -> None:
    img = cv2.imread(str(p))
    cv2.imwrite(str(p), np.zeros_like(img))


def _small_mask(p: Path) -> None:
    cv2.imwrite(str(p), np.zeros((16, 16), np.uint8))


@pytest.mark.parametrize("damage,why", [
    (lambda root: (root / "manifest.json").write_text((root / "manifest.json").read_text()[:40]), "unreadable manifest"),
    (lambda root: _black(next(root.rglob("000.png"))), "checksum"),
    (lambda root: _small_mask(next(root.rglob("000_mask.png"))), "checksum"),
    (lambda root: next(root.rglob("001.png")).unlink(), "missing"),
    (lambda root: (root / "manifest.json").unlink(), "no manifest"),
])
def test_damaged_generated_set_is_named_discarded_and_regenerated(tmp_path, data_root, damage, why):
    cfg = _cfg(tmp_path, data_root, categories="bottle")
    c = plan(cfg).cells[0]
    from benchmark.cell import run_cell

    first = run_cell(c, cfg.cache_dir)
    assert first["status"] == "ok" and first["generated_from_cache"] is False
    root = _set_root(first)
    damage(root)
    again = run_cell(c, cfg.cache_dir)
    assert again["status"] == "ok", again.get("error")
    assert again["generated_from_cache"] is False  # made anew, never used damaged
    assert why in again["generated_set_discarded"] and str(root) in again["generated_set_discarded"]
    assert again["metrics"] == first["metrics"]  # same seed, same pairs, same numbers
    third = run_cell(c, cfg.cache_dir)
    assert third["generated_from_cache"] is True and "generated_set_discarded" not in third


def test_stale_temp_folder_of_a_killed_writer_is_cleaned(tmp_path, data_root):
    cfg = _cfg(tmp_path, data_root, categories="bottle")
    c = plan(cfg).cells[0]
    from benchmark.cell import run_cell

    root = _set_root(run_cell(c, cfg.cache_dir))
    shutil.rmtree(root)
    stale = root.parent / f".tmp-{root.name}-killed"
    (stale / "x").mkdir(parents=True)
    (stale / "x" / "big.bin").write_bytes(b"0" * 1000)
    rec = run_cell(c, cfg.cache_dir)
    assert rec["status"] == "ok" and not stale.exists()


def test_config_edit_regenerates_instead_of_serving_stale_pairs(tmp_path, data_root):
    from benchmark.cell import run_cell

    a = plan(_cfg(tmp_path, data_root, categories="bottle")).cells[0]
    cfg_b = _cfg(tmp_path, data_root, categories="bottle", run="u")
    cfg_b.generator_cfg = {"cutpaste": {"area_ratio": [0.05, 0.1]}}
    b = plan(cfg_b).cells[0]
    ra, rb = run_cell(a, tmp_path / "cache"), run_cell(b, tmp_path / "cache")
    assert ra["generated_set"] != rb["generated_set"] and rb["generated_from_cache"] is False


# ----------------------------------------------------------------- bad data, named

def test_mask_with_another_aspect_ratio_is_a_named_cell_failure(tmp_path, data_root):
    mask = data_root / "bottle" / "ground_truth" / "broken" / "001_mask.png"
    cv2.imwrite(str(mask), np.zeros((32, 48), np.uint8))
    same_aspect = data_root / "bottle" / "ground_truth" / "scratch" / "001_mask.png"
    m = cv2.imread(str(same_aspect), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(same_aspect), cv2.resize(m, (64, 64), interpolation=cv2.INTER_NEAREST))  # same aspect: fine
    _, recs = execute(_cfg(tmp_path, data_root, categories="bottle", seeds="0,1,2"))
    failed = [r for r in recs if r["status"] == "failed"]
    assert failed, "a stretched mask was used silently"
    for r in failed:
        assert str(mask) in r["error"] and "001.png" in r["error"] and "aspect ratio" in r["error"]
        assert "fit" not in r["timings"]  # found before any training


def test_non_ascii_paths_work(tmp_path):
    root = make_mvtec_ad_tree(tmp_path / "données_ü" / "mvtec", categories=("bottle",), n_train=6, n_good=3,
                              defects={"broken": 4}, size=32)
    _, recs = execute(_cfg(tmp_path, root, categories="bottle"))
    assert [r["status"] for r in recs] == ["ok"], recs[0].get("error")


# ----------------------------------------------------------------- two runs, one folder

def _run_in_process(args: list[str], q) -> None:
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from benchmark.runner import execute as _execute

    cfg = build_config("quick", None, {**args[0], "jobs": 1}, args[1])
    cfg.cache_dir = args[2]
    _, recs = _execute(cfg)
    q.put([(r["hash"], r["status"]) for r in recs])


def test_two_runs_on_one_folder_compute_each_cell_once(tmp_path, data_root):
    over = {"datasets": "mvtec_ad", "data_root": str(data_root), "results_dir": str(tmp_path / "runs"),
            "run": "t", "generators": "cutpaste", "detectors": "unet", "categories": "bottle,carpet", "seeds": "0,1"}
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_run_in_process, args=([over, TINY, str(tmp_path / "cache")], q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    computed = [h for res in results for h, _ in res]
    assert all(s == "ok" for res in results for _, s in res)
    assert len(computed) == 4 and len(set(computed)) == 4  # every cell computed by exactly one process
    assert len(list((tmp_path / "runs" / "t" / "cells").glob("*.json"))) == 4


def test_record_with_an_unknown_field_is_rejected(tmp_path, data_root, capsys):
    cfg = _cfg(tmp_path, data_root, categories="bottle")
    execute(cfg)
    f = next(store.cells_dir(cfg.run_dir).glob("*.json"))
    f.write_text(json.dumps({**json.loads(f.read_text()), "sneaky": 1}))
    p, recs = execute(cfg)
    assert [path.name for path, _ in p.rejected] == [f.name] and "sneaky" in p.rejected[0][1]
    assert len(recs) == 1 and recs[0]["status"] == "ok"


def test_sd_folder_without_text_encoder_is_named_before_work(tmp_path, data_root, capsys):
    """A real-looking SD folder (unet/, vae/) but no text_encoder/ and no clip_path, with the
    default text_encoder (auto): named at plan time, not in every cell."""
    from tests.toys import tiny_sd

    sd = tiny_sd(tmp_path / "sd")
    argv = _args(tmp_path, data_root, "--generators", "anomalydiffusion",
                 "--set", f"generator_cfg.dhdiff={{scale: sd, sd_path: {sd}, patch_size: 16}}")
    assert _exit_code(argv) == 2
    _one_error_line(capsys, "generator_cfg.anomalydiffusion.text_encoder", "text_encoder: learned")
    assert not (tmp_path / "runs" / "t" / "cells").exists()
