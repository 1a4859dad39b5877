"""Tests for dctps.dst.RigL: schedule, constant counts, drop/grow against an independent
computation, optimizer-state reset, and DCTpS layers."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dctps
from dctps.dst import RigL
from dctps.errors import DctpsError
from dctps.layers import DCTpSLinear
from dctps.pruning import prune


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these are many small CPU ops, and on a shared 2-core runner (or under
    ``pytest -n 2``) two threads per process oversubscribe the cores and run several times slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
                         nn.Linear(16, 4))  # fmt: skip


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(16, 12, generator=g), torch.randint(0, 4, (16,), generator=g)


def _linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, DCTpSLinear))]


def _stable_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Independent top-k: first k of a stable sort by descending score."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[torch.sort(-scores.double(), stable=True).indices[:k]] = True
    return keep


def _expected_support(active, magnitude, grad, fraction):
    n = int(active.sum())
    n_drop = math.floor(n * fraction)
    keep = _stable_top(torch.where(active, magnitude, torch.tensor(-math.inf)), n - n_drop)
    grow = _stable_top(torch.where(keep, torch.tensor(-math.inf), grad.abs()), n_drop)
    return keep | grow


def _dense_grads(layers, weights, x, y) -> list[torch.Tensor]:
    """dL/dW of the MLP computed functionally from the given effective weights."""
    ws = [w.detach().clone().requires_grad_() for w in weights]
    h = x
    for i, (m, w) in enumerate(zip(layers, ws, strict=True)):
        h = F.linear(h, w, m.bias.detach())
        h = torch.relu(h) if i < len(layers) - 1 else h
    return list(torch.autograd.grad(F.cross_entropy(h, y), ws))


def _run(model, opt, rigl, steps, start=0, check=None):
    for i in range(start, start + steps):
        x, y = _batch(i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if rigl.step():
            opt.step()
        if check is not None:
            check()


def test_drop_fraction_cosine_schedule():
    rigl = RigL(prune(_mlp(), 0.3, "random", seed=0), None, total_steps=1000, alpha=0.3)
    assert rigl.T_end == 750
    assert rigl.drop_fraction(0) == pytest.approx(0.3)
    assert rigl.drop_fraction(375) == pytest.approx(0.15)
    assert rigl.drop_fraction(750) == pytest.approx(0.0, abs=1e-12)
    assert rigl.drop_fraction(100) == pytest.approx(0.15 * (1 + math.cos(math.pi * 100 / 750)))
    assert [t for t in range(1, 1001) if rigl.is_update(t)] == list(range(100, 750, 100))


def test_masked_counts_constant_and_no_update_after_t_end():
    model = prune(_mlp(), 0.3, "random", allocation="erk", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rigl = RigL(model, opt, total_steps=40, delta_t=5, alpha=0.5)  # T_end = 30
    counts = rigl.nonzeros()

    def check():
        assert rigl.nonzeros() == counts
        for m in _linears(model):  # masked weights stay exactly zero
            assert torch.all(m.weight_orig.detach()[m.weight_mask == 0] == 0)

    _run(model, opt, rigl, 29, check=check)
    assert [h[0] for h in rigl.history] == [5, 10, 15, 20, 25]
    assert all(h[2] > 0 for h in rigl.history[:3])
    masks = [m.weight_mask.clone() for m in _linears(model)]
    _run(model, opt, rigl, 11, start=29, check=check)  # t = 30..40 >= T_end: no update
    assert len(rigl.history) == 5
    assert all(torch.equal(a, m.weight_mask) for a, m in zip(masks, _linears(model), strict=True))


def test_masked_update_matches_independent_drop_grow_and_resets_adam_state():
    model = prune(_mlp(), 0.25, "random", seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    rigl = RigL(model, opt, total_steps=100, delta_t=10, alpha=0.3)
    _run(model, opt, rigl, 9)  # t = 1..9: plain training, Adam state populated
    layers = _linears(model)
    before = [(m.weight_mask.clone().bool(), m.weight_orig.detach().clone()) for m in layers]
    states = [{k: v.clone() for k, v in opt.state[m.weight_orig].items()} for m in layers]

    # Independent dense gradient of the effective weights on the update batch (t = 10).
    x, y = _batch(9)
    grads = _dense_grads(layers, [w0 * m0 for m0, w0 in before], x, y)

    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert rigl.step() is False  # t = 10 is an update: skip the optimizer step
    f = rigl.drop_fraction(10)
    for m, (mask0, w0), g, st in zip(layers, before, grads, states, strict=True):
        new = _expected_support(mask0.flatten(), (w0 * mask0).abs().flatten(), g.flatten(), f)
        new = new.view_as(mask0)
        assert torch.equal(m.weight_mask.bool(), new)
        assert int(new.sum()) == int(mask0.sum())
        grown, stay = new & ~mask0, new & mask0
        assert grown.any()
        w = m.weight_orig.detach()
        assert torch.all(w[grown] == 0) and torch.all(w[~new] == 0)
        assert not torch.signbit(w[~stay]).any()  # +0.0: packed away in a checkpoint
        assert torch.equal(w[stay], w0[stay])
        for key in ("exp_avg", "exp_avg_sq"):
            s = opt.state[m.weight_orig][key]
            assert torch.all(s[grown] == 0) and torch.all(s[~new] == 0)
            assert not torch.signbit(s[~stay]).any()
            assert torch.equal(s[stay], st[key][stay])


@pytest.mark.parametrize("batched", [False, True], ids=["per-layer", "batched-rebuild"])
def test_dctps_layers_move_support_keep_count_and_offset(batched):
    torch.manual_seed(0)
    model = dctps.sparsify(_mlp(), 0.2, allocation="epl", seed=0)
    if batched:  # RigL's capture of dL/dW must see the batched weights, and its new supports
        dctps.batch_rebuild(model, segmented=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rigl = RigL(model, opt, total_steps=40, delta_t=5)
    layers = _linears(model)
    nnz = [m.nnz for m in layers]
    _run(model, opt, rigl, 4)
    snap = [(m.indices.clone(), m.values.detach().clone(), m.alpha.detach().clone(), m.D.clone(),
             {k: v.clone() for k, v in opt.state[m.values].items()}) for m in layers]  # fmt: skip
    values_params = [m.values for m in layers]

    # Independent dense gradient dL/dW of W = alpha * D + S on the update batch (t = 5).
    x, y = _batch(4)
    grads = _dense_grads(layers, [m.dense_weight() for m in layers], x, y)

    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert rigl.step() is False
    f = rigl.drop_fraction(5)
    changed = False
    for m, (idx, vals, alpha, D, st), g, p in zip(layers, snap, grads, values_params, strict=True):
        numel = math.prod(m.weight_shape)
        active = torch.zeros(numel, dtype=torch.bool)
        active[idx] = True
        magnitude = torch.zeros(numel)
        magnitude[idx] = vals.abs()
        new = _expected_support(active, magnitude, g.flatten(), f)
        assert torch.equal(m.indices, torch.nonzero(new).flatten())  # sorted, as expected
        assert m.nnz == len(idx)
        changed |= not torch.equal(m.indices, idx)
        assert m.values is p  # the optimizer's Parameter, updated in place
        assert torch.equal(m.alpha.detach(), alpha) and torch.equal(m.D, D)
        # Entries follow their positions; new positions start at 0 with zero Adam moments.
        old_slot = {int(i): j for j, i in enumerate(idx)}
        for j, pos in enumerate(m.indices.tolist()):
            src = old_slot.get(pos)
            want = vals[src] if src is not None else torch.tensor(0.0)
            assert m.values.detach()[j] == want
            for key in ("exp_avg", "exp_avg_sq"):
                sw = st[key][src] if src is not None else torch.tensor(0.0)
                assert opt.state[m.values][key][j] == sw
    assert changed
    _run(model, opt, rigl, 35, start=5)
    assert [m.nnz for m in layers] == nnz
    assert dctps.count(model).nonzeros == sum(nnz)
    assert len(rigl.history) == 5  # t = 5, 10, ..., 25 < T_end = 30
    # the model computes with its current supports (outside a forward, W is rebuilt per layer)
    x, _ = _batch(99)
    h = x
    for i, m in enumerate(layers):
        h = F.linear(h, m.dense_weight(), m.bias)
        h = torch.relu(h) if i < len(layers) - 1 else h
    torch.testing.assert_close(model(x), h)


def test_errors():
    with pytest.raises(DctpsError, match="no sparse layer"):
        RigL(_mlp(), None, total_steps=10)
    model = prune(_mlp(), 0.3, "random", seed=0)
    with pytest.raises(DctpsError, match="total_steps"):
        RigL(model, None, total_steps=0)
    rigl = RigL(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10, delta_t=1)
    with pytest.raises(DctpsError, match="no gradient was captured"):
        rigl.step()


@pytest.mark.parametrize("mode", ["fast", "factor"])
def test_a_dctps_layer_off_the_dense_path_is_refused_not_skipped(mode):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
    )
    dctps.sparsify(model, 0.2)
    model[0].mode = mode  # one layer off the dense path, one on it
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(model, opt, total_steps=100, delta_t=2)
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 4, (4,))
    F.cross_entropy(model(x), y).backward()
    assert rigl.step()
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(DctpsError, match=rf"layer '0' runs mode='{mode}'.*set_mode"):
        rigl.step()


@pytest.mark.parametrize("mode", ["auto", "fast"])
def test_an_unused_layer_off_the_dense_path_keeps_its_support(mode):
    """A layer the forward never ran was refused as if its mode hid its gradient ("runs
    mode='auto', which never forms it", a coverage review); in mode 'dense' the same model
    worked. Unused on the batch, it keeps its support in any mode; the used layers move."""

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(64, 32), nn.Linear(64, 32)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    model = TwoHeads()
    dctps.sparsify(model, 0.1)
    dctps.set_mode(model.used, "dense")
    model.unused.mode = mode
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(model, opt, total_steps=100, delta_t=2)
    before = {n: m.indices.clone() for n, m in model.named_children()}
    x, y = torch.randn(8, 64), torch.randint(0, 32, (8,))
    F.cross_entropy(model(x), y).backward()
    assert rigl.step()
    F.cross_entropy(model(x), y).backward()
    assert not rigl.step()  # the update ran
    assert torch.equal(model.unused.indices, before["unused"])
    assert not torch.equal(model.used.indices, before["used"])
    dctps.to_dense(model)  # a support RigL moved is one dctps set, not an averaged one


def test_a_layer_run_only_without_gradients_counts_as_unused():
    """A fast-path layer that ran only under `no_grad` on the update's batch (a monitoring
    forward) formed no gradient by being unused for training: it keeps its support; the same
    layer run with gradients is refused, and `ran` starts again at each arming."""
    torch.manual_seed(0)
    used, aux = nn.Linear(16, 8), nn.Linear(16, 8)
    model = nn.ModuleDict({"used": used, "aux": aux})
    dctps.sparsify(model, 0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(model, opt, total_steps=100, delta_t=2)
    x, y = torch.randn(4, 16), torch.randint(0, 8, (4,))
    for _ in range(2):  # first, aux trains on the dense path: it ran, and RigL moves it
        F.cross_entropy(model["used"](x) + model["aux"](x), y).backward()
        rigl.step()
        opt.zero_grad()
    model["aux"].mode = "fast"
    before = model["aux"].indices.clone()
    for _ in range(4):
        F.cross_entropy(model["used"](x), y).backward()
        with torch.no_grad():
            model["aux"](x)
        rigl.step()
        opt.zero_grad()
    assert torch.equal(model["aux"].indices, before) and len(rigl.history) == 3
    F.cross_entropy(model["used"](x) + model["aux"](x), y).backward()
    assert rigl.step()  # not an update step: nothing checked
    F.cross_entropy(model["used"](x) + model["aux"](x), y).backward()
    with pytest.raises(DctpsError, match="layer 'aux' runs mode='fast'"):
        rigl.step()


@pytest.mark.parametrize("mode", ["dense", "fast"])
def test_a_dctps_layer_with_a_frozen_s_keeps_its_support(mode):
    """``values.requires_grad_(False)`` with a trained alpha: W still needs a gradient, and RigL
    moved the support, dropping trained values and growing entries that could never train (a
    masked layer with a frozen ``weight_orig`` was already left alone)."""
    model = dctps.sparsify(_mlp(), 0.2, seed=0)
    frozen, other = [m for m in model.modules() if isinstance(m, DCTpSLinear)][:2]
    frozen.mode = mode
    with torch.no_grad():
        frozen.values.normal_()
    frozen.values.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rigl = RigL(model, opt, total_steps=40, delta_t=3, alpha=0.5)
    idx, val, other_idx = frozen.indices.clone(), frozen.values.clone(), other.indices.clone()
    alpha = frozen.alpha.detach().clone()
    for i in range(3):
        x, y = _batch(i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if rigl.step():
            opt.step()
    assert len(rigl.history) == 1 and rigl.history[0][2] > 0  # an update ran on the others
    assert torch.equal(frozen.indices, idx) and torch.equal(frozen.values, val)
    assert not torch.equal(other.indices, other_idx)
    assert not torch.equal(frozen.alpha, alpha)  # its alpha still trains


def _ddp_rigl_rank(rank: int, world: int, init: str, out: str) -> None:
    """One DDP rank of the test below: its half of each global batch, RigL every 2 steps."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.save(_rigl_supports(world, rank, DDP), f"{out}/rank{rank}.pt")
    finally:
        # free the DDP model (a reference cycle holding the group) first, as
        # dctps.train.distributed.teardown does: freed at interpreter exit, gloo's threads
        # aborted a finished rank now and then (SIGABRT)
        gc.collect()
        dist.destroy_process_group()


