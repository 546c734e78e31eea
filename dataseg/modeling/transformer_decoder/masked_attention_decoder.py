"""Masked-attention query decoder (Mask2Former layout) returning per-layer predictions.

The decoder's structure follows Mask2Former's ``MultiScaleMaskedTransformerDecoder``
(https://github.com/facebookresearch/Mask2Former,
``mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py``, MIT
License): learnable query features and positions, a level embedding per scale, layers of
masked cross-attention -> self-attention -> FFN cycling over three scales coarse to fine,
attention masks from the previous prediction (sigmoid < 0.5 hidden, a query hiding every
pixel sees all), and a prediction from the initial queries and after every layer. The class
head is replaced by the text classifier (outside this module).
"""

from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable

from ..fast_paths import check_fast_paths, use_fast_paths
from ..fast_paths.head_broadcast_attention import head_broadcast_attention
from ..mlp import MLP
from ..position_encoding import PositionEmbeddingSine
from ..registry import TRANSFORMER_DECODER_REGISTRY

__all__ = ["MaskedAttentionDecoder", "build_transformer_decoder"]


def build_transformer_decoder(cfg, in_channels: int, text_dim: int):
    """Build the query decoder named by ``MODEL.DATASEG.DECODER.NAME``."""
    name = cfg.MODEL.DATASEG.DECODER.NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, text_dim)


def multihead_attention(attn: nn.MultiheadAttention, query, key, value, hidden=None,
                        fast_paths: str = "off"):
    """``attn(query, key, value, attn_mask=...)[0]`` (batch first) with one mask for all heads.

    Args:
        attn: the attention module (batch first or not).
        query, key, value: (B, Lq, E), (B, Lk, E), (B, Lk, E).
        hidden: optional bool (B, Lq, Lk), True where a query may NOT attend (every head).
        fast_paths: ``MODEL.DATASEG.FAST_PATHS``; "auto" on CPU broadcasts the mask over the
            heads instead of repeating it (``fast_paths.head_broadcast_attention``).

    Returns:
        (B, Lq, E).
    """
    if use_fast_paths(fast_paths, query):
        return head_broadcast_attention(attn, query, key, value, hidden)
    mask = None if hidden is None else hidden.repeat_interleave(attn.num_heads, dim=0)
    if not attn.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    out = attn(query, key, value, attn_mask=mask, need_weights=False)[0]
    return out if attn.batch_first else out.transpose(0, 1)


class _AttentionBlock(nn.Module):
    """Residual multi-head attention with a LayerNorm before or after it."""

    def __init__(self, dim, nheads, dropout, pre_norm, fast_paths="off"):
        super().__init__()
        self.fast_paths = fast_paths
        self.attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        for p in self.attn.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x, query_pos, memory=None, memory_pos=None, attn_mask=None):
        q_in = self.norm(x) if self.pre_norm else x
        if memory is None:  # self-attention
            k = q_in + query_pos
            v = q_in
        else:
            k = memory + memory_pos
            v = memory
        out = multihead_attention(self.attn, q_in + query_pos, k, v, hidden=attn_mask,
                                  fast_paths=self.fast_paths)
        x = x + self.dropout(out)
        return x if self.pre_norm else self.norm(x)


class _FFNBlock(nn.Module):
    def __init__(self, dim, dim_feedforward, dropout, pre_norm):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        for layer in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, x):
        y = self.norm(x) if self.pre_norm else x
        y = self.linear2(self.dropout(F.relu(self.linear1(y))))
        x = x + self.dropout(y)
        return x if self.pre_norm else self.norm(x)


