"""Mixed precision (SOLVER.AMP.ENABLED): the criterion computes in float32 under autocast,
the model trains under CPU autocast (bfloat16), and the trainer supports it on CPU."""

import pytest
import torch

from detectron2.modeling import build_model

from dataseg.engine import DaTaSegStepTrainer, DaTaSegTrainer
from dataseg.modeling.criterion import CriterionContext, HungarianMatcher

from helpers import PAN, make_criterion, make_inputs, model_cfg, register_model_metadata, \
    trainer_cfg

C = 4
IS_THING = torch.tensor([True, True, False, False])
H = W = 32  # padded image; masks predicted at 8 x 8
BF16 = torch.bfloat16


def _targets():
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, :16, :16] = True
    masks[1, 16:, :] = True
    masks[2, :16, 16:] = True
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 16.0, 32.0, 32.0],
                          [16.0, 0.0, 32.0, 16.0]])
    first = {"labels": torch.tensor([0, 2, 3]), "masks": masks, "boxes": boxes}
    return [first, {k: v.clone() for k, v in first.items()}]


def _context(task):
    return CriterionContext("ds", task, IS_THING, None, [(H, W), (H, W)], 0)


def _noise_outputs(seed=0, B=2, Q=6, aux=1):
    """Random predictions with values exactly representable in bfloat16 (float32 tensors)."""
    g = torch.Generator().manual_seed(seed)

    def layer():
        return {"pred_logits": torch.randn(B, Q, C + 1, generator=g).to(BF16).float(),
                "pred_masks": (3 * torch.randn(B, Q, H // 4, W // 4, generator=g))
                .to(BF16).float()}

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(aux)]
    return out


def _clear_outputs(B=2, Q=6, aux=1):
    """Float32 predictions where query i (i < 3) clearly predicts segment i, in a shuffled
    order, with small noise: matching has large margins (not a near-tie)."""
    g = torch.Generator().manual_seed(3)
    gt = _targets()[0]
    small = torch.nn.functional.interpolate(gt["masks"][None].float(), size=(H // 4, W // 4),
                                            mode="area")[0]
    order = [4, 1, 3]  # query of segment k

    def layer():
        logits = torch.randn(B, Q, C + 1, generator=g) * 0.3
        masks = torch.randn(B, Q, H // 4, W // 4, generator=g) * 0.3 - 4.0
        for k, q in enumerate(order):
            logits[:, q, gt["labels"][k]] += 6.0
            masks[:, q] += 8.0 * small[k]
        return {"pred_logits": logits, "pred_masks": masks}

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(aux)]
    return out


def _leaves(outputs, dtype):
    """Fresh leaf tensors of ``dtype`` (a model under autocast hands the criterion bf16)."""
    def layer(d):
        return {k: v.detach().to(dtype).requires_grad_() for k, v in d.items()}

    out = layer({k: v for k, v in outputs.items() if k != "aux_outputs"})
    out["aux_outputs"] = [layer(a) for a in outputs["aux_outputs"]]
    return out


def _all_leaves(out):
    return [out["pred_logits"], out["pred_masks"]] + [
        t for a in out["aux_outputs"] for t in (a["pred_logits"], a["pred_masks"])]


def _run(criterion, outputs, task, autocast):
    """Losses, matches and the cost matrices handed to the assignment solver."""
    costs = []
    solve = HungarianMatcher.assign
    criterion.matcher.assign = lambda cost: (costs.append(cost.clone()), solve(cost))[1]
    torch.manual_seed(0)  # the same matching / loss points in both runs
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        losses = criterion(outputs, _targets(), _context(task))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        matches = criterion.match(outputs, _targets(), _context(task))
    return losses, [(m.unit_idx.tolist(), m.gt_idx.tolist()) for m in matches], costs


@pytest.mark.parametrize("task", ["panoptic", "semantic", "box"])
def test_criterion_under_autocast_computes_in_float32(task):
    # Predictions exactly representable in bfloat16, handed over as bfloat16 (what the model
    # returns under autocast): a float32 criterion gives exactly the float32 results. Under
    # the bug (cost matmuls in bfloat16) the costs moved by up to 0.03.
    values = _noise_outputs()
    ref_out, amp_out = _leaves(values, torch.float32), _leaves(values, BF16)
    ref_losses, ref_match, ref_costs = _run(make_criterion(num_points=256), ref_out, task, False)
    losses, match, costs = _run(make_criterion(num_points=256), amp_out, task, True)

    assert set(losses) == set(ref_losses)
    for k, v in losses.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
        torch.testing.assert_close(v, ref_losses[k], rtol=1e-6, atol=1e-6, msg=k)
    assert match == ref_match
    assert len(costs) == len(ref_costs) > 0
    for c, r in zip(costs, ref_costs):
        assert c.dtype == torch.float32
        torch.testing.assert_close(c, r, rtol=1e-6, atol=1e-6)

    # Gradients reach the bfloat16 predictions: the float32 gradient, rounded once.
    sum(ref_losses.values()).backward()
    sum(losses.values()).backward()
    for a, r in zip(_all_leaves(amp_out), _all_leaves(ref_out)):
        assert a.grad.dtype == BF16 and a.grad.abs().sum() > 0
        assert torch.equal(a.grad, r.grad.to(BF16))


@pytest.mark.parametrize("task", ["instance", "box", "panoptic"])
def test_bfloat16_predictions_match_like_float32_and_losses_stay_close(task):
    # Float32 predictions rounded to bfloat16 (relative error <= 2**-9 per value): with clear
    # margins the matching is the same, and the losses, smooth averages over points and
    # segments of these values, move by about that much: 1 % relative is a 5x margin.
    # Importance sampling is off: it picks the loss points by these values, so rounding
    # would change which points are drawn and compare two point samples, not precisions.
    values = _clear_outputs()
    kw = dict(num_points=256, importance_sample_ratio=0.0)
    ref_losses, ref_match, _ = _run(make_criterion(**kw), _leaves(values, torch.float32), task,
                                    False)
    losses, match, _ = _run(make_criterion(**kw), _leaves(values, BF16), task, True)
    if task != "panoptic":  # units are the queries (no MERGE): the intended assignment
        for units, gts in ref_match:
            assert len(units) == 6 and [u % 6 for u in units] == [[4, 1, 3][g] for g in gts]
    assert match == ref_match
    for k, v in losses.items():
        assert torch.isfinite(v)
        torch.testing.assert_close(v, ref_losses[k], rtol=1e-2, atol=1e-4, msg=k)


def test_criterion_turns_autocast_off_inside():
    criterion = make_criterion(num_points=64)
    seen = []
    losses_fn = criterion.mask_supervision.losses

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return losses_fn(*args, **kwargs)

    criterion.mask_supervision.losses = spy
    with torch.autocast("cpu", dtype=BF16):
        criterion(_leaves(_noise_outputs(), BF16), _targets(), _context("panoptic"))
        assert torch.is_autocast_enabled("cpu")  # restored on the way out
    assert seen and not any(seen)


def test_matcher_costs_are_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    from dataseg.modeling.criterion.merge import merge_mask_logits

    logits = (3 * torch.randn(5, 300, generator=g)).to(BF16)
    pred = merge_mask_logits(logits, torch.arange(5), 5)
    class_logp = torch.randn(5, C + 1, generator=g).log_softmax(-1)
    gt = (torch.rand(3, 300, generator=g) > 0.5).float()
    labels = torch.tensor([0, 2, 3])
    matcher = HungarianMatcher()
    ref = matcher.mask_cost(class_logp, pred, labels, gt)
    with torch.autocast("cpu", dtype=BF16):
        cost = matcher.mask_cost(class_logp, pred, labels, gt)
    assert cost.dtype == torch.float32
    torch.testing.assert_close(cost, ref, rtol=1e-6, atol=1e-6)


# ---- the model and the trainer ----------------------------------------------------------
@pytest.fixture(scope="module")
def metadata():
    register_model_metadata()


def test_model_trains_under_cpu_autocast(metadata, tmp_path):
    torch.manual_seed(0)
    model = build_model(model_cfg(tmp_path))
    model.train()
    dtypes = []
    model.transformer_decoder.register_forward_hook(
        lambda m, i, out: dtypes.append(out[-1]["pred_masks"].dtype))
    with torch.autocast("cpu", dtype=BF16):
        losses = model(make_inputs(PAN))
    assert dtypes == [BF16]  # the model did run in bfloat16
    for k, v in losses.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    for part in (model.backbone, model.pixel_decoder, model.transformer_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_amp_training_on_cpu(tmp_path, synthetic_datasets):
    cfg = trainer_cfg(tmp_path, [synthetic_datasets["panoptic_train"]],
                      **{"SOLVER.AMP.ENABLED": True})
    trainer = DaTaSegTrainer(cfg)
    step = trainer._trainer
    assert isinstance(step, DaTaSegStepTrainer) and step.autocast_dtype == BF16
    assert not step.grad_scaler.is_enabled()  # bfloat16 needs no loss scaling
    calls, optimizer_steps = [], []
    model = trainer.model
    model.register_forward_hook(
        lambda m, i, out: calls.append((m.training, torch.is_autocast_enabled("cpu"))))
    trainer.optimizer.register_step_pre_hook(
        lambda *args: optimizer_steps.append(torch.is_autocast_enabled("cpu")))
    decoder_dtypes = []
    model.transformer_decoder.register_forward_hook(
        lambda m, i, out: decoder_dtypes.append(out[-1]["pred_masks"].dtype))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 2  # MAX_ITER
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(v)) for v, _ in history)
    # The model call is the autocast region (the decoder inside it ran in bfloat16); the
    # optimizer step is outside it.
    assert calls == [(True, True), (True, True)]
    assert decoder_dtypes == [BF16, BF16]
    assert optimizer_steps == [False, False]
    assert not torch.is_autocast_enabled("cpu")

    # Inference (evaluation) is not autocast.
    model.eval()
    with torch.no_grad():
        model(make_inputs(synthetic_datasets["panoptic_train"], with_targets=False))
    assert decoder_dtypes[-1] == torch.float32
