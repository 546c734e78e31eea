"""1x1 convolutions as batched matrix products: same values, gradients and state dicts."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model

from dataseg.modeling.fast_paths.pointwise_conv import (
    PointwiseConv2d,
    convert_pointwise_convs,
    pointwise_conv2d,
)

from helpers import PAN, make_inputs, model_cfg, register_model_metadata


@pytest.fixture(scope="module", autouse=True)
def metadata():
    register_model_metadata()


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (1, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_pointwise_conv_matches_conv2d_values_and_grads(stride, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 9, 7, generator=g, requires_grad=True)
    w = torch.randn(6, 5, 1, 1, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True) if with_bias else None
    grad = torch.randn(F.conv2d(x, w, b, stride).shape, generator=g)
    ref = F.conv2d(x, w, b, stride)
    ref_grads = torch.autograd.grad(ref, [x, w] + ([b] if with_bias else []), grad)
    out = pointwise_conv2d(x, w, b, stride)
    grads = torch.autograd.grad(out, [x, w] + ([b] if with_bias else []), grad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        Conv2d(4, 8, kernel_size=1, bias=False, norm=FrozenBatchNorm2d(8), activation=F.relu),
        nn.Conv2d(8, 8, kernel_size=1),
        Conv2d(8, 8, kernel_size=1, stride=2),
        Conv2d(8, 8, kernel_size=3, padding=1),  # not 1x1: left alone
        nn.Conv2d(8, 8, kernel_size=1, groups=2),  # grouped: left alone
        nn.Conv2d(8, 8, kernel_size=1, padding=1),  # padded: left alone
    )


def test_convert_swaps_only_plain_1x1_convs_and_keeps_outputs_and_state():
    ref = _net()
    net = copy.deepcopy(ref)
    assert convert_pointwise_convs(net) == 3
    kinds = [type(m) for m in net]
    assert kinds[:3] == [PointwiseConv2d] * 3
    assert kinds[3:] == [Conv2d, nn.Conv2d, nn.Conv2d]
    assert isinstance(net[1], nn.Conv2d) and net[1].norm is None
    assert list(net.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 4, 10, 12, requires_grad=True)
    torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-5)
    net(x).square().sum().backward()
    got = [p.grad.clone() for p in net.parameters()]
    ref(x).square().sum().backward()
    for a, p in zip(got, ref.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-4)
    assert convert_pointwise_convs(net) == 0  # idempotent: already converted


def test_fast_paths_convert_the_model_and_keep_its_outputs(tmp_path):
    cfg = model_cfg(tmp_path)
    cfg.MODEL.DATASEG.FAST_PATHS = "off"
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    cfg.MODEL.DATASEG.FAST_PATHS = "auto"
    torch.manual_seed(0)
    fast = build_model(cfg).eval()
    assert not any(isinstance(m, PointwiseConv2d) for m in plain.modules())
    # The backbone's bottleneck and shortcut convs and the pixel decoder's 1x1 convs.
    assert sum(isinstance(m, PointwiseConv2d) for m in fast.modules()) > 10
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast.load_state_dict(plain.state_dict())
    inputs = make_inputs(PAN, with_targets=False)
    with torch.no_grad():
        a = plain(inputs)
        b = fast(inputs)
    for x, y in zip(a, b):
        torch.testing.assert_close(y["sem_seg"], x["sem_seg"], rtol=1e-4, atol=1e-4)
