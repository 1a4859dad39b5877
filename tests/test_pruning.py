"""Tests for dctps.pruning: each method against an independent computation, exact counts, the
torch.nn.utils.prune convention, failure on FixupResNet110, and bad input."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from dctps import count
from dctps.allocation import budgets
from dctps.errors import DctpsError, PruningFailed
from dctps.models import build
from dctps.pruning import default_batches, names, prune
from dctps.pruning.common import (
    check_scores,
    density_of,
    kth_largest,
    schedule,
    step_counts,
    top_k_mask,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these are many small CPU ops, and on a shared 2-core runner (or under
    ``pytest -n 2``) two threads per process oversubscribe the cores and run several times slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# every registered method: a new one gets the registry-wide tests (exact counts, path check)
# without a list to edit (an extensibility review)
METHODS = names()


def _batches(n: int, size: int = 32, b: int = 4, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(b, 3, size, size, generator=g), torch.randint(0, classes, (b,), generator=g))
        for _ in range(n)
    ]


def _masked(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _expected_top_k(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Independent top-k: a stable sort on (score desc, flat index asc)."""
    flat = torch.cat([s.flatten() for s in scores]).double()
    order = torch.sort(-flat, stable=True).indices[:k]
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order] = True
    return [
        m.view_as(s) for m, s in zip(keep.split([s.numel() for s in scores]), scores, strict=True)
    ]


def _mlp(sizes: list[int], bias: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- shared machinery


def test_top_k_mask_is_exact_and_breaks_ties_by_index():
    s = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.5, 3.0])
    assert top_k_mask(s, 2).tolist() == [False, True, True, False, False, False]
    g = torch.Generator().manual_seed(0)
    for k in (0, 1, 37, 500, 999, 1000):
        s = torch.randint(0, 5, (1000,), generator=g).float()  # many ties
        expected = _expected_top_k([s], k)[0]
        assert torch.equal(top_k_mask(s, k), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_largest_by_select_and_by_topk_agree_with_a_sort(dtype):
    # the CPU's kthvalue and the topk that other devices use must pick the same threshold, or
    # masks (and so runs) would differ between a CPU and a GPU
    g = torch.Generator().manual_seed(1)
    cases = [
        torch.randint(0, 4, (1000,), generator=g).to(dtype),  # many ties
        torch.randn(777, generator=g, dtype=dtype),
        torch.where(torch.rand(300, generator=g) < 0.5, -math.inf, 1.0).to(dtype),  # RigL's -inf
    ]
    for v in cases:
        ranked = torch.sort(v, descending=True).values
        for k in (1, 2, v.numel() // 3, v.numel() - 1, v.numel()):
            want = ranked[k - 1]
            for select in (True, False):
                got = kth_largest(v, k, select=select)
                assert got.dim() == 0 and got.dtype == dtype
                assert torch.equal(got, want), (k, select, got, want)


def _check_scores_per_layer(scores, k, *, method, step, steps, reached, require_positive=True,
                            final=True):  # fmt: skip
    """``check_scores`` as it was when it read every flag and count of every layer separately
    (2-4 host reads, i.e. CUDA synchronisations, per layer)."""
    where = f"{method}: step {step}/{steps}"
    if not all(bool(torch.isfinite(s).all()) for s in scores):
        raise PruningFailed(f"{where}: non-finite saliency scores (NaN/inf)", reached=reached)
    if not require_positive:
        if not any(bool((s != 0).any()) for s in scores):
            raise PruningFailed(f"{where}: all saliency scores are zero", reached=reached)
        positive = sum(int((s > 0).sum()) for s in scores)
        nonnegative = sum(int((s >= 0).sum()) for s in scores)
        if positive < k < nonnegative:
            nonzero = sum(int((s != 0).sum()) for s in scores)
            total = sum(s.numel() for s in scores)
            raise PruningFailed(
                f"{where}: only {nonzero} of {total} saliency scores are nonzero ({positive} > 0) "
                f"but {k} weights must be kept: the other {k - positive} would be chosen among "
                f"the {nonnegative - positive} zero scores by index order, not by saliency",
                reached=reached,
            )
        return True
    positive = sum(int((s > 0).sum()) for s in scores)
    if positive >= k:
        return True
    if final:
        total = sum(s.numel() for s in scores)
        raise PruningFailed(
            f"{where}: only {positive} of {total} saliency scores are > 0 but {k} weights must "
            "be kept (all-zero saliency / throughput collapse; the reference would return a "
            "dense network)",
            reached=reached,
        )
    return False


def _outcome(fn, *args, **kw):
    try:
        return ("returned", fn(*args, **kw))
    except PruningFailed as e:
        return ("raised", str(e), e.reached)


def test_check_scores_and_density_of_read_the_device_once_with_unchanged_results(host_reads):
    g = torch.Generator().manual_seed(2)
    cases = [
        [torch.randint(-2, 3, (n,), generator=g).double() for n in (5, 1, 7, 3)]  # ties, zeros
        for _ in range(30)
    ]
    cases += [
        [torch.zeros(4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)],
        [
            torch.tensor([1.0, math.nan], dtype=torch.float64),
            torch.tensor([2.0], dtype=torch.float64),
        ],
        [torch.tensor([3.0, 0.0]), torch.tensor([-math.inf, 1.0])],
        [torch.tensor([0.0, -1.0, 2.0], dtype=torch.float64), torch.empty(0, dtype=torch.float64)],
    ]
    for scores in cases:
        total = sum(s.numel() for s in scores)
        for k in range(total + 2):
            for require_positive in (True, False):
                for final in (True, False):
                    kw = {"method": "m", "step": 2, "steps": 3, "reached": 0.5,
                          "require_positive": require_positive, "final": final}  # fmt: skip
                    want = _outcome(_check_scores_per_layer, scores, k, **kw)
                    assert _outcome(check_scores, scores, k, **kw) == want, (scores, k, kw)
        masks = [s > 0 for s in scores]
        want_d = sum(int(m.sum()) for m in masks) / total
        assert density_of(masks) == want_d
    # one host read each (a synchronisation on CUDA), however many layers
    reads = host_reads()
    scores = [torch.rand(10, generator=g, dtype=torch.float64) + 0.1 for _ in range(8)]
    for require_positive in (True, False):
        reads[0] = 0
        assert check_scores(scores, 5, method="m", step=1, steps=1, reached=1.0,
                            require_positive=require_positive)  # fmt: skip
        assert reads[0] == 1
    reads[0] = 0
    assert density_of([s > 0.5 for s in scores]) == sum(int((s > 0.5).sum()) for s in scores) / 80
    assert reads[0] == 1 + 8  # the expected value's own 8 reads


def test_iter_snip_equals_a_hand_computed_loop_and_reads_the_minimum_once(monkeypatch, host_reads):
    """Iter-SNIP against an independent loop (|W * m * g|, pruned entries set to the global
    minimum, exact top k by index); the minimum is read once per step, not once per layer and
    per comparison."""
    model = _mlp([12, 16, 9, 5])
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 12, generator=g, dtype=torch.float64),
                torch.randint(0, 5, (8,), generator=g)) for _ in range(3)]  # fmt: skip
    model = model.double()
    ref = copy.deepcopy(model)
    ws = [ref[0].weight, ref[2].weight, ref[4].weight]
    total = sum(w.numel() for w in ws)
    density, steps = 0.05, 3
    masks = [torch.ones_like(w, dtype=torch.bool) for w in ws]
    for t, k_t in enumerate(step_counts(density, steps, "exp", total, round(density * total))):
        x, y = batches[t % len(batches)]
        grads = torch.autograd.grad(F.cross_entropy(ref(x), y), ws)
        with torch.no_grad():
            scores = [(w * gr).abs() for w, gr in zip(ws, grads, strict=True)]
            if t:
                low = min(s.min() for s in scores)
                scores = [s.masked_fill(~m, low) for s, m in zip(scores, masks, strict=True)]
            masks = _expected_top_k(scores, k_t)
            for w, m in zip(ws, masks, strict=True):
                w.mul_(m)
    reads = host_reads()
    prune(model, density, "iter_snip", batches=batches, steps=steps)
    monkeypatch.undo()
    for layer, want in zip((model[0], model[2], model[4]), masks, strict=True):
        assert torch.equal(layer.weight_mask.bool(), want)
    # per step: any_positive, check_scores, top_k_mask, density_of, and the minimum (steps 2-3)
    assert reads[0] < 8 * steps + 10


