"""The DCT matrices and fast transforms against scipy (an independent implementation)."""

import numpy as np
import pytest
import scipy.fft
import torch

from dctps.dct import conv_dct_basis, dct, dct_basis, dct_matrix, dct_t


def scipy_c(n: int) -> np.ndarray:
    return scipy.fft.dct(np.eye(n), norm="ortho", axis=0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 64, 255])
def test_dct_matrix_equals_scipy(n):
    np.testing.assert_allclose(dct_matrix(n).numpy(), scipy_c(n), atol=1e-12)


@pytest.mark.parametrize("out,inp", [(5, 5), (3, 11), (11, 3), (1, 1), (1, 9), (9, 1), (10, 27)])
def test_dct_basis_is_truncated_c_n(out, inp):
    ref = scipy_c(max(out, inp))[:out, :inp]
    np.testing.assert_allclose(dct_basis(out, inp, torch.float64).numpy(), ref, atol=1e-12)


@pytest.mark.skipif(
    np.finfo(np.longdouble).eps > 1e-18,
    reason="numpy's long double is float64 on this platform: no extended-precision reference",
)
@pytest.mark.parametrize("out,inp", [(4096, 4096), (40, 30000), (700, 3)])
def test_dct_basis_entries_are_within_roundings_of_exact(out, inp):
    """Against numpy's extended precision (x86's 80-bit long double): float64 entries within 4
    roundings of the largest. A cosine of the unreduced float64 angle, up to ``pi N``, was off by
    about 10,000 at 4096 x 4096 (the Triton kernels, which compute the same entries, showed it)."""
    n = max(out, inp)
    k = np.arange(out, dtype=np.int64)[:, None]
    j = np.arange(inp, dtype=np.int64)[None, :]
    m = ((k * (2 * j + 1)) % (4 * n)).astype(np.longdouble)  # exact: a whole number of turns
    pi = np.longdouble("3.141592653589793238462643383279502884")
    exact = np.sqrt(np.longdouble(2) / n) * np.cos(pi * m / (2 * n))
    exact[0] /= np.sqrt(np.longdouble(2))
    err = np.abs(dct_basis(out, inp, dtype=torch.float64).numpy() - exact).max()
    assert err <= 4 * np.finfo(np.float64).eps * np.sqrt(2.0 / n)


def test_dct_basis_rows_orthonormal_when_wide():
    d = dct_basis(6, 20, torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(6, dtype=torch.float64))


@pytest.mark.parametrize(
    "out,cin,k,groups",
    [(8, 3, 3, 1), (16, 4, 1, 1), (5, 6, 5, 1), (64, 3, 3, 1), (8, 4, 3, 2), (32, 32, 3, 32)],
)
def test_conv_basis_hwc_patch_order(out, cin, k, groups):
    basis = conv_dct_basis(out, cin, k, k, groups, dtype=torch.float64).numpy()
    c_g = cin // groups
    fan = k * k * c_g
    ref = scipy_c(max(out, fan))[:out, :fan]
    assert basis.shape == (out, c_g, k, k)
    for o in range(out):
        for c in range(c_g):
            for h in range(k):
                for w in range(k):
                    assert basis[o, c, h, w] == pytest.approx(ref[o, (h * k + w) * c_g + c])


def test_conv_basis_rejects_bad_groups():
    with pytest.raises(ValueError, match="divisible"):
        conv_dct_basis(8, 3, 3, 3, groups=2)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4096])
def test_fast_dct_equals_matrix_float32(n):
    x = torch.randn(4, n)
    c = torch.from_numpy(scipy_c(n)).float()
    torch.testing.assert_close(dct(x, n), x @ c.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dct_t(x, n), x @ c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("m,n", [(7, 3), (3, 7), (100, 33), (33, 100), (1, 5), (5, 1)])
def test_fast_dct_truncates_and_pads_like_the_basis(m, n):
    x = torch.randn(3, m, dtype=torch.float64)
    d = torch.from_numpy(scipy_c(max(m, n))[:n, :m])
    torch.testing.assert_close(dct(x, n), x @ d.T, atol=1e-12, rtol=0)
    y = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(dct_t(y, m), y @ d, atol=1e-12, rtol=0)


def test_fast_dct_gradient_is_the_transpose():
    x = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dct(t, 5), (x,))
    assert torch.autograd.gradcheck(lambda t: dct_t(t, 13), (x,))


@pytest.mark.parametrize("shape,n", [((0, 5), 3), ((2, 0, 7), 9), ((3, 0), 4), ((0, 4), 6)])
def test_fast_dct_of_an_empty_batch(shape, n):
    """An FFT of a zero-size batch fails on MKL; the transforms return the empty result."""
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y, z = dct(x, n), dct_t(x, n)
    m = shape[-1]
    c = torch.from_numpy(scipy_c(max(m, n))[:n, :m]) if m else torch.zeros(n, 0, dtype=x.dtype)
    torch.testing.assert_close(y, x.detach() @ c.T, atol=0, rtol=0)
    ct = torch.from_numpy(scipy_c(max(m, n))[:m, :n]) if m else torch.zeros(0, n, dtype=x.dtype)
    torch.testing.assert_close(z, x.detach() @ ct, atol=0, rtol=0)
    (y.sum() + z.sum()).backward()
    assert x.grad is not None and x.grad.shape == x.shape
