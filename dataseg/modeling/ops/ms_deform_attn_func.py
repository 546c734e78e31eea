"""Multi-scale deformable attention sampling (Deformable DETR), pure PyTorch.

Shapes follow Deformable DETR's convention:

- ``value``: (B, S, M, Dh) with S = sum_l H_l * W_l (levels flattened and concatenated),
- ``spatial_shapes``: (L, 2) int64 rows (H_l, W_l),
- ``sampling_locations``: (B, Q, M, L, P, 2) normalised (x, y) in [0, 1] (pixel centres at
  (i + 0.5) / size, i.e. ``grid_sample(align_corners=False)``; outside samples read zeros),
- ``attention_weights``: (B, Q, M, L, P),
- output: (B, Q, M * Dh).

Two implementations with identical semantics:

``ms_deform_attn_grid_sample``
    One ``F.grid_sample`` per level; the readable reference.
``ms_deform_attn_embedding_bag``
    The fast CPU path (DESIGN.md section 4): every level is padded with a zero border so
    out-of-range corners land on zeros (no validity masks), bilinear corner indices and
    weights are computed on contiguous planar tensors, and the gather + weighted sum over
    all levels, points and corners is ONE ``F.embedding_bag(mode="sum")``. Backward is a
    custom ``autograd.Function``: the sampling-weight gradient is one batched dot product
    per (sample, corner), the value gradient is the transposed embedding bag (samples
    grouped by the table row they read), and the location / attention gradients follow
    from the bilinear chain rule in closed form.
"""

import warnings
from typing import List

import torch
import torch.nn.functional as F

__all__ = [
    "ms_deform_attn_grid_sample",
    "ms_deform_attn_embedding_bag",
    "MSDA_IMPLEMENTATIONS",
    "ms_deform_attn",
]


def _shapes_as_list(spatial_shapes) -> List[List[int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        return [[int(h), int(w)] for h, w in spatial_shapes.tolist()]
    return [[int(h), int(w)] for h, w in spatial_shapes]


def ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights):
    """Reference path: bilinear ``grid_sample`` per level (zeros padding)."""
    shapes = _shapes_as_list(spatial_shapes)
    B, S, M, Dh = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (B, HW, M, Dh) -> (B*M, Dh, H, W)
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(B * M, Dh, h, w)
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*M, Dh, Q, P)
    # (B, Q, M, L, P) -> (B*M, 1, Q, L*P)
    attn = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * attn).sum(-1)  # (B*M, Dh, Q)
    return out.view(B, M * Dh, Q).transpose(1, 2).contiguous()


# ------------------------------------------------------------------------------------------
# Fast path
# ------------------------------------------------------------------------------------------


def _padded_table(value, shapes):
    """(B, S, M, Dh) -> zero-bordered table (B*M*S_pad, Dh) and S_pad.

    Each level gets one zero row/column on the top/left and two on the bottom/right, so a
    sampling point clamped into [0, W+1] x [0, H+1] (padded pixel units) reads only inside
    the table and every out-of-range corner reads a zero, exactly like zeros padding.
    Rows are ordered (batch, head, level, y, x).
    """
    B, _, M, Dh = value.shape
    levels = []
    for v, (h, w) in zip(value.split([h * w for h, w in shapes], dim=1), shapes):
        v = v.view(B, h, w, M, Dh).permute(0, 3, 1, 2, 4)  # (B, M, H, W, Dh)
        levels.append(F.pad(v, (0, 0, 1, 2, 1, 2)).flatten(2, 3))  # (B, M, (H+3)(W+3), Dh)
    table = torch.cat(levels, dim=2)  # (B, M, S_pad, Dh)
    return table.reshape(-1, Dh), table.shape[2]