def test_schedule_exponential_and_linear():
    d, T = 1e-3, 60
    exp = schedule(d, T, "exp")
    assert len(exp) == T and exp[-1] == d
    assert exp[0] == pytest.approx(d ** (1 / T))  # 0.891: each step keeps 89.1%
    ratios = [b / a for a, b in zip(exp[:-1], exp[1:], strict=True)]
    assert max(ratios) == pytest.approx(min(ratios))
    lin = schedule(0.1, 4, "linear")
    assert lin == pytest.approx([0.775, 0.55, 0.325, 0.1])
    with pytest.raises(DctpsError, match="Did you mean 'exp'"):
        schedule(0.1, 3, "exq")


def test_default_batches_table_e2():
    assert [default_batches(n) for n in ("cifar10", "cifar100", "tiny_imagenet")] == [1, 10, 20]
    with pytest.raises(DctpsError, match="cifar10"):
        default_batches("cifar1O")


# ----------------------------------------------------------------------------- SNIP


@pytest.mark.parametrize("loss", ["cross_entropy", "nll_raw"])
def test_snip_equals_hand_computed_top_k(loss):
    model = _mlp([12, 16, 5], bias=True)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g))
               for _ in range(2)]  # fmt: skip
    ref = copy.deepcopy(model)
    ws = [ref[0].weight, ref[2].weight]
    lossf = F.cross_entropy if loss == "cross_entropy" else F.nll_loss
    grads = [torch.zeros_like(w) for w in ws]
    for x, y in batches:
        for acc, gr in zip(grads, torch.autograd.grad(lossf(ref(x), y), ws), strict=True):
            acc += gr / len(batches)
    scores = [(w * gr).abs().detach() for w, gr in zip(ws, grads, strict=True)]
    k = round(0.1 * sum(w.numel() for w in ws))
    expected = _expected_top_k(scores, k)
    w_init = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]

    prune(model, 0.1, "snip", batches=batches, num_batches=2, loss=loss)
    for layer, exp, w0 in zip((model[0], model[2]), expected, w_init, strict=True):
        assert torch.equal(layer.weight_mask.bool(), exp)
        # The mask is applied to the initial weights; pruned entries are exactly zero.
        assert torch.equal(layer.weight_orig.detach(), w0 * exp)
    assert count(model).nonzeros == k
    copy.deepcopy(model)  # a freshly pruned model can be copied (e.g. for a best-model snapshot)


@pytest.mark.parametrize("when", ["forward", "backward", "loaded"])
def test_a_pruned_model_can_be_deep_copied_after_a_forward(when, tmp_path):
    """After a forward, ``module.weight`` is ``weight_orig * weight_mask`` with its autograd
    history, and ``copy.deepcopy`` refused the model ("Only Tensors created explicitly by the
    user"), as it does for torch's own ``custom_from_mask``: EMA copies, SWA's ``AveragedModel``
    and best-model snapshots failed. The copy computes as the original, owns its tensors (a
    change to one leaves the other), and a loss on its ``weight`` trains its ``weight_orig``."""
    from torch.optim.swa_utils import AveragedModel

    from dctps.pruning.common import Mask

    model = prune(_mlp([12, 16, 4], bias=True), 0.3, "random")
    x = torch.randn(5, 12)
    if when == "loaded":  # a pruned checkpoint loaded into a fresh model (prepare_pruned_structure)
        path = tmp_path / "pruned.pt"
        torch.save(model.state_dict(), path)
        fresh = _mlp([12, 16, 4], bias=True, seed=1)
        from dctps.pruning.common import prepare_pruned_structure

        prepare_pruned_structure(fresh, torch.load(path))
        fresh.load_state_dict(torch.load(path))
        model = fresh
    # before any forward too, weight is weight_orig * weight_mask with its history, as torch's
    # hook makes it (a graph-free copy used to stand there: a loss on it trained nothing), and
    # after a load_state_dict it is the loaded one's (it was the weights from before the load)
    assert model[0].weight.grad_fn is not None
    assert torch.equal(model[0].weight, model[0].weight_orig * model[0].weight_mask)
    out = model(x)
    if when == "backward":
        out.sum().backward()
    assert not model[0].weight.is_leaf  # the case deepcopy refused
    with pytest.raises(RuntimeError, match="graph leaves"):  # torch's own method still refuses
        plain = _mlp([12, 16, 4], bias=True)
        torch_prune.custom_from_mask(plain[0], "weight", torch.ones(16, 12))
        plain(x)
        copy.deepcopy(plain)

    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    for layer in (twin[0], twin[2]):
        (hook,) = layer._forward_pre_hooks.values()
        assert isinstance(hook, Mask) and hook._owner() is layer
        assert layer.weight.grad_fn is not None  # weight_orig' * weight_mask', as a forward makes
        assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)
    twin.zero_grad(set_to_none=True)
    twin[0].weight.sum().backward()
    assert torch.equal(twin[0].weight_orig.grad, twin[0].weight_mask)
    with torch.no_grad():
        twin[0].weight_orig.add_(1.0)
    assert not torch.equal(twin(x), model(x))
    torch.testing.assert_close(model[0].weight, model[0].weight_orig * model[0].weight_mask)
    assert torch_prune.is_pruned(twin)
    AveragedModel(model)  # deep-copies the model
    torch_prune.remove(twin[0], "weight")
    assert isinstance(twin[0].weight, nn.Parameter)


