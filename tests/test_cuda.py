"""GPU checks: every path also runs on CUDA and agrees with the CPU. Skipped without a GPU (CI has
none); run on a lent GPU machine with ``python -m pytest -q tests/test_cuda.py``."""

import pytest
import torch

import dctps
from dctps import DCTpSConv2d, DCTpSLinear
from dctps.models import build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("mode", ["dense", "fast", "auto"])
def test_linear_modes_on_cuda_match_cpu(mode):
    cpu = DCTpSLinear(300, 700, nnz=500, seed=0, dtype=torch.float64)
    with torch.no_grad():
        cpu.values.normal_()
    gpu = DCTpSLinear(300, 700, nnz=500, seed=0, dtype=torch.float64).cuda()
    gpu.load_state_dict(cpu.state_dict())
    gpu.mode = mode
    x = torch.randn(16, 300, dtype=torch.float64)
    xg = x.cuda().requires_grad_()
    y = gpu(xg)
    y.square().sum().backward()
    x.requires_grad_()
    ref = cpu(x)
    ref.square().sum().backward()
    torch.testing.assert_close(y.cpu(), ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(xg.grad.cpu(), x.grad, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(gpu.values.grad.cpu(), cpu.values.grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("mode", ["dense", "fast", "factor", "auto"])
def test_conv_modes_on_cuda_match_cpu(mode):
    cpu = DCTpSConv2d(64, 128, 3, padding=1, nnz=400, seed=0, dtype=torch.float64)
    with torch.no_grad():
        cpu.values.normal_()
    gpu = DCTpSConv2d(64, 128, 3, padding=1, nnz=400, seed=0, dtype=torch.float64).cuda()
    gpu.load_state_dict(cpu.state_dict())
    gpu.mode = mode
    x = torch.randn(4, 64, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), atol=1e-9, rtol=1e-9)


def test_resnet18_train_step_and_checkpoint_on_cuda(tmp_path, monkeypatch):
    # cuDNN convs default to TF32 (10-bit mantissa): on the H200 that alone gave 7.7e-4 relative
    # differences to the CPU; compare in full float32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = dctps.sparsify(build("resnet18"), 0.001).cuda()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    dctps.save(model, tmp_path / "m.dctps")
    back = dctps.load(tmp_path / "m.dctps", map_location="cpu")
    model.eval()
    back.eval()
    torch.testing.assert_close(back(x.cpu()), model(x).cpu(), atol=1e-4, rtol=1e-4)


def test_batched_rebuild_on_cuda_matches_cpu_and_never_syncs():
    """The batched rebuild (what ``dctps train`` runs on CUDA) in float64: outputs and every
    gradient equal the CPU's per-layer rebuild, and a step makes no host-device synchronisation
    (which would stall the launch queue it exists to shorten)."""
    import copy

    torch.manual_seed(0)
    cpu = dctps.sparsify(build("resnet18"), 0.01, seed=0).double()
    with torch.no_grad():
        for m in cpu.modules():
            if hasattr(m, "values"):
                m.values.normal_()
    gpu = copy.deepcopy(cpu).cuda()
    handle = dctps.batch_rebuild(gpu)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    cpu(x).square().sum().backward()
    gpu(x.cuda()).square().sum().backward()  # first call builds the plan
    gpu.zero_grad(set_to_none=True)
    xg = x.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = gpu(xg)
        out.square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert handle._plans
    torch.testing.assert_close(out.cpu(), cpu(x), atol=1e-9, rtol=1e-9)
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-9, rtol=1e-9, msg=name)


def test_torch_compile_of_a_fresh_model_on_cuda_matches_eager():
    """Compiled before any forward: D is built by the move to CUDA, not traced into the graph
    (torch 2.11's Inductor crashed on the traced construction: a CPU tensor in a Triton
    kernel), and the whole forward is one graph."""
    torch.manual_seed(0)
    # float64: no TF32, whose convolutions differed by 4e-4 between cuDNN and Inductor (H100)
    model = dctps.sparsify(build("lenet5"), 0.05, seed=0).cuda().double()
    layers = [m for m in model.modules() if isinstance(m, (DCTpSConv2d, DCTpSLinear))]
    assert layers and all(m.basis_built for m in layers)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._inductor.compile(gm, example_inputs)

    x = torch.randn(4, 3, 32, 32, device="cuda", dtype=torch.float64)
    out = torch.compile(model, backend=backend)(x)
    out.square().sum().backward()
    grads = [m.values.grad.clone() for m in layers]
    model.zero_grad()
    ref = model(x)
    ref.square().sum().backward()
    assert len(graphs) == 1
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-9)
    for g, m in zip(grads, layers, strict=True):
        torch.testing.assert_close(g, m.values.grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("per_channel", [False, True])
def test_cuda_graph_replay_of_a_layer_matches_eager(per_channel):
    """A CUDA-graph replay (as ``dctps bench conv`` times one) after an in-place parameter update
    gives eager's outputs and gradients: the captured rebuild reads the parameters' memory."""
    from dctps.bench import cuda_graph

    alpha = "channel" if per_channel else "layer"
    kw = dict(nnz=300, seed=0, dtype=torch.float64, device="cuda", mode="dense", alpha=alpha)
    lay = DCTpSConv2d(16, 32, 3, padding=1, **kw)
    ref = DCTpSConv2d(16, 32, 3, padding=1, **kw)
    x = torch.randn(4, 16, 8, 8, dtype=torch.float64, device="cuda", requires_grad=True)
    out = {}

    def step():
        lay.zero_grad(set_to_none=True)
        x.grad = None
        out["y"] = y = lay(x)
        y.square().sum().backward()

    replay = cuda_graph(step)
    with torch.no_grad():  # in place, as an optimizer step: the graph reads the same memory
        lay.values.normal_()
        lay.alpha.mul_(1.7)
    replay()
    ref.load_state_dict(lay.state_dict())
    xr = x.detach().clone().requires_grad_()
    yr = ref(xr)
    yr.square().sum().backward()
    torch.testing.assert_close(out["y"], yr, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lay.values.grad, ref.values.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(lay.alpha.grad, ref.alpha.grad, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-10, rtol=1e-10)


_CAPTURE_SCRIPT = r"""
import torch
from dctps import layers, triton_rebuild as tr
from dctps.bench import cuda_graph
from dctps.layers import DCTpSConv2d

calls = []
real = tr.rebuild
tr.rebuild = lambda *a: calls.append(torch.cuda.is_current_stream_capturing()) or real(*a)
for alpha in ("layer", "channel"):
    kw = dict(nnz=300, seed=0, device="cuda", mode="dense", alpha=alpha)
    lay = DCTpSConv2d(16, 32, 3, padding=1, **kw)
    x = torch.randn(8, 16, 8, 8, device="cuda")
    out = {}

    def step():
        lay.zero_grad(set_to_none=True)
        out["y"] = y = lay(x)
        y.square().sum().backward()

    calls.clear()
    replay = cuda_graph(step)  # 3 eager warm-up calls, then the capture
    assert calls == [True], calls  # compiled by the first eager call, launched in capture only
    assert lay.__dict__[layers.KERNEL_STATE].warm
    g = torch.Generator().manual_seed(1)
    new = torch.sort(torch.randperm(32 * 16 * 9, generator=g)[:300]).values.cuda()
    with torch.no_grad():  # an optimizer step and a RigL support change, in place
        lay.values.normal_()
        lay.alpha.mul_(1.7)
        lay.indices.copy_(new)
    replay()
    ref = DCTpSConv2d(16, 32, 3, padding=1, **kw)
    ref.load_state_dict(lay.state_dict())
    yr = ref(x)
    yr.square().sum().backward()
    torch.testing.assert_close(out["y"], yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lay.values.grad, ref.values.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(lay.alpha.grad, ref.alpha.grad, rtol=1e-5, atol=1e-3)
print("ok")
"""


def test_a_cuda_graph_capture_takes_the_kernels_compiled_by_eager_calls(tmp_path):
    """In a fresh process (no kernel compiled yet): the first eager call compiles and loads the
    Triton rebuild (eager calls take torch's operators), the capture launches it, and a replay
    follows parameters and a support changed in place (RigL's ``indices.copy_``): the rows'
    support ranges are searched in the graph."""
    import os
    import subprocess
    import sys

    from dctps import triton_rebuild

    if not triton_rebuild.available():
        pytest.skip("Triton is not installed")
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton"))  # compiled afresh
    done = subprocess.run([sys.executable, "-c", _CAPTURE_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_scalar_d_alpha_of_the_kernels_is_bitwise_the_same_in_many_runs():
    """The last program to finish adds the rows' partial sums in row order: on a GPU, where
    programs run at once and finish in any order, 50 backward launches over 4096 rows must give
    the same bits (a race in the counter or the partials' visibility would not)."""
    from dctps import triton_rebuild as tr

    if not tr.available():
        pytest.skip("Triton is not installed")
    g = torch.Generator(device="cuda").manual_seed(0)
    d = torch.randn(4096, 300, device="cuda", generator=g)
    idx = torch.sort(torch.randperm(4096 * 300, device="cuda", generator=g)[:5000]).values
    vals = torch.randn(5000, device="cuda", generator=g, requires_grad=True)
    alpha = torch.tensor(1.3, device="cuda", requires_grad=True)
    w = tr.rebuild(d, alpha, idx, vals, tr.workspace())
    up = torch.randn(w.shape, device="cuda", generator=g)
    first = torch.autograd.grad(w, (alpha, vals), up, retain_graph=True)
    for _ in range(50):
        again = torch.autograd.grad(w, (alpha, vals), up, retain_graph=True)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    exact = (up.double().view(4096, -1) * d.double()).sum()
    assert abs(first[0].double().item() - exact.item()) <= 1e-4 * exact.abs().item() + 1e-3
