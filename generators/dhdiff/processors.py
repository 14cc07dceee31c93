"""DH-Diff attention as diffusers attention processors: one class per variant, swapped by name.

The U-Net runs both streams stacked on the batch axis, ``[image B | annotation B]``. The conv
and ResNet weights never mix samples, so attention is the only place the streams can meet;
which processor sits in an attention layer decides how (paper III-C/D, docs/dhdiff.md):

* ``plain``  - per-sample attention (stock diffusers behaviour): streams never meet. Used for
               text cross-attention wherever SSM is not placed.
* ``dda``    - self-attention slot. Image: cross-attention with K, V from zeta(F^R) + F^I;
               annotation: self-attention with its own W^A projections. Streams never meet.
* ``concat`` - self-attention slot, the baseline: joint attention over the concatenated I and A
               tokens with shared weights (reference added to the image keys/values as in dda).
* ``ssm``    - text cross-attention slot. Score maps S^I, S^A on the text (+ control S^O on the
               defect-word tokens) fused by eta (zero-initialised conv) + mu (mean), applied to
               the text values. Streams meet only through scores on text.

Per-call data (reference features, control map, defect-token positions) travels in a
``DHContext`` passed as ``cross_attention_kwargs={"dh": ctx}``; the processors accept ``dh``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from generators.attention_ops import finish as _finish
from generators.attention_ops import heads as _heads
from generators.attention_ops import merge as _merge


@dataclass
class DHContext:
    """What one U-Net call needs besides the sample: filled by the model, read by processors."""

    size: tuple[int, int]                          # (H, W) of the U-Net input
    ref: dict[int, torch.Tensor] | None = None     # tokens -> F^R as [B, N, C]
    control: torch.Tensor | None = None            # [B, 1, H, W] control masks in [0, 1]
    has_control: torch.Tensor | None = None        # [B] bool
    defect_tokens: torch.Tensor | None = None      # [B, L] bool: positions of the defect word
    _cache: dict = field(default_factory=dict)

    def grid(self, n: int) -> tuple[int, int]:
        """Token grid (h, w) of an attention layer with ``n`` tokens."""
        H, W = self.size
        s = math.sqrt(H * W / n)
        h, w = round(H / s), round(W / s)
        if h * w != n:
            raise ValueError(f"cannot map {n} tokens onto the {H}x{W} input grid")
        return h, w

    def control_tokens(self, n: int) -> torch.Tensor | None:
        """Control mask averaged onto an ``n``-token grid: [B, N]."""
        if self.control is None:
            return None
        if n not in self._cache:
            h, w = self.grid(n)
            self._cache[n] = F.adaptive_avg_pool2d(self.control, (h, w)).flatten(1)
        return self._cache[n]


def _check_tokens(hidden_states: torch.Tensor, name: str) -> None:
    if hidden_states.ndim != 3 or hidden_states.shape[0] % 2:
        raise ValueError(f"{name}: expects [2B, N, C] tokens of two stacked streams, got {tuple(hidden_states.shape)}")


class _RefMixin(nn.Module):
    """zeta: a zero-initialised 1x1 conv (a Linear on tokens) that lets F^R into the image keys."""

    def _init_zeta(self, ref_dim: int, dim: int) -> None:
        self.zeta = nn.Linear(ref_dim, dim)
        nn.init.zeros_(self.zeta.weight)
        nn.init.zeros_(self.zeta.bias)

    def _with_ref(self, fi: torch.Tensor, dh: DHContext | None) -> torch.Tensor:
        if dh is None or not dh.ref:
            return fi
        ref = dh.ref.get(fi.shape[1])
        if ref is None:
            raise ValueError(f"no reference feature for a {fi.shape[1]}-token attention layer")
        return fi + self.zeta(ref)


class PlainProcessor(AttnProcessor2_0):
    """Stock per-sample attention; accepts (and ignores) the DH context."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, dh: DHContext | None = None, **kwargs):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class DDAProcessor(_RefMixin):
    """Domain-decoupled attention (eq. 4-5): image cross-attn to zeta(F^R)+F^I, annotation self-attn."""

    def __init__(self, attn: Attention, ref_dim: int):
        super().__init__()
        dim = attn.to_q.in_features
        self._init_zeta(ref_dim, dim)
        # W^A starts as a copy of W^I (pretrained at sd scale), then trains on its own.
        self.to_q_a = copy.deepcopy(attn.to_q)
        self.to_k_a = copy.deepcopy(attn.to_k)
        self.to_v_a = copy.deepcopy(attn.to_v)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, dh: DHContext | None = None, **kwargs):
        _check_tokens(hidden_states, "DDAProcessor")
        b = hidden_states.shape[0] // 2
        fi, fa = hidden_states[:b], hidden_states[b:]
        kv = self._with_ref(fi, dh)
        h = attn.heads
        oi = F.scaled_dot_product_attention(_heads(attn.to_q(fi), h), _heads(attn.to_k(kv), h),
                                            _heads(attn.to_v(kv), h))
        oa = F.scaled_dot_product_attention(_heads(self.to_q_a(fa), h), _heads(self.to_k_a(fa), h),
                                            _heads(self.to_v_a(fa), h))
        return _finish(attn, _merge(torch.cat([oi, oa])), hidden_states)