def test_a_mask_keeps_no_copy_of_itself_and_deep_copies_on_top_of_torchs_pruning(tmp_path):
    """Mask (torch's CustomFromMask) kept the mask it applied: a dense copy of every pruned weight
    beside ``weight_mask``, and for a loaded model (``prepare_pruned_structure``, which used
    ``prune.identity``, holding nothing) an all-ones one that ``.to(device)`` did not move. And
    applied on top of torch's own pruning (a PruningContainer), its deepcopy did not work."""
    from dctps.pruning.common import Mask, prepare_pruned_structure

    model = prune(_mlp([12, 16, 4], bias=True), 0.3, "random")
    fresh = _mlp([12, 16, 4], bias=True, seed=1)
    prepare_pruned_structure(fresh, model.state_dict())
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(5, 12)
    for m in (model, fresh):
        hooks = [h for layer in m for h in layer._forward_pre_hooks.values()]
        assert len(hooks) == 2 and all(isinstance(h, Mask) for h in hooks)
        assert not any(isinstance(v, torch.Tensor) for h in hooks for v in vars(h).values())
        torch.testing.assert_close(m(x), model(x), rtol=0, atol=0)
    twice = _mlp([12, 16, 4], bias=True)
    torch_prune.random_unstructured(twice[0], "weight", amount=0.3)
    Mask.apply(twice[0], "weight", (torch.rand(16, 12) > 0.5).float())
    twice(x).sum().backward()
    twin = copy.deepcopy(twice)
    assert torch.equal(twin[0].weight, twin[0].weight_orig * twin[0].weight_mask)
    torch.testing.assert_close(twin(x), twice(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- GraSP


def test_grasp_equals_a_hessian_gradient_product_from_torch_autograd():
    """GraSP had no independent check: a missing temperature, or each batch's Hessian applied to
    its own gradient instead of the summed one, changed ~2% of LeNet-5's masks unnoticed."""
    model = _mlp([12, 16, 5], bias=True)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g))
               for _ in range(2)]  # fmt: skip
    ref = copy.deepcopy(model).eval()
    ws = (ref[0].weight.detach(), ref[2].weight.detach())

    def total_loss(w0: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """sum_b CE(f(x_b) / 200, y_b) as a function of the two weight matrices."""
        params = {"0.weight": w0, "2.weight": w2, "0.bias": ref[0].bias, "2.bias": ref[2].bias}
        return sum(
            F.cross_entropy(torch.func.functional_call(ref, params, (x,)) / 200.0, y)
            for x, y in batches
        )

    grads = torch.autograd.grad(total_loss(*[w.requires_grad_() for w in ws]), ws)
    _, hg = torch.autograd.functional.hvp(total_loss, ws, tuple(gr.detach() for gr in grads))
    scores = [w.detach() * h for w, h in zip(ws, hg, strict=True)]  # signed
    k = round(0.2 * sum(w.numel() for w in ws))
    expected = _expected_top_k(scores, k)

    prune(model, 0.2, "grasp", batches=batches, num_batches=2)
    for layer, exp in zip((model[0], model[2]), expected, strict=True):
        assert torch.equal(layer.weight_mask.bool(), exp)


# ----------------------------------------------------------------------------- SynFlow


def _synflow_closed_form(abs_ws: list[torch.Tensor]) -> list[torch.Tensor]:
    """s_l = |W_l| * (u_l outer p_l): p_l = |W_{l-1}|...|W_1| 1 (paths into layer l's inputs),
    u_l = 1^T |W_L|...|W_{l+1}| (paths from layer l's outputs to the outputs)."""
    scores = []
    for i, w in enumerate(abs_ws):
        p = torch.ones(abs_ws[0].shape[1], dtype=torch.float64)
        for a in abs_ws[:i]:
            p = a @ p
        u = torch.ones(abs_ws[-1].shape[0], dtype=torch.float64)
        for a in reversed(abs_ws[i + 1 :]):
            u = u @ a
        scores.append(w * torch.outer(u, p))
    return scores


@pytest.mark.parametrize("iterations", [1, 3])
def test_synflow_equals_closed_form_path_sums(iterations):
    model = _mlp([6, 8, 7, 3])
    layers = [m for m in model if isinstance(m, nn.Linear)]
    abs_w0 = [m.weight.detach().double().abs() for m in layers]
    total = sum(w.numel() for w in abs_w0)
    d = 0.2
    k = round(d * total)
    masks = [torch.ones_like(w, dtype=torch.bool) for w in abs_w0]
    for t in range(1, iterations + 1):
        k_t = k if t == iterations else round(total * d ** (t / iterations))
        scores = _synflow_closed_form([w * m for w, m in zip(abs_w0, masks, strict=True)])
        masks = _expected_top_k(scores, k_t)

    prune(model, d, "synflow", input_shape=(6,), iterations=iterations)
    for layer, m in zip(layers, masks, strict=True):
        assert torch.equal(layer.weight_mask.bool(), m)


def test_synflow_float32_overflows_on_deep_net_float64_does_not():
    # 30 layers of 64x64 N(0,1) weights: R ~ 51^30 ~ 1e51 > float32 max (3.4e38).
    def deep():
        torch.manual_seed(0)
        model = _mlp([64] * 31)
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)
        return model

    with pytest.raises(PruningFailed, match="non-finite"):
        prune(deep(), 0.1, "synflow", input_shape=(64,), iterations=2, synflow_dtype=torch.float32)
    for half in (torch.bfloat16, torch.float16):  # R overflows, or the mask rounds, silently
        # refused with the options, before the model is copied (by the method's own check before)
        with pytest.raises(DctpsError, match="synflow_dtype of pruning method 'synflow' must name "
                           "float32 or float64, got torch"):  # fmt: skip
            prune(deep(), 0.1, "synflow", input_shape=(64,), iterations=2, synflow_dtype=half)
    model = prune(deep(), 0.1, "synflow", input_shape=(64,), iterations=2)
    assert count(model).nonzeros == round(0.1 * 30 * 64 * 64)


