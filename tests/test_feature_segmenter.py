"""The frozen-encoder segmenter: trains its decoder on the pairs, ranks a pasted square above
normals, is seeded, records its weights and refuses missing weights at plan time."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark import weights as W
from benchmark.schema import ConfigError
from detectors import DetectorContext, create_detector, get_detector_class
from generators.base import Pair
from tests.toys import flat, square

torch.set_num_threads(1)


def _flat(rng, n, size=64):
    return flat(rng, n, size)


_square = square


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("weights")
    meta = W.write_weights(W.build_resnet().state_dict(), {"source": "test", "stride": "v1.5"}, cache)
    return cache, meta


def _fit(seed, feature_cache=None, **cfg):
    rng = np.random.default_rng(0)
    pairs = [Pair(*_square(_flat(rng, 1)[0], 4 + 5 * i, 6 + 4 * i, 16), "square") for i in range(6)]
    det = create_detector("feature_segmenter", **{"steps": 40, "width": 8, "batch_size": 4, "lr": 3e-3,
                                                  "pool_size": 5, **cfg})
    det.fit(_flat(rng, 6), pairs, DetectorContext("tex", seed=seed, image_size=64, feature_cache=feature_cache))
    anomalous, _ = _square(_flat(rng, 1)[0], 30, 20, 16)
    return det, det.predict(np.concatenate([_flat(rng, 3), anomalous[None]]))


def test_learns_pairs_seeded_and_records_weights(weights_cache, monkeypatch):
    cache, meta = weights_cache
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(cache))
    det, (scores, maps) = _fit(seed=0)
    assert scores.dtype == np.float64 and maps.shape == (4, 64, 64) and maps.dtype == np.float32
    assert scores[3] > scores[:3].max()
    assert maps[3, 30:46, 20:36].mean() > maps[3].mean()
    assert det.loss_history[-1] < det.loss_history[0]
    assert det.weights_info()["sha256"] == meta["sha256"]
    _, (scores2, maps2) = _fit(seed=0)
    np.testing.assert_array_equal(scores, scores2)
    np.testing.assert_array_equal(maps, maps2)


def test_missing_weights_found_on_the_resolved_config(tmp_path, monkeypatch):
    from benchmark.schema import resolved
    from detectors.backbones import check_weights

    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(tmp_path / "none_here"))
    where = "detector_cfg.feature_segmenter"
    cfg = resolved(get_detector_class("feature_segmenter").resolve_config({}, where))
    assert cfg["backbone_weights"] == "imagenet"
    assert re.match(r"^detector_cfg\.feature_segmenter\.backbone_weights: .*make weights", check_weights(cfg, where))
    with pytest.raises(ConfigError, match="steps"):
        get_detector_class("feature_segmenter").resolve_config({"steps": 0, "backbone_weights": "none"}, "d")


def test_ensemble_averages_member_maps_and_member_0_is_the_single_decoder(weights_cache, monkeypatch):
    """K decoders on the same frozen features: the map is their mean, and member 0 is exactly the
    decoder a K = 1 detector of the same seed trains (common random numbers survive ensembling)."""
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(weights_cache[0]))
    single, _ = _fit(seed=3)
    det, (scores, maps) = _fit(seed=3, ensemble=2)
    assert len(det.decoders) == 2
    for a, b in zip(single.decoder.state_dict().values(), det.decoders[0].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    rng = np.random.default_rng(0)
    images = np.concatenate([_flat(rng, 2), _square(_flat(rng, 1)[0], 30, 20, 16)[0][None]])
    both, members = det.decoders, []
    for d in both:
        det.decoders = [d]
        members.append(det.predict(images)[1])
    assert not np.allclose(members[0], members[1], atol=1e-4)      # two different decoders
    det.decoders = both
    np.testing.assert_allclose(det.predict(images)[1], (members[0] + members[1]) / 2, rtol=0, atol=2e-6)


def test_stem_decodes_at_half_the_input_side(weights_cache, monkeypatch):
    """``stem`` adds the stride-2 conv1 features: logits at 32 x 32 for a 64 px input, not 16 x 16."""
    from detectors.feature_segmenter import FeatureSegmenter

    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(weights_cache[0]))
    train_one, targets = FeatureSegmenter._train_one, []

    def recording(self, feats_n, feats_p, masks, *args):
        targets.append(tuple(masks.shape[-2:]))
        return train_one(self, feats_n, feats_p, masks, *args)

    monkeypatch.setattr(FeatureSegmenter, "_train_one", recording)
    rng = np.random.default_rng(1)
    for stem, side in ((False, 16), (True, 32)):
        det, (scores, maps) = _fit(seed=0, stem=stem)
        assert targets.pop() == (64, 64)      # masks stay at the image side, stem or not
        feats = det._features(_flat(rng, 2, 64))
        assert len(feats) == (4 if stem else 3)
        assert det.decoder(*feats).shape[-2:] == (side, side)
        assert maps.shape == (4, 64, 64) and scores[3] > scores[:3].max()


def test_new_options_stay_out_of_the_resolved_config_at_their_defaults():
    """``stem``, ``ensemble``, ``head``, ``context`` and ``change_threshold`` are omitted while at their defaults, so
    existing cells keep their hashes."""
    from benchmark.schema import resolved

    cls = get_detector_class("feature_segmenter")
    cfg = resolved(cls.resolve_config({"backbone_weights": "none"}, "d"))
    assert not {"stem", "ensemble", "head", "context", "change_threshold", "linear_members", "linear_lr",
                "member_scale", "feature_dropout", "image_score"} & set(cfg)
    cfg = resolved(cls.resolve_config({"backbone_weights": "none", "stem": True, "ensemble": 3,
                                       "change_threshold": 8}, "d"))
    assert cfg["stem"] is True and cfg["ensemble"] == 3 and cfg["change_threshold"] == 8
    with pytest.raises(ConfigError, match="change_threshold"):
        cls.resolve_config({"change_threshold": 256}, "detector_cfg.feature_segmenter")


def test_change_threshold_keeps_only_the_mask_pixels_that_changed():
    """A 4 x 4 paste whose left half changed by 20 and right half by 5 (of 255) on one channel:
    threshold 8 keeps the left half, 0 keeps the mask; a pair without a source is refused."""
    from detectors.feature_segmenter import pair_target

    normals = np.full((2, 8, 8, 3), 100, np.uint8)
    normals[0, 2:6, 2:4, 1] = 120          # from this (wrong) source the left half did not change
    image = normals[1].copy()
    image[2:6, 2:4, 1] += 20
    image[2:6, 4:6, 1] -= 5
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    pair = Pair(image, mask, "crack", source=1)
    changed = np.zeros((8, 8), np.float32)
    changed[2:6, 2:4] = 1
    np.testing.assert_array_equal(pair_target(pair, normals, 8), changed)
    np.testing.assert_array_equal(pair_target(pair, normals, 4), mask.astype(np.float32))
    np.testing.assert_array_equal(pair_target(pair, normals, 0), mask.astype(np.float32))
    np.testing.assert_array_equal(pair_target(Pair(image, mask, "crack", source=0), normals, 8)[2:6, 2:4], 0)
    with pytest.raises(ValueError, match="change_threshold=8 .* 'crack' pair has no source"):
        pair_target(Pair(image, mask, "crack"), normals, 8)


def test_linear_head_is_linear_in_the_features_and_learns_the_pairs(weights_cache, monkeypatch):
    """``head: linear`` is per-pixel logistic regression: its logits move linearly with the features
    (no hidden layer, no normalisation), come out at layer1's stride, and still rank a pasted
    square above normals; it is seeded like the decoder and refuses the stem it cannot use."""
    from detectors.feature_segmenter import LinearHead

    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(weights_cache[0]))
    torch.manual_seed(0)
    head = LinearHead()
    feats = [torch.randn(2, c, s, s) for c, s in ((256, 16), (512, 8), (1024, 4))]
    zero = head(*[torch.zeros_like(f) for f in feats])
    out = head(*feats)
    assert out.shape == (2, 2, 16, 16)
    torch.testing.assert_close(head(*[3 * f for f in feats]) - zero, 3 * (out - zero), rtol=1e-4, atol=1e-4)
    other = [f.flip(0) for f in feats]
    torch.testing.assert_close(head(*[a + b for a, b in zip(feats, other)]) - zero,
                               (out - zero) + (head(*other) - zero), rtol=1e-4, atol=1e-4)
    det, (scores, maps) = _fit(seed=0, head="linear", lr=3e-2)
    assert isinstance(det.decoder, LinearHead) and len(det.decoders) == 1
    assert scores[3] > scores[:3].max()
    assert maps[3, 30:46, 20:36].mean() > maps[3].mean()
    _, (scores2, _) = _fit(seed=0, head="linear", lr=3e-2)
    np.testing.assert_array_equal(scores, scores2)
    cls = get_detector_class("feature_segmenter")
    with pytest.raises(ConfigError, match=r"^d: head='linear' has no stem"):
        cls.resolve_config({"backbone_weights": "none", "head": "linear", "stem": True}, "d")
    with pytest.raises(ConfigError, match=r"^d\.head: expected one of decoder, linear"):
        cls.resolve_config({"backbone_weights": "none", "head": "mlp"}, "d")
    with pytest.raises(ConfigError, match=r"^d: context=2 is an input of linear heads"):
        cls.resolve_config({"backbone_weights": "none", "context": 2}, "d")


def test_linear_head_context_reads_the_neighbourhood_and_stays_linear():
    """``context: c`` adds each layer's (2c+1)-square mean as inputs: a change of layer1 at one
    place moves the logits two places away only with context, and the head is still linear."""
    from detectors.feature_segmenter import LinearHead

    torch.manual_seed(0)
    feats = [torch.randn(1, c, s, s) for c, s in ((256, 16), (512, 8), (1024, 4))]
    moved = [f.clone() for f in feats]
    moved[0][0, :, 5, 5] += 1.0
    for context, changes in ((0, False), (2, True)):
        torch.manual_seed(1)
        head = LinearHead(context)
        delta = (head(*moved) - head(*feats)).abs()
        assert delta[0, :, 5, 5].max() > 1e-3
        assert bool(delta[0, :, 5, 7].max() > 1e-4) is changes
        assert float(delta[0, :, 5, 8:].max()) == 0.0        # past the 5 x 5 window: untouched
        zero = head(*[torch.zeros_like(f) for f in feats])
        torch.testing.assert_close(head(*[2 * f for f in feats]) - zero, 2 * (head(*feats) - zero),
                                   rtol=1e-4, atol=1e-4)


def test_linear_head_with_context_is_the_defined_model():
    """The head pools its 2 context logits instead of the C feature channels; that must be the
    model as defined, a 1 x 1 conv on [f, (2c+1)-square mean of f] (count_include_pad off), in
    the output and in the weights' gradients, for channels-last features as the encoder gives."""
    from detectors.feature_segmenter import LinearHead

    torch.manual_seed(0)
    feats = [torch.randn(2, c, s, s).contiguous(memory_format=torch.channels_last)
             for c, s in ((256, 16), (512, 8), (1024, 4))]
    for context in (1, 2):
        torch.manual_seed(1)
        head = LinearHead(context)
        with torch.no_grad():   # the bias of the mean half must not be pooled away: make it count
            for conv in head.proj:
                conv.bias.add_(0.5)
        k = 2 * context + 1

        def defined(conv, f, k=k, context=context):
            pooled = F.avg_pool2d(f, k, stride=1, padding=context, count_include_pad=False)
            return conv(torch.cat([f, pooled], 1))

        ref = defined(head.proj[0], feats[0])
        for conv, f in zip(head.proj[1:], feats[1:]):
            ref = ref + F.interpolate(defined(conv, f), size=ref.shape[-2:], mode="bilinear", align_corners=False)
        out = head(*feats)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad((out * ref.detach()).sum(), list(head.parameters()))
        grads_ref = torch.autograd.grad((ref * ref.detach()).sum(), list(head.parameters()))
        for g, r in zip(grads, grads_ref):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_linear_members_count_alike_whatever_their_scale(weights_cache, monkeypatch):
    """``linear_members: k`` trains k linear heads beside the decoders and averages each member's
    log-odds in units of its own spread on the training normals: decoder 0 is still the cell
    seed's, the map still finds the square, and scaling one member's log-odds by 0.1 leaves the
    map as it was (a probability average would follow the scaled member)."""
    from detectors.feature_segmenter import FeatureDecoder, LinearHead

    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(weights_cache[0]))
    single, _ = _fit(seed=0, ensemble=2)
    det, (scores, maps) = _fit(seed=0, ensemble=2, linear_members=2, linear_lr=3e-2)
    assert [type(d) for d in det.decoders] == [FeatureDecoder, FeatureDecoder, LinearHead, LinearHead]
    for a, b in zip(single.decoders, det.decoders[:2]):
        for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert scores[3] > scores[:3].max()
    assert maps[3, 30:46, 20:36].mean() > maps[3].mean()
    _, (scores2, maps2) = _fit(seed=0, ensemble=2, linear_members=2, linear_lr=3e-2)
    np.testing.assert_array_equal(maps, maps2)
    rng = np.random.default_rng(7)
    images = np.concatenate([_flat(rng, 2), _square(_flat(rng, 1)[0], 12, 30, 16)[0][None]])
    feats_n = det._features(_flat(np.random.default_rng(0), 6))

    def standardised_map():
        det.standardise = [det._normal_logit_stats(d, feats_n) for d in det.decoders]
        return det.predict(images)[1]

    before = standardised_map()
    with torch.no_grad():
        for conv in det.decoders[2].proj:   # a linear head: its log-odds become 0.1 x what they were
            conv.weight.mul_(0.1)
            conv.bias.mul_(0.1)
    np.testing.assert_allclose(standardised_map(), before, rtol=0, atol=1e-5)
    cls = get_detector_class("feature_segmenter")
    with pytest.raises(ConfigError, match=r"^d: linear_members=1 adds linear heads beside decoders"):
        cls.resolve_config({"backbone_weights": "none", "head": "linear", "linear_members": 1}, "d")
    cfg = cls.resolve_config({"backbone_weights": "none", "linear_members": 1, "context": 2}, "d")
    assert cfg.linear_members == 1 and cfg.context == 2


