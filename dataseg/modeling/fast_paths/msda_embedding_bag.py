"""Multi-scale deformable attention on CPU: one ``F.embedding_bag`` instead of ``grid_sample``.

The fast path of ``dataseg.modeling.ops.ms_deform_attn_grid_sample`` (same shapes, same
semantics: bilinear reads with zeros padding, ``align_corners=False``; pinned to it, values and
every gradient, by tests/modeling/fast_paths/test_msda_embedding_bag.py). Its measurements are
in docs/benchmarks.md.

Every level is padded with a zero border so out-of-range corners land on zeros (no validity
masks), bilinear corner indices and weights are computed on contiguous planar tensors, and the
gather + weighted sum over all levels, points and corners is ONE
``F.embedding_bag(mode="sum")``. Backward is a custom ``autograd.Function`` that keeps only
each sample's base corner row (the other three are per-level constant offsets from it): the
sampling-weight gradient is one batched dot product per (sample, corner) (an int32 CSR
``torch.sparse.sampled_addmm``), the value gradient is the transposed embedding bag (samples
grouped by base row, one bag per corner offset), and the location / attention gradients follow
from the bilinear chain rule in closed form.

Only its CPU behaviour is verified by the CPU test suite, and it uses float64 index arithmetic,
which some accelerators (MPS) lack: ``MODEL.DATASEG.FAST_PATHS "auto"`` runs it on CPU only
(tests/modeling/test_gpu_paths.py compares it with the plain path where CUDA exists).
"""

import warnings

import torch
import torch.nn.functional as F

__all__ = ["ms_deform_attn_embedding_bag"]


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
    """Base corner rows into the padded table and the bilinear interpolation factors.

    Written to allocate few large temporaries (in-place ops): on this class of machine fresh
    allocations page-fault and dominate the cost.

    Returns:
        row: (B, Q, M, L, P) int32 table row (int64 for huge tables) of corner (y0, x0);
            the other three corners follow from it (``_corner_rows``), so only this is kept
            for backward.
        fx, fy: (B, Q, M, L, P) fractional parts (the bilinear weights' variables).
        inside: (B, Q, M, L, P) bool, False where clamping moved the point (zero gradient);
            None unless ``need_inside`` (only the location gradient uses it).
    """
    B, Q, M, L, P, _ = sampling_locations.shape
    device, dtype = sampling_locations.device, sampling_locations.dtype
    size = torch.tensor(shapes, device=device, dtype=dtype)  # (L, 2) rows (H, W)
    level_h, level_w = size[:, 0].view(L, 1), size[:, 1].view(L, 1)
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
    row = y0.to(torch.float64).mul_((level_w + 3).to(torch.float64)).add_(x0).add_(base)
    # int32 rows halve the index tensors (the rows kept for backward and the four-corner
    # rows built from them); int64 only for tables too large to index with int32.
    index_dtype = torch.int32 if B * M * s_pad < 2**31 else torch.int64
    return row.to(index_dtype), fx, fy, inside


def _corner_rows(row, shapes):
    """(..., L, P) base rows -> (..., L, P, 4) rows of the corners (y0x0, y0x1, y1x0, y1x1).

    In the bordered map of width W + 3 the corners sit at the per-level offsets
    (0, 1, W + 3, W + 4) from (y0, x0), so one broadcast add rebuilds them whenever needed
    instead of keeping four rows per sample alive until backward.
    """
    corner_offsets = torch.tensor(
        [[0, 1, w + 3, w + 4] for _, w in shapes], device=row.device, dtype=row.dtype
    ).view(len(shapes), 1, 4)
    return row.unsqueeze(-1) + corner_offsets


def _bilinear_weights(fx, fy, attention_weights, out=None):
    """(..., 4) corner weights = attention weight x bilinear factor, corners ordered as in
    ``_corner_rows``. ``out`` may be a strided view (e.g. of a corner-major buffer)."""
    if out is None:
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
    # CSR row and column indices must share a dtype; int32 (the table rows' dtype when the
    # table fits) avoids widening every index and was measured faster in sampled_addmm.
    index_dtype = index.dtype if n * bag < 2**31 else torch.int64
    index = index.to(index_dtype)
    crow = torch.arange(0, n * bag + 1, bag, device=index.device, dtype=index_dtype)
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


