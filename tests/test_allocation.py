"""Budgets: exact totals, caps and redistribution, against direct computations."""

import math

import pytest
import torch

from dctps.allocation import budgets, filter_counts
from dctps.allocation import names as allocation_names
from dctps.errors import DctpsError

VGGISH = [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (256, 128, 3, 3), (512, 256, 3, 3),
          (10, 512)]  # fmt: skip
TINY_FIRST = [(2, 1, 1, 1), (256, 256, 3, 3), (512, 256, 3, 3), (100, 512)]
# every registered allocation but epl_ref, which rounds each layer on its own (the authors'
# code): its total is not round(d*N). A new one gets the exact-sum properties without a list
# to edit (an extensibility review)
METHODS = [n for n in allocation_names() if n != "epl_ref"]
DENSITIES = [1.0, 0.5, 0.1, 0.01, 1e-3, 1e-4, 1e-5]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shapes", [VGGISH, TINY_FIRST], ids=["vggish", "tiny_first"])
def test_sum_exact_and_capped(method, density, shapes):
    caps = [math.prod(s) for s in shapes]
    counts = budgets(shapes, density, method)
    total = round(density * sum(caps))
    assert sum(counts) == total
    assert all(0 <= c <= cap for c, cap in zip(counts, caps, strict=True))
    if total >= len(shapes):
        assert min(counts) >= 1


def test_epl_redistributes_a_small_layer():
    counts = budgets(TINY_FIRST, 0.01, "epl")
    total = round(0.01 * sum(math.prod(s) for s in TINY_FIRST))
    assert counts[0] == 2  # the 2-weight layer is full
    # The rest share equally (within 1 from rounding).
    rest = counts[1:]
    assert max(rest) - min(rest) <= 1
    assert sum(rest) == total - 2


def test_uniform_gives_each_layer_the_density():
    counts = budgets(VGGISH, 0.1, "uniform")
    for c, s in zip(counts, VGGISH, strict=True):
        assert abs(c - 0.1 * math.prod(s)) <= 1


def test_erk_proportional_to_sum_over_prod():
    shapes = [(256, 256, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3)]
    counts = budgets(shapes, 0.01, "erk")
    dens = [c / math.prod(s) for c, s in zip(counts, shapes, strict=True)]
    raw = [sum(s) / math.prod(s) for s in shapes]
    for d, r in zip(dens, raw, strict=True):
        assert d / r == pytest.approx(dens[0] / raw[0], rel=1e-3)


def test_erk_caps_dense_layers_and_redistributes():
    shapes = [(8, 3, 3, 3), (512, 512, 3, 3), (10, 512)]
    counts = budgets(shapes, 0.3, "erk")
    assert counts[0] == 8 * 27  # would exceed density 1: made dense
    assert sum(counts) == round(0.3 * sum(math.prod(s) for s in shapes))


def test_epf_equal_per_filter():
    counts = budgets(VGGISH, 0.01, "epf")
    per_filter = [c / s[0] for c, s in zip(counts, VGGISH, strict=True)]
    assert max(per_filter) - min(per_filter) <= 1.0


def _authors_epl(caps, d):
    """IlanPrice/DCTpS ``calculate_layer_densities('equal_per_layer')`` written out with numpy,
    then each mask's count as ``scipy.sparse.random`` takes it: ``round(density * size)``."""
    import numpy as np

    full = list(caps)
    target = d * sum(full)
    per_layer = [target / len(full) for _ in full]
    per_layer = [np.minimum(full[i], per_layer[i]) for i in range(len(full))]
    per_layer[-1] += target - sum(per_layer)
    densities = np.minimum(np.divide(per_layer, full), 1)
    return [int(round(float(p) * n)) for p, n in zip(densities, full, strict=True)]