def test_member_scale_measures_each_member_on_the_normals():
    """``member_scale``: std is (mean, std) of a member's log-odds over the normals' pixels, tail is
    (median, 99.9th percentile - median); a member with a few bright normal pixels gets a wider
    tail than its std says. Only a mixed ensemble has members to scale."""
    rng = np.random.default_rng(3)
    odds = rng.normal(-4.0, 1.0, (10, 16, 16))
    odds[0, :2, :2] = 30.0                     # four bright pixels on one normal

    class Fixed(torch.nn.Module):              # logits whose class-1 minus class-0 is ``odds``
        def forward(self, f1, f2, f3):
            return torch.stack([torch.zeros_like(f1[:, 0]), f1[:, 0]], 1)

    feats = [torch.from_numpy(odds)[:, None], torch.zeros(10, 1, 8, 8), torch.zeros(10, 1, 4, 4)]
    flat_odds = odds.reshape(-1)
    for scale, want in (("std", (flat_odds.mean(), flat_odds.std())),
                        ("tail", (np.median(flat_odds), np.quantile(flat_odds, 0.999) - np.median(flat_odds)))):
        det = create_detector("feature_segmenter", backbone_weights="none", linear_members=1, member_scale=scale,
                              predict_batch_size=4)
        det.device = torch.device("cpu")
        np.testing.assert_allclose(det._normal_logit_stats(Fixed(), feats), want, rtol=1e-12)
    cls = get_detector_class("feature_segmenter")
    with pytest.raises(ConfigError, match=r"^d: member_scale='tail' scales the members of a mixed ensemble"):
        cls.resolve_config({"backbone_weights": "none", "member_scale": "tail"}, "d")


