"""How sure a number is: t-intervals over seeds, stratified bootstrap over images, paired tests.

Why these and not others (docs/evaluation.md, "Evidence"):
- Over seeds the metric of one cell is one draw of everything random in a run (split, generator,
  detector init, batch order), so a Student t-interval of the per-seed values is the honest
  interval when there are >= 2 seeds.
- With one seed the only sampling we can still see is that of the evaluation images. The
  bootstrap resamples good and anomalous images *separately* (stratified), so every resample
  keeps the real class balance and AUROC / AP stay defined (Efron & Tibshirani 1993). Pixel
  metrics are resampled over *images* (pixels of one image are strongly correlated, resampling
  them independently would make intervals far too narrow): a resampled image brings all of its
  sampled pixels along.
- A paired comparison of generators A and B applies the *same* resampled images to both, so the
  image-to-image variation common to both cancels in the difference. DeLong's test (DeLong et
  al. 1988, fast mid-rank form of Sun & Xu 2014) is the classical closed form for AUROC.
- Several strata (categories, seeds) are combined by the *mean* of the per-stratum statistic;
  a resample draws images inside every stratum independently and averages, which is the
  bootstrap of that mean. Several comparisons at once get Holm's step-down correction (Holm 1979).

Speed without approximation: a resample is a vector of integer multiplicities per image, and
AUROC / AP / F1-max of the resampled, pooled data equal the same metrics computed with those
multiplicities as weights on the *original* data, reduced once to per-image counts at every
distinct positive score; a resample is then a matrix product (exact: integer counts in float64).
No resample is ever re-sorted, and ties are handled exactly as scikit-learn does (one curve
point per run of tied scores). Draws
follow ``scipy.stats.bootstrap``'s order (per stratum: good images, then anomalous ones,
``rng.integers(0, n, (n_boot, n))``), so with the same generator both give the same resamples.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

__all__ = ["CURVE_METRICS", "Sample", "PairedSample", "curve_metric", "t_interval", "bootstrap_interval",
           "bootstrap_combined", "paired_bootstrap", "paired_bootstrap_combined", "delong_test",
           "delong_combined", "holm", "curve_value",
           "bootstrap_distribution", "percentile_interval"]

CURVE_METRICS = ("auroc", "ap", "f1max")


def curve_metric(name: str) -> str | None:
    """``image_auroc`` / ``pixel_ap`` / ``auroc`` -> the curve metric it is, or None when the
    metric cannot be bootstrapped from scores and labels alone (AUPRO needs connected regions,
    sPRO needs whole defects, LOCO's per-group AUROC needs the groups)."""
    base = name.split("_", 1)[1] if name.startswith(("image_", "pixel_")) else name
    return base if base in CURVE_METRICS else None


# --------------------------------------------------------------------------- seeds
def t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) of the Student t-interval of ``values``; non-finite values are left out
    (a seed whose metric is undefined says nothing about the spread); n < 2 gives NaN bounds."""
    _check_level(level)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    h = float(sps.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - h, m + h


def paired_t(deltas: Any, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, lo, hi, p) of per-cell differences metric(A) - metric(B), one-sample t-test against 0.

    Why beside the image bootstrap: resampling evaluation images holds the *trained* detectors
    fixed, so its interval only says how sure we are about these models on this test set. A
    cell's recorded difference also moves with the training seed (detector initialisation, batch
    order, the generator's own randomness); the spread of those differences over (category, seed)
    cells is what a rerun with new seeds would see. Cells are taken as independent replicates.
    Non-finite values are left out; n < 2 gives NaN bounds and p; identical differences give a
    zero-width interval and p = 0 (or 1 when they are all 0)."""
    _check_level(level)
    v = np.asarray(deltas, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan, math.nan
    if np.all(v == v[0]):
        return m, m, m, (1.0 if m == 0 else 0.0)
    _, lo, hi = t_interval(v, level)
    return m, lo, hi, float(sps.ttest_1samp(v, 0.0).pvalue)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


# --------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class Sample:
    """One stratum's evaluation data: image labels / scores (shape (n,)), or per-image pixel
    samples (shape (n, K)). ``strata`` (shape (n,), 0 good / 1 anomalous image) defaults to the
    labels, or for pixels to "has an anomalous sampled pixel"; pass the image labels when known."""

    labels: Any
    scores: Any
    strata: Any = None


@dataclass(frozen=True)
class PairedSample:
    """The same images scored by two methods; ``labels_b`` only where B's pixel samples sit at
    other positions than A's (the images are still the same, so the pairing holds)."""

    labels: Any
    scores_a: Any
    scores_b: Any
    labels_b: Any = None
    strata: Any = None


class _Sorted:
    """One method's labels/scores, reduced once to per-image counts at the positive thresholds.

    Only thresholds at positive scores matter (AUROC, AP and F1-max change only there). For each
    distinct positive score t_k (descending) and image i we count that image's positives with
    score >= t_k (``tp``), negatives >= t_k (``ge``) and negatives > t_k (``gt``). A resample with
    image multiplicities c then has tp = c @ tp and fp(>=) = c @ ge: one small matrix product
    per resample instead of a re-sort or a cumulative sum over every pixel; AUROC goes further
    through the image-pair matrix ``u`` (c @ u @ c)."""

    def __init__(self, labels: Any, scores: Any, where: str):
        y = np.asarray(labels)
        s = np.asarray(scores, dtype=np.float64)
        if y.shape != s.shape or y.ndim not in (1, 2) or y.shape[0] == 0:
            raise ValueError(f"{where}: labels {y.shape} and scores {s.shape} must have one equal shape "
                             f"(n,) or (n, K) with n >= 1")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{where}: labels must be 0/1")
        if not np.isfinite(s).all():
            raise ValueError(f"{where}: scores must be finite")
        self.n = y.shape[0]
        k = 1 if y.ndim == 1 else y.shape[1]
        img = np.repeat(np.arange(self.n), k)
        flat_s, flat_y = s.ravel(), y.ravel().astype(bool)
        t = np.unique(flat_s[flat_y])[::-1]              # distinct positive scores, descending
        r = t.size
        desc = -t                                        # ascending, for searchsorted
        first_ge = np.searchsorted(desc, -flat_s, side="left")   # first k with t_k <= score
        first_gt = np.searchsorted(desc, -flat_s, side="right")  # first k with t_k < score

        def cum(sel: np.ndarray, first: np.ndarray) -> np.ndarray:
            h = np.bincount(img[sel] * (r + 1) + first[sel], minlength=self.n * (r + 1))
            return np.cumsum(h.reshape(self.n, r + 1), axis=1)[:, :r]

        # Counts are integers: float32 products and sums are exact below 2^24 (guarded).
        if flat_s.size >= 2 ** 24:
            raise ValueError(f"{where}: {flat_s.size} scores; at most {2 ** 24 - 1} (subsample pixels)")
        self.pos = np.bincount(img[flat_y], minlength=self.n).astype(np.float64)
        self.neg = np.bincount(img[~flat_y], minlength=self.n).astype(np.float64)
        self._cum = lambda which: cum(flat_y if which == "tp" else ~flat_y,
                                      first_gt if which == "gt" else first_ge)
        self._u: np.ndarray | None = None
        self._tp_ge: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def u(self) -> np.ndarray:
        """AUROC is a sum over (positive, negative) pairs, so it splits into image pairs:
        u[i, j] = pairs (positive of image i, negative of image j) ordered right, ties 1/2; a
        resample's AUROC is c @ u @ c / (P N)."""
        if self._u is None:
            dtp = np.diff(self._cum("tp"), axis=1, prepend=0).astype(np.float64)
            self._u = dtp @ (self.neg[:, None] - 0.5 * (self._cum("ge") + self._cum("gt"))).T
        return self._u

    @property
    def tp_ge(self) -> tuple[np.ndarray, np.ndarray]:
        if self._tp_ge is None:
            self._tp_ge = self._cum("tp").astype(np.float32), self._cum("ge").astype(np.float32)
        return self._tp_ge

    def metric(self, counts: np.ndarray, metric: str) -> np.ndarray:
        """``metric`` for each row of ``counts`` (B, n): multiplicity of every image."""
        if metric not in CURVE_METRICS:
            raise ValueError(f"metric must be one of {CURVE_METRICS}, got {metric!r}")
        c = np.asarray(counts, np.float64)
        p, n = c @ self.pos, c @ self.neg
        out = np.full(c.shape[0], np.nan)
        if self.pos.sum() == 0:
            return out  # no positive at all
        if metric == "auroc":
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.sum((c @ self.u) * c, axis=1) / (p * n)
            out[(p == 0) | (n == 0)] = np.nan
            return out
        m_tp, m_ge = self.tp_ge
        step = max(1, int(2_000_000 // m_tp.shape[1]))
        c32 = c.astype(np.float32)
        for a in range(0, c.shape[0], step):
            cc = c32[a:a + step]
            pa = p[a:a + step, None]
            tp, ge = (cc @ m_tp).astype(np.float64), (cc @ m_ge).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                if metric == "ap":
                    dtp = np.diff(tp, axis=1, prepend=0.0)
                    v = np.sum(dtp * tp / np.where(tp + ge > 0, tp + ge, 1.0), axis=1) / pa[:, 0]
                else:
                    v = np.max(2.0 * tp / (tp + ge + pa), axis=1)
            out[a:a + step] = v
        out[(p == 0) | (n == 0)] = np.nan  # one class in this resample: undefined
        return out


def curve_value(labels: Any, scores: Any, metric: str) -> float:
    """``metric`` (auroc / ap / f1max) of one evaluation set, by the same code the bootstrap uses;
    (n, K) pixel samples are pooled. NaN when one class is missing."""
    srt = _Sorted(labels, scores, metric)
    return float(srt.metric(np.ones((1, srt.n), np.int64), curve_metric(metric) or metric)[0])


def _strata(labels: Any, strata: Any, n: int, where: str) -> np.ndarray:
    if strata is None:
        y = np.asarray(labels)
        st = y if y.ndim == 1 else y.reshape(n, -1).any(axis=1)
    else:
        st = np.asarray(strata)
    if st.shape != (n,):
        raise ValueError(f"{where}: strata must have shape ({n},), got {st.shape}")
    return st.astype(bool)


def _draw(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) multiplicities: good images resampled among themselves, then anomalous ones."""
    n = strata.size
    counts = np.zeros(n_boot * n, dtype=np.int64)
    rows = (np.arange(n_boot) * n)[:, None]
    for cls in (False, True):
        idx = np.flatnonzero(strata == cls)
        if idx.size:
            pick = idx[rng.integers(0, idx.size, (n_boot, idx.size))]
            counts += np.bincount((rows + pick).ravel(), minlength=n_boot * n)
    return counts.reshape(n_boot, n)


def _check_boot(metric: str, n_boot: int, level: float | None = None) -> str:
    if level is not None:
        _check_level(level)
    m = curve_metric(metric)
    if m is None:
        raise ValueError(f"cannot bootstrap metric {metric!r}: only {CURVE_METRICS} (image_ / pixel_)")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    return m


def _percentile(dist: np.ndarray, level: float, what: str) -> tuple[float, float]:
    ok = dist[np.isfinite(dist)]
    if ok.size < dist.size:
        warnings.warn(f"{what}: {dist.size - ok.size} of {dist.size} resamples undefined (one class); "
                      f"interval from the rest", RuntimeWarning, stacklevel=3)
    if ok.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_distribution(sample: Sample, metric: str, n_boot: int = 1000,
                           rng: np.random.Generator | int = 0) -> tuple[float, np.ndarray]:
    """(estimate, n_boot resampled values) of one stratum's stratified bootstrap. Means of such
    distributions drawn independently per stratum are the bootstrap of the mean over strata,
    so callers may cache them per stratum (the tables do)."""
    m = _check_boot(metric, n_boot)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    srt = _Sorted(sample.labels, sample.scores, metric)
    st = _strata(sample.labels, sample.strata, srt.n, metric)
    est = srt.metric(np.ones((1, srt.n), np.int64), m)[0]
    return float(est), srt.metric(_draw(st, n_boot, rng), m)


def percentile_interval(dist: Any, level: float = 0.95, what: str = "bootstrap") -> tuple[float, float]:
    """The percentile interval of a bootstrap distribution (undefined resamples left out, warned)."""
    _check_level(level)
    return _percentile(np.asarray(dist, np.float64), level, what)


def bootstrap_combined(samples: Sequence[Sample], metric: str, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, lo, hi): the mean over strata of ``metric``, with the percentile interval of
    its stratified bootstrap (images resampled within each stratum and class, independently)."""
    m = _check_boot(metric, n_boot, level)
    if not samples:
        raise ValueError("bootstrap: no samples")
    rng = np.random.default_rng(seed)
    est, dist = 0.0, np.zeros(n_boot)
    for s in samples:
        e, d = bootstrap_distribution(s, m, n_boot, rng)
        est, dist = est + e, dist + d
    est, dist = est / len(samples), dist / len(samples)
    return (float(est), *_percentile(dist, level, f"bootstrap of {metric}"))


def bootstrap_interval(labels: Any, scores: Any, metric: str, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95, strata: Any = None) -> tuple[float, float, float]:
    """(estimate, lo, hi) of one evaluation set: stratified per-image percentile bootstrap.

    ``labels`` / ``scores`` of shape (n,) are images; of shape (n, K) they are K sampled pixels
    per image, and images (not pixels) are resampled, their pixels pooled."""
    return bootstrap_combined([Sample(labels, scores, strata)], metric, n_boot, seed, level)


def paired_bootstrap_combined(samples: Sequence[PairedSample], metric: str, n_boot: int = 1000,
                              seed: int = 0, level: float = 0.95) -> tuple[float, float, float, float]:
    """(delta, lo, hi, p) of mean over strata of metric(A) - metric(B), both on the same resampled
    images. p is two-sided from the bootstrap distribution of the difference:
    ``2 * min(P*(d <= 0), P*(d >= 0))`` with the usual +1 in numerator and denominator, so it is
    below 0.05 about when the 95% percentile interval excludes 0, and never exactly 0."""
    m = _check_boot(metric, n_boot, level)
    if not samples:
        raise ValueError("paired bootstrap: no samples")
    rng = np.random.default_rng(seed)
    delta, dist = 0.0, np.zeros(n_boot)
    for i, s in enumerate(samples):
        a = _Sorted(s.labels, s.scores_a, f"pair {i}, A")
        b = _Sorted(s.labels if s.labels_b is None else s.labels_b, s.scores_b, f"pair {i}, B")
        if a.n != b.n:
            raise ValueError(f"pair {i}: A has {a.n} images, B has {b.n}: not paired")
        st = _strata(s.labels, s.strata, a.n, f"pair {i}")
        ones = np.ones((1, a.n), np.int64)
        delta += a.metric(ones, m)[0] - b.metric(ones, m)[0]
        counts = _draw(st, n_boot, rng)
        dist += a.metric(counts, m) - b.metric(counts, m)
    delta, dist = delta / len(samples), dist / len(samples)
    lo, hi = _percentile(dist, level, f"paired bootstrap of {metric}")
    d = dist[np.isfinite(dist)]
    if d.size == 0:
        return float(delta), lo, hi, math.nan
    below = (1 + np.sum(d <= 0)) / (d.size + 1)
    above = (1 + np.sum(d >= 0)) / (d.size + 1)
    return float(delta), lo, hi, float(min(1.0, 2 * min(below, above)))


def paired_bootstrap(labels: Any, scores_a: Any, scores_b: Any, metric: str, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95, strata: Any = None,
                     labels_b: Any = None) -> tuple[float, float, float, float]:
    """(delta, lo, hi, p) of metric(A) - metric(B) on one evaluation set; see the combined form."""
    return paired_bootstrap_combined([PairedSample(labels, scores_a, scores_b, labels_b, strata)],
                                     metric, n_boot, seed, level)


# --------------------------------------------------------------------------- DeLong
def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components from mid-ranks (Sun & Xu 2014): V10[i] = share of negatives
    below positive i (ties 1/2), V01[j] = share of positives above negative j (ties 1/2)."""
    m, n = pos.size, neg.size
    tz = sps.rankdata(np.r_[pos, neg])
    v10 = (tz[:m] - sps.rankdata(pos)) / n
    v01 = 1.0 - (tz[m:] - sps.rankdata(neg)) / m
    return v10, v01


def _delong_delta_var(labels: Any, scores_a: Any, scores_b: Any) -> tuple[float, float]:
    y = np.asarray(labels)
    a, b = np.asarray(scores_a, np.float64).ravel(), np.asarray(scores_b, np.float64).ravel()
    if y.ndim != 1 or a.shape != y.shape or b.shape != y.shape:
        raise ValueError(f"DeLong: labels {y.shape}, scores_a {a.shape}, scores_b {b.shape} must be one (n,)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("DeLong: labels must be 0/1")
    y = y.astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        warnings.warn(f"DeLong needs >= 2 images per class, got {m} anomalous and {n} good; NaN",
                      RuntimeWarning, stacklevel=3)
        return math.nan, math.nan
    va10, va01 = _placements(a[y], a[~y])
    vb10, vb01 = _placements(b[y], b[~y])
    d10, d01 = va10 - vb10, va01 - vb01
    return float(d10.mean()), float(d10.var(ddof=1) / m + d01.var(ddof=1) / n)


def _z_test(delta: float, var: float) -> tuple[float, float, float, float]:
    if not np.isfinite(delta) or not np.isfinite(var):
        return math.nan, math.nan, math.nan, math.nan
    se = math.sqrt(max(var, 0.0))
    if se == 0:  # identical rankings: no evidence of a difference (delta is 0 then)
        return delta, 0.0, (0.0 if delta == 0 else math.copysign(math.inf, delta)), (1.0 if delta == 0 else 0.0)
    z = delta / se
    return delta, se, z, float(2 * sps.norm.sf(abs(z)))


def delong_test(labels: Any, scores_a: Any, scores_b: Any) -> tuple[float, float, float, float]:
    """(AUROC(A) - AUROC(B), its standard error, z, two-sided p) by DeLong's test for two
    correlated ROC curves on the same images. The variance of the difference is that of the
    paired placement differences: Var(V10_A - V10_B)/m + Var(V01_A - V01_B)/n."""
    return _z_test(*_delong_delta_var(labels, scores_a, scores_b))


def delong_combined(samples: Sequence[PairedSample]) -> tuple[float, float, float, float]:
    """DeLong over independent strata: delta = mean of per-stratum deltas, Var = sum of
    variances / k^2 (the mean of k independent estimates), then the same z test."""
    if not samples:
        raise ValueError("DeLong: no samples")
    dv = [_delong_delta_var(s.labels, s.scores_a, s.scores_b) for s in samples]
    k = len(dv)
    return _z_test(sum(d for d, _ in dv) / k, sum(v for _, v in dv) / k ** 2)


# --------------------------------------------------------------------------- multiplicity
def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN and does not count).

    Sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)); rejecting where the
    adjusted value is below alpha controls the family-wise error rate at alpha."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must be in [0, 1], got {p[ok].tolist()}")
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out