def test_synflow_in_float64_on_mps_is_refused_with_the_ways_out():
    """MPS has no float64: scoring there raised torch's raw TypeError from the model copy's
    ``.to(float64)`` (a portability review). No MPS here: a context that says so stands in."""
    import types

    from dctps.pruning.synflow import synflow_masks

    ctx = types.SimpleNamespace(device=torch.device("mps"))
    with pytest.raises(DctpsError, match=r"MPS does not have: prune the model on the CPU"):
        synflow_masks(ctx, input_shape=(4,))  # type: ignore[arg-type]


def test_layer_collapse_vgg19_snip_empties_a_layer_synflow_does_not():
    """At 0.1% on VGG19 one-shot SNIP prunes whole layers (layer collapse, Tanaka et al. 2020):
    VGG has no shortcut, so no path is left and ``prune`` raises instead of returning the
    disconnected network; iterative SynFlow keeps every layer non-empty."""
    batches = _batches(1, b=8)
    torch.manual_seed(0)
    model = build("vgg19")
    with pytest.raises(PruningFailed, match=r"snip: .*no path .*layer collapse: layers features"):
        prune(model, 1e-3, "snip", batches=batches)
    assert not torch_prune.is_pruned(model)
    torch.manual_seed(0)
    flowed = prune(build("vgg19"), 1e-3, "synflow", batches=batches, iterations=10)
    assert min(int(m.weight_mask.sum()) for m in _masked(flowed)) > 0


# ----------------------------------------------------------------------------- every method

# Fewer steps than the paper's defaults keep the CPU time down (FORCE needs ~10 steps to keep
# positive scores at 0.1% on ResNet18, 5 to keep a path at 1% and ~20 at 0.1%; SynFlow ~5).
FAST = {"iter_snip": {"steps": 3}, "force": {"steps": 5}, "synflow": {"iterations": 3}}
FAST_001 = {"iter_snip": {"steps": 3}, "force": {"steps": 10}, "synflow": {"iterations": 5}}

# (model, method, density) whose final mask here leaves no input-output path, so that prune
# raises PruningFailed (layer collapse; dctps.pruning.connectivity). Each is a true
# disconnection: with the check switched off, the returned network's output is the same for
# every input. LeNet-5 at 0.1%: one-shot SNIP's and uniform random's kept weights do not line
# up, GraSP empties features.6; ResNet18 at 0.1%: SNIP and 10-step FORCE empty every conv of
# the first block of the last stage (both branch convs and its 1x1 shortcut, features.8), and of
# the blocks around it. These runs check the failure instead of the counts.
COLLAPSES = {
    ("lenet5", "grasp", 1e-3),
    ("lenet5", "random", 1e-3),
    ("lenet5", "snip", 1e-3),
    ("resnet18", "force", 1e-3),
    ("resnet18", "snip", 1e-3),
}
# ... of which some sit on the edge: the CPU's kernels decide. ResNet18's 10-step FORCE at 0.1%
# collapses with torch's default kernels (ATEN_CPU_CAPABILITY=default, and on the machine CI
# ran on until session 22) and keeps 173-253 weights in each conv of features.8 with AVX-512 or
# AVX2 kernels (whose float rounding differs from the first initialisation on). Either outcome
# is checked in full: the failure as above, or the exact counts.
ON_THE_EDGE = {("resnet18", "force", 1e-3)}


def _fast(method: str, density: float) -> dict:
    return (FAST_001 if density < 5e-3 else FAST).get(method, {})


def _collapses(model: nn.Module, density: float, method: str, batches) -> None:
    with pytest.raises(PruningFailed, match=rf"{method}: the pruned network has no path") as info:
        prune(model, density, method, batches=batches, **_fast(method, density))
    assert info.value.reached == density
    assert not torch_prune.is_pruned(model)


def _check_pruned(model: nn.Module, k: int) -> None:
    assert torch_prune.is_pruned(model)
    for m in _masked(model):
        assert hasattr(m, "weight_orig") and hasattr(m, "weight_mask")
        assert isinstance(m.weight_orig, nn.Parameter)
        off = m.weight_mask == 0
        assert torch.all(m.weight_orig.detach()[off] == 0)
        # +0.0 (no sign bit): a checkpoint packs these zeros away (checkpoint.pack_sparse)
        assert not torch.signbit(m.weight_orig.detach()[off]).any()
        assert torch.all(m.weight.detach()[off] == 0)
    assert count(model).nonzeros == k
    assert sum(int(m.weight_mask.sum()) for m in _masked(model)) == k


def _train_adam(model: nn.Module, batches, steps: int = 10) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    model.train()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("density", [1e-2, 1e-3])
@pytest.mark.parametrize("method", METHODS)
def test_lenet5_every_method_exact_count_and_masked_weights_stay_zero(method, density):
    torch.manual_seed(0)
    model = build("lenet5")
    batches = _batches(2, b=16)
    if ("lenet5", method, density) in COLLAPSES:
        _collapses(model, density, method, batches)
        return
    prune(model, density, method, batches=batches, **_fast(method, density))
    k = round(density * 61_510)
    _check_pruned(model, k)
    _train_adam(model, batches)
    _check_pruned(model, k)


