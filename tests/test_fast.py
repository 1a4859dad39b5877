"""The fast DCTpS paths (dctps.fast): exact agreement with the materialised W = alpha*D + S in
float64 (outputs and every gradient), no dense D/W in fast mode, mode='auto', torch.compile."""

import json

import pytest
import torch
from conftest import COMPILE_NEEDS_PLAIN_TMPDIR
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dctps import DCTpSConv2d, DctpsError, DCTpSLinear, set_mode, sparsify
from dctps import fast as fastmod

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

F64 = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-10}


def _randomise(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.values.copy_(torch.randn(layer.nnz, generator=g, dtype=layer.values.dtype))
        layer.alpha.fill_(0.75)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=layer.bias.dtype))
    return layer


def _run(layer, x, path):
    """Output and gradients (x, alpha, values, bias) of ``layer`` on ``x`` through ``path``."""
    layer.zero_grad(set_to_none=True)
    xi = x.detach().clone().requires_grad_(True)
    y = getattr(layer, layer._PATHS[path])(xi)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    (y * gy).sum().backward()
    dvalues = layer.values.grad
    if dvalues is None and layer.nnz == 0:  # no support: nothing to differentiate
        dvalues = torch.zeros_like(layer.values)
    grads = [xi.grad, layer.alpha.grad, dvalues]
    if layer.bias is not None:
        grads.append(layer.bias.grad)
    return [y.detach()] + [g.clone() for g in grads]


def _assert_paths_equal(layer, x, paths):
    ref = _run(layer, x, "dense")
    names = ["output", "dx", "dalpha", "dvalues", "dbias"]
    for path in paths:
        got = _run(layer, x, path)
        for name, a, b in zip(names, got, ref, strict=False):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, p=path, n=name: f"{p} {n}: {m}")


@pytest.fixture(params=["auto", "csr", "gather"])
def sparse_backend(request):
    old = fastmod._BACKEND["sparse"]
    fastmod._BACKEND["sparse"] = request.param
    yield request.param
    fastmod._BACKEND["sparse"] = old


@pytest.mark.parametrize(
    "inp,out,nnz,bias,lead",
    [(16, 16, 20, True, (5,)), (7, 12, 30, True, (3, 4)), (12, 7, 30, False, (6,)),
     (33, 5, 40, True, (4,)), (5, 33, 1, True, (4,)), (64, 9, 0, True, (2,)),
     (9, 64, 200, False, (3,)), (31, 31, 961, True, (2,)), (1, 6, 3, True, (3,))],
)  # fmt: skip
def test_fast_linear_equals_materialised(inp, out, nnz, bias, lead, sparse_backend):
    layer = _randomise(DCTpSLinear(inp, out, nnz, bias=bias, seed=3, dtype=F64))
    x = torch.randn(*lead, inp, dtype=F64)
    _assert_paths_equal(layer, x, ["fast"])


CONVS = [
    # cin, cout, k, stride, padding, dilation, groups, bias, H, W
    (3, 8, 3, 1, 1, 1, 1, True, 9, 10),
    (4, 6, 5, 2, 2, 1, 1, False, 11, 9),
    (16, 4, 1, 1, 0, 1, 1, True, 5, 6),  # fan > out
    (2, 40, 3, 1, 0, 1, 1, True, 8, 8),  # out > fan: zero padded transform
    (6, 9, 3, 1, 1, 2, 3, True, 9, 10),  # grouped, dilated
    (12, 12, 3, 1, 1, 1, 12, False, 7, 7),  # depthwise
    (8, 16, 3, 2, 1, 1, 8, True, 8, 8),  # depthwise multiplier 2, strided
    (4, 4, 3, 1, "same", 2, 1, True, 7, 9),
    (4, 6, (2, 3), 1, "same", (1, 2), 2, True, 7, 8),  # asymmetric 'same' padding
    (4, 6, (2, 3), (2, 1), (0, 1), (1, 2), 2, False, 9, 7),
    (5, 7, 3, 3, "valid", 1, 1, True, 10, 11),
]


@pytest.mark.parametrize("cfg", CONVS, ids=[str(i) for i in range(len(CONVS))])
@pytest.mark.parametrize("nnz", [0, 1, 17])
def test_conv_paths_equal_materialised(cfg, nnz):
    cin, cout, k, s, p, d, g, bias, h, w = cfg
    layer = DCTpSConv2d(cin, cout, k, s, p, d, g, bias, nnz=nnz, seed=2, dtype=F64)
    _randomise(layer)
    x = torch.randn(3, cin, h, w, dtype=F64)
    _assert_paths_equal(layer, x, ["fast", "factor"])


