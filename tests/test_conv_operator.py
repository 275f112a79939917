"""The convolution as an operator on images: apply, adjoint and the unrolled matrix agree, for every geometry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipbench.torch.conv_operator import ConvGeometry, adjoint, apply, conv_geometries, dense, top_singular_pair
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


def _aligned(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - |cos| of two images: 0 when they span the same line (singular vectors have no sign)."""
    return 1 - abs(float((a.flatten() @ b.flatten()) / (a.norm() * b.norm())))


@pytest.mark.parametrize(("cin", "cout", "k", "s", "p", "d", "n"), GEOMETRIES)
def test_top_singular_pair_is_the_dense_operators(cin, cout, k, s, p, d, n) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d).double()
    geom = ConvGeometry.of(conv, (cin, n, n))
    W = conv.weight.detach()
    U, S, Vh = torch.linalg.svd(dense(W, geom))
    sigma, u, v = top_singular_pair(W, geom)
    assert sigma.shape == () and u.shape == geom.out_shape and v.shape == geom.in_shape
    assert abs(sigma.item() - S[0].item()) <= 1e-12 * S[0].item()
    # The vectors' error is the residual over the spectral gap: a tight tolerance pins them down too.
    sigma, u, v = top_singular_pair(W, geom, tol=1e-14)
    # A v = sigma u and A^T u = sigma v: a singular pair of the top value (the dilated layer's is 4-fold).
    torch.testing.assert_close(apply(W, v.unsqueeze(0), geom)[0], sigma * u, rtol=0, atol=1e-12)
    torch.testing.assert_close(adjoint(W, u.unsqueeze(0), geom)[0], sigma * v, rtol=0, atol=1e-12)
    if S[0] - S[1] > 1e-3 * S[0]:
        assert _aligned(v, Vh[0]) < 1e-12 and _aligned(u, U[:, 0]) < 1e-12
    assert abs(u.norm().item() - 1) < 1e-12 and abs(v.norm().item() - 1) < 1e-12
    sigma32, _, _ = top_singular_pair(W.float(), geom)
    assert sigma32.dtype == torch.float32
    assert abs(sigma32.item() - S[0].item()) <= 1e-5 * S[0].item()


def test_top_singular_pair_vectorises_members_and_gives_nan_for_a_diverged_one() -> None:
    torch.manual_seed(3)
    geom = ConvGeometry.of(nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 7))
    kernels = torch.randn(2, 3, 4, 3, 3, 3, dtype=torch.float64)
    kernels[1, 2, 0, 0, 0, 0] = torch.inf
    sigma, u, v = top_singular_pair(kernels, geom)
    assert sigma.shape == (2, 3) and u.shape == (2, 3, *geom.out_shape) and v.shape == (2, 3, *geom.in_shape)
    assert sigma[1, 2].isnan() and u[1, 2].isnan().all() and v[1, 2].isnan().all()
    for i, j in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        exact = torch.linalg.matrix_norm(dense(kernels[i, j], geom), 2)
        assert abs(sigma[i, j].item() - exact.item()) <= 1e-12 * exact.item()


def test_top_singular_pair_warm_start_needs_one_step() -> None:
    # From the converged v, a single Lanczos step of one cycle already gives sigma to rounding: the warm start
    # is used (a cold start with the same budget is far off on this near-degenerate spectrum).
    torch.manual_seed(4)
    geom = ConvGeometry.of(nn.Conv2d(8, 16, 3, padding=1), (8, 6, 6))
    W = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    sigma, _, v = top_singular_pair(W, geom)
    warm, _, _ = top_singular_pair(W, geom, v, max_iter=1, krylov=1)
    cold, _, _ = top_singular_pair(W, geom, max_iter=1, krylov=1)
    assert abs(warm.item() - sigma.item()) <= 1e-12 * sigma.item()
    assert abs(cold.item() - sigma.item()) > 1e-3 * sigma.item()


def test_a_one_output_operator_converges_from_a_cold_start() -> None:
    # A 1 x n operator (one output channel, one output pixel): its Krylov space of A^T A has 2 vectors, so each
    # restart must span both; a restart confined to its start vector would stall at |A v0|.
    torch.manual_seed(5)
    geom = ConvGeometry.of(nn.Conv2d(3, 1, 3), (3, 3, 3))
    W = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    sigma, _, v = top_singular_pair(W, geom)
    exact = torch.linalg.matrix_norm(dense(W, geom), 2)
    assert abs(sigma.item() - exact.item()) <= 1e-12 * exact.item()
    assert _aligned(v, W[0]) < 1e-12  # the kernel itself is the top input image
