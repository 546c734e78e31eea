"""Device-dependent code paths: what runs off the CPU, and CUDA checks of the CPU-tuned paths.

The CPU fast paths (``MODEL.DATASEG.FAST_PATHS "auto"``: the embedding-bag deformable
attention with its int32 CSR ``sampled_addmm`` backward, the head-broadcast attention mask, ...)
are selected on CPU only; on other devices the model uses the plain paths (``F.grid_sample``
deformable attention, ``nn.MultiheadAttention`` with a per-head mask). The first tests check that selection on the
CPU (the "meta" device stands in for an accelerator). The ``cuda`` tests run the fast paths,
the criterion under float16 autocast and a short AMP training on a GPU where one exists and
are skipped elsewhere; run them with ``pytest -v --durations=0 tests/modeling/test_gpu_paths.py``.
"""

import pytest
import torch
from torch import nn

from dataseg.modeling.fast_paths.head_broadcast_attention import head_broadcast_attention
from dataseg.modeling.fast_paths.msda_embedding_bag import ms_deform_attn_embedding_bag
from dataseg.modeling.ops import MSDeformAttn, ms_deform_attn_grid_sample
from dataseg.modeling.transformer_decoder.masked_attention_decoder import multihead_attention

from helpers import make_criterion, trainer_cfg

cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device: checks the CPU-tuned paths and float16 autocast on a GPU")


def _attention_inputs(device="cpu", seed=0, B=2, Lq=5, Lk=7, E=32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, E, generator=g) for n in (Lq, Lk, Lk))
    hidden = torch.rand(B, Lq, Lk, generator=g) > 0.6
    hidden[:, :, 0] = False  # every query sees something
    return [t.to(device) for t in (q, k, v)], hidden.to(device)


def _attention_outputs(attn, inputs, hidden, head_broadcast):
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    attn.zero_grad()
    if head_broadcast:
        out = head_broadcast_attention(attn, *inputs, hidden)
    else:
        out = multihead_attention(attn, *inputs, hidden=hidden)  # the plain path
    out.pow(2).sum().backward()
    return out.detach(), [t.grad for t in inputs] + [p.grad.clone() for p in attn.parameters()]


# ---- selection (runs everywhere) --------------------------------------------------------
@pytest.mark.parametrize("device,setting,per_head", [
    ("cpu", "auto", False), ("cpu", "off", True), ("meta", "auto", True)])
def test_attention_mask_path_is_chosen_by_setting_and_device(monkeypatch, device, setting,
                                                             per_head):
    attn = nn.MultiheadAttention(32, 4, batch_first=True).to(device)
    calls = []

    def module_forward(q, k, v, attn_mask=None, need_weights=True):
        calls.append(attn_mask)
        return torch.zeros_like(q), None

    monkeypatch.setattr(attn, "forward", module_forward)
    (q, k, v), hidden = _attention_inputs(device)
    out = multihead_attention(attn, q, k, v, hidden=hidden, fast_paths=setting)
    assert out.shape == q.shape
    if per_head:  # the module itself, one bool mask per head (B * heads, Lq, Lk)
        assert len(calls) == 1
        assert calls[0].shape == (2 * 4, 5, 7) and calls[0].dtype == torch.bool
    else:  # the head-broadcast mask through scaled_dot_product_attention
        assert calls == []


@pytest.mark.parametrize("batch_first", [True, False])
def test_per_head_path_equals_head_broadcast_path(batch_first):
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(32, 4, batch_first=batch_first)
    inputs, hidden = _attention_inputs()
    out_a, grads_a = _attention_outputs(attn, inputs, hidden, head_broadcast=True)
    out_b, grads_b = _attention_outputs(attn, inputs, hidden, head_broadcast=False)
    torch.testing.assert_close(out_a, out_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


# ---- CUDA -------------------------------------------------------------------------------
def _msda_inputs(seed, dtype, shapes, B=2, M=4, D=8, Q=50, P=4):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=dtype)
    # Points outside [0, 1] too: their corners must read zeros.
    loc = torch.rand(B, Q, M, len(shapes), P, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    attn = torch.rand(B, Q, M, len(shapes), P, generator=g, dtype=dtype)
    return value, loc, attn


def _msda_run(fn, inputs, shapes, device):
    inputs = [t.to(device).requires_grad_(True) for t in inputs]
    out = fn(inputs[0], shapes, *inputs[1:])
    grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device).view_as(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return [t.cpu() for t in (out, *grads)]


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float64, dict(rtol=1e-7, atol=1e-9)),
                                       (torch.float32, dict(rtol=1e-4, atol=2e-3))])
def test_cuda_embedding_bag_equals_grid_sample(dtype, tol):
    shapes = [(8, 8), (16, 16), (32, 32)]
    inputs = _msda_inputs(0, dtype, shapes)
    reference = _msda_run(ms_deform_attn_grid_sample, inputs, shapes, "cpu")
    for fn in (ms_deform_attn_grid_sample, ms_deform_attn_embedding_bag):
        for got, ref in zip(_msda_run(fn, inputs, shapes, "cuda"), reference):
            torch.testing.assert_close(got, ref, **tol)