@pytest.mark.parametrize("density", [1e-2, 1e-3])
@pytest.mark.parametrize("method", METHODS)
def test_resnet18_every_method_exact_count(method, density):
    torch.manual_seed(1)
    model = build("resnet18")
    batches = _batches(2, b=4)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    stats = bn.running_var.clone(), int(bn.num_batches_tracked)
    if ("resnet18", method, density) in ON_THE_EDGE:
        try:
            prune(model, density, method, batches=batches, **_fast(method, density))
        except PruningFailed as e:  # as _collapses checks it
            assert f"{method}: the pruned network has no path" in str(e) and e.reached == density
            assert not torch_prune.is_pruned(model)
        else:
            _check_pruned(model, round(density * 11_164_352))
    elif ("resnet18", method, density) in COLLAPSES:
        _collapses(model, density, method, batches)
    else:
        prune(model, density, method, batches=batches, **_fast(method, density))
        _check_pruned(model, round(density * 11_164_352))
    # Scoring ran on a copy: the caller's BN statistics are untouched.
    assert torch.equal(bn.running_var, stats[0]) and int(bn.num_batches_tracked) == stats[1]
    if method == "iter_snip" and density == 1e-3:  # (every method is trained on LeNet-5 above)
        k = round(density * 11_164_352)
        _train_adam(model, _batches(2, size=8, b=2, seed=3), steps=10)
        _check_pruned(model, k)


def test_random_allocations_follow_budgets():
    torch.manual_seed(0)
    shapes = [tuple(m.weight.shape) for m in _masked(build("lenet5"))]
    for allocation in ("uniform", "epl", "erk", "epf"):
        model = prune(build("lenet5"), 0.05, "random", allocation=allocation, seed=3)
        counts = [int(m.weight_mask.sum()) for m in _masked(model)]
        assert counts == budgets(shapes, 0.05, allocation)
        if allocation == "epf":  # equal per filter (differences of at most one)
            for m in _masked(model):
                per = m.weight_mask.flatten(1).sum(1)
                assert int(per.max() - per.min()) <= 1
    a = prune(build("lenet5"), 0.05, "random", seed=3)
    b = prune(build("lenet5"), 0.05, "random", seed=3)
    assert all(
        torch.equal(x.weight_mask, y.weight_mask)
        for x, y in zip(_masked(a), _masked(b), strict=True)
    )


# ----------------------------------------------------------------------------- failure


@pytest.mark.parametrize("method", ["force", "iter_snip", "synflow"])
def test_fixup_resnet110_cannot_be_pruned(method):
    """App. D.2: the zero-initialised conv2s and classifier give every weight a zero score."""
    torch.manual_seed(0)
    model = build("fixup_resnet110")
    with pytest.raises(PruningFailed, match="saliency") as info:
        prune(model, 1e-2, method, batches=_batches(1, b=2))
    assert info.value.reached == 1.0
    assert not torch_prune.is_pruned(model)  # never a dense network under a sparse label


def test_shortfall_before_the_last_step_keeps_all_like_the_reference_or_raises():
    """Inputs 10..99 are always 0, so 90% of layer 1 has zero saliency: step 1 of 4 (keep 31.6%)
    is short. The reference keeps everything at that step and goes on; 'raise' fails at once."""
    model = _mlp([100, 20, 5])
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 100)
    x[:, :10] = torch.randn(16, 10, generator=g)
    batches = [(x, torch.randint(0, 5, (16,), generator=g))]
    for method in ("iter_snip", "force"):
        with pytest.raises(PruningFailed, match="step 1/4") as info:
            prune(copy.deepcopy(model), 0.01, method, batches, steps=4, shortfall="raise")
        assert info.value.reached == 1.0
        pruned = prune(copy.deepcopy(model), 0.01, method, batches, steps=4)
        assert count(pruned).nonzeros == 21
        assert pruned[0].weight_mask[:, 10:].sum() == 0  # only weights with a gradient are kept


def test_all_zero_saliency_at_the_last_step_raises_with_reached_density():
    model = _mlp([8, 8, 3])
    with torch.no_grad():
        model[2].weight.zero_()  # the classifier blocks every gradient but its own; its W = 0
    with pytest.raises(PruningFailed) as info:
        prune(model, 0.1, "snip", batches=[(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))])
    assert info.value.reached == 1.0


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("density", [0, 1.5, float("nan"), "abc", -0.1])
def test_bad_density(density):
    with pytest.raises(DctpsError, match="density"):
        prune(_mlp([4, 3]), density, "random")


def test_bad_method_options_and_missing_data():
    model = _mlp([4, 3])
    with pytest.raises(DctpsError, match="Did you mean 'synflow'"):
        prune(model, 0.5, "synflwo")
    with pytest.raises(DctpsError, match="Did you mean 'steps'"):
        prune(model, 0.5, "force", batches=[(torch.randn(2, 4), torch.tensor([0, 1]))], stepz=3)
    for method in ("snip", "iter_snip", "force", "grasp"):
        with pytest.raises(DctpsError, match="needs data"):
            prune(model, 0.5, method)
    with pytest.raises(DctpsError, match="input_shape"):
        prune(model, 0.5, "synflow")
    with pytest.raises(DctpsError, match="only to method 'random'"):
        prune(model, 0.5, "synflow", input_shape=(4,), allocation="erk")
    with pytest.raises(DctpsError, match="Did you mean 'erk'"):
        prune(model, 0.5, "random", allocation="erq")
    with pytest.raises(DctpsError, match="0 weights"):
        prune(model, 0.01, "random")
    pruned = prune(model, 0.5, "random")
    with pytest.raises(DctpsError, match="already pruned"):
        prune(pruned, 0.5, "random")


def test_batches_iterable_callable_and_exhausted_generator():
    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(2)]
    calls = []

    def fresh():
        calls.append(1)
        return iter(data)

    prune(_mlp([6, 5, 3]), 0.3, "iter_snip", batches=fresh, steps=3)
    assert len(calls) >= 2  # 3 steps x 1 batch from a 2-batch source: restarted once
    prune(_mlp([6, 5, 3]), 0.3, "iter_snip", batches=data, steps=3)
    with pytest.raises(DctpsError, match="ran out"):
        prune(_mlp([6, 5, 3]), 0.3, "iter_snip", batches=iter(data), steps=3)


def test_density_one_keeps_everything_and_prune_is_silent(capsys):
    model = prune(_mlp([6, 5, 3]), 1.0, "synflow", input_shape=(6,))
    assert count(model).nonzeros == 6 * 5 + 5 * 3
    assert capsys.readouterr().out == ""
    assert not math.isnan(count(model).density)