def _rigl_supports(world: int, rank: int, wrap=None, rigl_kw=None) -> list[torch.Tensor]:
    model = dctps.sparsify(_mlp(), 0.2, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rigl = RigL(model, opt, total_steps=40, delta_t=2, **(rigl_kw or {}))
    net = model if wrap is None else wrap(model)
    for i in range(6):
        x, y = _batch(i)  # the global batch of 16; this rank's share of it
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        if rigl.step():
            opt.step()
    assert len(rigl.history) == 3
    return [m.indices.clone() for m in _linears(model)] + [
        m.values.detach().clone() for m in _linears(model)
    ]


def test_rigl_under_ddp_plans_on_the_averaged_gradient(tmp_path):
    """2 gloo ranks, each with half of every batch, move the supports exactly as one process on
    the whole batch (each rank alone would grow by its local gradient and the ranks diverge)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_rigl_rank, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    alone = _rigl_supports(1, 0)
    n = len(alone) // 2
    for a, b, ref in zip(ranks[0][:n], ranks[1][:n], alone[:n], strict=True):
        assert torch.equal(a, b) and torch.equal(a, ref)
    for a, b, ref in zip(ranks[0][n:], ranks[1][n:], alone[n:], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-6)


def test_a_copy_of_an_armed_dctps_model_is_its_own(tmp_path):
    """On the step before an update RigL arms each DCTpS layer with a closure over that layer;
    a deepcopy then (a best-model snapshot) computed with the original's weights as it trained
    on, and pickling the model failed. Copies now drop the capture."""
    import copy
    import io

    torch.manual_seed(0)
    x, y = torch.randn(8, 20), torch.randint(0, 5, (8,))
    m = dctps.sparsify(nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)), 0.2)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    rigl = RigL(m, opt, total_steps=100, delta_t=5)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        if rigl.step():
            opt.step()

    for _ in range(4):  # the next step updates the support: the layers are armed now
        step()
    assert "dense_weight" in m[0].__dict__ and "forward" in m[0].__dict__
    snap = copy.deepcopy(m).eval()
    torch.save(m, io.BytesIO())  # raised "Can't pickle local object" while armed
    with torch.no_grad():
        before = snap(x).clone()
    for _ in range(3):
        step()
    with torch.no_grad():
        assert torch.equal(snap(x), before)  # the original trained on; the copy did not
    assert "dense_weight" not in snap[0].__dict__ and "forward" not in snap[0].__dict__


@pytest.mark.parametrize("kind", ["pruned", "dctps"])
def test_an_overflowing_update_is_skipped_with_a_loss_scaler_and_refused_without(kind):
    """A loss scaler's overflow on an update iteration leaves every support as it was and lets
    the scaler skip the optimizer step; without a scaler the non-finite gradient is an error,
    checked in every layer before any moves (a partial update was possible before)."""
    model = (
        prune(_mlp(), 0.3, "random", seed=0)
        if kind == "pruned"
        else dctps.sparsify(_mlp(), 0.3, seed=0)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rigl = RigL(model, opt, total_steps=100, delta_t=2)

    def state():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # overflows float32 gradients

    def scaled_step(i, blow_up=1.0):  # the documented loop
        x, y = _batch(i)
        opt.zero_grad()
        scaler.scale(F.cross_entropy(model(x), y) * blow_up).backward()
        stepped = rigl.step(scaler)
        if stepped:
            scaler.step(opt)
            scaler.update()
        return stepped

    _run(model, opt, rigl, 1)  # t = 1: no update
    before = state()
    assert scaled_step(1, blow_up=1e6) is False  # t = 2, an update iteration, overflowed
    assert rigl.skipped == [2] and rigl.history == []
    after = state()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing moved or stepped
    assert scaler.get_scale() == 2.0**126  # lowered by the backoff factor, by RigL
    # the same loop goes on: a plain iteration steps, a finite update iteration moves supports
    scaler.update(2.0**10)
    assert scaled_step(2) is True  # t = 3
    assert scaled_step(3) is False and rigl.history and rigl.history[-1][0] == 4  # t = 4

    # without a scaler: refused, and a layer whose gradient is finite is not updated either
    _run(model, opt, rigl, 1, start=4)  # t = 5
    x, y = _batch(5)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    last = next(layer for layer in reversed(rigl.layers) if layer.grad is not None)
    last.grad.view(-1)[0] = math.inf
    before = state()
    with pytest.raises(DctpsError, match=r"non-finite gradient in layer\(s\) '4'.*no support"):
        rigl.step()
    after = state()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(DctpsError, match="scaler must be a torch.amp.GradScaler"):
        rigl.step("scaler")


def test_micro_batches_of_an_update_step_add_up_their_dense_gradients():
    """Documented: with gradient accumulation RigL grows by the dense gradient summed over the
    micro-batches; keeping only the last micro-batch's went unnoticed."""

    def supports(micro: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = dctps.sparsify(_mlp(), 0.2, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rigl = RigL(model, opt, total_steps=40, delta_t=5)
        _run(model, opt, rigl, 4)
        (x1, y1), (x2, y2) = _batch(4), _batch(5)
        opt.zero_grad()
        if micro:  # two micro-batches, two backward passes
            F.cross_entropy(model(x1), y1, reduction="sum").backward()
            F.cross_entropy(model(x2), y2, reduction="sum").backward()
        else:  # the same sum in one pass
            x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
            F.cross_entropy(model(x), y, reduction="sum").backward()
        assert rigl.step() is False  # t = 5: an update
        return [m.indices.clone() for m in _linears(model)]

    one, two = supports(False), supports(True)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_the_training_loop_reads_its_check_before_each_update_only(monkeypatch):
    """With ``check_every=20`` (CUDA's default) and RigL, the loop reads its non-finite flags
    before each update step (so a NaN there fails the run cleanly instead of RigL raising) and
    otherwise every 20 steps: reading every step waited for each backward on a GPU."""
    from dctps.train import loop

    model = dctps.sparsify(_mlp(), 0.3, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(model, opt, total_steps=100, delta_t=5)
    reads = []
    real = loop._first_bad
    monkeypatch.setattr(loop, "_first_bad", lambda f, s, *a: reads.append(s) or real(f, s, *a))
    st = loop.train_one_epoch(
        model, [_batch(i) for i in range(12)], opt, epoch=1, rigl=rigl, check_every=20
    )
    assert st.failed is None and reads == [5, 10, 12]  # updates at 5 and 10, the epoch's end
    assert [t for t, *_ in rigl.history] == [5, 10]

    hit = []
    last = model[4].values
    last.register_hook(lambda g: g * math.nan if len(hit.append(1) or hit) == 3 else g)
    before = model[4].indices.clone()
    st = loop.train_one_epoch(
        model, [_batch(i) for i in range(12)], opt, epoch=2, rigl=rigl, check_every=20
    )
    assert st.failed == "non-finite gradient (NaN/Inf) at epoch 2, step 3"  # RigL's t = 15
    assert torch.equal(model[4].indices, before)  # no update ran on the bad gradient


@pytest.mark.parametrize("kind", ["pruned", "dctps"])
def test_a_discarded_rigl_model_is_freed_without_the_garbage_collector(kind):
    """RigL's per-layer objects held their modules strongly while the modules' hooks (or an
    armed ``dense_weight``) held them: a cycle that kept a discarded model alive until
    ``gc.collect()``. RigL itself keeps its model alive while it lives."""
    gc.disable()
    try:
        model = (
            prune(_mlp(), 0.3, "random", seed=0)
            if kind == "pruned"
            else dctps.sparsify(_mlp(), 0.3, seed=0)
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rigl = RigL(model, opt, total_steps=100, delta_t=2)
        _run(model, opt, rigl, 3)  # armed for the update at t = 4
        refs = [weakref.ref(model), weakref.ref(model[0])]  # the model, and a sparse layer
        del model, opt
        assert all(r() is not None for r in refs)  # RigL holds them
        del rigl
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_rigl_averages_over_the_process_group_it_is_given(tmp_path, monkeypatch):
    """RigL reduced over the default group only; a model replicated over a subgroup (its DDP
    given that group) needs its own. Here a gloo group of world size 1 and a subgroup of it:
    every collective RigL makes goes to the subgroup, and the supports equal one process's."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    alone = _rigl_supports(1, 0)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        seen = []
        real = dist.all_reduce

        def spy(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
            seen.append(group)
            return real(tensor, op=op, group=group, async_op=async_op)

        monkeypatch.setattr(dist, "all_reduce", spy)
        got = _rigl_supports(1, 0, rigl_kw={"process_group": group, "distributed": True})
        # 3 updates x (the has-gradient flags + 3 layers' gradients), all in the given group
        assert len(seen) == 12 and all(g is group for g in seen)
        for a, ref in zip(got, alone, strict=True):
            assert torch.equal(a, ref)
        seen.clear()
        _rigl_supports(1, 0, rigl_kw={"process_group": group})  # auto: one rank, nothing to do
        assert seen == []
        with pytest.raises(DctpsError, match=r"distributed=False\) averages over no group"):
            RigL(dctps.sparsify(_mlp(), 0.2), None, 10, distributed=False, process_group=group)
        with pytest.raises(DctpsError, match=r"process_group must be a torch.distributed .*got"
                           r" str"):  # fmt: skip
            RigL(dctps.sparsify(_mlp(), 0.2), None, 10, process_group="world")
    finally:
        dist.destroy_process_group()


def test_an_update_reads_the_device_a_few_times_per_layer_not_more(monkeypatch, host_reads):
    """Each host read (``int(t)``, ``bool(t)``, ``.item()``, ``.tolist()``) and each tensor made
    from host data on the device is a synchronisation on CUDA. An update reads per layer its
    count, two thresholds' tie counts and the number grown (a tie fill adds one each); the finite
    checks of all layers are read together, and ``-inf`` is a Python scalar, not a tensor."""
    model = prune(_mlp(), 0.25, "random", seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(model, opt, total_steps=100, delta_t=5, alpha=0.3)
    _run(model, opt, rigl, 4)
    x, y = _batch(4)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    reads, made = host_reads(), [0]
    tensor = torch.tensor

    def counted_tensor(*a, **kw):
        made[0] += 1
        return tensor(*a, **kw)

    monkeypatch.setattr(torch, "tensor", counted_tensor)
    assert rigl.step() is False
    monkeypatch.undo()
    layers = len(_linears(model))
    assert rigl.history and rigl.history[-1][2] > 0
    assert made[0] == 0
    assert reads[0] <= 1 + 6 * layers, reads[0]


def test_a_rigl_built_again_on_a_pruned_model_replaces_the_one_before():
    """A leak review: RigL built again on the same pruned model without remove() (a notebook
    cell run again) stacked one more hook per layer each time, and each stale one armed at the
    time kept a dense gradient per layer alive at every backward. The newest one captures."""
    model = prune(_mlp(), 0.3, "random", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rigls = [RigL(model, opt, total_steps=100, delta_t=1) for _ in range(5)]  # armed at once
    from dctps.dst.rigl import _Masked

    for m in _linears(model):
        ours = [h for h in m._forward_pre_hooks.values()
                if isinstance(getattr(h, "__self__", None), _Masked)]  # fmt: skip
        assert len(ours) == 1 and ours[0].__self__ in rigls[-1].layers
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()
    assert all(s.grad is None for r in rigls[:-1] for s in r.layers)
    assert all(s.grad is not None for s in rigls[-1].layers)
    assert not rigls[-1].step()  # an update step (delta_t=1): it moved the supports
    assert len(rigls[-1].history) == 1 and rigls[-1].history[0][2] > 0


def test_one_rigl_keeps_the_hooks_of_a_module_with_two_pruned_weights():
    """A diff review: removing a stale RigL's hooks removed this RigL's own hook for another
    pruned attribute of the same module, whose gradient was then never captured."""
    import torch.nn.utils.prune as torch_prune

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8))
            self.in_proj_weight = nn.Parameter(torch.randn(8, 8))  # the two RigL looks for

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight.T + x @ self.in_proj_weight.T

    torch.manual_seed(0)
    m = Two()
    for name in ("weight", "in_proj_weight"):
        torch_prune.random_unstructured(m, name, amount=0.5)
    rigl = RigL(m, torch.optim.SGD(m.parameters(), lr=0.1), total_steps=100, delta_t=1)
    m(torch.randn(4, 8)).square().sum().backward()
    assert sorted(s.attr for s in rigl.layers if s.grad is not None) == ["in_proj_weight", "weight"]
