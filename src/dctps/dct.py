"""The orthonormal DCT-II: exact matrices, truncated bases, and a fast O(n log n) transform.

Notation (supplementary material, Appendix B): ``C_N`` is the ``N x N`` orthonormal DCT-II matrix
with rows indexed by frequency ``k`` and columns by position ``j``::

    C_N[k, j] = sqrt(2 / N) * s_k * cos(pi * k * (2 j + 1) / (2 N)),   s_0 = 1/sqrt(2), s_k = 1

so ``C_N @ x`` is ``scipy.fft.dct(x, norm='ortho')`` and ``C_N.T = C_N^{-1}`` (the DCT-III).
A layer ``in -> out`` uses ``D = C_N[:out, :in]`` with ``N = max(in, out)``: multiplying by ``D``
is a DCT of the input zero-padded to ``N`` with the output truncated to ``out`` (Appendix B, Linear
layers).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["dct_matrix", "dct_basis", "conv_dct_basis", "dct", "dct_t"]


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``n x n`` orthonormal DCT-II matrix ``C_n`` (rows = frequencies), computed in float64.

    Equals ``scipy.fft.dct(np.eye(n), norm='ortho', axis=0)``.
    """
    if n < 1:
        raise ValueError(f"dct_matrix needs n >= 1, got {n}")
    c = _cosines(n, n, n)
    c[0] /= np.sqrt(2.0)
    return torch.from_numpy(c).to(dtype)


def _cosines(rows: int, cols: int, n: int) -> np.ndarray:
    """``sqrt(2 / n) * cos(pi * k * (2 j + 1) / (2 n))`` for ``k < rows``, ``j < cols``, float64.

    The angle is a multiple ``m = k (2 j + 1) mod 4 n`` of ``pi / (2 n)`` below ``2 pi``, so
    each entry is one of ``4 n`` values: these are computed once, each angle reduced in
    integers to its quadrant and to ``[0, pi/4]`` before any float work, and gathered. A float64
    angle of up to ``pi n`` carries ``1e-16`` of its size into the cosine (about 10,000
    roundings of the largest entry at ``n = 4096``); reduced, each entry is within a rounding
    or so, as the GPU kernels' (:mod:`dctps.triton_rebuild`), which reduce it the same way."""
    t = np.arange(4 * n, dtype=np.int64)
    quad, rem = np.divmod(t, n)
    flip = 2 * rem > n
    x = np.pi / (2 * n) * np.where(flip, n - rem, rem)  # in [0, pi/4]
    c = np.where(flip, np.sin(x), np.cos(x))  # cos of the angle within its quadrant
    s = np.where(flip, np.cos(x), np.sin(x))
    table = np.sqrt(2.0 / n) * np.choose(quad, [c, -s, -c, s])  # cos(quad pi/2 + angle)
    k = np.arange(rows, dtype=np.int64)[:, None]
    j = np.arange(cols, dtype=np.int64)[None, :]
    return table[(k * (2 * j + 1)) % (4 * n)]


def dct_basis(
    out_features: int, in_features: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The truncated DCT ``D = C_N[:out, :in]``, ``N = max(in, out)``; shape ``(out, in)``.

    Only the needed rows are evaluated, so the cost is ``O(out * in)``, not ``O(N^2)``.
    """
    n = max(out_features, in_features)
    c = _cosines(out_features, in_features, n)
    if out_features:
        c[0] /= np.sqrt(2.0)
    return torch.from_numpy(c).to(dtype)


def conv_dct_basis(
    out_channels: int,
    in_channels: int,
    kh: int,
    kw: int,
    groups: int = 1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The DCT basis of a Conv2d, shape ``(out, in/groups, kh, kw)`` (PyTorch's weight layout).

    A patch is flattened in ``(h, w, c)`` order, channel fastest (Appendix B), so with
    ``fan_in = kh * kw * in/groups`` and ``M = dct_basis(out, fan_in)``::

        D[o, c, h, w] = M[o, (h * kw + w) * (in/groups) + c]

    Grouped and depthwise convs use the same rule on the ``(out, fan_in)`` matrix of the weight:
    filter ``o`` is DCT frequency ``o`` restricted to its group's patch. For a depthwise 3x3 conv
    with ``C`` channels this is row ``o`` of ``C_max(C, 9)`` truncated to its first 9 entries, which
    is what the authors' code does (their "first 9 entries of row o of a C x C DCT" for ``C >= 9``).
    """
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels={in_channels} and out_channels={out_channels} must be divisible by "
            f"groups={groups}"
        )
    cin = in_channels // groups
    m = dct_basis(out_channels, kh * kw * cin, dtype=torch.float64)
    return m.reshape(out_channels, kh, kw, cin).permute(0, 3, 1, 2).contiguous().to(dtype)


