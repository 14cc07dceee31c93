"""Common random numbers: within one seed, two generators' cells share the split, the evaluation
images (and the pixels sampled from them), the detector's initial weights and its batch order,
so a difference between two columns comes from the generators."""
from __future__ import annotations

import hashlib

import pytest
import torch

import detectors.unet as unet
from benchmark.cell import run_cell
from benchmark.config import build_config
from benchmark.runner import plan
from tests.layouts import make_mvtec_ad_tree

TINY = ["detectors=unet", "detector_cfg.unet={base_width: 4, depth: 3, steps: 5, batch_size: 4, crop_size: 24}",
        "pairs_per_defect=3", "image_size=32", "eval_size=32", "split.fraction=0.5"]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:12]


@pytest.fixture()
def spy(monkeypatch):
    """Records, per detector fit, the initial weights and the normal images of every batch."""
    seen: list[dict] = []
    real_init, real_crops = unet.SegmentationUNet.__init__, unet.random_crops

    def init(self, *a, **k):
        real_init(self, *a, **k)
        seen.append({"init": _digest(torch.cat([p.flatten() for p in self.parameters()])), "batches": []})

    def crops(x, m, size, gen):
        n_norm = len(x) - len(x) // 2
        seen[-1]["batches"].append(_digest(x[:n_norm]))
        return real_crops(x, m, size, gen)

    monkeypatch.setattr(unet.SegmentationUNet, "__init__", init)
    monkeypatch.setattr(unet, "random_crops", crops)
    return seen


def test_two_generators_of_one_seed_share_everything_but_the_pairs(tmp_path, spy):
    root = make_mvtec_ad_tree(tmp_path / "mvtec", categories=("bottle",), n_train=6, n_good=3,
                              defects={"broken": 4, "scratch": 4}, size=32)
    cfg = build_config("quick", None, {"datasets": "mvtec_ad", "data_root": str(root), "run": "t",
                                       "results_dir": str(tmp_path / "runs"), "generators": "cutpaste,crop_paste",
                                       "seeds": "0,1"}, TINY)
    cells = {(c.generator, c.seed): c for c in plan(cfg).cells}
    recs = {k: run_cell(c, tmp_path / "cache") for k, c in cells.items()}
    assert all(r["status"] == "ok" for r in recs.values()), [r.get("error") for r in recs.values()]
    fits = dict(zip(cells, spy))
    for seed in (0, 1):
        a, b = recs[("cutpaste", seed)], recs[("crop_paste", seed)]
        assert a["eval"]["image_id"] == b["eval"]["image_id"] and a["split"] == b["split"]
        assert a["eval"]["pixel_sample"]["label"] == b["eval"]["pixel_sample"]["label"]  # same pixels
        fa, fb = fits[("cutpaste", seed)], fits[("crop_paste", seed)]
        assert fa["init"] == fb["init"] and len(fa["batches"]) == 5
        assert fa["batches"] == fb["batches"]  # same normals in the same order at every step
        assert a["eval"]["score"] != b["eval"]["score"]  # ... and the pairs did make a difference
    # another seed is another draw
    assert fits[("cutpaste", 0)]["init"] != fits[("cutpaste", 1)]["init"]
    assert fits[("cutpaste", 0)]["batches"] != fits[("cutpaste", 1)]["batches"]


def test_detector_seed_moves_only_the_detector(tmp_path, spy):
    """The stability study's ``--vary detector``: same split and pairs, other init and batches;
    ``--vary data``: other split and pairs, the same init; ``--vary pairs``: other pairs only."""
    import dataclasses

    root = make_mvtec_ad_tree(tmp_path / "mvtec", categories=("bottle",), n_train=6, n_good=3,
                              defects={"broken": 4, "scratch": 4}, size=32)
    cfg = build_config("quick", None, {"datasets": "mvtec_ad", "data_root": str(root), "run": "t",
                                       "results_dir": str(tmp_path / "runs"), "generators": "cutpaste",
                                       "seeds": "0"}, TINY)
    base = plan(cfg).cells[0]
    variants = {"base": base, "det": dataclasses.replace(base, detector_seed=1),
                "data": dataclasses.replace(base, seed=1, detector_seed=0),
                "pairs": dataclasses.replace(base, seed=1, split_seed=0, detector_seed=0)}
    recs = {k: run_cell(c, tmp_path / "cache") for k, c in variants.items()}
    fits = dict(zip(variants, spy))
    assert recs["det"]["eval"]["image_id"] == recs["base"]["eval"]["image_id"]
    assert recs["det"]["generated_set"] == recs["base"]["generated_set"]         # same pairs
    assert fits["det"]["init"] != fits["base"]["init"]
    assert recs["data"]["generated_set"] != recs["base"]["generated_set"]
    assert fits["data"]["init"] == fits["base"]["init"]
    assert recs["data"]["eval"]["image_id"] != recs["base"]["eval"]["image_id"]       # another split
    assert recs["pairs"]["eval"]["image_id"] == recs["base"]["eval"]["image_id"]      # seed 0's split ...
    assert fits["pairs"]["init"] == fits["base"]["init"] and fits["pairs"]["batches"] == fits["base"]["batches"]
    assert recs["pairs"]["generated_set"] not in (recs["base"]["generated_set"], recs["data"]["generated_set"])
    assert recs["pairs"]["eval"]["score"] != recs["base"]["eval"]["score"]            # ... and new pairs
    assert len({c.hash() for c in variants.values()}) == 4
    old = base.to_dict()
    old.pop("detector_seed")                  # a record written before the fields existed
    old.pop("split_seed")
    assert type(base).from_dict(old).hash() == base.hash()