def test_conv_fast_unbatched_input():
    layer = _randomise(DCTpSConv2d(3, 5, 3, padding=1, nnz=9, seed=0, dtype=F64))
    x = torch.randn(3, 6, 6, dtype=F64)
    ref = layer._dense_forward(x)
    torch.testing.assert_close(layer._fast_forward(x), ref, **TOL)
    torch.testing.assert_close(layer._factor_forward(x), ref, **TOL)


def test_conv_fast_float32_close():
    layer = _randomise(DCTpSConv2d(16, 32, 3, padding=1, nnz=50, seed=0))
    x = torch.randn(2, 16, 8, 8)
    ref = layer._dense_forward(x)
    for path in ("fast", "factor"):
        torch.testing.assert_close(getattr(layer, layer._PATHS[path])(x), ref, atol=1e-4, rtol=1e-4)


class _NoBigTensors(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("inp,out", [(300, 256), (256, 300), (384, 384)])
def test_fast_linear_never_builds_in_x_out(inp, out):
    layer = DCTpSLinear(inp, out, nnz=100, seed=0, mode="fast")
    assert not layer.basis_built  # D is lazy
    x = torch.randn(8, inp, requires_grad=True)
    with _NoBigTensors() as mode:
        layer(x).square().sum().backward()
    assert not layer.basis_built
    assert mode.largest < inp * out, f"a tensor of {mode.largest} >= {inp * out} elements appeared"
    assert layer.values.grad is not None and layer.alpha.grad is not None
    # the dense path does build D (and W): the check above is meaningful
    layer.mode = "dense"
    with _NoBigTensors() as mode:
        layer(x).sum().backward()
    assert layer.basis_built and mode.largest >= inp * out
    layer.mode = "fast"
    assert not layer.basis_built  # switching to fast frees D


@pytest.mark.parametrize("path", ["fast", "factor"])
def test_conv_fast_paths_build_no_basis(path):
    layer = DCTpSConv2d(8, 16, 3, padding=1, nnz=30, seed=0, mode=path)
    layer(torch.randn(2, 8, 6, 6, requires_grad=True)).sum().backward()
    assert not layer.basis_built
    assert layer.values.grad is not None


def test_lazy_basis_follows_to_and_dense_weight():
    layer = DCTpSLinear(6, 4, nnz=3, seed=0)
    assert not layer.basis_built
    w = layer.dense_weight()
    assert layer.basis_built and w.dtype == torch.float32
    layer.to(F64)
    assert layer.D.dtype == F64 and layer.dense_weight().dtype == F64
    assert "D" not in layer.state_dict() and "_D" not in layer.state_dict()


def test_mode_validation_and_set_mode():
    with pytest.raises(DctpsError, match="mode must be one of"):
        DCTpSLinear(4, 4, 2, mode="fastest")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    model(torch.zeros(1, 3, 5, 5))
    sparsify(model, 0.5)
    set_mode(model, "factor")
    assert model[0].mode == "factor" and model[2].mode == "factor"
    assert model[2]._path(torch.zeros(1, 36)) == "fast"  # Linear: factor means fast
    with pytest.raises(DctpsError):
        set_mode(model, "sparse")


def test_auto_matches_other_modes_and_leaves_grads_alone():
    fastmod.clear_auto_cache()
    torch.manual_seed(0)
    lin = _randomise(DCTpSLinear(512, 512, nnz=300, seed=0, dtype=F64))
    conv = _randomise(DCTpSConv2d(16, 16, 3, padding=1, nnz=40, seed=0, dtype=F64))
    for layer, x in ((lin, torch.randn(16, 512, dtype=F64)),
                     (conv, torch.randn(2, 16, 4, 4, dtype=F64))):  # fmt: skip
        assert len(fastmod.candidates(layer)) > 1  # auto really measures something
        ref = _run(layer, x, "dense")
        layer.mode = "auto"
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = layer(xi)  # first call: micro-benchmark, then the chosen path
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
        (y * gy).sum().backward()
        got = [y.detach(), xi.grad, layer.alpha.grad, layer.values.grad, layer.bias.grad]
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, **TOL)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), ref[0], **TOL)
    cache = fastmod.auto_cache()
    assert len(cache) == 4  # (linear, conv) x (grad, no grad)
    for path, times in cache.values():
        assert path in ("dense", "fast", "factor") and set(times) >= {"dense"}