@TRANSFORMER_DECODER_REGISTRY.register()
class MaskedAttentionDecoder(nn.Module):
    """N learnable queries refined by masked cross-attention, self-attention and an FFN.

    Layer ``i`` cross-attends to scale ``i % 3`` of the pixel decoder's multi-scale maps
    (coarse to fine), masked to the foreground of the previous prediction (pixels whose
    predicted mask probability is < 0.5 are hidden; a query whose mask would hide every
    pixel sees all of them). Predictions are made from the initial queries and after
    every layer, for deep supervision.

    The class head is NOT here: each prediction carries the LayerNorm-ed query features,
    which the meta-architecture hands to the text classifier of the batch's dataset.

    Args:
        in_channels: channels of the multi-scale maps.
        mask_dim: channels of the stride-4 mask features.
        num_queries, hidden_dim, nheads, dim_feedforward, num_layers, dropout, pre_norm:
            decoder shape.
        mask_head_layers: depth of the MLP that maps queries to mask embeddings.
        enforce_input_project: project inputs with a 1x1 conv even when widths match.
        fast_paths: ``MODEL.DATASEG.FAST_PATHS`` of the attention (``multihead_attention``).
    """

    num_scales = 3

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        mask_dim: int,
        num_queries: int,
        hidden_dim: int,
        nheads: int,
        dim_feedforward: int,
        num_layers: int,
        mask_head_layers: int = 3,
        dropout: float = 0.0,
        pre_norm: bool = False,
        enforce_input_project: bool = False,
        fast_paths: str = "off",
    ):
        super().__init__()
        self.num_layers = num_layers
        self.num_queries = num_queries
        self.pos_embed = PositionEmbeddingSine(hidden_dim // 2)
        self.cross_attn = nn.ModuleList(
            _AttentionBlock(hidden_dim, nheads, dropout, pre_norm, check_fast_paths(fast_paths))
            for _ in range(num_layers))
        self.self_attn = nn.ModuleList(
            _AttentionBlock(hidden_dim, nheads, dropout, pre_norm, fast_paths)
            for _ in range(num_layers))
        self.ffn = nn.ModuleList(
            _FFNBlock(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_scales, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_scales):
            if in_channels != hidden_dim or enforce_input_project:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, mask_head_layers)

    @classmethod
    def from_config(cls, cfg, in_channels, text_dim=None):
        # text_dim is part of the registry signature; the class head that uses it lives in
        # the classifier.
        d = cfg.MODEL.DATASEG.DECODER
        return {
            "in_channels": in_channels,
            "mask_dim": cfg.MODEL.DATASEG.PIXEL_DECODER.MASK_DIM,
            "num_queries": d.NUM_QUERIES,
            "hidden_dim": d.HIDDEN_DIM,
            "nheads": d.NHEADS,
            "dim_feedforward": d.DIM_FEEDFORWARD,
            "num_layers": d.NUM_LAYERS,
            "mask_head_layers": d.MASK_HEAD_LAYERS,
            "dropout": d.DROPOUT,
            "pre_norm": d.PRE_NORM,
            "enforce_input_project": d.ENFORCE_INPUT_PROJECT,
            "fast_paths": cfg.MODEL.DATASEG.FAST_PATHS,
        }

    def forward(self, multi_scale_features: List[torch.Tensor], mask_features: torch.Tensor,
                ) -> List[Dict[str, torch.Tensor]]:
        """
        Args:
            multi_scale_features: 3 maps (B, in_channels, h_i, w_i), coarse to fine.
            mask_features: (B, mask_dim, H/4, W/4).

        Returns:
            ``num_layers + 1`` dicts (initial queries first, last layer last) with
            ``query_features`` (B, Q, hidden_dim), LayerNorm-ed, and ``pred_masks``
            (B, Q, H/4, W/4) mask logits.
        """
        if len(multi_scale_features) != self.num_scales:
            raise ValueError(f"Expected {self.num_scales} scales, got {len(multi_scale_features)}.")
        B = mask_features.shape[0]
        memories, memory_pos, sizes = [], [], []
        for i, x in enumerate(multi_scale_features):
            sizes.append(tuple(x.shape[-2:]))
            memory_pos.append(self.pos_embed(x).flatten(2).transpose(1, 2))
            memories.append(
                (self.input_proj[i](x).flatten(2)
                 + self.level_embed.weight[i][None, :, None]).transpose(1, 2))
        query = self.query_feat.weight.unsqueeze(0).expand(B, -1, -1)
        query_pos = self.query_pos.weight.unsqueeze(0).expand(B, -1, -1)

        predictions = []
        pred, attn_mask = self._predict(query, mask_features, sizes[0], self.num_layers > 0)
        predictions.append(pred)
        for i in range(self.num_layers):
            scale = i % self.num_scales
            query = self.cross_attn[i](query, query_pos, memories[scale], memory_pos[scale],
                                       attn_mask=attn_mask)
            query = self.self_attn[i](query, query_pos)
            query = self.ffn[i](query)
            pred, attn_mask = self._predict(
                query, mask_features, sizes[(i + 1) % self.num_scales],
                need_mask=i + 1 < self.num_layers)
            predictions.append(pred)
        return predictions

    def _predict(self, query, mask_features, next_size, need_mask=True):
        features = self.decoder_norm(query)
        mask_embed = self.mask_embed(features)
        masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        pred = {"query_features": features, "pred_masks": masks}
        if not need_mask:
            return pred, None
        # Attention mask for the next layer, at the resolution of the scale it attends to.
        with torch.no_grad():
            small = F.interpolate(masks.detach(), size=next_size, mode="bilinear",
                                  align_corners=False)
            hidden = small.flatten(2) < 0.0  # sigmoid < 0.5
            hidden[hidden.all(-1)] = False
        return pred, hidden
