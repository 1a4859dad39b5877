"""dctps.batched: one batched rebuild of every DCTpS weight per forward.

Every test compares the batched model with an unbatched deep copy, which rebuilds each layer's
``W = alpha * D + S`` on its own (an independent code path), in float64 to 1e-10: outputs, the
gradient of every parameter, and which parameters get no gradient at all.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import COMPILE_NEEDS_PLAIN_TMPDIR
from torch import nn

import dctps
from dctps.batched import WEIGHT_KEY, BatchedRebuild, alpha_grads, batch_rebuild
from dctps.errors import DctpsError
from dctps.layers import DCTpSConv2d, DCTpSLayer, DCTpSLinear
from dctps.models import build, names
from dctps.sparsify import sparsify

TOL = {"atol": 1e-10, "rtol": 1e-10}


class Net(nn.Module):
    """Convs (plain, strided, depthwise, 1x1), Linear layers, per-layer and per-channel alphas,
    an empty support, and one layer the forward skips unless ``use_spare``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = DCTpSConv2d(3, 8, 3, padding=1, nnz=40, seed=0)
        self.c2 = DCTpSConv2d(8, 8, 3, padding=1, groups=8, nnz=20, seed=1, alpha="channel")
        self.c3 = DCTpSConv2d(8, 16, 1, stride=2, nnz=0, seed=2, bias=False)
        self.c4 = DCTpSConv2d(16, 6, 3, nnz=50, seed=3, per_filter=True, alpha="channel")
        self.fc = DCTpSLinear(6, 12, nnz=30, seed=4)  # out > in: truncation the other way
        self.head = DCTpSLinear(12, 5, nnz=20, seed=5, alpha="channel", offset="gaussian")
        self.spare = DCTpSLinear(12, 5, nnz=7, seed=6)
        self.use_spare = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = torch.relu(self.c4(self.c3(x)))
        h = torch.relu(self.fc(x.mean((2, 3))))
        return self.head(h) + (self.spare(h) if self.use_spare else 0)


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DCTpSLayer):
                m.values.copy_(torch.randn(m.values.shape, generator=g, dtype=m.values.dtype))
                m.alpha.mul_(1 + 0.3 * torch.randn(m.alpha.shape, generator=g, dtype=m.alpha.dtype))
    return model


def _pair(model: nn.Module, **kw) -> tuple[nn.Module, nn.Module, BatchedRebuild]:
    """(unbatched reference, batched copy, its handle), both float64."""
    ref = _randomise(model.double())
    bat = copy.deepcopy(ref)
    return ref, bat, batch_rebuild(bat, **kw)


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters()}