def test_auto_cost_model_skips_hopeless_layers():
    depthwise = DCTpSConv2d(32, 32, 3, padding=1, groups=32, nnz=10, seed=0)
    assert fastmod.candidates(depthwise) == ["dense"]
    assert fastmod.candidates(DCTpSLinear(512, 10, nnz=10)) == ["dense"]
    assert "factor" not in fastmod.candidates(DCTpSConv2d(64, 128, 1, nnz=10))


@COMPILE_NEEDS_PLAIN_TMPDIR
def test_compile_with_auto_and_fast_modes_uses_dense_path():
    torch.manual_seed(0)
    model = nn.Sequential(
        DCTpSConv2d(3, 8, 3, padding=1, nnz=30, seed=0),
        nn.ReLU(),
        nn.Flatten(),
        DCTpSLinear(8 * 36, 5, nnz=40, seed=1),
    )
    for m in (model[0], model[3]):
        _randomise(m)
    set_mode(model, "auto")
    x = torch.randn(2, 3, 6, 6)
    eager = model(x)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), eager, atol=1e-5, rtol=1e-5)
    set_mode(model, "fast")
    torch.testing.assert_close(model(x), eager, atol=1e-5, rtol=1e-5)


def test_bench_timeit_times_back_to_back_calls_per_synchronisation():
    from dctps.bench import timeit
    from dctps.errors import DctpsError

    counts = {"a": 0}

    def fn():
        counts["a"] += 1

    t = timeit({"a": fn}, reps=3, device=torch.device("cpu"), warmup=2, calls=4)
    assert counts["a"] == 2 + 3 * 4
    assert 0 < t["a"].best <= t["a"].median
    for calls, reps in ((0, 1), (1, 0)):  # reps=0 was a bare ValueError from min()
        with pytest.raises(DctpsError, match=f"got calls={calls}, reps={reps}"):
            timeit({"a": fn}, reps=reps, device=torch.device("cpu"), calls=calls)


def test_bench_json_target_is_checked_before_the_run(tmp_path, capsys, monkeypatch):
    """A bad --json path crashed with a traceback after the whole benchmark, losing its rows."""
    from dctps import bench

    ran = []
    monkeypatch.setattr(bench, "run", lambda *a, **k: ran.append(1) or {"ckpt": [{"x": 1}]})
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["ckpt", "--json", str(tmp_path / "file.txt" / "rows.json")])
    assert exit_.value.code == 2 and ran == []
    assert "cannot write benchmark rows" in capsys.readouterr().err
    bench.main(["ckpt", "--json", str(tmp_path / "new" / "rows.json")])
    assert json.loads((tmp_path / "new" / "rows.json").read_text()) == {"ckpt": [{"x": 1}]}


def test_bench_on_a_numbered_gpu_selects_it_and_refuses_one_that_does_not_exist(monkeypatch):
    """``--device cuda:N``: the peak statistics, synchronisations and capture streams act on the
    current device, so it is made current first (cuda:0 was measured instead); an index past
    the machine's devices is refused, naming the valid ones."""
    from dctps import bench

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setitem(bench._BENCHES, "ckpt", lambda dev, quick, echo: [dev])
    with pytest.raises(DctpsError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\) "
                       r"\(cuda:0..cuda:1\)"):  # fmt: skip
        bench.run("ckpt", device="cuda:2", echo=lambda *a: None)
    assert chosen == []
    assert bench.run("ckpt", device="cuda:1", echo=lambda *a: None) == {
        "ckpt": [torch.device("cuda:1")]
    }
    assert chosen == [torch.device("cuda:1")]
    for bad in ("cuda:x", "cuda:-1"):  # torch.device's own RuntimeError was a traceback
        with pytest.raises(DctpsError, match=rf"--device must be .*got '{bad}'"):
            bench.run("ckpt", device=bad, echo=lambda *a: None)


