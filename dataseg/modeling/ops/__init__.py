"""Custom operators (pure PyTorch; run on every device)."""

from .ms_deform_attn import MSDeformAttn  # noqa: F401
from .ms_deform_attn_func import ms_deform_attn_grid_sample  # noqa: F401
