"""No downloads, ever: timm backbones are random or already on disk; torch-hub, Hugging Face and
anomalib downloads are refused with a message naming the file and where to put it."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class MissingWeightsError(FileNotFoundError):
    """Pre-trained weights (or an auxiliary data set) are not on disk and we never download."""


def weight_locations() -> dict[str, Path]:
    """Where timm / torch hub look for weights now (read at call time: env vars are honoured)."""
    import huggingface_hub.constants as hf_constants

    return {"hf_cache": Path(hf_constants.HF_HUB_CACHE), "torch_hub": Path(torch.hub.get_dir()) / "checkpoints"}


def require_timm_weights(model_name: str) -> None:
    """Raise MissingWeightsError unless timm can load ``model_name``'s weights from disk."""
    import timm
    from timm.models import _builder

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return  # no pretrained config: timm itself will say so
    source, loc = _builder._resolve_pretrained_source(cfg.to_dict())
    where = weight_locations()
    if source == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        repo, files = (loc, ("model.safetensors", "pytorch_model.bin")) if isinstance(loc, str) else (loc[0], (loc[1],))
        for fname in files:
            hit = try_to_load_from_cache(repo, fname, cache_dir=where["hf_cache"])
            if isinstance(hit, str) and os.path.exists(hit):
                return
        raise MissingWeightsError(
            f"pre-trained weights for timm model {model_name!r} are not on disk and downloads are off: "
            f"place {files[0]} of https://huggingface.co/{repo} in the Hugging Face cache "
            f"{where['hf_cache'] / ('models--' + repo.replace('/', '--'))}/snapshots/<revision>/ "
            f"(e.g. `huggingface-cli download {repo} {files[0]}` on a connected machine, then copy "
            f"the cache folder), or pass pre_trained=False, or backbone: resnet50 with "
            f"backbone_weights: imagenet (`make weights`)"
        )
    if source == "url":
        target = where["torch_hub"] / os.path.basename(loc)
        if not target.exists():
            raise MissingWeightsError(
                f"pre-trained weights for timm model {model_name!r} are not on disk and downloads are off: "
                f"place {loc} at {target}, or pass pre_trained=False"
            )
    elif source == "file" and not Path(loc).exists():
        raise MissingWeightsError(f"pre-trained weights file {loc} for timm model {model_name!r} does not exist")


def _refuse_torch_download(url: str, dst: str, *args, **kwargs) -> None:
    raise MissingWeightsError(f"{url} is not on disk and downloads are off: place it at {dst}")


def _refuse_anomalib_download(root: Path, info: Any) -> None:
    raise MissingWeightsError(
        f"anomalib wants {info.name} ({info.url}) and downloads are off: extract it under {root}"
    )


@contextlib.contextmanager
def no_downloads(pre_trained: bool, model_cls: type) -> Iterator[None]:
    """Force timm backbones random (pre_trained=False) or check their weights are local; refuse
    every torch-hub, Hugging Face and anomalib download while building or training a model."""
    import huggingface_hub.constants as hf_constants
    import timm

    original = timm.create_model

    def create_model(name: str, pretrained: bool = False, **kwargs):
        if pretrained and pre_trained:
            require_timm_weights(name)
        return original(name, pretrained=pretrained and pre_trained, **kwargs)

    model_module = sys.modules[model_cls.__module__]
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(Patcher())
        patch(timm, "create_model", create_model)
        patch(torch.hub, "download_url_to_file", _refuse_torch_download)
        patch(hf_constants, "HF_HUB_OFFLINE", True)
        if hasattr(model_module, "download_and_extract"):
            patch(model_module, "download_and_extract", _refuse_anomalib_download)
        yield


class Patcher:
    """A tiny setattr-and-restore helper (unittest.mock.patch would do, this keeps it explicit)."""

    def __enter__(self):
        self._saved: list[tuple[Any, str, Any]] = []
        return self

    def __call__(self, obj: Any, attr: str, value: Any) -> None:
        self._saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    def __exit__(self, *exc) -> None:
        for obj, attr, value in reversed(self._saved):
            setattr(obj, attr, value)
