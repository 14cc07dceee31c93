"""DH-Diff cost against a plain diffusers U-Net of the same widths (quick config, 32 px).

Both see the same images per U-Net call: DH-Diff B pairs = 2B stacked stream images (+ B
references through the condition encoder); the plain U-Net gets batch 2B. The ratio
DH-Diff / plain is printed and stored in ``extra_info`` (aim <= 1.5x); timing is never asserted.
Run: ``.venv/bin/pytest perf/test_perf_dhdiff.py --benchmark-enable --benchmark-only -s``
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from generators.dhdiff.config import resolve
from generators.dhdiff.model import DHDiffModel, _tiny_unet

B = 8


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = resolve({})
    dh = DHDiffModel(cfg, "dda+ssm", ["c"], ["a", "b"])
    plain = _tiny_unet(cfg, 3)
    s = cfg.patch_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 3, s, s, generator=g) * 2 - 1
    m = (torch.rand(B, 1, s, s, generator=g) > 0.7).float()
    text = dh.prompt.encode(["c"] * B, ["a"] * B)[0].detach()
    return cfg, dh, plain, x, m, text


def _median(fn, rounds=3):
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _report(benchmark, name, plain_s):
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return
    dh_s = stats.stats.median
    benchmark.extra_info.update({"plain_s": plain_s, "ratio": dh_s / plain_s})
    print(f"\n{name}: dhdiff {dh_s:.3f}s  plain UNet {plain_s:.3f}s  ratio {dh_s / plain_s:.2f}x")


def test_perf_train_step(benchmark, setup):
    cfg, dh, plain, x, m, text = setup
    opt_dh = torch.optim.Adam(dh.trainable_parameters(), lr=1e-4)
    opt_pl = torch.optim.Adam(plain.parameters(), lr=1e-4)
    ctl, has = m, torch.ones(B, dtype=torch.bool)

    def dh_step():
        loss = dh.loss(x, m, x, ["c"] * B, ["a"] * B, ctl, has)
        opt_dh.zero_grad()
        loss.backward()
        opt_dh.step()

    xx = torch.cat([x, m.expand(-1, 3, -1, -1) * 2 - 1])
    tt = torch.randint(0, 1000, (2 * B,))
    tx = torch.cat([text, text])

    def plain_step():
        noise = torch.randn_like(xx)
        loss = torch.nn.functional.mse_loss(plain(xx + noise, tt, tx).sample, noise)
        opt_pl.zero_grad()
        loss.backward()
        opt_pl.step()

    plain_s = _median(plain_step)
    benchmark.pedantic(dh_step, rounds=3, warmup_rounds=1)
    _report(benchmark, "train step", plain_s)


def test_perf_sampling_step(benchmark, setup):
    cfg, dh, plain, x, m, text = setup
    t = torch.full((B,), 500)
    tx = torch.cat([text, text])

    @torch.no_grad()
    def dh_step():
        dh(x, x, t, text, x)

    @torch.no_grad()
    def plain_step():
        plain(torch.cat([x, x]), torch.cat([t, t]), tx)

    plain_s = _median(plain_step)
    benchmark.pedantic(dh_step, rounds=3, warmup_rounds=1)
    _report(benchmark, "sampling step", plain_s)
