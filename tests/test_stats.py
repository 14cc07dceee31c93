"""Intervals and paired tests against scipy, closed forms and slow definitions."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from benchmark import stats
from benchmark.metrics import auroc, average_precision, f1_max


def data(n_good=40, n_bad=25, shift=1.0, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_good, int), np.ones(n_bad, int)]
    s = y * shift + rng.normal(0, 1, y.size)
    return y, (np.round(s, 1) if ties else s)


def test_t_interval_closed_form_and_small_n():
    m, lo, hi = stats.t_interval([0.7, 0.8, 0.9, np.nan])  # NaN seed left out
    h = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert (m, lo, hi) == pytest.approx((0.8, 0.8 - h, 0.8 + h))
    ref = sps.t.interval(0.9, 4, loc=np.mean([1, 2, 3, 4, 6]), scale=sps.sem([1, 2, 3, 4, 6]))
    assert stats.t_interval([1, 2, 3, 4, 6], level=0.9)[1:] == pytest.approx(ref)
    m1, lo1, hi1 = stats.t_interval([0.5])
    assert m1 == 0.5 and math.isnan(lo1) and math.isnan(hi1)
    with pytest.raises(ValueError, match="level"):
        stats.t_interval([1, 2], level=95)


@pytest.mark.parametrize("metric, fn", [("auroc", auroc), ("ap", average_precision), ("f1max", f1_max)])
def test_weighted_resample_equals_metric_on_explicit_resample(metric, fn):
    y, s = data(ties=True)
    srt = stats._Sorted(y, s, "t")
    counts = stats._draw(y.astype(bool), 20, np.random.default_rng(5))
    got = srt.metric(counts, metric)
    want = [fn(np.repeat(y, c), np.repeat(s, c)) for c in counts]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert (counts[:, y == 0].sum(1) == 40).all() and (counts[:, y == 1].sum(1) == 25).all()  # stratified


@pytest.mark.parametrize("metric, fn", [("image_auroc", auroc), ("image_ap", average_precision)])
def test_bootstrap_interval_equals_scipy_bootstrap(metric, fn):
    y, s = data(ties=True)

    def stat(good, bad):
        return fn(np.r_[np.zeros(good.size), np.ones(bad.size)], np.r_[good, bad])

    ref = sps.bootstrap((s[y == 0], s[y == 1]), stat, vectorized=False, method="percentile", n_resamples=300,
                        rng=np.random.default_rng(7))
    est, lo, hi = stats.bootstrap_interval(y, s, metric, n_boot=300, seed=7)
    assert est == pytest.approx(fn(y, s), abs=1e-15)
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval), abs=1e-12)


def test_pixel_bootstrap_resamples_images_not_pixels():
    rng = np.random.default_rng(0)
    img = np.r_[np.zeros(20, int), np.ones(20, int)]
    lab = np.zeros((40, 5), int)
    lab[20:, :2] = 1
    sc = lab + rng.normal(0, 1, lab.shape)
    # same interval as scipy resampling whole images (rows) within each image class, pixels pooled
    def stat(good, bad):
        rows = np.r_[good, bad].astype(int)
        return auroc(lab[rows].ravel(), sc[rows].ravel())

    idx = np.arange(40)
    ref = sps.bootstrap((idx[:20], idx[20:]), stat, vectorized=False, method="percentile", n_resamples=200,
                        rng=np.random.default_rng(3))
    est, lo, hi = stats.bootstrap_interval(lab, sc, "pixel_auroc", n_boot=200, seed=3, strata=img)
    assert est == pytest.approx(auroc(lab.ravel(), sc.ravel()))
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval), abs=1e-12)


def test_seeded_and_combined_is_mean_of_strata():
    y, s = data()
    y2, s2 = data(seed=1, shift=2.0)
    a = stats.bootstrap_combined([stats.Sample(y, s), stats.Sample(y2, s2)], "auroc", n_boot=200, seed=4)
    assert a == stats.bootstrap_combined([stats.Sample(y, s), stats.Sample(y2, s2)], "auroc", n_boot=200, seed=4)
    assert a[0] == pytest.approx((auroc(y, s) + auroc(y2, s2)) / 2)
    assert a != stats.bootstrap_combined([stats.Sample(y, s), stats.Sample(y2, s2)], "auroc", n_boot=200, seed=5)
    with pytest.raises(ValueError, match="cannot bootstrap metric 'pixel_aupro'"):
        stats.bootstrap_interval(y, s, "pixel_aupro")


def slow_delong(y, a, b):
    """DeLong 1988 from the definition: placement values psi(x_i, y_j), their covariances."""
    y = np.asarray(y, bool)

    def comps(s):
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(1), psi.mean(0), psi.mean()

    a10, a01, auc_a = comps(np.asarray(a))
    b10, b01, auc_b = comps(np.asarray(b))
    s10, s01 = np.cov(np.c_[a10, b10].T), np.cov(np.c_[a01, b01].T)
    L = np.array([1.0, -1.0])
    var = L @ s10 @ L / y.sum() + L @ s01 @ L / (~y).sum()
    z = (auc_a - auc_b) / math.sqrt(var)
    return auc_a - auc_b, math.sqrt(var), z, 2 * sps.norm.sf(abs(z))


def test_delong_equals_definition_with_ties():
    y, a = data(ties=True)
    b = np.round(a + np.random.default_rng(9).normal(0, 0.8, a.size), 1)
    assert stats.delong_test(y, a, b) == pytest.approx(slow_delong(y, a, b), rel=1e-12)


def test_delong_se_agrees_with_paired_bootstrap_on_a_large_case():
    y, a = data(n_good=400, n_bad=300, shift=1.0, seed=2)
    b = a + np.random.default_rng(3).normal(0, 1.0, a.size)
    d, se, _, _ = stats.delong_test(y, a, b)
    counts = stats._draw(y.astype(bool), 2000, np.random.default_rng(0))
    boot = stats._Sorted(y, a, "a").metric(counts, "auroc") - stats._Sorted(y, b, "b").metric(counts, "auroc")
    assert boot.std(ddof=1) == pytest.approx(se, rel=0.1)
    assert boot.mean() == pytest.approx(d, abs=0.2 * se)


def test_paired_known_difference_and_none():
    y, a = data(n_good=100, n_bad=100, shift=2.0, seed=1)
    b = a.copy()
    b[y == 1] -= 1.5  # B separates the classes clearly worse
    truth = auroc(y, a) - auroc(y, b)
    d, lo, hi, p = stats.paired_bootstrap(y, a, b, "image_auroc", seed=0)
    assert d == pytest.approx(truth) and lo < truth < hi and lo > 0 and p < 0.01
    assert p == pytest.approx(2 / 1001)  # no resample with d <= 0: the smallest p the bootstrap gives
    assert stats.delong_test(y, a, b)[3] < 1e-6
    # no difference: B is A with its scores shuffled within classes' ranks preserved (monotone map)
    d0, lo0, hi0, p0 = stats.paired_bootstrap(y, a, np.exp(a), "image_auroc")
    assert (d0, lo0, hi0, p0) == (0.0, 0.0, 0.0, 1.0)
    # two equally good, independent methods: interval covers 0 and p is not small
    c = y * 2.0 + np.random.default_rng(8).normal(0, 1, y.size)
    _, lo1, hi1, p1 = stats.paired_bootstrap(y, a, c, "image_auroc")
    assert lo1 < 0 < hi1 and p1 > 0.2
    assert stats.delong_test(y, a, c)[3] > 0.2


def test_delong_combined_mean_of_deltas_and_variance():
    y1, a1 = data(seed=1)
    y2, a2 = data(seed=2)
    b1, b2 = a1[::-1].copy(), a2 + 0.3 * np.random.default_rng(0).normal(size=a2.size)
    r1, r2 = stats.delong_test(y1, a1, b1), stats.delong_test(y2, a2, b2)
    d, se, z, p = stats.delong_combined([stats.PairedSample(y1, a1, b1), stats.PairedSample(y2, a2, b2)])
    assert d == pytest.approx((r1[0] + r2[0]) / 2)
    assert se == pytest.approx(math.sqrt(r1[1] ** 2 + r2[1] ** 2) / 2)
    assert p == pytest.approx(2 * sps.norm.sf(abs(d / se)))


def test_paired_t_closed_form_and_edge_cases():
    d = [-0.009, -0.151, -0.043]  # DH-Diff - Crop&Paste image AUROC per seed, quick preset (weave)
    m, lo, hi, p = stats.paired_t(d)
    sd = np.std(d, ddof=1)
    h = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert m == pytest.approx(np.mean(d)) and (lo, hi) == pytest.approx((m - h, m + h))
    t = m / (sd / math.sqrt(3))
    assert p == pytest.approx(2 * sps.t.sf(abs(t), 2)) and p == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    assert 0.2 < p < 0.3
    assert stats.paired_t([0.1, np.nan, 0.3])[:3] == pytest.approx(stats.t_interval([0.1, 0.3]))
    m1, lo1, hi1, p1 = stats.paired_t([0.2])
    assert m1 == 0.2 and all(math.isnan(x) for x in (lo1, hi1, p1))
    assert stats.paired_t([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1, 0.1, 0.0))
    assert stats.paired_t([0.0, 0.0]) == (0.0, 0.0, 0.0, 1.0)


def test_holm_hand_case():
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, max(0.04, 0.09), max(0.09, 0.08), max(0.09, 0.5)
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, np.nan, 0.5]), [0.04, 0.09, 0.09, np.nan, 0.5])
    np.testing.assert_allclose(stats.holm([0.6, 0.5]), [1.0, 1.0])
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return
    p = np.random.default_rng(0).random(12) ** 3
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1])


def test_bad_input_messages():
    with pytest.raises(ValueError, match="labels .* and scores .* must have one equal shape"):
        stats.bootstrap_interval([0, 1], [0.1], "auroc")
    with pytest.raises(ValueError, match="not paired"):
        stats.paired_bootstrap([0, 1, 0], [0.1, 0.2, 0.3], [0.1, 0.2], "auroc", labels_b=[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(stats.delong_test([0, 1, 1], [1, 2, 3], [3, 2, 1])[3])
