"""Custom operators (pure PyTorch; run on every device)."""

from .ms_deform_attn import MSDeformAttn, resolve_msda_impl  # noqa: F401
from .ms_deform_attn_func import (  # noqa: F401
    MSDA_IMPLEMENTATIONS,
    ms_deform_attn,
    ms_deform_attn_embedding_bag,
    ms_deform_attn_grid_sample,
)