class _AttnNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("method", ["random", "snip"])
def test_attention_out_proj_stays_live_after_pruning(method):
    """F.multi_head_attention_forward reads out_proj.weight without calling out_proj, so the mask's
    pre-hook must run from the attention's forward: the projection trains and follows
    weight_orig, and RigL can capture its gradient."""
    from dctps.dst import RigL

    model = _AttnNet()
    x, y = torch.randn(6, 5, 8), torch.randint(0, 3, (6,))
    prune(model, 0.5, method, [(x, y)])
    out_proj = model.attn.out_proj
    F.cross_entropy(model(x), y).backward()
    g = out_proj.weight_orig.grad
    assert g is not None and float(g.abs().sum()) > 0
    assert torch.all(g[out_proj.weight_mask == 0] == 0)
    with torch.no_grad():
        before = model(x)
        out_proj.weight_orig.mul_(2)
        assert not torch.allclose(model(x), before)  # the forward uses the current weight_orig
    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(model, opt, total_steps=10, delta_t=1)
    old = out_proj.weight_mask.clone()
    F.cross_entropy(model(x), y).backward()
    assert not rigl.step()
    assert int(out_proj.weight_mask.sum()) == int(old.sum())
    assert not torch.equal(out_proj.weight_mask, old)  # its support moved


def test_tied_weights_and_mixed_models_are_refused():
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b)
    with pytest.raises(DctpsError, match="'0' is also '2.weight' \\(tied weights\\)"):
        prune(model, 0.5, "random")
    assert not hasattr(a, "weight_orig") and not hasattr(b, "weight_orig")
    import dctps

    mixed = dctps.sparsify(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)), 0.5,
                           exclude=["2"])  # fmt: skip
    with pytest.raises(DctpsError, match="mixes DCTpS layers"):
        prune(mixed, 0.5, "random")
    pruned = prune(_mlp([6, 6, 2]), 0.5, "random")
    with pytest.raises(DctpsError, match="is pruned .*sparsify would drop its mask"):
        dctps.sparsify(pruned, 0.5)


def test_a_pruned_model_deep_copies_and_exports_after_a_forward():
    import dctps

    model = prune(_mlp([6, 8, 3]), 0.5, "random")
    x = torch.randn(4, 6)
    model(x).sum().backward()  # the pre-hook leaves a non-leaf weight behind
    dense = dctps.to_dense(model)
    torch.testing.assert_close(dense(x), model(x))
    model(x).sum().backward()
    torch.testing.assert_close(dctps.to_dense(model)(x), model(x))


def test_synflow_never_revives_a_weight_pruned_at_an_earlier_step(monkeypatch):
    """When a step has fewer positive scores than it keeps, the rest are filled with zero scores;
    weights pruned at an earlier step also score 0 and must not be among them (the masks of
    successive steps are nested). Heavy-tailed weights on a narrow MLP make steps cut paths."""
    import dctps.pruning.synflow as sf

    steps: list[list[torch.Tensor]] = []
    real = sf.global_masks

    def spy(scores, k):
        masks = real(scores, k)
        steps.append([m.clone() for m in masks])
        return masks

    monkeypatch.setattr(sf, "global_masks", spy)
    torch.manual_seed(0)
    widths = [4, 3, 3, 2]
    g = torch.Generator().manual_seed(392)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        lin = nn.Linear(a, b, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.exp(3 * torch.randn(lin.weight.shape, generator=g)))
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    prune(model, 0.1, "synflow", input_shape=(4,), iterations=8)
    assert len(steps) == 8
    for before, after in zip(steps, steps[1:], strict=False):
        for b, a in zip(before, after, strict=True):
            assert not bool((a & ~b).any())


def test_root_attention_reloaded_structure_and_user_hooks_with_a_pruned_out_proj():
    """The attention runs its pruned out_proj's weight hooks also when it is the model itself,
    after the pruned structure is rebuilt for loading (resume), and never runs other user
    hooks (which expect the module's real inputs)."""
    from dctps.pruning.common import prepare_pruned_structure

    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    seen = []
    attn.out_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    prune(attn, 0.5, "random")
    x = torch.randn(3, 4, 8)
    attn(x, x, x)[0].sum().backward()
    assert attn.out_proj.weight_orig.grad is not None and seen == []
    state = attn.state_dict()
    fresh = nn.MultiheadAttention(8, 2, batch_first=True)
    prepare_pruned_structure(fresh, state)
    fresh.load_state_dict(state)
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    for _ in range(2):  # trains (an in-place update of weight_orig used to break the graph)
        opt.zero_grad()
        fresh(x, x, x)[0].sum().backward()
        opt.step()
    w = fresh.out_proj.weight_orig
    with torch.no_grad():
        fresh(x, x, x)  # the forward recomputes the weight from the updated weight_orig
    torch.testing.assert_close(fresh.out_proj.weight, w * fresh.out_proj.weight_mask)
    assert not torch.equal(w, state["out_proj.weight_orig"])


def test_rigl_distributed_false_does_not_average(tmp_path, monkeypatch):
    """RigL(distributed=False) never touches torch.distributed, even with a group initialised;
    distributed=True without one is a clear error."""
    import torch.distributed as dist

    from dctps.dst import RigL

    model = prune(_mlp([6, 8, 3]), 0.5, "random")
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: pytest.fail("all_reduce called"))
    rigl = RigL(model, None, total_steps=10, delta_t=1, distributed=False)
    F.cross_entropy(model(x), y).backward()
    assert not rigl.step()  # updated, with the local gradient
    monkeypatch.undo()
    rigl = RigL(model, None, total_steps=10, delta_t=1, distributed=True)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(DctpsError, match="needs an initialised torch.distributed"):
        rigl.step()


@pytest.mark.parametrize(("method", "steps"), [("iter_snip", 60), ("force", 60), ("synflow", 100)])
def test_iterative_methods_default_to_table_e2_step_counts(method, steps):
    """Table E.2: 60 steps for FORCE / Iter-SNIP, 100 iterations for SynFlow; the defaults were
    not pinned (a run without options uses them)."""
    model = _mlp([12, 16, 5], bias=True)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g))]
    seen: list[tuple[int, int]] = []
    prune(model, 0.5, method, batches=batches, progress=lambda t, total: seen.append((t, total)))
    assert {total for _, total in seen} == {steps} and seen[-1] == (steps, steps)


def test_count_of_a_pruned_attention_is_the_sum_of_its_masks():
    model = nn.Sequential(nn.MultiheadAttention(16, 4), nn.Linear(16, 4))
    x = torch.randn(5, 2, 16)
    prune(model, 0.1, "random")
    masks = [m for n, m in model.named_buffers() if n.endswith("_mask")]
    assert len(masks) == 3  # in_proj, out_proj, the Linear
    c = count(model)
    assert c.nonzeros == sum(int(m.count_nonzero()) for m in masks)
    assert c.weights == 3 * 16 * 16 + 16 * 16 + 64
    model[0](x, x, x)