class ConcatProcessor(_RefMixin):
    """Baseline concatenation attention (eq. 1-3): one joint self-attention over I and A tokens."""

    def __init__(self, attn: Attention, ref_dim: int):
        super().__init__()
        self._init_zeta(ref_dim, attn.to_q.in_features)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, dh: DHContext | None = None, **kwargs):
        _check_tokens(hidden_states, "ConcatProcessor")
        b, n = hidden_states.shape[0] // 2, hidden_states.shape[1]
        fi, fa = hidden_states[:b], hidden_states[b:]
        q_in = torch.cat([fi, fa], dim=1)
        kv_in = torch.cat([self._with_ref(fi, dh), fa], dim=1)
        h = attn.heads
        o = F.scaled_dot_product_attention(_heads(attn.to_q(q_in), h), _heads(attn.to_k(kv_in), h),
                                           _heads(attn.to_v(kv_in), h))
        o = _merge(o)
        return _finish(attn, torch.cat([o[:, :n], o[:, n:]]), hidden_states)


class SSMProcessor(nn.Module):
    """Semantic score-map modification (eq. 6-7) in the text cross-attention slot."""

    def __init__(self, attn: Attention | None = None, ref_dim: int | None = None, kernel: int = 3):
        super().__init__()
        # eta: the three maps (S^I, S^A, S^O) as channels on the token grid, per head and text token.
        self.eta = nn.Conv2d(3, 2, kernel, padding=kernel // 2)
        nn.init.zeros_(self.eta.weight)
        nn.init.zeros_(self.eta.bias)

    def fuse(self, si: torch.Tensor, sa: torch.Tensor, so: torch.Tensor, n_maps: torch.Tensor,
             grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """eta(S^I, S^A, S^O) + mu(...) for maps [B, heads, N, L]; mu averages the maps given
        (S^O counts only for samples with a control, ``n_maps`` [B] = 2 or 3)."""
        b, h, n, L = si.shape
        mu = (si + sa + so) / n_maps.view(b, 1, 1, 1).to(si.dtype)
        x = torch.stack([si, sa, so], dim=2)                       # [B, h, 3, N, L]
        x = x.permute(0, 1, 4, 2, 3).reshape(b * h * L, 3, *grid)  # per head and text token
        e = self.eta(x).view(b, h, L, 2, n).permute(3, 0, 1, 4, 2)  # [2, B, h, N, L]
        return e[0] + mu, e[1] + mu

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, dh: DHContext | None = None, **kwargs):
        _check_tokens(hidden_states, "SSMProcessor")
        if encoder_hidden_states is None or dh is None:
            raise ValueError("SSMProcessor needs text (encoder_hidden_states) and a DHContext")
        b, n = hidden_states.shape[0] // 2, hidden_states.shape[1]
        h = attn.heads
        text = encoder_hidden_states[:b]                           # both halves carry the same prompt
        q = _heads(attn.to_q(hidden_states), h)
        k = _heads(attn.to_k(text), h)
        v = _heads(attn.to_v(text), h)
        si = torch.softmax(q[:b] @ k.transpose(-1, -2) * attn.scale, dim=-1)
        sa = torch.softmax(q[b:] @ k.transpose(-1, -2) * attn.scale, dim=-1)
        ctl = dh.control_tokens(n)
        if ctl is None or dh.defect_tokens is None:
            so = torch.zeros_like(si)
            n_maps = torch.full((b,), 2.0, device=si.device)
        else:
            so = (ctl[:, None, :, None] * dh.defect_tokens[:, None, None, :].to(si.dtype)).expand_as(si)
            n_maps = 2.0 + dh.has_control.to(si.dtype)
        si_hat, sa_hat = self.fuse(si, sa, so, n_maps, dh.grid(n))
        out = torch.cat([si_hat @ v, sa_hat @ v])
        return _finish(attn, _merge(out), hidden_states)


PROCESSORS: dict[str, type] = {"plain": PlainProcessor, "dda": DDAProcessor,
                               "concat": ConcatProcessor, "ssm": SSMProcessor}

# ablation (Table VIII) -> (self-attention slot, text cross-attention slot) in the placed blocks.
# Every attention layer OUTSIDE the placed blocks keeps the baseline's attention (concat, plain):
# the ablations start from the concatenation baseline and swap DDA and/or SSM into the placed
# blocks, so "baseline" is concat in every layer. Consequence for "dda" (documented in
# generator.py): its streams meet only in the unplaced layers' concatenation attention; with
# every attention layer placed, its image and annotation streams never meet and cannot align.
UNPLACED: tuple[str, str] = ("concat", "plain")
VARIANTS: dict[str, tuple[str, str]] = {
    "dda+ssm": ("dda", "ssm"),
    "dda": ("dda", "plain"),
    "ssm": ("concat", "ssm"),
    "baseline": ("concat", "plain"),
}


def _pick(n: int, rule) -> set[int]:
    if rule in ("all", True):
        return set(range(n))
    if rule in ("none", None, False):
        return set()
    if rule == "every_other":
        return set(range(0, n, 2))
    try:
        return {int(i) for i in rule}
    except TypeError:
        raise ValueError(f"dhdiff: placement must be 'all', 'every_other', 'none' or a list, got {rule!r}") from None


def placed_blocks(unet, encoder="all", mid=True, decoder="every_other") -> list[str]:
    """Module-name prefixes of the attention-bearing blocks that get DDA/SSM.

    Rules count attention-bearing blocks only; the decoder counts from the deepest block, so
    'every_other' on SD-1.x's three attention up-blocks picks up_blocks.1 and up_blocks.3.
    """
    down = [i for i, blk in enumerate(unet.down_blocks) if hasattr(blk, "attentions")]
    up = [j for j, blk in enumerate(unet.up_blocks) if hasattr(blk, "attentions")]
    names = [f"down_blocks.{down[p]}." for p in sorted(_pick(len(down), encoder)) if p < len(down)]
    if mid and unet.mid_block is not None and hasattr(unet.mid_block, "attentions"):
        names.append("mid_block.")
    names += [f"up_blocks.{up[p]}." for p in sorted(_pick(len(up), decoder)) if p < len(up)]
    return names


def _level(name: str, n_levels: int) -> int:
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "up_blocks":
        return n_levels - 1 - int(parts[1])
    return n_levels - 1


def install_processors(unet, ablation: str, encoder="all", mid=True, decoder="every_other") -> dict[str, str]:
    """Swap processors into ``unet`` by name; returns {attention module name: processor name}."""
    if ablation not in VARIANTS:
        raise ValueError(f"dhdiff: unknown ablation {ablation!r}; known: {sorted(VARIANTS)}")
    self_name, cross_name = VARIANTS[ablation]
    placed = placed_blocks(unet, encoder, mid, decoder)
    widths = list(unet.config.block_out_channels)
    chosen: dict[str, str] = {}
    for name, mod in unet.named_modules():
        if not isinstance(mod, Attention):
            continue
        slot = name.rsplit(".", 1)[-1]
        on = any(name.startswith(p) for p in placed)
        if slot not in ("attn1", "attn2"):
            raise ValueError(f"dhdiff: unexpected attention layer {name!r} (expected attn1/attn2 slots)")
        pname = (self_name if on else UNPLACED[0]) if slot == "attn1" else (cross_name if on else UNPLACED[1])
        cls = PROCESSORS[pname]
        proc = cls() if pname == "plain" else cls(mod, widths[_level(name, len(widths))])
        mod.set_processor(proc)
        chosen[name] = pname
    return chosen