def _loss_and_grads(model: nn.Module, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
    return out.detach(), _grads(model)


def _assert_same(ref: nn.Module, bat: nn.Module, x: torch.Tensor) -> None:
    out_r, g_r = _loss_and_grads(ref, x)
    out_b, g_b = _loss_and_grads(bat, x)
    torch.testing.assert_close(out_b, out_r, **TOL)
    assert g_r.keys() == g_b.keys()
    for name, gr in g_r.items():
        gb = g_b[name]
        assert (gr is None) == (gb is None), name
        if gr is not None:
            torch.testing.assert_close(gb, gr, **TOL, msg=name)
    for m in bat.modules():
        assert WEIGHT_KEY not in m.__dict__, "a batched weight outlived its forward"


@pytest.mark.parametrize("segmented", [True, False])
def test_outputs_and_every_gradient_equal_the_per_layer_rebuild(segmented):
    ref, bat, handle = _pair(Net(), segmented=segmented)
    seen: list[bool] = []
    for m in bat.modules():
        if isinstance(m, DCTpSLayer):
            m.register_forward_pre_hook(lambda mod, _: seen.append(WEIGHT_KEY in mod.__dict__))
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    _assert_same(ref, bat, x)
    assert seen == [True] * 6  # every layer the forward ran used the batched weight
    (plan,) = handle._plans
    _assert_same(ref, bat, x)  # second step: the cached plan
    assert handle._plans[0] is plan
    assert len(plan.layers) == 7  # the skipped layer is built too (the hook cannot know)


def test_a_skipped_layer_gets_no_gradient_and_a_used_one_does():
    ref, bat, _ = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _assert_same(ref, bat, x)
    assert bat.spare.values.grad is None and bat.spare.alpha.grad is None
    ref.use_spare = bat.use_spare = True
    _assert_same(ref, bat, x)
    assert bat.spare.values.grad is not None


def test_fixed_alpha_and_frozen_values_get_no_gradient():
    model = Net()
    model.c1.alpha.requires_grad_(False)
    model.fc.values.requires_grad_(False)
    ref, bat, _ = _pair(model)
    _assert_same(ref, bat, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert bat.c1.alpha.grad is None and bat.fc.values.grad is None


@pytest.mark.parametrize("name", names())
def test_every_registry_architecture_matches(name):
    """The paper's six networks: grouped and depthwise convs (MobileNetV2), Fixup's scalar
    biases and zero-initialised layers, bottlenecks, and VGG's Linear head."""
    torch.manual_seed(0)
    ref, bat, _ = _pair(sparsify(build(name, num_classes=10), 0.01, seed=0))
    _assert_same(ref, bat, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_alpha_reductions_agree_with_float64_sums():
    ref, bat, handle = _pair(Net())
    bat(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    (plan,) = handle._plans
    g = torch.randn(plan.d.numel(), dtype=torch.float64)
    expected = []
    for m, seg in zip(plan.layers, g.split(plan.sizes), strict=True):
        rows = seg.view(m.weight_shape[0], -1)
        expected.append(rows.sum().reshape(1) if m.alpha.dim() == 0 else rows.sum(1))
    for segmented in (True, False):
        torch.testing.assert_close(alpha_grads(g, plan, segmented), torch.cat(expected), **TOL)


def test_support_change_in_place_is_picked_up():
    ref, bat, _ = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _assert_same(ref, bat, x)
    new = torch.randperm(8 * 1 * 3 * 3)[:20].sort().values
    for m in (ref, bat):
        m.c2.indices.copy_(new)  # what RigL does
    _assert_same(ref, bat, x)


def test_load_state_dict_with_another_support_and_offset_seed():
    ref, bat, _ = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _assert_same(ref, bat, x)
    other = Net()
    other.head = DCTpSLinear(12, 5, nnz=9, seed=50, alpha="channel", offset="gaussian")
    other.c1 = DCTpSConv2d(3, 8, 3, padding=1, nnz=13, seed=51)
    state = _randomise(other.double(), seed=3).state_dict()
    for m in (ref, bat):
        m.load_state_dict(state)
    assert bat.head.values.numel() == 9
    _assert_same(ref, bat, x)


def test_dtype_and_mode_changes_are_picked_up():
    ref, bat, _ = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _assert_same(ref, bat, x)
    for m in (ref, bat):
        m.float()
    out_r, out_b = ref(x.float()), bat(x.float())
    torch.testing.assert_close(out_b, out_r, atol=1e-5, rtol=1e-5)
    assert bat.c1.D.dtype == torch.float32
    for m in (ref, bat):
        m.double()
        dctps.set_mode(m.c4, "fast")  # no longer a member: takes its own path
    _assert_same(ref, bat, x)
    assert not bat.c4.basis_built


def test_the_layers_basis_shares_the_plans_memory():
    _, bat, handle = _pair(Net())
    bat(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    (plan,) = handle._plans
    base = plan.d.untyped_storage().data_ptr()
    for m in plan.layers:
        assert m._D.untyped_storage().data_ptr() == base
    assert plan.d.numel() == sum(m.D.numel() for m in plan.layers)


def test_a_layer_called_outside_the_models_forward_rebuilds_its_own_weight():
    ref, bat, _ = _pair(Net())
    bat(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    h = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(bat.head(h), ref.head(h), **TOL)
    with torch.no_grad():
        bat.head.values.add_(1.0)  # an optimizer step between forwards
        ref.head.values.add_(1.0)
    torch.testing.assert_close(bat.head(h), ref.head(h), **TOL)


def test_a_forward_that_raises_leaves_no_weight_behind():
    _, bat, _ = _pair(Net())
    with pytest.raises(RuntimeError):
        bat(torch.randn(1, 5, 8, 8, dtype=torch.float64))  # wrong channel count
    assert not any(WEIGHT_KEY in m.__dict__ for m in bat.modules())
    bat(torch.randn(1, 3, 8, 8, dtype=torch.float64))  # and the next forward works


def test_two_forwards_then_two_backwards_accumulate_like_the_reference():
    ref, bat, _ = _pair(Net())
    xs = [torch.randn(2, 3, 8, 8, dtype=torch.float64) for _ in range(2)]
    for m in (ref, bat):
        m.zero_grad(set_to_none=True)
        losses = [m(x).square().sum() for x in xs]
        for loss in losses:
            loss.backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), bat.named_parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, **TOL, msg=name)


def test_nested_batched_models_build_each_weight_once():
    ref, bat, outer = _pair(Net())
    inner = batch_rebuild(bat.c1)
    _assert_same(ref, bat, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert not inner._plans  # the outer forward had already built c1's weight
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(bat.c1(x), ref.c1(x), **TOL)  # c1 alone: its own hook
    assert inner._plans
    assert outer is batch_rebuild(bat)  # idempotent


def test_deepcopy_and_pickle_of_a_batched_model_are_independent():
    ref, bat, _ = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    bat(x)  # build the plan first
    for twin in (copy.deepcopy(bat), pickle.loads(pickle.dumps(bat))):
        _assert_same(ref, twin, x)
        assert all(p.grad is None for p in bat.parameters())


def test_remove_restores_the_per_layer_rebuild():
    ref, bat, handle = _pair(Net())
    handle.remove()
    assert not bat._forward_pre_hooks and not bat._forward_hooks
    _assert_same(ref, bat, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert not handle._plans


def test_no_grad_evaluation_and_gradient_checkpointing():
    ref, bat, _ = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(bat(x), ref(x), **TOL)

    class Checkpointed(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.utils.checkpoint.checkpoint(self.net, x, use_reentrant=False)

    wrapped = Checkpointed(bat)
    batch_rebuild(wrapped)
    out_r, g_r = _loss_and_grads(ref, x)
    out_b, _ = _loss_and_grads(wrapped, x)
    torch.testing.assert_close(out_b, out_r, **TOL)
    for name, p in bat.named_parameters():
        if g_r[name] is not None:
            torch.testing.assert_close(p.grad, g_r[name], **TOL, msg=name)


@COMPILE_NEEDS_PLAIN_TMPDIR
def test_torch_compile_of_a_batched_model_matches_eager():
    torch.manual_seed(0)
    model = _randomise(Net())
    x = torch.randn(2, 3, 8, 8)
    eager = model(x)
    batch_rebuild(model)
    torch.testing.assert_close(torch.compile(model)(x), eager, atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(DctpsError, match="nn.Module"):
        batch_rebuild("resnet18")  # type: ignore[arg-type]
    with pytest.raises(DctpsError, match="no DCTpS layers.*sparsify"):
        batch_rebuild(nn.Sequential(nn.Linear(3, 3)))


def test_training_with_sgd_follows_the_reference():
    ref, bat, _ = _pair(Net())
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    for model in (ref, bat):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, foreach=True)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for (name, a), (_, b) in zip(ref.named_parameters(), bat.named_parameters(), strict=True):
        torch.testing.assert_close(b, a, **TOL, msg=name)


def test_the_batched_step_dispatches_a_fixed_number_of_extra_operators(monkeypatch):
    """Per-layer rebuilds add operators (GPU kernel launches) per layer; batching adds a constant
    number, whatever the depth (ResNet18: 21 layers, ResNet50: 54). Gradients start from None, as
    after ``zero_grad()``: accumulating into existing ones costs one add per parameter anyway.
    The per-layer rebuild is the accelerators' (built-in ops), as ``benchmarks/step_ops.py``."""
    from dctps import layers
    from dctps.bench import aten_ops
    from dctps.models.resnet import BasicBlock, Bottleneck, ResNet

    monkeypatch.setattr(layers, "cpu_rebuild", layers.op_rebuild)
    x = torch.randn(2, 3, 8, 8)
    extra = {}
    nets = {"r18": (BasicBlock, (2, 2, 2, 2)), "r50": (Bottleneck, (3, 4, 6, 3))}
    for name, (block, blocks) in nets.items():
        counts = {}
        for kind in ("dense", "per-layer", "batched"):
            torch.manual_seed(0)
            model = ResNet(block, blocks, width=4)
            if kind != "dense":
                model = sparsify(model, 0.05, seed=0)
            if kind == "batched":
                batch_rebuild(model, segmented=True)  # the accelerators' reduction

            def step(model: nn.Module = model) -> None:
                model.zero_grad(set_to_none=True)
                model(x).sum().backward()

            step()
            counts[kind] = aten_ops(step)
        n_layers = sum(
            isinstance(m, DCTpSLayer)
            for m in sparsify(ResNet(block, blocks, width=4), 0.05).modules()
        )
        assert counts["per-layer"] - counts["dense"] >= 4 * n_layers, (name, counts)
        extra[name] = counts["batched"] - counts["dense"]
    assert extra["r18"] == extra["r50"] <= 12, extra


def test_a_layer_used_twice_and_attention_projections():
    """Weight sharing (one layer called twice per forward) and ``nn.MultiheadAttention``, whose
    packed projection is read through ``in_proj_weight`` rather than called."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = DCTpSLinear(6, 16, nnz=20, seed=0)
            self.block = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.twice = DCTpSLinear(16, 16, nnz=30, seed=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.block(self.embed(x))
            return self.twice(torch.tanh(self.twice(h)))

    torch.manual_seed(0)
    model = sparsify(Shared(), 0.1, seed=0, exclude=["embed", "twice"])
    assert type(model.block.self_attn).__name__ == "DCTpSMultiheadAttention"
    ref, bat, handle = _pair(model)
    _assert_same(ref, bat, torch.randn(2, 5, 6, dtype=torch.float64))
    (plan,) = handle._plans
    assert len(plan.layers) == 6  # embed, in_proj, out_proj, two feed-forward layers, twice


@pytest.mark.parametrize("scope", ["layer", "channel"])
def test_the_accelerators_per_layer_rebuild_matches_the_cpu_one(scope):
    """``op_rebuild`` (built-in ops, what a GPU runs per layer) against ``cpu_rebuild`` (the fused
    autograd Function): the same ``W`` and the same gradients of ``alpha`` and ``values``."""
    from dctps.layers import cpu_rebuild, op_rebuild

    layer = _randomise(DCTpSConv2d(6, 10, 3, nnz=70, seed=0, alpha=scope).double())
    g = torch.randn(layer.weight_shape, dtype=torch.float64)
    results = []
    for rebuild in (cpu_rebuild, op_rebuild):
        layer.zero_grad(set_to_none=True)
        w = rebuild(layer.D, layer.alpha_view(), layer.indices, layer.values).view(g.shape)
        (w * g).sum().backward()
        results.append((w.detach(), layer.alpha.grad, layer.values.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, **TOL)
    expected = layer.alpha.detach().view(-1, *([1] * 3)) * layer.D + layer.sparse_weight().detach()
    torch.testing.assert_close(results[1][0], expected, **TOL)


# ---------------------------------------------------------------- edge cases found in review


def test_a_keyboard_interrupt_mid_forward_leaves_nothing_stale():
    """PyTorch skips forward hooks on a KeyboardInterrupt; the next forward must not reuse the
    interrupted forward's weights (here after an optimizer-like update)."""

    class Stops(Net):
        stop = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = super().forward(x)
            if self.stop:
                raise KeyboardInterrupt
            return y

    ref, bat, _ = _pair(Stops())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    bat.stop = True
    with pytest.raises(KeyboardInterrupt):
        bat(x)
    bat.stop = False
    with torch.no_grad():
        for m in (ref, bat):
            m.c1.values.add_(1.0)
    _assert_same(ref, bat, x)


def test_checkpointed_blocks_inside_the_model():
    """Reentrant checkpointing of a block inside a batched model gives the reference gradients;
    the non-reentrant form fails loudly (documented), never silently."""
    import torch.utils.checkpoint as cp

    class Checkpointed(Net):
        reentrant = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = cp.checkpoint(self.c1, x, use_reentrant=self.reentrant)
            x = torch.relu(self.c2(torch.relu(x)))
            h = torch.relu(self.fc(self.c4(self.c3(x)).mean((2, 3))))
            return self.head(h)

    ref, bat, _ = _pair(Checkpointed())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    _assert_same(ref, bat, x)
    bat.reentrant = False
    with pytest.raises(Exception, match="checkpoint|[Rr]ecomput"):
        bat(x).sum().backward()


def test_one_layer_leaves_the_callers_gradient_untouched():
    """With one layer the backward has nothing to concatenate; it must not scale the incoming
    gradient in place (a hook on W, or the caller's tensor, would see it change)."""

    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = DCTpSLinear(6, 4, nnz=5, seed=0)
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.layer.weight
            w.register_hook(self.seen.append)
            return F.linear(x, w)

    ref, bat, _ = _pair(One())
    x = torch.randn(3, 6, dtype=torch.float64)
    g = torch.randn(3, 4, dtype=torch.float64)
    expected = g.t() @ x  # dL/dW of F.linear
    for m in (ref, bat):
        m(x).backward(g.clone())
        torch.testing.assert_close(m.seen[0], expected, **TOL)
    torch.testing.assert_close(bat.layer.values.grad, ref.layer.values.grad, **TOL)
    torch.testing.assert_close(bat.layer.alpha.grad, ref.layer.alpha.grad, **TOL)


def test_frozen_layers_record_no_graph():
    ref, bat, handle = _pair(Net())
    for m in (ref, bat):
        for layer in (m.c1, m.c2):
            layer.requires_grad_(False)
    out: dict[str, torch.Tensor] = {}
    bat.c2.register_forward_hook(lambda mod, i, o: out.update(c2=o))  # returns None
    _assert_same(ref, bat, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert not out["c2"].requires_grad  # nothing before c2 trains: no graph through it
    assert {p.trainable for p in handle._plans} == {True, False}
    for m in (ref, bat):  # unfreezing is picked up
        m.c1.requires_grad_(True)
    _assert_same(ref, bat, torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_replicas_transforms_and_tracing_rebuild_per_layer():
    ref, bat, handle = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    bat._is_replica = True  # what nn.DataParallel marks its per-device copies with
    torch.testing.assert_close(bat(x), ref(x), **TOL)
    assert not handle._plans
    del bat._is_replica
    # torch.func.grad of a functional call, forward-mode AD, and jit tracing
    from torch.func import functional_call, grad

    def loss(model: nn.Module):
        def f(params: dict) -> torch.Tensor:
            return functional_call(model, params, (x,)).square().sum()

        return f

    params = {k: v.detach() for k, v in ref.named_parameters()}
    g_ref, g_bat = grad(loss(ref))(params), grad(loss(bat))(params)
    for k in g_ref:
        torch.testing.assert_close(g_bat[k], g_ref[k], **TOL, msg=k)
    traced = torch.jit.trace(bat, (x,), check_trace=False)
    torch.testing.assert_close(traced(x), ref(x), **TOL)


def test_a_plan_built_in_inference_mode_still_trains():
    ref, bat, _ = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(bat(x), ref(x), **TOL)
    assert not bat.c1.D.is_inference()
    _assert_same(ref, bat, x)


def test_layers_leaving_the_batch_free_the_old_buffer():
    _, bat, handle = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    bat(x)
    (old,) = handle._plans
    old_ptr = old.d.untyped_storage().data_ptr()
    dctps.set_mode(bat.fc, "auto")  # not a member until auto has measured it; keeps its D
    bat(x)
    assert bat.fc.D.untyped_storage().data_ptr() != old_ptr
    assert all(p.d.untyped_storage().data_ptr() != old_ptr for p in handle._plans)
    dctps.set_mode(bat, "auto")
    dctps.fast.clear_auto_cache()  # no members until auto has measured again: no plan, no D_cat
    bat(x)
    assert not handle._plans


def test_a_reshaped_alpha_is_picked_up():
    ref, bat, _ = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _assert_same(ref, bat, x)
    for m in (ref, bat):
        m.fc.alpha = nn.Parameter(torch.linspace(0.5, 2, 12, dtype=torch.float64))
    _assert_same(ref, bat, x)


def test_to_dense_and_copies_of_a_batched_model():
    ref, bat, handle = _pair(Net())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    dense = dctps.to_dense(bat)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in dense.modules())
    torch.testing.assert_close(dense(x), ref(x), **TOL)
    twin = copy.deepcopy(bat)
    batch_rebuild(twin).remove()  # the copy's own hooks, not the original's
    assert bat._forward_pre_hooks and not twin._forward_pre_hooks
    _assert_same(ref, bat, x)


def test_a_discarded_batched_model_is_freed_without_the_garbage_collector():
    """The hooks' owner held the model strongly (its ``_root``): a cycle that kept a discarded
    model and its concatenated ``D`` alive until ``gc.collect()`` (on a GPU, its memory)."""
    import gc
    import weakref

    gc.disable()
    try:
        model = dctps.sparsify(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), 0.3,
                               seed=0)  # fmt: skip
        batch_rebuild(model)
        model(torch.randn(2, 8)).sum().backward()
        ref = weakref.ref(model)
        del model
        assert ref() is None
    finally:
        gc.enable()