def _value_gradient(grad_out, row, fx, fy, attn, shapes, s_pad, value_shape):
    """Transposed embedding bag: scatter ``weight x grad_out[bag]`` back onto the pixels.

    Samples are grouped by the table row they read (one sort) so that ``F.embedding_bag``
    sums each group into its row. Only the base rows are sorted: the other corners are the
    same samples shifted by a per-level constant, so one embedding bag per corner over the
    same grouping (with that corner's bilinear weight) gives the corner's gradient indexed
    by base row, and shifting it back onto the pixel grid adds the corners up. That sorts
    and gathers 4x fewer elements than grouping every corner's row; the sorted weights are
    rebuilt from gathered fx, fy, attn (3 gathers instead of 4).

    Args:
        grad_out: (B*Q*M, Dh) output gradient, one row per bag.
        row, fx, fy, attn: (B, Q, M, L, P) base rows and bilinear variables from forward.
    Returns:
        (B, S, M, Dh) value gradient.
    """
    B, S, M, Dh = value_shape
    rows_sorted, order = torch.sort(row.reshape(-1))
    source_bag = order.div(row.shape[-2] * row.shape[-1], rounding_mode="floor")
    counts = torch.bincount(rows_sorted, minlength=B * M * s_pad)
    offsets = torch.cumsum(counts, 0).sub_(counts)
    # Corner-major buffer so that each corner's weights are contiguous for embedding_bag.
    weights = fx.new_empty(4, order.numel())
    _bilinear_weights(*(t.reshape(-1).index_select(0, order) for t in (fx, fy, attn)),
                      out=weights.t())
    corner_grads = [
        F.embedding_bag(source_bag, grad_out, offsets, per_sample_weights=w, mode="sum")
        .view(B, M, s_pad, Dh)
        for w in weights
    ]  # per corner (rows, Dh), indexed by base row; empty bags are zero

    # Corner (dy, dx) of base (y0, x0) is pixel (y0 + dy, x0 + dx); border rows are dropped.
    grad_value = grad_out.new_empty(B, S, M, Dh)
    start = pad_start = 0
    for h, w in shapes:
        n = (h + 3) * (w + 3)
        g00, g01, g10, g11 = (
            g[:, :, pad_start:pad_start + n].unflatten(2, (h + 3, w + 3)).permute(0, 2, 3, 1, 4)
            for g in corner_grads
        )  # (B, H+3, W+3, M, Dh)
        out = grad_value[:, start:start + h * w].view(B, h, w, M, Dh)
        torch.add(g00[:, 1:h + 1, 1:w + 1], g01[:, 1:h + 1, :w], out=out)
        out += g10[:, :h, 1:w + 1]
        out += g11[:, :h, :w]
        start += h * w
        pad_start += n
    return grad_value


class _MSDeformAttnEmbeddingBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, sampling_locations, attention_weights, shapes):
        B, S, M, Dh = value.shape
        _, Q, _, L, P, _ = sampling_locations.shape
        table, s_pad = _padded_table(value, shapes)
        row, fx, fy, inside = _corners(shapes, sampling_locations, s_pad,
                                       need_inside=ctx.needs_input_grad[1])
        weights = _bilinear_weights(fx, fy, attention_weights)
        bag = L * P * 4
        out = F.embedding_bag(
            _corner_rows(row, shapes).view(-1, bag), table,
            per_sample_weights=weights.view(-1, bag), mode="sum",
        )  # (B*Q*M, Dh)
        ctx.save_for_backward(table, row, fx, fy, inside, attention_weights)
        ctx.shapes = shapes
        ctx.s_pad = s_pad
        ctx.value_shape = value.shape
        return out.view(B, Q, M * Dh)

    @staticmethod
    def backward(ctx, grad_out):
        table, row, fx, fy, inside, attn = ctx.saved_tensors
        shapes = ctx.shapes
        B, S, M, Dh = ctx.value_shape
        _, Q, _, L, P = attn.shape
        bag = L * P * 4
        grad_out = grad_out.contiguous().view(B * Q * M, Dh)
        need_value, need_loc, need_attn = ctx.needs_input_grad[:3]

        grad_value = grad_loc = grad_attn = None
        if need_loc or need_attn:
            # d out / d weight[sample, corner] = value row of that corner: one batched dot
            # product of the bag's output gradient with its gathered rows.
            gw = _sampled_dot(grad_out, table, _corner_rows(row, shapes).view(B * Q * M, bag))
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
            grad_value = _value_gradient(grad_out, row, fx, fy, attn, shapes, ctx.s_pad,
                                         ctx.value_shape)
        return grad_value, grad_loc, grad_attn, None


def ms_deform_attn_embedding_bag(value, spatial_shapes, sampling_locations, attention_weights):
    """``ms_deform_attn_grid_sample`` as zero-bordered levels + one ``F.embedding_bag`` (see
    the module docstring): (B, Q, M * Dh)."""
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    shapes = [[int(h), int(w)] for h, w in spatial_shapes]
    return _MSDeformAttnEmbeddingBag.apply(
        value, sampling_locations, attention_weights, shapes
    )