def test_bench_memory_child_resets_the_peak_and_reports_growth():
    """The import of torch left a high-water mark above a small step's peak, so ru_maxrss growth
    once read 0.0 MB for the fast layer; the peak is now reset before the step (Linux)."""
    import json
    import subprocess
    import sys

    # a fresh process, as the benchmark runs it (in this one, freed memory would be reused)
    cmd = [sys.executable, "-m", "dctps.bench", "_memory_child", "dense", "cpu", "4", "512", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if sys.platform.startswith("linux"):
        assert r["how"] == "VmHWM"
        assert r["bytes"] >= 3 * 4 * 512 * 512  # weight, gradient and momentum at least
        assert r["total"] >= r["bytes"] + 50 * 2**20  # the whole process: torch's own memory too


def test_bench_memory_refuses_implausible_readings(monkeypatch):
    import json
    import subprocess

    from dctps import bench
    from dctps.errors import DctpsError

    def fake_run(cmd, **kw):
        reading = {"variant": cmd[4], "bytes": 118 * 2**20 if cmd[4] == "dense" else 0,
                   "D_built": False, "how": "ru_maxrss"}  # fmt: skip
        return subprocess.CompletedProcess(cmd, 0, json.dumps(reading) + "\n", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    with pytest.raises(DctpsError, match=r"implausible readings .*dense 118\.0 MB .* 768\.0 MB"):
        bench.bench_memory(torch.device("cpu"), quick=False, echo=lambda s: None)


def test_bench_memory_reads_maxrss_per_platform_and_refuses_where_it_cannot(monkeypatch):
    """macOS reports ru_maxrss in bytes, Linux in kilobytes (the benchmark multiplied by 1024
    everywhere); Windows has neither /proc nor `resource`, and the children failed with a
    flattened traceback: refused up front, in one line."""
    import resource
    import sys

    from dctps import bench
    from dctps.errors import DctpsError

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    monkeypatch.setattr(sys, "platform", "darwin")
    on_mac = bench._maxrss_bytes()
    monkeypatch.setattr(sys, "platform", "linux")
    on_linux = bench._maxrss_bytes()
    assert kb <= on_mac < 2 * kb and on_linux >= 1024 * kb
    monkeypatch.setitem(sys.modules, "resource", None)
    monkeypatch.setattr(bench, "_proc_status_bytes", lambda key: None)
    assert bench._maxrss_bytes() is None
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("a child ran"))
    with pytest.raises(DctpsError, match=r"cannot read a process's peak memory on this system"):
        bench.bench_memory(torch.device("cpu"), quick=False, echo=lambda s: None)


def test_bench_conv_shapes_time_each_model_with_its_own_budget():
    """A VGG19 conv with a ResNet18 conv's geometry was timed once, with ResNet18's nnz."""
    from dctps.bench import conv_shapes
    from dctps.layers import DCTpSConv2d
    from dctps.models import build
    from dctps.sparsify import sparsify

    rows = conv_shapes(density=0.001)
    for name in ("resnet18", "vgg19"):
        model = sparsify(build(name, num_classes=10), 0.001, seed=0)
        first: dict[tuple, int] = {}  # geometry -> the model's first such layer's nnz
        for m in model.modules():
            if isinstance(m, DCTpSConv2d):
                geometry = (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
                first.setdefault(geometry, m.nnz)
        listed = [r for r in rows if r[0] == name]
        # every conv geometry of the model (at each input size), with the model's own budget
        assert {r[1:5] for r in listed} == set(first)
        assert all(r[8] == first[r[1:5]] for r in listed)
    assert len(rows) == len({(r[0], *r[1:8]) for r in rows})  # no geometry twice per model
    vgg_64 = [r for r in rows if r[0] == "vgg19" and r[1:3] == (64, 64)]
    assert vgg_64 and all(r[8] != 532 for r in vgg_64)  # not ResNet18's budget


def test_torchs_csr_notes_are_silenced_for_our_calls_only(tmp_path):
    """A notebook review: `import dctps` put two unqualified "ignore" filters at the front of
    the process's warning filters, and a user's own `torch.sparse_csr_tensor` then never
    warned. They now match only calls made from dctps's modules. Each case in a fresh
    process: torch warns once per process."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys, warnings, torch
        import dctps
        from dctps.layers import DCTpSLinear
        with warnings.catch_warnings(record=True) as w:
            if sys.argv[1] == "user":
                torch.sparse_csr_tensor(torch.tensor([0, 1]), torch.tensor([0]),
                                        torch.tensor([1.0]), (1, 1))
            else:  # the fast Linear's CSR product (nnz >= N/4)
                layer = DCTpSLinear(512, 512, nnz=2000, mode="fast")
                layer(torch.randn(4, 512)).sum().backward()
        print(sum("Sparse CSR tensor support" in str(x.message) for x in w))
        """
    )
    for who, want in (("user", "1"), ("dctps", "0")):
        out = subprocess.run([sys.executable, "-c", code, who], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == want, (who, out.stdout, out.stderr)