def test_feature_dropout_is_seeded_training_only_and_still_learns(weights_cache, monkeypatch):
    """``feature_dropout`` zeroes feature channels while a member trains, from the member's seed:
    the same seed gives the same maps, the option gives other weights than without it, the
    square is still found, and predicting twice gives the same map (no dropout at prediction)."""
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(weights_cache[0]))
    det, (scores, maps) = _fit(seed=0, feature_dropout=0.5)
    _, (_, maps2) = _fit(seed=0, feature_dropout=0.5)
    np.testing.assert_array_equal(maps, maps2)
    plain, _ = _fit(seed=0)
    assert not torch.equal(det.decoder.head.weight, plain.decoder.head.weight)
    assert scores[3] > scores[:3].max()
    images = _flat(np.random.default_rng(5), 2)
    np.testing.assert_array_equal(det.predict(images)[1], det.predict(images)[1])
    with pytest.raises(ConfigError, match=r"feature_dropout"):
        get_detector_class("feature_segmenter").resolve_config({"feature_dropout": 1.0}, "d")


def test_member_image_logits_are_each_members_own_score_in_log_odds_without_saturating():
    """A member's image log-odds is the log-odds of the score a one-member detector gives (max of
    the pool_size average pool of its map at the image size): a constant map of log-odds c scores
    exactly c, even at c = +-60 where a probability is 1 or 0 in float64 and every image would tie;
    an 8 x 8 square of c = 3 on a map of -9 scores the log-odds of the pooled probability."""
    det = create_detector("feature_segmenter", backbone_weights="none", pool_size=5)

    def logits(odds):          # 2-class logits whose class-1 minus class-0 is ``odds``
        odds = torch.as_tensor(odds, dtype=torch.float32)
        return torch.stack([torch.zeros_like(odds), odds], 1)

    cs = [-60.0, -5.0, 0.0, 5.0, 45.0, 60.0]
    got = det._member_image_logits([logits(torch.full((len(cs), 8, 8), 1.0) * torch.tensor(cs)[:, None, None])],
                                   (32, 32))
    assert got.shape == (1, len(cs))
    np.testing.assert_allclose(got[0].numpy(), cs, rtol=1e-12, atol=1e-6)
    square = torch.full((1, 16, 16), -9.0)
    square[0, 4:12, 4:12] = 3.0
    want = torch.sigmoid(torch.nn.functional.interpolate(square.double()[:, None], size=(16, 16), mode="bilinear",
                                                         align_corners=False))
    pooled = float(torch.nn.functional.avg_pool2d(want, 5, stride=1, padding=2).max())
    np.testing.assert_allclose(float(det._member_image_logits([logits(square)], (16, 16))[0, 0]),
                               np.log(pooled / (1 - pooled)), rtol=1e-12)


