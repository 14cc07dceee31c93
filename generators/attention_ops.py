"""Head split/merge and the output projection of a diffusers ``Attention``: the three steps every
custom attention processor here (DH-Diff's DDA/concat/SSM, the diffusion baselines') shares
around its own score computation. A module of its own so both import it without a cycle."""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention


def heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """[b, n, c] -> [b, h, n, c/h]."""
    b, n, c = x.shape
    return x.view(b, n, h, c // h).transpose(1, 2)


def merge(x: torch.Tensor) -> torch.Tensor:
    """[b, h, n, d] -> [b, n, h*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def finish(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection, dropout, residual and rescale, as diffusers' own processors end."""
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor
