"""Matcher, losses, point sampling and box terms of the criterion."""

import torch
from fvcore.nn import sigmoid_focal_loss
from torch.nn import functional as F

from detectron2.projects.point_rend.point_features import point_sample
from dataseg.modeling.criterion import HungarianMatcher, merge_mask_logits
from dataseg.modeling.criterion.box_losses import (
    box_projection_targets,
    color_similarity,
    images_to_lab,
    mask_projections,
    projection_dice,
)
from dataseg.modeling.criterion.losses import class_nll_loss, dice_loss, focal_loss
from dataseg.modeling.criterion.point_sampling import (
    read_mask_pixels,
    sample_binary_masks,
    sample_shared_points,
)
from dataseg.modeling.fast_paths.grid_point_sampler import (
    PixelPoints,
    sample_logits_at_pixels,
    sample_uncertain_pixels,
)


def _singletons(x):
    return merge_mask_logits(x, torch.arange(x.shape[0]), x.shape[0])


def test_sample_binary_masks_equals_point_sample():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 19, 23, generator=g) > 0.5
    idx = torch.tensor([4, 0, 0, 2])
    coords = torch.rand(4, 300, 2, generator=g)
    coords[0, :2] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # borders (zero padding)
    ref = point_sample(masks[idx, None].float(), coords, align_corners=False)[:, 0]
    torch.testing.assert_close(sample_binary_masks(masks, idx, coords), ref)
    shared = coords[1]
    ref = point_sample(masks[:, None].float(), shared.expand(5, -1, -1), align_corners=False)[:, 0]
    torch.testing.assert_close(sample_binary_masks(masks, torch.arange(5), shared), ref)
    nearest = sample_binary_masks(masks, idx, coords, mode="nearest")
    assert set(nearest.unique().tolist()) <= {0.0, 1.0}


def test_sample_shared_points_equals_point_sample():
    maps = torch.randn(2, 3, 8, 8)
    coords = torch.rand(50, 2)
    ref = point_sample(maps.flatten(0, 1)[:, None], coords.expand(6, -1, -1), align_corners=False)
    torch.testing.assert_close(sample_shared_points(maps, coords), ref[:, 0].view(2, 3, 50))


def test_focal_loss_equals_fvcore_for_single_proposals():
    x = torch.randn(3, 40) * 4
    t = (torch.rand(3, 40) > 0.5).float()
    ours = focal_loss(_singletons(x), t, 0.25, 2.0)
    ref = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="none").mean(-1)
    torch.testing.assert_close(ours, ref)


def test_dice_and_class_losses():
    p = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert dice_loss(p, p).item() < 1e-6
    assert dice_loss(p, 1 - p).item() > 0.6
    logits = torch.randn(6, 5)
    target = torch.tensor([0, 4, 4, 2, 4, 1])
    weight = torch.tensor([1.0, 1, 1, 1, 0.1])
    torch.testing.assert_close(
        class_nll_loss(F.log_softmax(logits, -1), target, 0.1),
        F.cross_entropy(logits, target, weight=weight),
    )


def test_matching_picks_the_obvious_assignment():
    # 4 units, 3 gt masks at 16 points; unit u resembles gt perm[u]; unit 3 is junk.
    gt = torch.zeros(3, 16)
    gt[0, :5] = 1
    gt[1, 5:10] = 1
    gt[2, 10:] = 1
    gt_labels = torch.tensor([2, 0, 1])
    perm = [2, 0, 1]
    logits = torch.full((4, 16), -6.0)
    class_logits = torch.zeros(4, 4)
    for u, k in enumerate(perm):
        logits[u][gt[k] > 0] = 6.0
        class_logits[u, gt_labels[k]] = 5.0
    class_logits[3, 3] = 5.0
    matcher = HungarianMatcher()
    cost = matcher.mask_cost(F.log_softmax(class_logits, -1), _singletons(logits), gt_labels, gt)
    rows, cols = matcher.assign(cost)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 0, 2: 1}
    rows, cols = matcher.assign(cost[:, :0])
    assert rows.numel() == 0 and cols.numel() == 0
    rows, _ = matcher.assign(torch.full((2, 2), float("nan")))
    assert rows.numel() == 2


def test_box_matching_uses_projections():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 32.0, 64.0, 48.0]])
    bx, by = box_projection_targets(boxes, (16, 16), (64, 64))
    masks = torch.full((2, 16, 16), -8.0)
    masks[0, 8:12, 8:16] = 8.0  # fills box 1
    masks[1, 0:4, 0:4] = 8.0  # fills box 0
    px, py = mask_projections(masks)
    cost = HungarianMatcher().box_cost(torch.zeros(2, 3).log_softmax(-1), px, py,
                                       torch.tensor([0, 1]), bx, by)
    rows, cols = HungarianMatcher.assign(cost)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_box_projection_loss_zero_when_mask_fills_box_and_grows_outside():
    box = torch.tensor([[16.0, 8.0, 48.0, 40.0]])  # cells x 4..11, y 2..9 at stride 4
    bx, by = box_projection_targets(box, (16, 16), (64, 64))
    assert bx[0].nonzero().flatten().tolist() == list(range(4, 12))
    assert by[0].nonzero().flatten().tolist() == list(range(2, 10))
    losses = []
    for shift in range(0, 6):
        m = torch.full((1, 16, 16), -20.0)
        m[0, 2:10, 4 + shift:12 + shift] = 20.0
        px, py = mask_projections(m)
        losses.append((projection_dice(px, bx) + projection_dice(py, by)).item())
    assert losses[0] < 1e-4
    assert all(b > a for a, b in zip(losses, losses[1:]))


def test_tiny_box_covers_its_cell():
    bx, by = box_projection_targets(torch.tensor([[9.0, 9.0, 9.5, 9.2]]), (8, 8), (32, 32))
    assert bx.sum() == 1 and by.sum() == 1


def test_color_similarity_of_flat_image_is_one_inside():
    mean, std = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)
    img = torch.zeros(1, 3, 32, 32)  # == pixel mean everywhere
    lab = images_to_lab(img, mean, std, "BGR", stride=4)
    assert lab.shape == (1, 3, 8, 8)
    sim = color_similarity(lab, 3, 2)
    assert sim.shape == (1, 8, 8, 8)
    torch.testing.assert_close(sim[0, :, 3:5, 3:5], torch.ones(8, 2, 2))
    assert sim[0, 0, 0, 0] == 0  # neighbour outside the image


def test_grid_importance_sampler_concentrates_on_uncertain_pixels():
    torch.manual_seed(0)
    unc = torch.zeros(2, 16, 16)
    unc[:, :, :4] = 1.0  # the left quarter is uncertain
    pts = sample_uncertain_pixels(unc, 400, 3.0, 0.75, (64, 64))
    assert pts.row.shape == pts.col.shape == (2, 400) and pts.size == (64, 64)
    assert pts.row.min() >= 0 and pts.row.max() < 64 and pts.col.min() >= 0
    # 300 importance points from the top 25% of pixels (= the uncertain quarter, GT columns
    # 0..15 at stride 4) + 100 uniform ones.
    assert (pts.col[:, :300] < 16).all()
    assert 0.1 < (pts.col[:, 300:] < 16).float().mean() < 0.4
    # Every GT pixel of an uncertain prediction pixel can be drawn (the sub-pixel part).
    assert set((pts.col[:, :300] % 4).unique().tolist()) == {0, 1, 2, 3}
    assert set((pts.row[:, :300] % 4).unique().tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(pts.linear(), pts.row.long() * 64 + pts.col.long())


def test_grid_sampler_clamps_when_gt_size_is_not_a_multiple():
    torch.manual_seed(0)
    unc = torch.zeros(1, 8, 8)
    unc[:, -1, -1] = 1.0  # only the last cell is uncertain
    pts = sample_uncertain_pixels(unc, 64, 64.0, 1.0, (30, 31))  # k = 1 cell, blocks of 4x4
    assert pts.row.max() == 29 and pts.col.max() == 30
    assert (pts.row >= 28).all() and (pts.col >= 28).all()


def test_logits_at_pixel_centres_equal_point_sample_values_and_grads():
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    row = torch.randint(0, 32, (2, 50), generator=g, dtype=torch.int16)
    col = torch.randint(0, 32, (2, 50), generator=g, dtype=torch.int16)
    points = PixelPoints(row, col, (32, 32))
    member_pair = torch.tensor([1, 0, 1])
    coords = torch.stack([(col.double() + 0.5) / 32, (row.double() + 0.5) / 32], -1)
    weights = torch.linspace(0.5, 1.5, 150, dtype=torch.float64).view(3, 50)

    def run(fn):
        x = maps.clone().requires_grad_(True)
        out = fn(x)
        (out * weights).sum().backward()
        return out.detach(), x.grad

    fast, gf = run(lambda x: sample_logits_at_pixels(x, points, member_pair))
    ref, gr = run(lambda x: point_sample(x[:, None], coords[member_pair],
                                         align_corners=False)[:, 0])
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(gf, gr)
    direct = sample_logits_at_pixels(maps[:2], points)
    torch.testing.assert_close(direct, point_sample(maps[:2, None], coords,
                                                    align_corners=False)[:, 0])


def test_read_mask_pixels_equals_indexing():
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(4, 9, 11, generator=g) > 0.5
    idx = torch.tensor([3, 0, 3])
    pixel = torch.randint(0, 99, (3, 20), generator=g)
    expected = torch.stack([masks[i].flatten()[p] for i, p in zip(idx, pixel)])
    assert torch.equal(read_mask_pixels(masks, idx, pixel), expected.to(torch.uint8))
    assert read_mask_pixels(masks, idx[:0], pixel[:0]).shape == (0, 20)
