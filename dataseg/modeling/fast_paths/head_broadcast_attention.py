"""Multi-head attention with ONE mask for all heads (a fast path of ``nn.MultiheadAttention``).

``nn.MultiheadAttention`` takes a mask per head, (B * heads, Lq, Lk), and turns a boolean one
into a float copy that attention keeps for backward: 26 MB per decoder layer at the finest
scale of a 512x512 batch of 2, when the mask is the same for every head (the query decoder's
masked attention). Here the same parameters and math run through
``scaled_dot_product_attention`` with the additive mask broadcast over heads (one eighth of
that). Pinned to ``nn.MultiheadAttention`` (outputs and gradients) by
tests/modeling/test_parts.py, and on CUDA by tests/modeling/test_gpu_paths.py.
"""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["head_broadcast_attention"]


def head_broadcast_attention(attn: nn.MultiheadAttention, query, key, value, hidden=None):
    """``attn(query, key, value, attn_mask=hidden repeated per head)[0]``, batch first.

    Args:
        attn: the module holding the projections (its parameters and checkpoints unchanged).
        query, key, value: (B, Lq, E), (B, Lk, E), (B, Lk, E).
        hidden: optional bool (B, Lq, Lk), True where a query may NOT attend.

    Returns:
        (B, Lq, E).
    """
    B, Lq, E = query.shape
    heads = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split(x, w, b):
        return F.linear(x, w, b).view(B, x.shape[1], heads, E // heads).transpose(1, 2)

    q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
    mask = None
    if hidden is not None:
        # In the projections' dtype, which autocast may have lowered: one dtype for SDPA.
        mask = torch.zeros(hidden.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill_(hidden, float("-inf")).unsqueeze(1)  # (B, 1, Lq, Lk)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_proj(out.transpose(1, 2).reshape(B, Lq, E))