def test_compact_masks_turns_only_binary_prune_masks_to_bool():
    """A mutation audit: only real prune masks (a `*_mask` beside its `*_orig`, floating
    point, all 0/1) may be stored as bool; a non-binary custom mask, a `*_mask` buffer of
    another kind (an attention mask) and an integer mask keep their values and dtype."""
    from dctps.pruning.common import compact_masks

    w = torch.randn(3)
    binary = compact_masks({"w_orig": w, "w_mask": torch.tensor([0.0, 1.0, 1.0])})
    assert binary["w_mask"].dtype == torch.bool
    assert binary["w_mask"].tolist() == [False, True, True]
    for state, key, dtype in (
        ({"w_orig": w, "w_mask": torch.tensor([0.0, 0.5, 1.0])}, "w_mask", torch.float32),
        ({"attn_mask": torch.tensor([0.0, 1.0])}, "attn_mask", torch.float32),
        ({"w_orig": w, "w_mask": torch.tensor([0, 1, 1])}, "w_mask", torch.int64),
    ):
        out = compact_masks(state)
        assert out[key].dtype == dtype and torch.equal(out[key], state[key])


@pytest.mark.parametrize("method", ["snip", "iter_snip", "force", "grasp"])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_scored_in_float32(method, half):
    """A half model's masks are those of its (half-rounded) weights scored in float32, from the
    same batches; float16 batches are cast too. GraSP in float16 used to fail with all-zero
    scores (its Hessian-gradient product underflowed)."""
    torch.manual_seed(0)
    ref = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    ).to(half).float()  # fmt: skip
    model = copy.deepcopy(ref).to(half)
    x, y = torch.randn(4, 64, 64).to(half).float(), torch.randint(0, 10, (4, 64))
    opts = {} if method in ("snip", "grasp") else {"steps": 3}
    prune(ref, 0.05, method, [(x[i], y[i]) for i in range(4)], **opts)
    prune(model, 0.05, method, [(x[i].to(half), y[i]) for i in range(4)], **opts)
    masks = [[m.weight_mask for m in net if hasattr(m, "weight_mask")] for net in (ref, model)]
    assert len(masks[0]) == 3
    for a, b in zip(*masks, strict=True):
        assert torch.equal(a, b.float())
    assert model[1].weight_orig.dtype == half  # the caller's model keeps its dtype


class _TupleOut(nn.Module):
    """Logits and an auxiliary output, as aux-head and Hugging-Face-style models return."""

    def __init__(self, outputs: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, outputs))

    def forward(self, x):
        return self.body(x), x


class _OneLogit(_TupleOut):
    def __init__(self) -> None:
        super().__init__(outputs=1)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("method", ["snip", "iter_snip", "force", "grasp", "synflow"])
def test_a_model_that_returns_no_logits_tensor_is_refused_by_name(method):
    """A review: a tuple output ended in torch's TypeError or AttributeError, a one-output
    head in an 'all-zero saliency' failure that blamed the method. Both now say what the
    methods need; SynFlow, which scores without labels, takes a one-output head."""
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    model = _TupleOut()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        DctpsError, match="returns its logits as one tensor; this one returned a tuple"
    ):
        prune(model, 0.5, method, [(x, y)] * 4, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    one = _OneLogit()
    if method == "synflow":
        prune(one, 0.5, method, [(x, torch.zeros(32, dtype=torch.long))] * 4, progress=False)
        assert count(one).nonzeros == round(0.5 * (16 * 16 + 16))
    else:
        with pytest.raises(DctpsError, match=r"returns shape \(32, 1\) \(one output"):
            prune(one, 0.5, method, [(x, torch.zeros(32, dtype=torch.long))] * 4, progress=False)


def test_an_option_naming_a_choice_is_checked_before_any_data_is_loaded():
    """A review: ``options: {loss: foo}`` in a sweep grid was listed by ``--dry-run`` as a
    run to train, which then failed when the sweep reached it."""
    from dctps.pruning import canonical_options
    from dctps.train.config import RunConfig

    assert canonical_options("force", {"loss": "nll_raw", "schedule": "linear"}) == {
        "loss": "nll_raw", "schedule": "linear"}  # fmt: skip
    for name, bad, valid in (("loss", "foo", "cross_entropy, nll_raw"),
                             ("schedule", "lin", "exp, linear"),
                             ("shortfall", "x", "keep_all, raise")):  # fmt: skip
        with pytest.raises(DctpsError, match=f"option {name} of pruning method 'force' must be "
                                             f"one of {valid}, got '{bad}'"):  # fmt: skip
            canonical_options("force", {name: bad})
    cfg = RunConfig.from_dict({"model": {"name": "lenet5"}, "data": {"dataset": "digits"},
                               "sparsity": {"method": "snip", "density": 0.1,
                                            "options": {"loss": "foo"}}})  # fmt: skip
    with pytest.raises(DctpsError, match="option loss of pruning method 'snip' must be one of"):
        cfg.resolve()


def test_prepare_pruned_structure_refuses_what_is_not_a_matching_state_dict():
    """A checkpoint path, or a state dict of another architecture, is a DctpsError naming it:
    the path was iterated character by character (nothing prepared, no word), and another
    architecture's key was prune.identity's AttributeError."""
    from dctps.pruning.common import prepare_pruned_structure

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(DctpsError, match="needs a state dict .* got str"):
        prepare_pruned_structure(model, "model.pt")  # type: ignore[arg-type]
    with pytest.raises(DctpsError, match="needs an nn.Module, got str"):
        prepare_pruned_structure("model", {})  # type: ignore[arg-type]
    other = {"1.weight_orig": torch.ones(2, 2), "1.weight_mask": torch.ones(2, 2)}
    with pytest.raises(DctpsError, match=r"'1.weight_orig' but the model's '1' \(ReLU\) has no"):
        prepare_pruned_structure(model, other)


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm", "old_weight_norm",
                                  "old_spectral_norm"])  # fmt: skip