def test_image_score_members_standardises_each_members_own_score_on_the_normals(weights_cache, monkeypatch):
    """``image_score: members``: an image's score is the mean over members of the member's own
    image score (what a one-member detector of it scores), in log-odds, minus its mean over the
    training normals, over its std there; the pixel map is the one ``image_score: map`` gives, and
    the square still ranks first."""
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(weights_cache[0]))
    det, (scores, maps) = _fit(seed=0, ensemble=2, image_score="members")
    plain, (_, plain_maps) = _fit(seed=0, ensemble=2)
    np.testing.assert_array_equal(maps, plain_maps)
    assert scores[3] > scores[:3].max()
    rng = np.random.default_rng(0)
    [_flat(rng, 1) for _ in range(6)]          # the pairs' draws in _fit
    normals = _flat(rng, 6)
    rng = np.random.default_rng(4)
    images = np.concatenate([_flat(rng, 3), _square(_flat(rng, 1)[0], 10, 40, 16)[0][None]])
    own = []
    for d in det.decoders:                     # each member alone, through the plain map path
        plain.decoders = [d]
        odds = [np.log(s / (1 - s)) for s in (plain.predict(normals)[0], plain.predict(images)[0])]
        own.append((odds[1] - odds[0].mean()) / odds[0].std())
    np.testing.assert_allclose(det.predict(images)[0], np.mean(own, 0), rtol=1e-4, atol=1e-4)   # float32 maps there
    with pytest.raises(ConfigError, match=r"image_score"):
        get_detector_class("feature_segmenter").resolve_config({"image_score": "mean"}, "d")


@pytest.mark.parametrize("k", [1, 5, 21, 33])
def test_box_mean_is_avg_pool2d_bit_for_bit(k):
    """The member image score's pool: the same float64 numbers as ``F.avg_pool2d`` (kernel k on
    one axis, padding k // 2), on both axes, also where the window is wider than the map."""
    from detectors.feature_segmenter import box_mean

    torch.manual_seed(k)
    x = torch.sigmoid(5 * torch.randn(3, 24, 17, dtype=torch.float64))
    rows = F.avg_pool2d(x[:, None], (k, 1), stride=1, padding=(k // 2, 0))[:, 0]
    cols = F.avg_pool2d(x[:, None], (1, k), stride=1, padding=(0, k // 2))[:, 0]
    assert torch.equal(box_mean(x, k, -2), rows) and torch.equal(box_mean(x, k, 1), rows)
    assert torch.equal(box_mean(x, k, -1), cols) and torch.equal(box_mean(x, k, 2), cols)
    with pytest.raises(ValueError, match="odd"):
        box_mean(x, 4, -1)