def _corners(shapes, sampling_locations, s_pad, need_inside=True):
    """Bilinear corner rows into the padded table and their interpolation factors.

    Written to allocate few large temporaries (in-place ops, one broadcast for the four
    corners): on this class of machine fresh allocations page-fault and dominate the cost.

    Returns:
        index: (B, Q, M, L, P, 4) int32 table rows (int64 for huge tables), corners ordered
            (y0x0, y0x1, y1x0, y1x1).
        fx, fy: (B, Q, M, L, P) fractional parts (the bilinear weights' variables).
        inside: (B, Q, M, L, P) bool, False where clamping moved the point (zero gradient);
            None unless ``need_inside`` (only the location gradient uses it).
    """
    B, Q, M, L, P, _ = sampling_locations.shape
    device, dtype = sampling_locations.device, sampling_locations.dtype
    size = torch.tensor(shapes, device=device, dtype=dtype)  # (L, 2) rows (H, W)
    level_h, level_w = size[:, 0].view(L, 1), size[:, 1].view(L, 1)
    padded_w = level_w + 3
    offsets = [0]
    for h, w in shapes[:-1]:
        offsets.append(offsets[-1] + (h + 3) * (w + 3))
    offsets = torch.tensor(offsets, device=device, dtype=torch.float64).view(L, 1)

    # Pixel coordinate in the bordered map: loc * W - 0.5 (align_corners=False) + 1.
    x = sampling_locations[..., 0] * level_w
    x += 0.5
    y = sampling_locations[..., 1] * level_h
    y += 0.5
    zero = torch.zeros((), device=device, dtype=dtype)
    inside = None
    if need_inside:
        inside = (x >= 0) & (x <= level_w + 1) & (y >= 0) & (y <= level_h + 1)
    torch.clamp_(x, min=zero, max=level_w + 1)
    torch.clamp_(y, min=zero, max=level_h + 1)
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x.sub_(x0)
    fy = y.sub_(y0)
    # Row of corner (y0, x0); float64 keeps it exact for any realistic table size.
    base = (
        torch.arange(B, device=device, dtype=torch.float64).view(B, 1, 1, 1, 1) * M
        + torch.arange(M, device=device, dtype=torch.float64).view(1, 1, M, 1, 1)
    ) * s_pad + offsets
    row = y0.to(torch.float64).mul_(padded_w.to(torch.float64)).add_(x0).add_(base)
    # int32 rows halve the largest tensor kept for backward (one per corner and sample);
    # int64 only for tables too large to index with int32.
    index_dtype = torch.int32 if B * M * s_pad < 2**31 else torch.int64
    corner_offsets = torch.stack(
        [torch.zeros_like(padded_w), torch.ones_like(padded_w), padded_w, padded_w + 1], dim=-1
    ).to(index_dtype)  # (L, 1, 4)
    index = row.to(index_dtype).unsqueeze(-1) + corner_offsets
    return index, fx, fy, inside


def _bilinear_weights(fx, fy, attention_weights):
    """(B, Q, M, L, P, 4) corner weights = attention weight x bilinear factor."""
    out = fx.new_empty(fx.shape + (4,))
    gx = 1 - fx
    ay = fy * attention_weights  # weight of the y1 row
    gy = attention_weights - ay  # weight of the y0 row
    torch.mul(gy, gx, out=out[..., 0])
    torch.mul(gy, fx, out=out[..., 1])
    torch.mul(ay, gx, out=out[..., 2])
    torch.mul(ay, fx, out=out[..., 3])
    return out


def _sampled_dot(grad_out, table, index):
    """``out[i, k] = <grad_out[i], table[index[i, k]]>`` without materialising the rows.

    Gathering (samples x Dh) first was measured to lose to the allocator; a CSR
    ``sampled_addmm`` computes only the needed dot products (duplicate rows are fine).
    """
    n, bag = index.shape
    index = index.long()  # CSR row and column indices must share a dtype
    crow = torch.arange(0, n * bag + 1, bag, device=index.device, dtype=torch.int64)
    with warnings.catch_warnings():
        # "Sparse CSR support is in beta": the op used here is stable and tested against
        # the grid_sample reference.
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            crow, index.reshape(-1), torch.zeros(n * bag, dtype=table.dtype,
                                                 device=table.device),
            size=(n, table.shape[0]), check_invariants=False,
        )
        out = torch.sparse.sampled_addmm(pattern, grad_out, table.t(), beta=0.0)
    return out.values().view(n, bag)


class _MSDeformAttnEmbeddingBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, sampling_locations, attention_weights, shapes):
        B, S, M, Dh = value.shape
        _, Q, _, L, P, _ = sampling_locations.shape
        table, s_pad = _padded_table(value, shapes)
        index, fx, fy, inside = _corners(shapes, sampling_locations, s_pad,
                                         need_inside=ctx.needs_input_grad[1])
        weights = _bilinear_weights(fx, fy, attention_weights)
        bag = L * P * 4
        out = F.embedding_bag(
            index.view(-1, bag), table, per_sample_weights=weights.view(-1, bag), mode="sum"
        )  # (B*Q*M, Dh)
        ctx.save_for_backward(table, index, fx, fy, inside, attention_weights)
        ctx.shapes = shapes
        ctx.value_shape = value.shape
        return out.view(B, Q, M * Dh)

    @staticmethod
    def backward(ctx, grad_out):
        table, index, fx, fy, inside, attn = ctx.saved_tensors
        shapes = ctx.shapes
        B, S, M, Dh = ctx.value_shape
        _, Q, _, L, P = attn.shape
        bag = L * P * 4
        grad_out = grad_out.contiguous().view(B * Q * M, 1, Dh)
        need_value, need_loc, need_attn = ctx.needs_input_grad[:3]

        grad_value = grad_loc = grad_attn = None
        if need_loc or need_attn:
            # d out / d weight[sample, corner] = value row of that corner: one batched dot
            # product of the bag's output gradient with its gathered rows.
            gw = _sampled_dot(grad_out.view(B * Q * M, Dh), table, index.view(B * Q * M, bag))
            gw = gw.view(B, Q, M, L, P, 4)
            g00, g01, g10, g11 = gw.unbind(-1)
            gx, gy = 1 - fx, 1 - fy
            if need_attn:
                grad_attn = gy * gx * g00 + gy * fx * g01 + fy * gx * g10 + fy * fx * g11
            if need_loc:
                # d weight / d fx, d fy of the bilinear factors, times d f / d loc = (W, H);
                # points that were clamped read zeros only, so their gradient is zero.
                attn_in = attn * inside
                d_fx = (gy * (g01 - g00) + fy * (g11 - g10)) * attn_in
                d_fy = (gx * (g10 - g00) + fx * (g11 - g01)) * attn_in
                size = torch.tensor(shapes, device=attn.device, dtype=attn.dtype)
                d_fx *= size[:, 1].view(L, 1)
                d_fy *= size[:, 0].view(L, 1)
                grad_loc = torch.stack([d_fx, d_fy], dim=-1)
        if need_value:
            weights = _bilinear_weights(fx, fy, attn).reshape(-1)
            flat_index = index.reshape(-1)
            # Transposed embedding bag: group samples by the table row they read (sort), and
            # let one embedding_bag sum grad_out[bag of sample] * weight into each row.
            order = torch.argsort(flat_index)
            rows_sorted = flat_index[order]
            source_bag = torch.div(order, bag, rounding_mode="floor")
            counts = torch.bincount(rows_sorted, minlength=table.shape[0])
            offsets = torch.cumsum(counts, 0) - counts
            grad_table = F.embedding_bag(
                source_bag, grad_out.view(B * Q * M, Dh), offsets,
                per_sample_weights=weights[order], mode="sum",
            )  # (rows, Dh); empty bags are zero
            grad_table = grad_table.view(B, M, -1, Dh)
            pieces, start = [], 0
            for h, w in shapes:
                n = (h + 3) * (w + 3)
                g = grad_table[:, :, start:start + n].view(B, M, h + 3, w + 3, Dh)
                pieces.append(g[:, :, 1:-2, 1:-2].permute(0, 2, 3, 1, 4).reshape(B, h * w, M, Dh))
                start += n
            grad_value = torch.cat(pieces, dim=1)
        return grad_value, grad_loc, grad_attn, None


def ms_deform_attn_embedding_bag(value, spatial_shapes, sampling_locations, attention_weights):
    """Fast path: zero-bordered levels + one ``F.embedding_bag`` (see module docstring)."""
    shapes = _shapes_as_list(spatial_shapes)
    return _MSDeformAttnEmbeddingBag.apply(
        value, sampling_locations, attention_weights, shapes
    )


MSDA_IMPLEMENTATIONS = {
    "grid_sample": ms_deform_attn_grid_sample,
    "embedding_bag": ms_deform_attn_embedding_bag,
}


def ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights,
                   impl: str = "embedding_bag"):
    """Dispatch to a named implementation (see ``MSDA_IMPLEMENTATIONS``)."""
    if impl not in MSDA_IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown multi-scale deformable attention implementation {impl!r}; "
            f"choose one of {sorted(MSDA_IMPLEMENTATIONS)}."
        )
    return MSDA_IMPLEMENTATIONS[impl](value, spatial_shapes, sampling_locations,
                                      attention_weights)
