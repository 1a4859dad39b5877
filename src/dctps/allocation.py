"""Layer-wise budgets: how many trainable non-zeros each layer gets for a global density.

For layers ``l = 1..L`` with ``N_l`` weights and a global density ``d``, the total is
``T = round(d * sum_l N_l)`` and every method returns integers ``n_l <= N_l`` with ``sum n_l = T``
exactly, and ``n_l >= 1`` for every layer whenever ``T >= L``.

All methods are one weighted water-filling: ``n_l = min(N_l, lam * w_l)`` with the level ``lam``
chosen so that the sum is ``T`` (a capped layer's surplus is thereby redistributed over the others):

=========  =====================================  =========================================
method     weight ``w_l``                         meaning
=========  =====================================  =========================================
uniform    ``N_l``                                the same density ``d`` in every layer
epl        ``1``                                  equal per layer (DCTpS paper, Section 4)
epf        ``out_l`` (filters / output neurons)   equal per filter (Appendix A.2)
erk        ``sum(shape_l)``                       Erdos-Renyi-Kernel (Evci et al., 2020)
=========  =====================================  =========================================

``epl_ref`` reproduces the authors' code (``calculate_layer_densities('equal_per_layer')`` of
IlanPrice/DCTpS, then ``scipy.sparse.random``'s ``round(density * size)`` per mask): the unrounded
share ``T / L`` (``T = d N``) per layer capped at ``N_l``, what the capped layers could not take
added to the last layer only (capped too), each rounded on its own. So some networks end below
``d`` (VGG19 at 1% ends near 0.92%) and some above (FixupResNet110 at 0.01%: 220 where
``round(d N)`` is 172). Use it only to reproduce their figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dctps.errors import DctpsError, as_int, check_density, check_generator, show, unknown_name

__all__ = ["budgets", "build", "names", "filter_counts", "layer_weights", "Allocation"]

#: revision of ``epl_ref``'s counts, in the identity of the runs that use it: 2 since its counts
#: are the authors' own (revision 1 floored ``round(d N) / L`` per layer and gave the integer
#: leftover to the last layer, which differed from theirs by up to 48 weights)
EPL_REF_REVISION = 2

#: each method's water-filling weight ``w_l`` of a layer whose weight has ``shape`` (module
#: table); ``epl_ref`` shares ``epl``'s weight but rounds its own way (:func:`budgets`)
_WEIGHTS: dict[str, Callable[[Sequence[int]], float]] = {
    "uniform": lambda shape: float(math.prod(shape)),
    "epl": lambda shape: 1.0,
    "epf": lambda shape: float(shape[0]),
    "erk": lambda shape: float(sum(shape)),
    "epl_ref": lambda shape: 1.0,
}
_METHODS = tuple(_WEIGHTS)


def names() -> list[str]:
    """The allocation methods :func:`budgets` accepts."""
    return list(_METHODS)


@dataclass(frozen=True)
class Allocation:
    """One allocation method: ``allocation(shapes, density)`` is
    ``budgets(shapes, density, name)``. Made by :func:`build`."""

    name: str

    def __call__(self, weight_shapes: Sequence[Sequence[int]], density: float) -> list[int]:
        """Per-layer non-zero counts of ``weight_shapes`` at ``density`` (:func:`budgets`)."""
        return budgets(weight_shapes, density, self.name)


def build(name: str) -> Allocation:
    """The allocation method ``name`` (one of :func:`names`); an unknown name is a
    :class:`DctpsError` with a did-you-mean."""
    if name not in _METHODS:
        raise unknown_name("allocation", name, _METHODS)
    return Allocation(name)


def layer_weights(shape: Sequence[int], method: str) -> float:
    """The water-filling weight ``w_l`` of a layer whose weight has ``shape`` (see module doc)."""
    if not isinstance(method, str) or method not in _WEIGHTS:
        raise unknown_name("allocation", method, _METHODS)
    return _WEIGHTS[method](_check_shape(shape, "layer_weights: shape"))


def _water_fill(caps: Sequence[int], weights: Sequence[float], total: int) -> list[int]:
    """Integers ``n_l <= caps_l`` summing to ``total``, proportional to ``weights`` below the caps.

    Finds the level ``lam`` with ``sum min(cap_l, lam w_l) = total`` by walking the layers in
    order of the level at which they fill (``cap_l / w_l``), then rounds by largest remainder.
    """
    order = sorted(range(len(caps)), key=lambda i: caps[i] / weights[i])
    remaining, wsum = float(total), float(sum(weights))
    real = [0.0] * len(caps)
    for pos, i in enumerate(order):
        lam = remaining / wsum if wsum > 0 else 0.0
        if lam * weights[i] >= caps[i]:
            real[i] = float(caps[i])
            remaining -= caps[i]
            wsum -= weights[i]
        else:
            for j in order[pos:]:
                real[j] = lam * weights[j]
            break
    counts = [min(caps[i], math.floor(real[i] + 1e-9)) for i in range(len(caps))]
    short = total - sum(counts)
    # Largest remainder; ties broken by layer index so the result is deterministic.
    by_rem = sorted(range(len(caps)), key=lambda i: (-(real[i] - counts[i]), i))
    for i in by_rem:
        if short <= 0:
            break
        if counts[i] < caps[i]:
            counts[i] += 1
            short -= 1
    return counts


def _at_least_one(counts: list[int]) -> list[int]:
    """Give every empty layer one weight, taken from the largest layers (only when ``T >= L``)."""
    if sum(counts) < len(counts):
        return counts
    for i, c in enumerate(counts):
        if c == 0:
            j = max(range(len(counts)), key=lambda k: (counts[k], -k))
            counts[j] -= 1
            counts[i] = 1
    return counts


def _check_shape(shape: object, what: str) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, or a DctpsError naming it as ``what``."""
    if not isinstance(shape, (str, bytes)):
        try:  # a tuple, list, torch.Size or numpy array of integers
            dims = [as_int(s) for s in shape]  # type: ignore[attr-defined]
        except TypeError:  # not iterable
            dims = []
        if dims and None not in dims:
            return tuple(dims)  # type: ignore[arg-type]
    raise DctpsError(
        f"{what} must be a non-empty tuple of integers such as (64, 3, 3, 3), got {show(shape)}"
    )