@pytest.mark.parametrize("method", ["random", "snip"])
def test_a_reparametrised_weight_is_refused_naming_the_call_that_removes_it(wrap, method):
    """A weight_norm'ed layer gave random a raw TypeError and snip a PruningFailed that blamed
    the method; the old spectral_norm's advice (prune.remove) failed itself."""
    model = _mlp([6, 5, 3])
    first = model[0]
    undo = {
        "weight_norm": "remove_parametrizations",
        "spectral_norm": "remove_parametrizations",
        "old_weight_norm": "remove_weight_norm",
        "old_spectral_norm": "remove_spectral_norm",
    }[wrap]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if wrap.startswith("old_"):
            getattr(nn.utils, wrap.removeprefix("old_"))(first)
        else:
            getattr(nn.utils.parametrizations, wrap)(first)
    # (spectral_norm's power-iteration buffers move whenever its weight is read in training)
    before = {k: v.clone() for k, v in model.named_parameters()}
    data = [(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(DctpsError, match=rf"layer '0' has its weight computed by .*{undo}"):
        prune(model, 0.5, method, batches=data)
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())


def test_build_checks_options_once_and_prunes_as_prune():
    """``dctps.pruning.build(name, **options)`` refuses a misspelt name, option or range before
    any model exists, and the pruner it returns keeps the same masks as ``prune`` itself."""
    from dctps.pruning import build as build_pruner

    with pytest.raises(DctpsError, match="Did you mean 'snip'"):
        build_pruner("snpi")
    with pytest.raises(DctpsError, match="steps"):
        build_pruner("iter_snip", stepz=3)
    with pytest.raises(DctpsError, match="steps"):
        build_pruner("iter_snip", steps=0)
    pruner = build_pruner("iter_snip", steps=3)
    assert pruner.needs_data and not build_pruner("synflow").needs_data
    assert pruner == build_pruner("iter_snip", steps=3) and hash(pruner) == hash(
        build_pruner("iter_snip", steps=3))  # fmt: skip
    import pickle

    assert pickle.loads(pickle.dumps(pruner)) == pruner == copy.deepcopy(pruner)
    with pytest.raises(DctpsError, match="built with steps: build another"):
        pruner(_mlp([6, 5, 3]), 0.3, [(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))], steps=2)
    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,)))]
    a = pruner(_mlp([6, 5, 3]), 0.3, data)
    b = prune(_mlp([6, 5, 3]), 0.3, "iter_snip", data, steps=3)
    masks = [(m.weight_mask, n.weight_mask) for m, n in zip(a, b, strict=True)
             if hasattr(m, "weight_mask")]  # fmt: skip
    assert masks and all(torch.equal(x, y) for x, y in masks)


# (an error, not a Ctrl-C, registering the hook is left out: torch's own undo then fails,
# "attribute 'weight' already exists", and raises that instead)
@pytest.mark.parametrize(
    "where, stop",
    [(w, s) for w in ("apply", "compute_mask", "apply_mask") for s in (KeyboardInterrupt,
                                                                     RuntimeError)]
    + [("hook", KeyboardInterrupt)],
)  # fmt: skip
def test_an_interrupt_while_the_masks_are_applied_leaves_the_model_as_it_was(
    monkeypatch, stop, where
):
    """A hygiene review: a Ctrl-C on the second layer's mask left the first pruned and the
    second's weight zeroed with no mask, and a second `prune` refused the model. A session-diff
    review: torch's prune undoes its own steps on an Exception only, so a Ctrl-C inside it
    (computing the mask, setting the masked weight, registering the hook) left a weight_orig
    without a weight, or a mask without its hook, which the undo must take apart too."""
    from dctps.pruning import common

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4))  # fmt: skip
    params = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    calls: list[object] = []

    def second_fails(real):
        def wrapped(*a, **kw):
            calls.append(a)
            if len(calls) == 2:
                raise stop("stopped")
            return real(*a, **kw)

        return wrapped

    if where == "apply":
        real = common.Mask.apply.__func__  # type: ignore[attr-defined]
        monkeypatch.setattr(common.Mask, "apply", classmethod(second_fails(real)))
    elif where == "hook":
        monkeypatch.setattr(nn.Linear, "register_forward_pre_hook",
                            second_fails(nn.Module.register_forward_pre_hook))  # fmt: skip
    else:
        monkeypatch.setattr(common.Mask, where, second_fails(getattr(common.Mask, where)))
    with pytest.raises(stop, match="stopped"):
        prune(model, 0.2, "random", seed=0)
    # the same Parameters under their names, with their values (to the sign of each zero)
    assert {k: id(v) for k, v in model.named_parameters()} == {k: id(v) for k, v in params.items()}
    for k, v in params.items():
        assert torch.equal(v, before[k]) and torch.equal(v.signbit(), before[k].signbit()), k
    assert not list(model.buffers()) and not any(m._forward_pre_hooks for m in model)
    monkeypatch.undo()
    prune(model, 0.2, "random", seed=0)  # the model prunes as a fresh one does
    assert len(_masked(model)) == 3


def test_a_failure_on_the_batches_is_named_with_the_cause_it_has():
    """A hygiene review: every error on the batches read "check the input shape and that labels
    lie in 0..classes-1", a loader's own `disk read error` and inference mode included."""
    batch = (torch.randn(2, 3, 2, 2), torch.tensor([0, 1]))

    def model():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))

    def fails_after_one():
        yield batch
        raise RuntimeError("disk read error")

    with pytest.raises(DctpsError, match=r"could not run the model on the batches: disk read "
                       r"error$"):  # fmt: skip
        prune(model(), 0.5, "iter_snip", batches=fails_after_one, steps=2)

    def runs_out():  # a session-diff review: "index" and "size" in it drew the shape hint
        yield batch
        raise IndexError("list index out of range")

    with pytest.raises(DctpsError, match=r"on the batches: list index out of range$"):
        prune(model(), 0.5, "iter_snip", batches=runs_out, steps=2)
    forbids = r"\(prune computes gradients, which torch.inference_mode\(\) forbids"
    with torch.inference_mode(), pytest.raises(DctpsError, match=forbids):
        prune(model(), 0.5, "snip", batches=[batch])
    for bad in ((torch.randn(2, 3, 3, 3), batch[1]), (batch[0], torch.tensor([0, 7]))):
        with pytest.raises(DctpsError, match=r"\(check the input shape and that labels lie in "):
            prune(model(), 0.5, "snip", batches=[bad])
    with torch.no_grad():  # grad mode alone is not inference mode: prune turns it on
        assert torch_prune.is_pruned(prune(model(), 0.5, "snip", batches=[batch]))