def _twiddle(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``exp(-i pi k / (2n))`` for ``k = 0 .. n//2`` (the half spectrum an rfft returns)."""
    k = torch.arange(n // 2 + 1, device=device, dtype=dtype)
    return torch.polar(torch.ones_like(k), -math.pi * k / (2 * n))


def _dct2_ortho(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last dim (length N), via one real FFT (Makhoul, 1980).

    With ``v = [x_0, x_2, x_4, ..., x_5, x_3, x_1]`` and ``U_k = exp(-i pi k/2N) rfft(v)_k``, the
    unnormalised DCT is ``y_k = 2 Re U_k`` for ``k <= N/2`` and ``y_{N-k} = -2 Im U_k``.
    """
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    u = torch.fft.rfft(v, dim=-1) * _twiddle(n, x.device, x.dtype)
    hi = -u.imag[..., 1 : (n + 1) // 2].flip(-1)
    y = torch.cat([u.real, hi], dim=-1) * math.sqrt(2.0 / n)
    y[..., 0] = y[..., 0] / math.sqrt(2.0)
    return y


def _dct3_ortho(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-III (inverse and transpose of :func:`_dct2_ortho`) via one inverse rFFT."""
    n = y.shape[-1]
    y = y * math.sqrt(n / 2.0)
    y = torch.cat([y[..., :1] * math.sqrt(2.0), y[..., 1:]], dim=-1)
    # Half spectrum of v: V_k = conj(w_k)/2 * (y_k - i y_{N-k}), y_N = 0.
    h = n // 2 + 1
    rev = torch.cat([torch.zeros_like(y[..., :1]), y[..., 1:].flip(-1)], dim=-1)[..., :h]
    spec = torch.complex(y[..., :h], -rev) * _twiddle(n, y.device, y.dtype).conj() / 2
    v = torch.fft.irfft(spec, n=n, dim=-1) * 2
    x = torch.empty_like(v)
    x[..., ::2] = v[..., : (n + 1) // 2]
    x[..., 1::2] = v[..., (n + 1) // 2 :].flip(-1)
    return x


def dct(x: torch.Tensor, n: int) -> torch.Tensor:
    """``C_N[:n, :m] @ x`` along the last dim of ``x`` (length ``m``), ``N = max(m, n)``.

    Zero-pads ``x`` to ``N``, takes an O(N log N) DCT-II, and keeps the first ``n`` frequencies.
    Shape ``(..., m) -> (..., n)``. Works in float32 and float64 and is differentiable.
    """
    m = x.shape[-1]
    if x.numel() == 0:
        return _empty(x, n)
    big = max(m, n)
    if big > m:
        x = torch.nn.functional.pad(x, (0, big - m))
    return _dct2_ortho(x)[..., :n]


def dct_t(y: torch.Tensor, m: int) -> torch.Tensor:
    """The transpose ``C_N[:n, :m]^T @ y`` along the last dim of ``y`` (length ``n``).

    Zero-pads ``y`` to ``N = max(m, n)``, takes an O(N log N) DCT-III, keeps the first ``m``
    entries.
    Shape ``(..., n) -> (..., m)``; the adjoint of :func:`dct` (whose own backward is
    autograd's, through ``torch.fft``; the fast layers' backward uses :mod:`dctps.fast`'s banded
    transforms).
    """
    n = y.shape[-1]
    if y.numel() == 0:
        return _empty(y, m)
    big = max(m, n)
    if big > n:
        y = torch.nn.functional.pad(y, (0, big - n))
    return _dct3_ortho(y)[..., :m]


def _empty(x: torch.Tensor, n: int) -> torch.Tensor:
    """The transform of an empty ``x`` (a zero-size batch, or length 0): zeros of shape
    ``(..., n)``, still in ``x``'s graph. (An FFT of an empty batch fails on some backends.)"""
    return x.sum(-1, keepdim=True).expand(*x.shape[:-1], n).clone()