def _check_shapes(weight_shapes: object) -> list[tuple[int, ...]]:
    """``weight_shapes`` as tuples of ints, or a DctpsError naming the first bad shape."""
    if isinstance(weight_shapes, (str, bytes)) or not hasattr(weight_shapes, "__iter__"):
        raise DctpsError(
            f"weight_shapes must be a list of weight shapes such as [(64, 3, 3, 3), (10, 512)], "
            f"got {weight_shapes!r}"
        )
    return [_check_shape(s, f"weight shape {i}") for i, s in enumerate(weight_shapes)]  # type: ignore[attr-defined]


def budgets(
    weight_shapes: Sequence[Sequence[int]], density: float, method: str = "epl"
) -> list[int]:
    """Per-layer non-zero counts for a global ``density`` (see the module doc for the math).

    Args:
        weight_shapes: each layer's weight shape, e.g. ``(out, in)`` or ``(out, in/g, kh, kw)``.
        density: fraction of all weights that are trainable non-zeros, in (0, 1].
        method: ``uniform``, ``epl``, ``epf``, ``erk`` or ``epl_ref``.

    Returns:
        ``n_l`` per layer; ``sum == round(density * total)`` except for ``epl_ref``.
    """
    d = check_density(density)
    if method not in _METHODS:
        raise unknown_name("allocation", method, _METHODS)
    shapes = _check_shapes(weight_shapes)
    if not shapes:
        raise DctpsError("budgets needs at least one layer shape, got none")
    caps = [math.prod(s) for s in shapes]
    if min(caps) < 1:
        raise DctpsError(f"every layer needs at least one weight, got shapes {shapes}")
    if method == "epl_ref":
        return _epl_ref(caps, d)
    total = round(d * sum(caps))
    counts = _water_fill(caps, [layer_weights(s, method) for s in shapes], total)
    return _at_least_one(counts)


def _epl_ref(caps: Sequence[int], d: float) -> list[int]:
    """The authors' EPL counts (module doc): share ``s = d N / L`` per layer, capped at ``N_l``;
    the last layer also gets ``d N - sum(min(N_l, s))``; each layer's density ``min(n_l / N_l,
    1)`` drawn as ``round(density * N_l)`` weights (``scipy.sparse.random``), the float
    arithmetic kept as theirs is."""
    target = d * sum(caps)
    share = [min(float(c), target / len(caps)) for c in caps]
    share[-1] += target - sum(share)
    return [int(round(min(n / c, 1.0) * c)) for n, c in zip(share, caps, strict=True)]


def filter_counts(
    shape: Sequence[int], nnz: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Split a layer's ``nnz`` over its ``out = shape[0]`` filters as evenly as possible (EPF,
    Appendix A.2: "divided equally between all convolutional filters").

    Returns an int64 tensor of length ``out`` whose entries differ by at most one, sum to ``nnz``
    and never exceed the filter size ``prod(shape[1:])``. The ``nnz mod out`` filters that get
    one more are drawn uniformly at random (``generator``; ``None``: torch's global RNG): always
    the first ones would put every seed's extra weights, and at densities under one weight per
    filter all of them, on the same filters (in a DCTpS layer, the lowest DCT frequencies).
    """
    dims = _check_shape(shape, "filter_counts: shape")
    check_generator(generator, "filter_counts: generator")
    out, fan = dims[0], math.prod(dims[1:])
    count = as_int(nnz)  # numpy integers too
    if count is None or count < 0 or count > out * fan:
        raise DctpsError(
            f"filter_counts: nnz must be an integer in [0, {out * fan}] to fit a layer of "
            f"shape {dims}, got {show(nnz)}"
        )
    base, extra = divmod(count, out)
    counts = torch.full((out,), base, dtype=torch.int64, device="cpu")
    if extra:
        counts[torch.randperm(out, generator=generator, device="cpu")[:extra]] += 1
    return counts