@cuda
def test_cuda_msdeformattn_auto_equals_cpu():
    torch.manual_seed(0)
    shapes = [(4, 4), (2, 2)]
    S = sum(h * w for h, w in shapes)
    module = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=2, fast_paths="auto")
    query, ref = torch.randn(2, S, 16), torch.rand(2, S, 2, 2)
    expected = module(query, ref, query, shapes)
    got = module.cuda()(query.cuda(), ref.cuda(), query.cuda(), shapes)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)


@cuda
def test_cuda_head_broadcast_mask_equals_per_head_mask():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(32, 4, batch_first=True).cuda()
    inputs, hidden = _attention_inputs("cuda")
    out_a, grads_a = _attention_outputs(attn, inputs, hidden, head_broadcast=True)
    out_b, grads_b = _attention_outputs(attn, inputs, hidden, head_broadcast=False)
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # Under float16 autocast both run and agree to float16 precision.
    with torch.autocast("cuda", dtype=torch.float16):
        outs = [head_broadcast_attention(attn, *inputs, hidden),
                multihead_attention(attn, *inputs, hidden=hidden)]
    assert all(torch.isfinite(o).all() for o in outs)
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=1e-2, atol=1e-2)


@cuda
def test_cuda_pixel_reads_equal_cpu():
    from dataseg.modeling.criterion.point_sampling import read_mask_pixels
    from dataseg.modeling.fast_paths.grid_point_sampler import (
        sample_logits_at_pixels,
        sample_uncertain_pixels,
    )

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 8, 8, generator=g)
    masks = torch.rand(3, 32, 32, generator=g) > 0.5
    torch.manual_seed(0)
    points = sample_uncertain_pixels(-maps.abs(), 64, 3.0, 0.75, (32, 32))
    assert int(points.row.min()) >= 0 and int(points.row.max()) < 32
    results = []
    for device in ("cpu", "cuda"):
        p = type(points)(points.row.to(device), points.col.to(device), points.size)
        m = maps.to(device).requires_grad_(True)
        out = sample_logits_at_pixels(m, p)
        out.pow(2).sum().backward()
        gt = read_mask_pixels(masks.to(device), torch.tensor([0, 1, 2, 0, 1, 2], device=device),
                              p.linear())
        results.append([t.cpu() for t in (out.detach(), m.grad, gt)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # The sampler's integer arithmetic runs on CUDA too and stays in range.
    on_gpu = sample_uncertain_pixels(-maps.cuda().abs(), 64, 3.0, 0.75, (32, 32))
    assert on_gpu.row.dtype == torch.int16 and int(on_gpu.col.max()) < 32


@cuda
@pytest.mark.parametrize("task", ["panoptic", "box"])
def test_cuda_criterion_under_float16_autocast_computes_in_float32(task):
    from dataseg.modeling.criterion import CriterionContext

    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True
    masks[1, 16:, :] = True
    masks[2, :16, 16:] = True
    target = {"labels": torch.tensor([0, 2, 3]), "masks": masks,
              "boxes": torch.tensor([[0.0, 0, 16, 16], [0, 16, 32, 32], [16, 0, 32, 16]])}
    targets = [{k: v.cuda() for k, v in target.items()} for _ in range(2)]
    # Values exact in float16: a float32 criterion gives the float32 results exactly.
    values = {"pred_logits": torch.randn(2, 6, 5, generator=g).half().float(),
              "pred_masks": (3 * torch.randn(2, 6, 8, 8, generator=g)).half().float()}
    context = CriterionContext("ds", task, torch.tensor([True, True, False, False]).cuda(),
                               None, [(32, 32)] * 2, 0)
    results = []
    for dtype, autocast in ((torch.float32, False), (torch.float16, True)):
        outputs = {k: v.to("cuda", dtype).detach().requires_grad_(True)
                   for k, v in values.items()}
        outputs["aux_outputs"] = []
        torch.manual_seed(0)
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            losses = make_criterion(num_points=256)(outputs, targets, context)
        sum(losses.values()).backward()
        results.append((losses, outputs["pred_masks"].grad))
    (ref, ref_grad), (amp, amp_grad) = results
    for k, v in amp.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
        torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6, msg=k)
    assert amp_grad.dtype == torch.float16
    torch.testing.assert_close(amp_grad.float(), ref_grad, rtol=1e-3, atol=1e-6)


@cuda
def test_cuda_amp_training_two_iterations(tmp_path, synthetic_datasets):
    from dataseg.engine import DaTaSegTrainer

    cfg = trainer_cfg(tmp_path, [synthetic_datasets["panoptic_train"]],
                      **{"SOLVER.AMP.ENABLED": True, "MODEL.DEVICE": "cuda"})
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(v)) for v, _ in history)
