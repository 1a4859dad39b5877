"""`dctps bench` (issue 11's benchmarks) measures what it says: the quick runs of the
benchmarks whose numbers are not times, checked against independent counts. Their targets are
the benchmarks' own business (benchmarks/RESULTS.md); times are never asserted here."""

from __future__ import annotations

import argparse
import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dctps import bench
from dctps.models import build
from dctps.pruning import names as pruning_names


def test_ckpt_bytes_grow_by_a_value_and_an_index_per_non_zero():
    """ResNet50's sparse checkpoint stores 4 + 4 bytes per non-zero (float32 value, int32
    index) over a fixed rest (BatchNorm, biases, alphas, header); the dense reference is
    torch.save of every float32 parameter and buffer."""
    lines: list[str] = []
    rows = bench.run("ckpt", quick=True, echo=lines.append)["ckpt"]
    assert [r["density"] for r in rows] == [0.01, 0.001, 0.0001]
    weights = sum(
        m.weight.numel() for m in build("resnet50").modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )  # fmt: skip
    sd = build("resnet50").state_dict()
    dense_floor = sum(t.numel() * t.element_size() for t in sd.values())
    for r in rows:
        assert math.isclose(r["nnz"], r["density"] * weights, rel_tol=0.01)
        assert dense_floor <= r["dense_bytes"] <= dense_floor * 1.01
        assert r["ratio"] == r["dense_bytes"] / r["bytes"]
    rest = [r["bytes"] - 8 * r["nnz"] for r in rows]
    assert max(rest) - min(rest) < 0.02 * min(rest)  # the same rest at every density
    assert any(f"{rows[1]['ratio']:.1f}x" in line for line in lines)  # what was printed


def test_memory_readings_are_of_the_step_and_the_fast_path_builds_no_dense_matrix():
    """The dense step holds its weight, gradient and momentum (3 x 8192^2 float32): a reading
    below that would be a failed measurement, which the benchmark refuses; the fast layer's
    step never built its dense DCT matrix, so it holds far less."""
    (row,) = bench.run("memory", quick=True, echo=lambda s: None, threads=1)["memory"]
    assert row["dense_bytes"] >= 3 * 4 * 8192**2
    assert row["D_built"] is False
    assert 0 < row["fast_bytes"] < 4 * 8192**2  # not even one dense float32 matrix


def test_linear_rows_are_the_issues_sizes_with_no_dense_matrix_built():
    rows = bench.run("linear", quick=True, echo=lambda s: None, threads=1)["linear"]
    assert [(r["size"], r["nnz"]) for r in rows] == [
        (n, round(0.001 * n * n)) for n in (1024, 4096, 8192)
    ]
    assert not any(r["D_built"] for r in rows)
    assert all(r["ratio"] == r["fast_s"] / r["dense_s"] for r in rows)


def test_threads_are_the_callers_again_after_a_run():
    before = torch.get_num_threads()
    bench.run("ckpt", quick=True, echo=lambda s: None, threads=before + 1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("pruning_time.py", ["--methods", "bogus", "--quick"],
         "error: unknown pruning method 'bogus'. Valid: " + ", ".join(pruning_names())),
        ("pruning_time.py", ["--device", "tpu"],
         "error: --device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'"),
        ("train_throughput.py", ["--device", "cuda:x"],
         "error: --device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'cuda:x'"),
    ],
)  # fmt: skip
def test_benchmark_scripts_refuse_a_bad_device_or_method_in_one_line(script, args, message):
    """They ended in tracebacks (an assertion in torch's CUDA init, a generator's RuntimeError);
    the message is `dctps bench`'s own (:func:`dctps.bench.bench_device`)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    p = subprocess.run([sys.executable, str(root / "benchmarks" / script), *args],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr == message + "\n"


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("step_cudagraph.py", ["--reps", "0"], "argument --reps: must be at least 1, got 0"),
        ("profile_layer.py", ["--calls", "-3"], "argument --calls: must be at least 1, got -3"),
        ("rebuild_kernels.py", ["--programs", "512", "0"],
         "argument --programs: must be at least 1, got 0"),
        ("train_throughput.py", ["--repeats", "two"],
         "argument --repeats: invalid positive_int value: 'two'"),
    ],
)  # fmt: skip
def test_benchmark_scripts_refuse_a_count_below_one_as_a_usage_error(script, args, message):
    """`step_cudagraph.py --reps 0` printed inf/nan ratios (a best of no timings), `step_ops.py
    --steps 0` divided by zero: every count goes through :func:`dctps.bench.positive_int`, and
    argparse refuses it before anything is built (exit status 2, the option and value named)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    p = subprocess.run([sys.executable, str(root / "benchmarks" / script), *args],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines()[-1] == f"{script}: error: {message}"


def test_positive_int_takes_counts_from_one():
    assert bench.positive_int("1") == 1 and bench.positive_int("200") == 200
    for bad in ("0", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"at least 1, got {bad}$"):
            bench.positive_int(bad)
    with pytest.raises(ValueError):
        bench.positive_int("1.5")


def test_every_benchmark_option_has_help_text():
    """`--help` of every script says what each option is (most printed a bare `--reps REPS`)."""
    root = Path(__file__).resolve().parents[1]
    files = [*sorted((root / "benchmarks").glob("*.py")), root / "src" / "dctps" / "bench.py"]
    bare = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"
                    and not any(k.arg == "help" for k in node.keywords)):  # fmt: skip
                bare.append(f"{path.name}:{node.lineno}")
    assert len(files) > 10 and not bare, bare


def test_host_overhead_checks_every_path_against_the_layer_before_timing():
    """`benchmarks/host_overhead.py` times only paths that give the layer's output and
    gradients: its check passes for the real paths and stops on one that is off by 1e-6."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "host_overhead", root / "benchmarks" / "host_overhead.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from dctps.layers import DCTpSConv2d

    layer = DCTpSConv2d(3, 5, 3, padding=1, nnz=30, seed=0, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    fns = mod.paths(layer, torch.nn.Conv2d(3, 5, 3, padding=1), x, None)
    assert set(fns) == {"nn.Conv2d", "layer", "layer, fused", "ops by hand"}
    mod.check_paths(fns, layer)
    fns["off"] = lambda: layer(x) * (1 + 1e-6)
    with pytest.raises(SystemExit, match="path 'off' disagrees"):
        mod.check_paths(fns, layer)


@pytest.mark.skipif(torch.cuda.is_available(), reason="picks CUDA where there is one")
def test_bench_takes_auto_as_the_other_commands_do():
    """A consistency review: `bench --device auto` was refused, where train, sweep and figure
    take it."""
    from dctps.bench import bench_device

    assert bench_device("auto") == torch.device("cpu")
