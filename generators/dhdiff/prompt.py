"""Text conditions "a photo of a {category} with a {defect} defect" behind one interface.

``LearnedPromptEncoder`` (default) is a tiny trainable token table: the template's fixed words
become learned context tokens, the category and the defect type one learned vector each. It is
what lets the tiny scale run without any pretrained weights. ``ClipPromptEncoder`` uses a local
CLIP text encoder (``clip_path``). Both return the embedding and the defect-word positions
(where SSM puts the control map S^O).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TEMPLATE = "a photo of a {category} with a {defect} defect"


class PromptEncoder(nn.Module):
    """encode(categories, defects) -> (embeddings [B, L, D], defect-token mask [B, L] bool)."""

    dim: int

    def encode(self, categories: list[str], defects: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class LearnedPromptEncoder(PromptEncoder):
    # token layout: ctx*4 ("a photo of a"), category, ctx*2 ("with a"), defect, ctx*1 ("defect")
    def __init__(self, categories: list[str], defects: list[str], dim: int, n_ctx: int = 7):
        super().__init__()
        if n_ctx < 1:
            raise ValueError("dhdiff: config field 'n_ctx' must be >= 1")
        self.dim = dim
        self.categories = list(categories)
        self.defects = list(defects)
        g = torch.Generator().manual_seed(0)
        self.ctx = nn.Parameter(torch.randn(n_ctx, dim, generator=g))
        self.cat = nn.Parameter(torch.randn(len(self.categories), dim, generator=g))
        self.defect = nn.Parameter(torch.randn(len(self.defects), dim, generator=g))
        self.pre = min(4, n_ctx)                    # context tokens before the category
        self.mid = min(2, n_ctx - self.pre)         # between category and defect
        self.length = n_ctx + 2

    def _index(self, table: list[str], value: str, what: str) -> int:
        if value not in table:
            raise ValueError(f"dhdiff: unknown {what} {value!r}; the model was fit on {table}")
        return table.index(value)

    def encode(self, categories, defects):
        ci = torch.tensor([self._index(self.categories, c, "category") for c in categories])
        di = torch.tensor([self._index(self.defects, d, "defect type") for d in defects])
        ci, di, b = ci.to(self.cat.device), di.to(self.cat.device), len(ci)
        ctx = self.ctx.unsqueeze(0).expand(b, -1, -1)
        p, m = self.pre, self.pre + self.mid
        emb = torch.cat([ctx[:, :p], self.cat[ci, None], ctx[:, p:m], self.defect[di, None], ctx[:, m:]], dim=1)
        mask = torch.zeros(b, self.length, dtype=torch.bool)
        mask[:, m + 1] = True
        return emb, mask


class ClipPromptEncoder(PromptEncoder):
    """Frozen local CLIP text encoder (SD-1.x folder with text_encoder/ + tokenizer/, or a model folder)."""

    def __init__(self, clip_path: str | Path):
        super().__init__()
        path = Path(clip_path) if clip_path else None
        if path is None or not path.exists():
            raise ValueError(f"dhdiff: config field 'clip_path' does not exist: {clip_path!r}")
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ModuleNotFoundError:
            raise ValueError(f"dhdiff: the CLIP text encoder at {str(path)!r} (config clip_path, or sd_path's "
                             f"text_encoder/) needs the 'transformers' package, which is not installed; set "
                             f"text_encoder: learned to train token embeddings instead") from None
        sub = {"subfolder": "text_encoder"} if (path / "text_encoder").is_dir() else {}
        tsub = {"subfolder": "tokenizer"} if (path / "tokenizer").is_dir() else {}
        self.tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True, **tsub)
        self.model = CLIPTextModel.from_pretrained(path, local_files_only=True, **sub).requires_grad_(False)
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> torch.Tensor:
        """[len(prompts), max_length, dim] hidden states, padded as SD pads (``""`` gives SD's
        unconditional context)."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.model(tok.input_ids.to(next(self.model.parameters()).device))[0]

    @torch.no_grad()
    def encode(self, categories, defects):
        prompts = [TEMPLATE.format(category=c.replace("_", " "), defect=d.replace("_", " "))
                   for c, d in zip(categories, defects)]
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        dev = next(self.model.parameters()).device
        emb = self.model(tok.input_ids.to(dev))[0]
        mask = torch.zeros(tok.input_ids.shape, dtype=torch.bool)
        for i, d in enumerate(defects):
            word = self.tokenizer(d.replace("_", " "), add_special_tokens=False).input_ids
            ids = tok.input_ids[i].tolist()
            for s in range(len(ids) - len(word) + 1):
                if ids[s:s + len(word)] == word:
                    mask[i, s:s + len(word)] = True
                    break
        return emb, mask
