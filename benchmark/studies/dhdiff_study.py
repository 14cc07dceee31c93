"""DH-Diff study (issue 10): does the model, not the set-up, make the pairs? And Table VIII.

(a) ``check``: on embedded ``synthetic`` categories, with the few-shot pool drawn as the quick
    preset does (7 test anomalies per defect type) and the category's normal training images:
    - IoU of generated masks against the reference's own mask (same crop) for an UNTRAINED model
      at the default config (clean-up on): must be < 0.3, else the masks come from the set-up;
    - mask-image agreement, untrained vs trained, two ways:
      ``patch``: on the model-resolution pairs with clean-up OFF (pixel AUROC of |patch - the
      patch's median colour outside the mask| against the mask; no compositing involved);
      ``record``: benchmark.quality.mask_image_agreement on the composited pairs (what every
      record carries; partly high by construction for any generator that blends inside a mask);
    - fit and sampling times (contaminated when other jobs share the CPU: say so).
(b) ``ablation``: runs baseline / +DDA / +SSM / DDA+SSM through the benchmark CLI with the
    given seeds, the budget knobs passed to every variant through ``generator_cfg.dhdiff``.

Budget knobs (``--steps``, ``--ddim-steps``, ``--widths``, ``--patch-size``, ``--batch-size``,
``--lr``) apply to both parts, so a GPU machine can run a larger budget with ``--device cuda``.
Examples::

    python -m benchmark.studies.dhdiff_study check --categories wood,hex_nut --threads 1
    python -m benchmark.studies.dhdiff_study ablation --seeds 0,1,2 --run ablation --steps 600
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def budget_overrides(a: argparse.Namespace) -> dict:
    out = {}
    for key in ("steps", "ddim_steps", "patch_size", "batch_size", "lr", "normal_share"):
        v = getattr(a, key, None)
        if v is not None:
            out[key] = v
    if a.widths:
        w = [int(x) for x in a.widths.split(",")]
        out["widths"] = w
        out["attn_levels"] = [i >= len(w) - 2 for i in range(len(w))]   # attention on the two lowest levels
    return out


def load_category(category: str, n_normals: int, n_shot: int, size: int, seed: int = 0):
    """FitData of one synthetic category: train normals, n_shot test anomalies per defect type."""
    from benchmark.datasets.synthetic import DEFECTS, OBJECTS, make_sample
    from generators import FitData, Pair

    normals = [make_sample(category, "train", "good", i, size=size)[1] for i in range(n_normals)]
    anomalies = []
    for d in DEFECTS[category]:
        for i in range(n_shot):
            _, im, m = make_sample(category, "test", d, i, size=size)
            anomalies.append(Pair(im, m, d))
    return FitData(category, normals, anomalies, list(DEFECTS[category]), is_object=category in OBJECTS,
                   image_size=size)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


def patch_agreement(image: np.ndarray, mask: np.ndarray) -> float | None:
    """AUROC of |patch - median colour outside the mask| against the mask (None if one-class)."""
    from sklearn.metrics import roc_auc_score

    if not mask.any() or mask.all():
        return None
    bg = np.median(image[~mask].reshape(-1, 3), axis=0)
    change = np.abs(image.astype(np.float32) - bg).max(axis=2)
    return float(roc_auc_score(mask.ravel(), change.ravel()))


def measure(gen, data, n_per_defect: int, seed: int) -> dict:
    from benchmark.quality import mask_image_agreement

    rng = np.random.default_rng(seed)
    ious, agree_patch, agree_rec = [], [], []
    t0 = time.perf_counter()
    for d in data.defect_types:
        pool = [a for a in data.anomalies if a.defect_type == d]
        refs = [pool[i % len(pool)] for i in range(n_per_defect)]
        _, masks, _, _, mks = gen.sample_patches(d, refs, rng)                    # default clean-up
        ious += [iou(m, r) for m, r in zip(masks, mks)]
        ims, raw_masks, _, _, _ = gen.sample_patches(d, refs, rng, clean=False)   # clean-up off
        agree_patch += [v for v in (patch_agreement(i, m) for i, m in zip(ims, raw_masks)) if v is not None]
        pairs = gen.generate(n_per_defect, d, rng)
        v = mask_image_agreement([p.image for p in pairs], [data.normals[p.source] for p in pairs],
                                 [p.mask for p in pairs])
        if v is not None:
            agree_rec.append(v)
    return {"iou_vs_reference": float(np.mean(ious)), "agreement_patch": float(np.mean(agree_patch)),
            "agreement_record": float(np.mean(agree_rec)), "sample_s": time.perf_counter() - t0,
            "stats": gen.stats()}


def check(a: argparse.Namespace) -> dict:
    import torch

    from generators import create_generator

    torch.set_num_threads(a.threads)
    over = budget_overrides(a)
    results = {}
    for cat in a.categories.split(","):
        data = load_category(cat, a.normals, a.shots, a.size)
        data.device = a.device
        row = {}
        for label, steps in (("untrained", 0), ("trained", over.get("steps"))):
            cfg = dict(over)
            if steps is not None:
                cfg["steps"] = steps
            else:
                cfg.pop("steps", None)
            gen = create_generator(a.generator, **cfg)
            t = time.perf_counter()
            gen.fit(data, np.random.default_rng(a.seed))
            fit_s = time.perf_counter() - t
            row[label] = {"steps": gen.config.steps, "fit_s": fit_s, **measure(gen, data, a.n, a.seed + 1),
                          "loss_first5": float(np.mean(gen.loss_history[:5])) if gen.loss_history else None,
                          "loss_last5": float(np.mean(gen.loss_history[-5:])) if gen.loss_history else None}
            print(cat, label, json.dumps(row[label], default=float), flush=True)
        results[cat] = row
    return results


def ablation(a: argparse.Namespace) -> int:
    """Table VIII through the benchmark CLI; every variant inherits generator_cfg.dhdiff."""
    cmd = [sys.executable, "run_benchmark.py", "--generators", "dhdiff_baseline,dhdiff_dda,dhdiff_ssm,dhdiff",
           "--seeds", a.seeds, "--run", a.run, "--threads", str(a.threads), "--device", a.device]
    if a.categories:
        cmd += ["--categories", a.categories]
    if a.detectors:
        cmd += ["--detectors", a.detectors]
    if a.pairs is not None:
        cmd += ["--set", f"pairs_per_defect={a.pairs}"]
    for k, v in budget_overrides(a).items():
        cmd += ["--set", f"generator_cfg.dhdiff.{k}={json.dumps(v)}"]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=Path(__file__).resolve().parents[2])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("check", "ablation"))
    p.add_argument("--categories", default="wood,hex_nut")
    p.add_argument("--generator", default="dhdiff")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--run", default="ablation")
    p.add_argument("--detectors", help="ablation: detectors (default: the quick preset's; docs/dhdiff.md's table: unet)")
    p.add_argument("--pairs", type=int, help="ablation: pairs per defect type (default: the quick preset's, 240; "
                                             "docs/dhdiff.md's table: 60)")
    p.add_argument("--normals", type=int, default=60, help="check: normal training images")
    p.add_argument("--shots", type=int, default=7, help="check: few-shot anomalies per defect type")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n", type=int, default=24, help="check: pairs per defect type")
    g = p.add_argument_group("budget (passed as generator_cfg.dhdiff)")
    g.add_argument("--steps", type=int)
    g.add_argument("--ddim-steps", dest="ddim_steps", type=int)
    g.add_argument("--widths", help="e.g. 32,64,96 (attention on the two lowest levels)")
    g.add_argument("--patch-size", dest="patch_size", type=int)
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--normal-share", dest="normal_share", type=float)
    a = p.parse_args(argv)
    if a.what == "check":
        out = check(a)
        print(json.dumps(out, indent=1, default=float))
        return 0
    return ablation(a)


if __name__ == "__main__":
    raise SystemExit(main())