def test_epl_ref_is_the_authors_allocation():
    """The authors' EPL: share d N / L capped per layer, the capped layers' surplus to the last
    layer only, each rounded on its own; so totals end below d (a capped last layer) or above it
    (shares rounding up). It had floored round(d N) / L and given the last layer the integer
    leftover: up to 48 weights off theirs (FixupResNet110 at 0.01%)."""
    from dctps.models import build

    shapes = [(10, 3), (1000, 1000), (1000, 1000), (5, 5)]
    caps = [math.prod(s) for s in shapes]
    counts = budgets(shapes, 0.01, "epl_ref")
    assert counts == _authors_epl(caps, 0.01) == [30, 5000, 5000, 25]
    assert sum(counts) < round(0.01 * sum(caps))  # the capped last layer: below d
    for name, d in (("fixup_resnet110", 1e-4), ("vgg19", 0.01), ("resnet50", 1e-4)):
        model_shapes = [tuple(m.weight.shape) for m in build(name).modules()
                        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]  # fmt: skip
        model_caps = [math.prod(s) for s in model_shapes]
        assert budgets(model_shapes, d, "epl_ref") == _authors_epl(model_caps, d)
    fixup = [tuple(m.weight.shape) for m in build("fixup_resnet110").modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]  # fmt: skip
    assert sum(budgets(fixup, 1e-4, "epl_ref")) == 220  # above round(d N) = 172


def test_filter_counts_even_split():
    fc = filter_counts((4, 3, 3, 3), 10, torch.Generator().manual_seed(0))
    assert sorted(fc.tolist()) == [2, 2, 3, 3] and int(fc.sum()) == 10


def test_filter_counts_spread_the_remainder_over_random_filters():
    """EPF's ``nnz mod out`` extra weights go to random filters (they always went to the first:
    at under one weight per filter, every seed trained the same filters)."""
    shape, n = (64, 64, 3, 3), 15  # fewer weights than filters: 15 filters get one
    picks = [filter_counts(shape, n, torch.Generator().manual_seed(s)) for s in range(400)]
    assert all(sorted(p.tolist()) == [0] * 49 + [1] * 15 for p in picks)
    assert len({tuple(p.nonzero().flatten().tolist()) for p in picks}) == 400
    freq = torch.stack(picks).float().mean(0)  # each filter: 15/64 = 0.234 expected
    assert float(freq.min()) > 0.15 and float(freq.max()) < 0.33


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "abc", None])
def test_bad_density(bad):
    with pytest.raises(DctpsError, match="density"):
        budgets(VGGISH, bad, "epl")


def test_unknown_method_suggests():
    with pytest.raises(DctpsError, match="Did you mean 'epl'"):
        budgets(VGGISH, 0.1, "elp")


@pytest.mark.parametrize(
    ("method", "weight"),
    [("uniform", math.prod), ("erk", sum), ("epf", lambda s: s[0])],
)
def test_budgets_round_by_largest_remainder(method, weight):
    """Only the total was checked: giving the leftover weights to the layers with the smallest
    remainders moved ERK/uniform/EPF budgets by one in many layers unnoticed. Independent
    computation with exact fractions, on shapes where no layer reaches its cap."""
    from fractions import Fraction

    shapes = [(10, 7), (13, 11), (17, 5), (3, 29), (40, 9), (6, 6)]
    density = 0.13
    total = round(density * sum(math.prod(s) for s in shapes))
    ws = [Fraction(weight(s)) for s in shapes]
    real = [total * w / sum(ws) for w in ws]
    assert all(r < math.prod(s) for r, s in zip(real, shapes, strict=True))  # no cap binds
    counts = [math.floor(r) for r in real]
    leftover = total - sum(counts)
    order = sorted(range(len(shapes)), key=lambda i: (-(real[i] - counts[i]), i))
    for i in order[:leftover]:
        counts[i] += 1
    assert leftover > 0 and budgets(shapes, density, method) == counts


def test_build_is_the_registry_entry():
    """``build(name)`` (the registries' timm-style entry point) gives ``budgets``' counts, and an
    unknown name fails at build time, not at the first call."""
    from dctps.allocation import build, names

    for name in names():
        assert build(name)(VGGISH, 0.01) == budgets(VGGISH, 0.01, name)
    with pytest.raises(DctpsError, match="Did you mean 'erk'"):
        build("erq")
