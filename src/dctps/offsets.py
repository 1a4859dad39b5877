"""The fixed offset ``D`` of ``W = alpha * D + S``: the paper's truncated DCT and a few variants.

Every offset is a float64 matrix of shape ``(out, fan_in)`` built from the layer's shape (and, for
the random variants, a seed). For a conv the columns are the ``(h, w, c)``-flattened patch (channel
fastest), exactly as for the DCT (:func:`dctps.dct.conv_dct_basis`); grouped convs use the same
``(out, fan_in)`` matrix with ``fan_in`` the per-group patch length.

==============  ==============================================================  ==================
name            matrix                                                          fast path
==============  ==============================================================  ==================
``dct``         ``C_N[:out, :fan]``, ``N = max(out, fan)`` (the paper)          FFT (and factor)
``dct_signflip``  ``C_N[:out, :fan] @ diag(s)``, ``s`` a seeded random +-1      sign multiply, FFT
``dct_permuted``  ``C_N[:out, :fan][:, perm]``, ``perm`` a seeded permutation   gather, FFT
``hadamard``    ``H_M[:out, :fan]``, ``H_M`` the normalised Sylvester           fast Walsh-Hadamard
                Walsh-Hadamard matrix, ``M`` = next power of two >= ``max``     ``O(M log M)``
``gaussian``    orthonormal rows (``out <= fan``) or columns (``out > fan``)    none (dense only)
                from the QR of a seeded Gaussian matrix: a control
==============  ==============================================================  ==================

Rows are orthonormal for ``dct``, ``dct_signflip``, ``dct_permuted`` and ``gaussian`` whenever
``out <= fan`` (then ``N = fan``); for ``hadamard`` only when ``fan`` is itself a power of two
(otherwise each row has squared norm ``fan / M``). Why these: on a BN-free ReLU network every
activation is ``>= 0``, so the constant (DC) row 0 of the DCT dominates the output at
initialisation. Random column signs make every row zero-mean in expectation; a column permutation
does not (row 0 stays constant) and serves as a control for "mixing" without de-biasing; the
natural-order Hadamard matrix has a constant row 0 too; ``gaussian`` is a dense orthogonal control
without structure (and without a fast transform).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dctps.dct import dct_basis
from dctps.errors import DctpsError, unknown_name

__all__ = [
    "OFFSETS",
    "names",
    "check_offset",
    "has_fast_path",
    "needs_seed",
    "matrix",
    "signs",
    "permutation",
    "hadamard_size",
    "hadamard_matrix",
    "fwht",
    "gaussian_matrix",
    "row_norms",
]

F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def signs(fan_in: int, seed: int) -> torch.Tensor:
    """The seeded ``+-1`` column signs of ``dct_signflip`` (float64, length ``fan_in``)."""
    return (torch.randint(0, 2, (fan_in,), generator=_generator(seed)) * 2 - 1).to(F64)


def permutation(fan_in: int, seed: int) -> torch.Tensor:
    """The seeded column permutation of ``dct_permuted``: ``D[:, j] = C[:, perm[j]]`` (int64)."""
    return torch.randperm(fan_in, generator=_generator(seed))


def hadamard_size(out: int, fan_in: int) -> int:
    """``M``: the next power of two ``>= max(out, fan_in)``."""
    return 1 << max(0, (max(out, fan_in) - 1).bit_length())


def hadamard_matrix(n: int) -> torch.Tensor:
    """The normalised ``n x n`` Sylvester Walsh-Hadamard matrix (``n`` a power of two), float64.

    ``H_1 = [1]``, ``H_2k = [[H_k, H_k], [H_k, -H_k]] / sqrt(2)`` (natural order, as
    ``scipy.linalg.hadamard(n) / sqrt(n)``); symmetric and orthonormal.
    """
    if n < 1 or n & (n - 1):
        raise DctpsError(f"hadamard_matrix needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def fwht(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The unnormalised fast Walsh-Hadamard transform along ``dim`` (length a power of two).

    ``fwht(x) = sqrt(M) * H_M @ x`` in natural (Sylvester) order, ``O(M log M)``: ``log2 M``
    butterfly stages, each one add and one subtract per pair. Differentiable (plain torch ops); it
    is its own transpose, and ``fwht(fwht(x)) = M * x``.
    """
    x = x.movedim(dim, -1)
    shape = x.shape
    m = shape[-1]
    if m & (m - 1):
        raise DctpsError(f"fwht needs a power-of-two length, got {m}")
    lead = x.reshape(-1, m)
    h = 1
    while h < m:
        v = lead.view(-1, m // (2 * h), 2, h)
        a, b = v[:, :, 0], v[:, :, 1]
        lead = torch.stack((a + b, a - b), dim=2).view(-1, m)
        h *= 2
    return lead.view(shape).movedim(-1, dim)


def gaussian_matrix(out: int, fan_in: int, seed: int) -> torch.Tensor:
    """Orthonormal rows (``out <= fan_in``) or columns (``out > fan_in``) from the QR of a seeded
    standard Gaussian ``(max, min)`` matrix (signs fixed by ``diag(R) > 0``: Haar distributed)."""
    big, small = max(out, fan_in), min(out, fan_in)
    a = torch.randn(big, small, generator=_generator(seed), dtype=F64)
    q, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0
    q = q * d
    return q.T.contiguous() if out <= fan_in else q.contiguous()


def _dct(out: int, fan_in: int, seed: int | None) -> torch.Tensor:
    return dct_basis(out, fan_in, F64)


def _dct_signflip(out: int, fan_in: int, seed: int | None) -> torch.Tensor:
    return dct_basis(out, fan_in, F64) * signs(fan_in, _need(seed, "dct_signflip"))


def _dct_permuted(out: int, fan_in: int, seed: int | None) -> torch.Tensor:
    return dct_basis(out, fan_in, F64)[:, permutation(fan_in, _need(seed, "dct_permuted"))]


def _hadamard(out: int, fan_in: int, seed: int | None) -> torch.Tensor:
    m = hadamard_size(out, fan_in)
    # entries (-1)^popcount(i & j) / sqrt(m): only the needed (out, fan_in) block is formed
    i = torch.arange(out)[:, None]
    j = torch.arange(fan_in)[None, :]
    bits = i & j
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(F64) / math.sqrt(m)


def _gaussian(out: int, fan_in: int, seed: int | None) -> torch.Tensor:
    return gaussian_matrix(out, fan_in, _need(seed, "gaussian"))


def _need(seed: int | None, name: str) -> int:
    if seed is None:
        raise DctpsError(f"offset {name!r} needs a seed")
    return int(seed)


_BUILDERS: dict[str, Callable[[int, int, int | None], torch.Tensor]] = {
    "dct": _dct,
    "dct_signflip": _dct_signflip,
    "dct_permuted": _dct_permuted,
    "hadamard": _hadamard,
    "gaussian": _gaussian,
}
OFFSETS = tuple(_BUILDERS)
_FAST = ("dct", "dct_signflip", "dct_permuted", "hadamard")
_SEEDED = ("dct_signflip", "dct_permuted", "gaussian")


def names() -> list[str]:
    """The offsets :func:`matrix` builds (``dct`` is the paper's and the default)."""
    return list(OFFSETS)


def check_offset(name: object) -> str:
    """Return ``name`` if it is an offset, else raise :class:`DctpsError` with a did-you-mean."""
    if name not in _BUILDERS:
        raise unknown_name("offset", name, OFFSETS)
    return str(name)


def has_fast_path(name: str) -> bool:
    """Whether layers with this offset have a transform (``mode='fast'``) path."""
    return check_offset(name) in _FAST


def needs_seed(name: str) -> bool:
    """Whether the offset is random (its seed is stored in the layer's ``offset_seed`` buffer)."""
    return check_offset(name) in _SEEDED


def matrix(name: str, out: int, fan_in: int, seed: int | None = None) -> torch.Tensor:
    """The float64 ``(out, fan_in)`` offset matrix ``name`` (see the module table)."""
    return _BUILDERS[check_offset(name)](out, fan_in, seed)


def row_norms(name: str, out: int, fan_in: int, seed: int | None = None) -> torch.Tensor:
    """The Euclidean norm of every row of :func:`matrix` (float64, length ``out``).

    Closed forms where known (1 for the DCT variants and ``gaussian`` when ``out <= fan_in``,
    ``sqrt(fan_in / M)`` for ``hadamard``), else computed from the matrix.
    """
    name = check_offset(name)
    if name in ("dct", "dct_signflip", "dct_permuted", "gaussian") and out <= fan_in:
        return torch.ones(out, dtype=F64)
    if name == "hadamard":
        return torch.full((out,), math.sqrt(fan_in / hadamard_size(out, fan_in)), dtype=F64)
    if name in ("dct_signflip", "dct_permuted"):  # signs and permutations keep row norms
        name = "dct"
    return matrix(name, out, fan_in, seed).norm(dim=1)
