"""The convolution as an operator on images: apply, adjoint and the unrolled matrix agree, for every geometry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbench.torch.conv_operator import ConvGeometry, adjoint, apply, conv_geometries, dense
from lipbench.torch.models import ConvNet

GEOMETRIES = [  # (in, out, kernel, stride, padding, dilation, map)
    (1, 3, 3, 1, 1, 1, 5),
    (2, 4, 3, 2, 1, 1, 7),  # stride 2 on an odd map: output_padding restores the last row
    (2, 3, 3, 2, 1, 1, 8),
    (3, 2, 2, 1, 0, 1, 6),
    (2, 2, 3, 1, 2, 2, 6),
    (4, 8, 3, 2, 1, 1, 2),  # the quick ConvNet's third layer: a 2x2 map
]


@pytest.mark.parametrize(("cin", "cout", "k", "s", "p", "d", "n"), GEOMETRIES)
def test_adjoint_is_the_transpose_and_dense_is_the_operator(cin, cout, k, s, p, d, n) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d).double()
    geom = ConvGeometry.of(conv, (cin, n, n))
    x = torch.randn(3, *geom.in_shape, dtype=torch.float64)
    y = torch.randn(3, *geom.out_shape, dtype=torch.float64)
    W = conv.weight.detach()
    torch.testing.assert_close(apply(W, x, geom), nn.functional.conv2d(x, W, None, s, p, d))
    assert (apply(W, x, geom) * y).sum().item() == pytest.approx((x * adjoint(W, y, geom)).sum().item(), rel=1e-12)
    A = dense(W, geom)
    assert A.shape == (geom.out_numel, geom.in_numel)
    torch.testing.assert_close(A @ x.reshape(3, -1).T, apply(W, x, geom).reshape(3, -1).T)
    torch.testing.assert_close(A.T @ y.reshape(3, -1).T, adjoint(W, y, geom).reshape(3, -1).T)


def test_members_are_groups_of_one_call() -> None:
    torch.manual_seed(1)
    geom = ConvGeometry.of(nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 7))
    kernels = torch.randn(4, 3, 2, 3, 3)
    x, y = torch.randn(4, 5, 2, 7, 7), torch.randn(4, 5, 3, 4, 4)
    for m in range(4):
        torch.testing.assert_close(apply(kernels, x, geom)[m], apply(kernels[m], x[m], geom))
        torch.testing.assert_close(adjoint(kernels, y, geom)[m], adjoint(kernels[m], y[m], geom))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (1, 8, 8)])
def test_the_convnet_layers_see_their_real_input_size(shape) -> None:
    geoms = conv_geometries(ConvNet(shape, 10, batch_norm=True), shape)
    c, n = shape[0], shape[1]
    assert [g.in_shape for g in geoms.values()] == [(c, n, n), (32, n // 2, n // 2), (64, n // 4, n // 4)]
    assert list(geoms.values())[-1].out_shape == (128, (n // 4 + 1) // 2, (n // 4 + 1) // 2)
