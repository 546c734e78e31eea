"""Sine positional encodings of 2-D feature maps (DETR style, normalised coordinates)."""

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Fixed sin/cos encoding of each pixel's (y, x) position.

    Coordinates are normalised to (0, 2*pi] so one encoding serves every image size.
    The first half of the channels encodes y, the second half x.

    Args:
        num_pos_feats: channels per axis (the output has ``2 * num_pos_feats``).
        temperature: wavelength base of the frequency ladder.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self._cache = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2 * num_pos_feats, H, W); depends only on H, W."""
        B, _, H, W = x.shape
        key = (H, W, x.device, x.dtype)
        # Traced (torch.export / ONNX export, torch.compile): sizes may be symbolic and tensors
        # fake, so compute without the cache.
        tracing = torch.compiler.is_compiling()
        pos = None if tracing else self._cache.get(key)
        if pos is None:
            eps, scale = 1e-6, 2 * math.pi
            y = torch.arange(1, H + 1, device=x.device, dtype=torch.float32)
            x_ = torch.arange(1, W + 1, device=x.device, dtype=torch.float32)
            y = y / (H + eps) * scale
            x_ = x_ / (W + eps) * scale
            i = torch.arange(self.num_pos_feats, device=x.device, dtype=torch.float32)
            freq = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor")
                                        / self.num_pos_feats)
            # Interleave sin on even and cos on odd channels.
            def encode(t):
                a = t[:, None] / freq
                return torch.stack([a[:, 0::2].sin(), a[:, 1::2].cos()], dim=2).flatten(1)

            pos_y = encode(y).t()[:, :, None].expand(-1, H, W)
            pos_x = encode(x_).t()[:, None, :].expand(-1, H, W)
            pos = torch.cat([pos_y, pos_x], dim=0).to(x.dtype)
            if not tracing:
                if len(self._cache) > 16:  # many test sizes: keep the cache small
                    self._cache.clear()
                self._cache[key] = pos
        return pos.unsqueeze(0).expand(B, -1, -1, -1)
