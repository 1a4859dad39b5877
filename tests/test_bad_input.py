"""Bad input at every entry point, table-driven.

Every case is one call of the library (``dctps.sparsify``, ``dctps.prune``, ``dctps.budgets``,
``dctps.load``, configs, ``fit``, sweeps, the store), one ``dctps`` command in process (typer's
``CliRunner``: the command must raise :class:`DctpsError`, which ``dctps.cli.main`` prints as one
line), or one real ``python -m dctps.cli`` process (exit status != 0, exactly one line on stderr,
no traceback). Each message must name the bad value (``needle``, a regex) and fit on one line, and
no case may change a finished run, its checkpoints or its store row (checked after every case).
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import dctps
import dctps.allocation
import dctps.data
import dctps.models
import dctps.results.plots
import dctps.results.sweep
from dctps.cli import app
from dctps.data import augment
from dctps.errors import DctpsError
from dctps.pruning import prune
from dctps.results import Store, plots
from dctps.results.sweep import expand_grid, run_sweep
from dctps.train import fit
from dctps.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SparsityConfig,
    load_config,
    save_config,
)

runner = CliRunner()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def batch(x_features: int = 4, label: int = 1) -> list:
    return [(torch.randn(2, x_features), torch.tensor([0, label]))]


def cfg(root: Any, **kw) -> RunConfig:
    return RunConfig(
        model=ModelConfig(kw.pop("model", "lenet5")),
        data=DataConfig(kw.pop("dataset", "cifar10"), root=str(root)),
        sparsity=SparsityConfig("dctps", kw.pop("density", 0.05)),
        optim=OptimConfig(epochs=1, batch_size=32),
        seed=kw.pop("seed", 0),
        device="cpu",
    )


def _huge(optim: dict[str, Any], **sparsity: Any) -> RunConfig:
    """A run config whose optimiser or alpha values overflow float32 training (a traceback from
    the optimiser's step, at every resume, before they were refused)."""
    return RunConfig.from_dict({
        "model": {"name": "lenet5"}, "data": {"dataset": "cifar10"},
        "sparsity": {"method": "dctps", "density": 0.1, **sparsity},
        "optim": {"epochs": 3, **optim},
    }).resolve()  # fmt: skip


YAMLS = {
    "bad.yaml": "model: {name: lenet5\nseed: 0\n",
    "twice.yaml": "model: {name: lenet5}\nseed: 0\nmodel:\n  name: vgg19\n",
    "grid_twice.yaml": "methods: [dctps]\ndensities: [0.1]\nbase: {seed: 1, seed: 2}\n",
    "run_unknown.yaml": "model: {name: lenet5}\nsparsity: {method: dctps, density: 0.1, foo: 1}\n",
    "run_list.yaml": "- 1\n- 2\n",
    "run_seed_float.yaml": "seed: 1.5\n",
    "unknown_top.yaml": "models: [lenet5]\nmodles: [vgg19]\n",
    "unknown_base.yaml": "base: {optim: {epoch: 3}}\n",
    "method_key.yaml": "methods: [{method: dctps, allocaton: epl}]\ndensities: [0.1]\n",
    "neg_density.yaml": "methods: [dctps]\ndensities: [-0.1]\n",
    "nan_density.yaml": "methods: [dctps]\ndensities: [.nan]\n",
    "str_density.yaml": "methods: [dctps]\ndensities: [ten]\n",
    "slurm_bad.yaml": "methods: [dctps]\ndensities: [0.1]\nslurm: 5\n",
    "seeds_bad.yaml": "methods: [dctps]\ndensities: [0.1]\nseeds: [a]\n",
    "seeds_huge.yaml": "methods: [dctps]\ndensities: [0.1]\nseeds: 100000000000\n",
    "model_blank.yaml": "model:\n  # name: vgg19\nsparsity: {method: dctps, density: 0.1}\n",
}


@pytest.fixture(scope="module")
def env(fake_cifar10, tmp_path_factory) -> SimpleNamespace:
    """Files for the cases: a finished run to protect, YAMLs, corrupt and foreign files."""
    tmp = tmp_path_factory.mktemp("bad_input")
    y = tmp / "y"
    y.mkdir()
    for name, text in YAMLS.items():
        (y / name).write_text(text)
    file = tmp / "file.txt"  # a regular file where a folder is expected
    file.write_text("not a folder\n")
    notdb = tmp / "notes.txt"  # small: SQLite would silently turn it into a database
    notdb.write_text("my notes")
    # a finished run: no case may touch it
    good = tmp / "good"
    good_cfg = cfg(fake_cifar10)
    r = fit(good_cfg, good, progress=False)
    assert r["status"] == "done"
    save_config(good_cfg, y / "good.yaml")
    grid = {"base": {"data": {"root": str(fake_cifar10)}, "optim": {"epochs": 1, "batch_size": 32},
                     "device": "cpu"},
            "models": ["lenet5"], "methods": ["dctps"], "densities": [0.05]}  # fmt: skip
    (y / "good_grid.yaml").write_text(yaml.safe_dump(grid))
    # another config's run folder holding the good run's checkpoint
    foreign = tmp / "foreign"
    other = cfg(fake_cifar10, seed=7)
    (foreign / "runs" / other.config_hash()).mkdir(parents=True)
    shutil.copy(good / "runs" / r["hash"] / "last.pt",
                foreign / "runs" / other.config_hash() / "last.pt")  # fmt: skip
    # sparse checkpoints: good, truncated, a torch.save file
    ck = dctps.save(dctps.sparsify(dctps.models.build("lenet5"), 0.05), tmp / "lenet.dctps")
    trunc_ck = tmp / "trunc.dctps"
    trunc_ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    torch_file = tmp / "state.pt"
    torch.save(mlp().state_dict(), torch_file)
    # CIFAR-10 with a truncated pickle
    trunc_cifar = tmp / "trunc_cifar"
    shutil.copytree(fake_cifar10, trunc_cifar)
    b3 = trunc_cifar / "cifar-10-batches-py" / "data_batch_3"
    b3.write_bytes(b3.read_bytes()[:1000])
    # Tiny ImageNet whose wnids.txt lists a class without a train folder
    tiny = tmp / "tiny"
    t = tiny / "tiny-imagenet-200"
    (t / "train" / "n02000000" / "images").mkdir(parents=True)
    (t / "wnids.txt").write_text("n02000000\nn01000000\n")
    paths = {
        "data": str(fake_cifar10), "tmp": str(tmp), "y": str(y), "file": str(file),
        "notdb": str(notdb), "good": str(good), "ck": str(ck), "trunc_ck": str(trunc_ck),
        "torch_file": str(torch_file), "trunc_cifar": str(trunc_cifar), "tiny": str(tiny),
    }  # fmt: skip
    return SimpleNamespace(
        **{k: Path(v) for k, v in paths.items()},
        paths=paths,
        good_cfg=good_cfg,
        good_hash=r["hash"],
        other_cfg=other,
    )


def snapshot(env: SimpleNamespace) -> tuple:
    """The finished run as stored: its row, epochs and every file of its folder; the notes."""
    s = Store(env.good)
    files = {p.name: p.read_bytes() for p in (env.good / "runs" / env.good_hash).iterdir()
             if p.name != ".lock"}  # fmt: skip
    return s.get(env.good_hash), s.epochs(env.good_hash), files, env.notdb.read_bytes()


@dataclass(frozen=True)
class Case:
    """``how``: ``lib`` (``what(env)`` raises), ``cli`` (in process) or ``proc`` (subprocess);
    ``what``: a callable (lib) or the command's arguments with ``{placeholders}`` of env.paths."""

    id: str
    how: str
    what: Callable[[SimpleNamespace], Any] | tuple[str, ...]
    needle: str


def L(id: str, needle: str, fn: Callable[[SimpleNamespace], Any]) -> Case:  # noqa: N802
    return Case(id, "lib", fn, needle)


def C(id: str, needle: str, *args: str) -> Case:  # noqa: N802
    return Case(id, "cli", args, needle)


def P(id: str, needle: str, *args: str) -> Case:  # noqa: N802
    return Case(id, "proc", args, needle)


def _rigl(model, optimizer):  # type: ignore[no-untyped-def]
    from dctps.dst import RigL

    return RigL(model, optimizer, 10)


def _rigl_alpha(alpha):  # type: ignore[no-untyped-def]
    from dctps.dst import RigL

    model = dctps.sparsify(mlp(), 0.1)
    return RigL(model, torch.optim.SGD(model.parameters(), lr=0.1), 10, alpha=alpha)


def _stale_optimizer_rigl():  # type: ignore[no-untyped-def]
    model = mlp()
    opt = torch.optim.Adam(model.parameters())  # holds the dense weights sparsify replaces
    return _rigl(dctps.sparsify(model, 0.1), opt)


NAN = float("nan")
TRAIN = ("train", "--model", "lenet5", "--dataset", "cifar10", "--density", "0.05",
         "--epochs", "1", "--batch-size", "32", "--device", "cpu", "-q")  # fmt: skip
TRAIN_AT = (*TRAIN, "--data-root", "{data}", "--out", "{tmp}/out")


def _pruned(e):
    return prune(mlp(), 0.5, "random")


CASES = [
    # ------------------------------------------------------------------ dctps.sparsify
    L("sparsify-density-0", r"density must be in \(0, 1\].*got 0$",
      lambda e: dctps.sparsify(mlp(), 0)),
    L("sparsify-density-negative", r"got -0\.01", lambda e: dctps.sparsify(mlp(), -0.01)),
    L("sparsify-density-above-1", r"got 1\.01", lambda e: dctps.sparsify(mlp(), 1.01)),
    L("sparsify-density-nan", r"got nan", lambda e: dctps.sparsify(mlp(), NAN)),
    L("sparsify-twice", r"Sequential is already sparsified .*sparsify the original dense model",
      lambda e: dctps.sparsify(dctps.sparsify(mlp(), 0.5), 0.5)),
    L("sparsify-density-inf", r"got inf", lambda e: dctps.sparsify(mlp(), math.inf)),
    L("sparsify-density-string", r"got 'ten'", lambda e: dctps.sparsify(mlp(), "ten")),
    L("sparsify-density-bool", r"got True", lambda e: dctps.sparsify(mlp(), True)),
    L("sparsify-density-none", r"got None", lambda e: dctps.sparsify(mlp(), None)),
    L("sparsify-allocation-typo", r"unknown allocation 'elp'\. Did you mean 'epl'\?",
      lambda e: dctps.sparsify(mlp(), 0.1, allocation="elp")),
    L("sparsify-allocation-case", r"Did you mean 'epf'\?",
      lambda e: dctps.sparsify(mlp(), 0.1, allocation="EPF")),
    L("sparsify-empty-model", r"Sequential has no nn\.Linear / nn\.Conv2d",
      lambda e: dctps.sparsify(nn.Sequential(nn.ReLU()), 0.1)),
    L("sparsify-not-a-module", r"needs an nn\.Module, got str",
      lambda e: dctps.sparsify("resnet18", 0.1)),
    L("sparsify-seed-string", r"seed must be an integer or None, got 'x'",
      lambda e: dctps.sparsify(mlp(), 0.1, seed="x")),
    L("sparsify-seed-float", r"seed must be an integer or None, got 1\.5",
      lambda e: dctps.sparsify(mlp(), 0.1, seed=1.5)),
    L("set-mode-dense-model", r"Sequential has no DCTpS layers to set to mode 'fast'",
      lambda e: dctps.set_mode(mlp(), "fast")),
    L("sparsify-root-layer", r"the model is itself a Linear.*nn\.Sequential\(model\)",
      lambda e: dctps.sparsify(nn.Linear(8, 8), 0.5)),
    L("sparsify-seed-2-64", r"seed must be in \[0, 2\*\*63\), got 18446744073709551616",
      lambda e: dctps.sparsify(mlp(), 0.1, seed=2**64)),
    L("sparsify-exclude-int", r"exclude must be module-name globs .*got 3",
      lambda e: dctps.sparsify(mlp(), 0.1, exclude=3)),
    L("sparsify-exclude-everything", r"no nn\.Linear / nn\.Conv2d layers .*after exclusions",
      lambda e: dctps.sparsify(mlp(), 0.1, exclude="*")),
    # ------------------------------------------------------------------ dctps.prune
    L("prune-not-a-module", r"prune needs an nn\.Module, got str",
      lambda e: prune("model", 0.1, "random")),
    L("rigl-not-a-module", r"RigL needs an nn\.Module, got str",
      lambda e: _rigl("model", None)),
    L("rigl-optimizer-a-string", r"optimizer must be a torch\.optim\.Optimizer .*got str",
      lambda e: _rigl(dctps.sparsify(mlp(), 0.1), "adam")),
    L("rigl-optimizer-built-before-sparsify", r"the optimizer does not hold the sparse "
      r"parameters of 0, 2: build it after sparsify/prune", lambda e: _stale_optimizer_rigl()),
    L("rigl-load-state-dict-bad", r"RigL\.load_state_dict needs \{'t': steps so far\}",
      lambda e: _rigl(dctps.sparsify(mlp(), 0.1), None).load_state_dict({"step": 3})),
    L("prune-density-0", r"density must be in .*got 0$", lambda e: prune(mlp(), 0, "random")),
    L("prune-density-nan", r"got nan", lambda e: prune(mlp(), NAN, "random")),
    L("prune-density-string", r"got 'one percent'",
      lambda e: prune(mlp(), "one percent", "random")),
    L("prune-method-typo", r"unknown pruning method 'snp'\. Did you mean 'snip'\?",
      lambda e: prune(mlp(), 0.1, "snp")),
    L("prune-method-case", r"Did you mean 'synflow'\?", lambda e: prune(mlp(), 0.1, "SynFlow")),
    L("prune-needs-data", r"'snip' needs data", lambda e: prune(mlp(), 0.1, "snip")),
    L("prune-wrong-input-shape", r"could not run the model on the batches: .*2x5",
      lambda e: prune(mlp(), 0.1, "snip", batch(x_features=5))),
    L("prune-label-out-of-range", r"could not run the model .*Target 7 is out of bounds",
      lambda e: prune(mlp(), 0.1, "grasp", batch(label=7))),
    L("prune-batch-not-a-pair", r"each batch must be an \(x, y\) pair, got int",
      lambda e: prune(mlp(), 0.1, "snip", [1, 2])),
    L("prune-empty-model", r"no dense Linear/Conv2d weights",
      lambda e: prune(nn.Sequential(nn.ReLU()), 0.1, "random")),
    L("prune-unknown-option", r"'sed'\. Did you mean 'seed'\?",
      lambda e: prune(mlp(), 0.1, "random", sed=1)),
    L("prune-seed-string", r"seed must be an integer or None, got 'x'",
      lambda e: prune(mlp(), 0.1, "random", seed="x")),
    L("prune-keeps-no-weight", r"density 1e-06 keeps round\(1e-06 \* 56\) = 0 weights",
      lambda e: prune(mlp(), 1e-6, "random")),
    L("prune-already-pruned", r"layer '0' is already pruned",
      lambda e: prune(_pruned(e), 0.5, "random")),
    L("prune-allocation-of-score-method", r"allocation='erk' applies only to method 'random'",
      lambda e: prune(mlp(), 0.1, "snip", batch(), allocation="erk")),
    # ------------------------------------------------------------------ dctps.budgets, count
    L("budgets-density-0", r"got 0$", lambda e: dctps.budgets([(8, 4)], 0)),
    L("budgets-density-string", r"got 'half'", lambda e: dctps.budgets([(8, 4)], "half")),
    L("budgets-method-typo", r"unknown allocation 'epfx'\. Did you mean 'epf'\?",
      lambda e: dctps.budgets([(8, 4)], 0.1, "epfx")),
    L("budgets-no-layers", r"at least one layer shape", lambda e: dctps.budgets([], 0.1)),
    L("budgets-shape-of-strings", r"weight shape 0 must be .*got 'ab'",
      lambda e: dctps.budgets(["ab"], 0.1)),
    L("budgets-shape-int", r"weight shape 1 must be .*got 5",
      lambda e: dctps.budgets([(8, 4), 5], 0.1)),
    L("budgets-shape-float", r"got \(2\.5, 4\)", lambda e: dctps.budgets([(2.5, 4)], 0.1)),
    L("budgets-shape-empty", r"got \(\)", lambda e: dctps.budgets([()], 0.1)),
    L("budgets-shape-zero", r"at least one weight, got shapes \[\(0, 4\)\]",
      lambda e: dctps.budgets([(0, 4)], 0.1)),
    L("budgets-shapes-none", r"weight_shapes must be a list .*got None",
      lambda e: dctps.budgets(None, 0.1)),
    L("count-not-a-module", r"count needs an nn\.Module, got str", lambda e: dctps.count("x")),
    L("layer-weights-shape-none", r"layer_weights: shape must be a non-empty tuple .*got None",
      lambda e: dctps.allocation.layer_weights(None, "erk")),
    L("filter-counts-nnz-float", r"filter_counts: nnz must be an integer in \[0, 12\] .*got 1\.5",
      lambda e: dctps.allocation.filter_counts((4, 3), 1.5)),
    L("filter-counts-seed", r"filter_counts: generator must be a CPU torch\.Generator or None, "
      r"got 5 \(for a seed", lambda e: dctps.allocation.filter_counts((4, 3), 2, 5)),
    # ------------------------------------------------------------------ augmentation primitives
    L("hflip-one-image", r"random_hflip: x must be an \(N, C, H, W\) tensor, got a tensor of "
      r"shape \[3, 8, 8\] .*x\[None\]", lambda e: augment.random_hflip(torch.zeros(3, 8, 8))),
    L("crop-size-float", r"random_crop: size must be a positive integer or a pair .*got 8\.0",
      lambda e: augment.random_crop(torch.zeros(2, 3, 8, 8), 8.0, 4)),
    L("crop-padding-negative", r"random_crop: padding must be a non-negative integer, got -1",
      lambda e: augment.random_crop(torch.zeros(2, 3, 8, 8), 8, -1)),
    L("crop-offsets-float", r"crop_with_offsets: offsets must be an integer \(2, 2\) tensor",
      lambda e: augment.crop_with_offsets(torch.zeros(2, 3, 8, 8), 8, 4, torch.zeros(2, 2))),
    L("hflip-mask-length", r"hflip_with_mask: mask must be a \(2,\) tensor, one flag per image",
      lambda e: augment.hflip_with_mask(torch.zeros(2, 3, 8, 8), torch.ones(3))),
    L("normalize-mean-none", r"normalize: mean must be 3 numbers, one per channel of x, got None",
      lambda e: augment.normalize(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, (0.5,) * 3)),
    L("default-augment-none", r"default_augment: info must be a DatasetInfo .*got None",
      lambda e: augment.default_augment(None)),
    # ------------------------------------------------------------------ results.plots helpers
    L("aggregate-empty-row", r"rows\[0\] must be a store row \(Store\.query\(\)\) with model "
      r"and dataset, got \{\}", lambda e: plots.aggregate([{}])),
    L("aggregate-not-rows", r"rows must be a list of store rows .*got None",
      lambda e: plots.aggregate(None)),
    L("default-label-none", r"default_label needs a run config as a dict .*got None",
      lambda e: plots.default_label(None)),
    # ------------------------------------------------------------------ sparse checkpoints
    L("load-truncated", r"trunc\.dctps is truncated or corrupt", lambda e: dctps.load(e.trunc_ck)),
    L("load-torch-save-file", r"state\.pt is not a dctps checkpoint.*torch\.save zip",
      lambda e: dctps.load(e.torch_file)),
    L("load-missing", r"nope\.dctps does not exist", lambda e: dctps.load(e.tmp / "nope.dctps")),
    L("load-other-architecture", r"lenet\.dctps: layer 'features\.0' has weight shape",
      lambda e: dctps.load(e.ck, model=dctps.models.build("vgg19"))),
    L("inspect-text-file", r"file\.txt is not a dctps checkpoint: bad magic",
      lambda e: dctps.inspect(e.file)),
    L("save-unknown-arch", r"unknown architecture \(arch\['name'\]\) 'resnet-18'\. Did you "
      r"mean 'resnet18'\?", lambda e: dctps.save(dctps.sparsify(mlp(), 0.5), e.tmp / "m.dctps",
                                                 arch={"name": "resnet-18"})),
    C("demo-threads-huge", r"--threads 100000 is more than 4x this machine's \d+ CPUs",
      "demo", "--threads", "100000"),
    L("save-under-a-file", r"cannot write checkpoint .*file\.txt/m\.dctps",
      lambda e: dctps.save(dctps.sparsify(mlp(), 0.5), e.file / "m.dctps")),
    L("save-to-a-buffer", r"a checkpoint path must be a str or os\.PathLike, got BytesIO",
      lambda e: dctps.save(dctps.sparsify(mlp(), 0.5), io.BytesIO())),
    L("results-json-to-a-buffer", r"the JSON path must be a file path .*got a BytesIO:",
      lambda e: dctps.results.Store(e.tmp / "buf.db").to_json(io.BytesIO())),
    # ------------------------------------------------------------------ run configs
    L("config-gamma-0", r"optim\.gamma \(--gamma\) must be > 0 .*got 0\.0",
      lambda e: RunConfig(sparsity=SparsityConfig("dctps", 0.01),
                          optim=OptimConfig(recipe="sgd", gamma=0.0)).resolve()),
    L("config-momentum-negative", r"optim\.momentum \(--momentum\) must be in \[0, 1\) .*got -0\.5",
      lambda e: RunConfig(sparsity=SparsityConfig("dctps", 0.01),
                          optim=OptimConfig(recipe="sgd", momentum=-0.5)).resolve()),
    L("layer-index-past-the-end", r"indices must be distinct positions in \[0, 16\)",
      lambda e: dctps.DCTpSLinear(4, 4, nnz=2, indices=torch.tensor([3, 16]))),
    L("layer-offset-seed-not-random", r"offset 'dct' is not random: it takes no offset_seed",
      lambda e: dctps.DCTpSLinear(4, 4, nnz=2, offset="dct", offset_seed=3)),
    L("layer-same-padding-strided", r"padding='same' needs stride 1 .*got stride=\(1, 2\)",
      lambda e: dctps.DCTpSConv2d(3, 4, 3, nnz=5, padding="same", stride=(1, 2))),
    L("rigl-alpha-above-1", r"alpha must be a number in \[0, 1\], got 1\.5",
      lambda e: _rigl_alpha(1.5)),
    L("config-unknown-key", r"unknown key 'optim\.lrr'\. Did you mean 'optim\.lr'\? Valid: optim\.",
      lambda e: RunConfig.from_dict({"optim": {"lrr": 0.1}})),
    L("config-yaml-unknown-key", r"run_unknown\.yaml: unknown key 'sparsity\.foo'",
      lambda e: load_config(e.y / "run_unknown.yaml")),
    L("config-yaml-not-a-mapping", r"run_list\.yaml: top level must be a mapping, got list",
      lambda e: load_config(e.y / "run_list.yaml")),
    L("config-yaml-seed-float", r"seed: expected int, got 1\.5",
      lambda e: load_config(e.y / "run_seed_float.yaml")),
    L("config-yaml-syntax", r"bad\.yaml is not valid YAML: line 2, column 5",
      lambda e: load_config(e.y / "bad.yaml")),
    L("config-yaml-key-twice",
      r"twice\.yaml is not valid YAML: line 3, column 1: key 'model' is given twice \(first on "
      r"line 1\); keep one", lambda e: load_config(e.y / "twice.yaml")),
    L("config-yaml-missing", r"cannot read config .*missing\.yaml",
      lambda e: load_config(e.y / "missing.yaml")),
    L("config-lr-huge", r"optim\.lr \(--lr\) must be at most 1e\+30 \(float32 training overflows",
      lambda e: _huge({"lr": 1e300})),
    L("config-weight-decay-huge", r"weight_decay \(--weight-decay\) must be at most 1e\+30",
      lambda e: _huge({"weight_decay": 1e39})),
    L("config-gamma-huge", r"gamma \(--gamma\) 1e\+20 at 2 milestone\(s\) takes the LR 0\.1 to "
      r"1e\+39, above 1e\+30", lambda e: _huge({"gamma": 1e20, "milestones": [1, 2], "lr": 0.1})),
    L("config-gamma-overflow",
      r"gamma \(--gamma\) 10\.0 at 400 milestone\(s\) takes the LR 0\.1 to inf",
      lambda e: _huge({"gamma": 10.0, "milestones": list(range(1, 401)), "lr": 0.1,
                       "epochs": 401})),  # fmt: skip
    L("config-alpha-init-huge", r"alpha_init \(--alpha-init\) must be at most 1e\+30 .*got 1e\+300",
      lambda e: _huge({}, alpha_init=-1e300)),
    L("config-density-above-1", r"density must be in .*got 1\.5",
      lambda e: cfg(e.data, density=1.5).resolve()),
    L("config-model-typo", r"unknown model 'lenet'\. Did you mean 'lenet5'\?",
      lambda e: cfg(e.data, model="lenet").resolve()),
    # ------------------------------------------------------------------ fit: data and files
    L("fit-not-a-config", r"fit needs a RunConfig, got dict", lambda e: fit({}, e.tmp / "o")),
    L("fit-data-root-missing", r"data root .*nope does not exist",
      lambda e: fit(cfg(e.tmp / "nope"), e.tmp / "o1", progress=False)),
    L("fit-cifar-truncated", r"data_batch_3 .*truncated or corrupt",
      lambda e: fit(cfg(e.trunc_cifar), e.tmp / "o2", progress=False)),
    L("fit-tiny-imagenet-missing-class",
      r"missing class folder .*n01000000/images for wnid 'n01000000' listed in .*wnids\.txt",
      lambda e: fit(cfg(e.tiny, model="resnet18", dataset="tiny_imagenet"), e.tmp / "o3",
                    progress=False)),  # fmt: skip
    L("fit-out-empty", r"out_dir is empty \(''\): it would mean the current folder",
      lambda e: fit(cfg(e.data), "", progress=False)),
    L("save-path-empty", r"the checkpoint path is empty",
      lambda e: dctps.save(dctps.sparsify(nn.Sequential(nn.Linear(4, 4)), 0.5), "")),
    L("load-path-empty", r"the checkpoint path is empty", lambda e: dctps.load(" ")),
    L("run-sweep-out-empty", r"the output folder \(out, --out\) is empty",
      lambda e: run_sweep([], "")),
    L("run-sweep-a-path", r"run_sweep takes a list of RunConfig, got a path \('g\.yaml'\): "
      r"expand a grid file with expand_grid\(load_grid\(path\)\)",
      lambda e: run_sweep("g.yaml", e.tmp / "s")),
    L("run-sweep-a-grid", r"run_sweep takes a list of RunConfig, got a grid",
      lambda e: run_sweep({"models": ["lenet5"]}, e.tmp / "s")),
    L("load-map-location", r"map_location must be a device, got 'gpu': give 'cpu', 'cuda'",
      lambda e: dctps.load(e.ck, map_location="gpu")),
    L("load-model-not-a-module", r"load's model must be an nn\.Module .* got a str",
      lambda e: dctps.load(e.ck, "lenet5")),
    L("loader-info-none", r"Loader: info must be a DatasetInfo .* got NoneType, which has no "
      r"mean, std", lambda e: dctps.data.Loader(torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                                                torch.zeros(2, dtype=torch.long), 2,
                                                shuffle=False, augment=False, info=None)),
    # ---- a fuzz of the Python API's arguments (session 24): each was a raw error or a repr
    L("python-config-section-a-string", r"^RunConfig: model must be a mapping, got str",
      lambda e: fit(RunConfig(model="lenet5"), e.tmp / "o_py", progress=False)),  # type: ignore
    L("python-config-options-none", r"^RunConfig: sparsity\.options: expected dict, got None",
      lambda e: RunConfig(sparsity=SparsityConfig("dctps", 0.1, options=None)).resolve()),
    L("python-config-milestones-int", r"optim\.milestones: expected list, got 5",
      lambda e: RunConfig(sparsity=SparsityConfig("dctps", 0.1),
                          optim=OptimConfig(milestones=5)).resolve()),  # type: ignore
    L("sparsify-swapped-arguments", r"^density must be a number in \(0, 1\], got a Sequential "
      r"\(an nn\.Module\)$", lambda e: dctps.sparsify(0.01, mlp())),
    L("set-mode-swapped-arguments", r"^mode must be one of .*, got a LeNet5 \(an nn\.Module\)$",
      lambda e: dctps.set_mode("fast", dctps.models.build("lenet5"))),
    L("fit-out-none", r"^out_dir must be a file path \(a str or os\.PathLike\), got None",
      lambda e: fit(cfg(e.data), None, progress=False)),
    L("layer-device-typo", r"^device must be a device, got 'gpu': give 'cpu', 'cuda'",
      lambda e: dctps.DCTpSLinear(4, 4, nnz=4, device="gpu")),
    L("layer-dtype-string", r"^dtype must be a floating torch\.dtype .*got 'float32'",
      lambda e: dctps.DCTpSConv2d(3, 4, 3, nnz=4, dtype="float32")),  # type: ignore
    L("layer-per-filter-tensor", r"^per_filter must be True or False, got a tensor of shape "
      r"\[\] \(int64\)", lambda e: dctps.DCTpSLinear(4, 4, nnz=4, per_filter=torch.tensor(1))),
    L("fit-resume-number", r"^resume must be None .*True .*or False .*got 1$",
      lambda e: fit(cfg(e.data), e.tmp / "o_resume", progress=False, resume=1)),  # type: ignore
    L("rigl-alpha-bool", r"^alpha must be a number in \[0, 1\], got True",
      lambda e: dctps.dst.RigL(dctps.sparsify(mlp(), 0.5), None, 10, alpha=True)),
    L("store-timeout-nan", r"^timeout must be a number of seconds >= 0 .*got nan",
      lambda e: Store(e.tmp / "t.db", timeout=math.nan)),
    L("data-split-seed-negative", r"^split_seed must be in \[0, 2\*\*63\), got -1",
      lambda e: dctps.data.build("digits", split_seed=-1)),
    L("evaluate-no-model", r"^evaluate needs the model \(an nn\.Module\) first, got None",
      lambda e: dctps.train.evaluate(None, batch())),  # type: ignore[arg-type]
    L("save-config-of-a-dict", r"^save_config takes a RunConfig \(RunConfig\.from_dict\(d\) "
      r"builds one from a dict\), got \{'seed': 1\}",
      lambda e: save_config({"seed": 1}, e.tmp / "c.yaml")),  # type: ignore[arg-type]
    L("plot-allocation-empty", r"^series must map each allocation's name to its per-layer "
      r"non-zero counts .*got \{\}", lambda e: dctps.results.plots.plot_allocation(
          {}, "t", e.tmp / "a.png")),
    L("plan-of-dicts", r"^plan takes a list of RunConfig, got not only RunConfigs",
      lambda e: dctps.results.sweep.plan([{"seed": 1}], e.tmp / "s")),
    L("loader-numpy-x", r"Loader: x must be a torch\.Tensor, got a numpy array of shape "
      r"\[2, 3, 8, 8\] \(uint8\) \(torch\.from_numpy", lambda e: dctps.data.Loader(
          torch.zeros(2, 3, 8, 8, dtype=torch.uint8).numpy(), torch.zeros(2, dtype=torch.long),
          2, shuffle=False, augment=False, info=dctps.data.get_info("cifar10"))),
    L("loader-channels-last", r"Loader: x has shape \(2, 32, 32, 3\), images with channels "
      r"last .*x\.permute\(0, 3, 1, 2\)", lambda e: dctps.data.Loader(
          torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 2,
          shuffle=False, augment=False, info=dctps.data.get_info("cifar10"))),
    L("loader-generator-seed", r"Loader: generator must be a CPU torch\.Generator or None, "
      r"got 0 \(for a seed", lambda e: dctps.data.Loader(
          torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 2,
          shuffle=True, augment=False, info=dctps.data.get_info("digits"), generator=0)),
    L("loader-shuffle-word", r"Loader: shuffle must be True or False, got 'no'",
      lambda e: dctps.data.Loader(
          torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 2,
          shuffle="no", augment=False, info=dctps.data.get_info("digits"))),
    L("store-path-empty", r"the results database path \(db, --db\) is empty",
      lambda e: Store("")),
    L("data-root-empty", r"the data root \(--data-root, data\.root, root=\) is empty",
      lambda e: dctps.data.build("cifar10", "")),
    L("fit-out-under-a-file", r"file\.txt is a file, not a folder",
      lambda e: fit(cfg(e.data), e.file / "out", progress=False)),
    L("fit-foreign-checkpoint", r"last\.pt belongs to config [0-9a-f]{16}, not [0-9a-f]{16}",
      lambda e: fit(e.other_cfg, e.tmp / "foreign", progress=False)),
    L("fit-resume-without-checkpoint", r"--resume \(resume=True\): no checkpoint",
      lambda e: fit(cfg(e.data, seed=3), e.good, progress=False, resume=True)),
    # ------------------------------------------------------------------ sweeps and the store
    L("grid-unknown-key", r"g\.yaml: unknown key 'modles'",
      lambda e: expand_grid({"modles": ["lenet5"]}, "g.yaml")),
    L("grid-unknown-base-key", r"base: unknown key 'optim\.epoch'",
      lambda e: expand_grid({"base": {"optim": {"epoch": 3}}}, "g.yaml")),
    L("grid-unknown-method-key", r"unknown key 'allocaton' in a method entry",
      lambda e: expand_grid({"methods": [{"method": "dctps", "allocaton": "epl"}]}, "g.yaml")),
    L("grid-density-typo", r"not a density: '1%%'",
      lambda e: expand_grid({"methods": ["dctps"], "densities": ["1%%"]}, "g.yaml")),
    L("grid-slurm-not-a-mapping", r"slurm must be a mapping .*got 5",
      lambda e: expand_grid({"slurm": 5}, "g.yaml")),
    L("sweep-workers-0", r"workers must be a positive integer, got 0",
      lambda e: run_sweep([], e.tmp / "s", workers=0)),
    L("sweep-executor-typo", r"unknown executor 'slrum'\. Did you mean 'slurm'\?",
      lambda e: run_sweep([], e.tmp / "s", executor="slrum")),
    L("store-not-sqlite", r"notes\.txt is not a results database", lambda e: Store(e.notdb)),
    L("store-under-a-file", r"file\.txt is a file, not a folder",
      lambda e: Store(e.file / "r.db")),
    L("data-unknown-dataset", r"unknown dataset 'cifar-10'\. Did you mean 'cifar10'\?",
      lambda e: dctps.data.build("cifar-10", e.data)),
    L("models-unknown", r"unknown model 'resnet-18'.*Did you mean 'resnet18'\?",
      lambda e: dctps.models.build("resnet-18")),
    # ------------------------------------------------------------------ CLI, in process
    C("demo-threads-negative", r"--threads must be >= 0.*got -1", "demo", "--threads", "-1"),
    C("budgets-density-negative", r"--density: density must be in \(0, 1\].*got '-0\.5'",
      "budgets", "lenet5", "--density", "-0.5"),
    C("budgets-allocation-case", r"Did you mean 'erk'\?",
      "budgets", "resnet18", "--density", "0.01", "--allocation", "ERK"),
    C("budgets-model-typo", r"unknown model 'vgg16'.*Did you mean 'vgg19'\?",
      "budgets", "vgg16", "--density", "0.01"),
    C("budgets-plot-empty", r"--plot is empty; give a path", "budgets", "lenet5", "--density",
      "0.1", "--plot", ""),
    C("budgets-compare-erk", r"--allocation erk would not be drawn", "budgets", "lenet5",
      "--density", "0.1", "--allocation", "erk", "--compare", "--plot", "{tmp}/cmp.png"),
    C("budgets-plot-under-a-file", r"cannot write figure .*file\.txt is a file, not a folder",
      "budgets", "lenet5", "--density", "0.1", "--plot", "{file}/b.png"),
    C("budgets-compare-without-plot", r"--compare draws EPL and EPF.*give --plot",
      "budgets", "lenet5", "--density", "0.1", "--compare"),
    C("budgets-plot-format", r"b\.xyz: \.xyz is not an image format; give one of .*\.png",
      "budgets", "lenet5", "--density", "0.1", "--plot", "{tmp}/b.xyz"),
    C("train-density-nan", r"density must be in .*got 'nan'", *TRAIN_AT, "--density", "nan"),
    C("train-density-0", r"density must be in \(0, 1\].*got '0'", *TRAIN_AT, "--density", "0"),
    C("train-rigl-flag-without-rigl", r"sparsity\.rigl_t_end \(--rigl-t-end\) applies only with "
      r"sparsity\.rigl=True \(--rigl\) \(got rigl_t_end=0\.5\)", *TRAIN_AT, "--rigl-t-end", "0.5"),
    C("train-no-charge-alpha-without-channel", r"charge_alpha=False \(--no-charge-alpha\) "
      r"applies only with sparsity\.alpha='channel' \(--alpha channel\) .*got alpha 'layer'",
      *TRAIN_AT, "--method", "dctps", "--no-charge-alpha"),
    C("train-milestone-past-the-end", r"--milestones 50 is not below the run's epochs \(1\)",
      *TRAIN_AT, "--milestones", "50"),
    C("train-milestones-repeated", r"milestones \[1, 1\] repeat an epoch .*give distinct",
      *TRAIN_AT, "--epochs", "3", "--milestones", "1,1"),
    C("train-allocation-for-a-score-method", r"allocation='erk' \(--allocation erk\) applies "
      r"only to methods dctps and random: snip chooses its own",
      *TRAIN_AT, "--method", "snip", "--allocation", "erk"),
    C("train-allocation-typo-for-a-score-method", r"unknown allocation 'ekr'.*Did you mean "
      r"'erk'\?", *TRAIN_AT, "--method", "snip", "--allocation", "ekr"),
    C("train-option-twice", r"--option steps given twice \(2 and 3\): give it once",
      *TRAIN_AT, "--method", "synflow", "--option", "steps=2", "--option", "steps=3"),
    C("train-momentum-2", r"optim\.momentum \(--momentum\) must be in \[0, 1\) .*got 2\.0",
      *TRAIN_AT, "--recipe", "sgd", "--lr", "0.1", "--momentum", "2"),
    C("train-rigl-t-end-above-1", r"sparsity\.rigl_t_end \(--rigl-t-end\) \(the fraction of "
      r"training after which the supports stay fixed\) must be in \(0, 1\], got 1\.5",
      *TRAIN_AT, "--method", "dctps", "--rigl", "--rigl-t-end", "1.5"),
    C("train-gamma-without-milestones",
      r"gamma=0\.5 \(--gamma 0\.5\) applies at milestones, and this run has none",
      *TRAIN_AT, "--gamma", "0.5"),
    C("train-optimizer-of-another-recipe", r"optimizer 'sgd' with recipe 'lenet' \(whose "
      r"optimizer is adam\) .*\(--recipe sgd\), or give optim\.lr \(--lr\)",
      *TRAIN_AT, "--optimizer", "sgd"),
    C("train-split-seed-negative", r"split_seed must be in \[0, 2\*\*63\), got -1",
      *TRAIN_AT, "--split-seed", "-1"),
    L("prune-synflow-input-shape-text", r"synflow's input_shape must be positive integer sizes "
      r"\(C, H, W\), e\.g\. \[3, 32, 32\], got 'abc'",
      lambda e: dctps.prune(dctps.models.build("lenet5"), 0.5, "synflow", input_shape="abc")),
    L("prune-synflow-input-shape-float", r"input_shape must be positive integer sizes .*got "
      r"\[3\.5, 32, 32\]", lambda e: dctps.prune(dctps.models.build("lenet5"), 0.5, "synflow",
                                                 input_shape=[3.5, 32, 32])),
    L("sparsify-fixup-fixed-alpha", r"zero-initialises some layers \(Fixup\).*Train alpha",
      lambda e: dctps.sparsify(dctps.models.build("fixup_resnet110", num_classes=10), 0.01,
                               train_alpha=False)),
    C("train-batched-rebuild-on-dense", r"batched_rebuild='on' \(--batched-rebuild on\) "
      r"applies only to method dctps .*got method 'dense'", "train", "--model", "lenet5",
      "--dataset", "cifar10", "--method",
      "dense", "--batched-rebuild", "on", "--data-root", "{data}", "--out", "{tmp}/out"),
    C("train-batched-rebuild",
      r"batched_rebuild \(--batched-rebuild\) must be one of auto, on, off, got 'yes'",
      *TRAIN_AT, "--batched-rebuild", "yes"),
    C("train-data-root-missing", r"data root .*nope does not exist",
      *TRAIN, "--data-root", "{tmp}/nope", "--out", "{tmp}/out"),
    C("train-out-empty", r"--out is empty; give a path", *TRAIN_AT, "--out", ""),
    C("train-config-empty", r"--config is empty; give a path", "train", "--config", " "),
    C("train-out-under-a-file", r"file\.txt is a file, not a folder",
      *TRAIN, "--data-root", "{data}", "--out", "{file}/sub"),
    C("train-config-syntax", r"bad\.yaml is not valid YAML: line 2, column 5", "train",
      "--config", "{y}/bad.yaml"),
    C("train-config-unknown-key", r"unknown key 'sparsity\.foo'",
      "train", "--config", "{y}/run_unknown.yaml"),
    C("train-model-typo", r"Did you mean 'lenet5'\?", *TRAIN_AT, "--model", "lenet"),
    C("train-method-typo", r"unknown sparsity method 'dctp'\. Did you mean 'dctps'\?",
      *TRAIN_AT, "--method", "dctp"),
    C("train-method-rigl", r"'rigl' is not a method but a switch.*--method random --rigl",
      *TRAIN_AT, "--method", "rigl"),
    C("train-seed-huge", r"seed must be in \[0, 2\*\*63\), got 99999999999999999999",
      *TRAIN_AT, "--seed", "99999999999999999999"),
    C("train-seed-2-63", r"seed must be in \[0, 2\*\*63\), got 9223372036854775808",
      *TRAIN_AT, "--seed", "9223372036854775808"),
    C("demo-seed-negative", r"--seed must be in \[0, 2\*\*63\)", "demo", "--seed", "-1"),
    C("train-out-under-a-file-own-db", r"cannot write run folder .*file\.txt is a file",
      *TRAIN, "--data-root", "{data}", "--out", "{file}/sub", "--db", "{tmp}/own.db"),
    C("train-random-seed-option", r"seed must be an integer or None, got 'x'",
      *TRAIN_AT, "--method", "random", "--option", "seed=x"),
    C("train-option-without-value", r"--option expects key=value, got 'exclude'",
      *TRAIN_AT, "--option", "exclude"),
    C("train-epochs-0", r"optim\.epochs \(--epochs\) must be a positive integer, got 0",
      *TRAIN_AT, "--epochs", "0"),
    C("train-lr-negative", r"optim\.lr \(--lr\) must be > 0, got -1", *TRAIN_AT, "--lr", "-1"),
    C("train-device-typo", r"device \(--device\) must be auto, cpu, cuda or cuda:N, got 'gpu'",
      *TRAIN_AT, "--device", "gpu"),
    C("train-device-index", r"device \(--device\) must be auto, cpu, cuda or cuda:N, got "
      r"'cuda:abc'", *TRAIN_AT, "--device", "cuda:abc"),
    C("train-truncated-cifar", r"data_batch_3 .*truncated or corrupt",
      *TRAIN, "--data-root", "{trunc_cifar}", "--out", "{tmp}/out"),
    C("train-into-good-bad-density", r"density must be in", "train", "--config",
      "{y}/good.yaml", "--out", "{good}", "--density", "0"),
    C("train-into-good-resume-other", r"--resume \(resume=True\): no checkpoint", "train",
      "--config", "{y}/good.yaml", "--out", "{good}", "--seed", "5", "--resume", "-q"),
    C("results-not-a-database", r"notes\.txt is not a results database",
      "results", "--db", "{notdb}"),
    C("results-missing-db", r"no results database at .*none\.db", "results", "--db",
      "{tmp}/none.db"),
    C("results-unknown-column", r"unknown column 'foo' in --where",
      "results", "--db", "{good}", "--where", "foo=1"),
    C("results-unknown-column-far", r"unknown column 'zzzzzz' in --where\. Columns: hash, ",
      "results", "--db", "{good}", "--where", "zzzzzz=1"),  # the one with no near name: 601
    C("results-where-nan", r"--where seed takes a finite number, got 'nan'", "results", "--db",
      "{good}", "--where", "seed=nan"),  # matched nothing: SQLite holds no NaN
    C("sweep-slurm-typo", r"unknown SLURM \(submitit\) parameter 'bogus'\. Valid: \d+ names, "
      r"among them .*timeout_min", "sweep", "{y}/good_grid.yaml", "--executor", "slurm", "--slurm",
      "bogus=1", "--dry-run"),  # listing all of them was 772 characters
    C("results-where-without-value", r"--where expects key=value, got 'method'",
      "results", "--db", "{good}", "--where", "method"),
    C("results-csv-under-a-file", r"cannot write CSV file .*file\.txt is a file, not a folder",
      "results", "--db", "{good}", "--csv", "{file}/r.csv"),
    C("results-csv-a-folder", r"cannot write CSV file .*/tables/: that is a folder; give a file "
      r"path in it, e\.g\. .*tables/results\.csv", "results", "--db", "{good}", "--csv",
      "{tmp}/tables/"),
    C("sweep-unknown-key", r"unknown_top\.yaml: unknown key 'modles'", "sweep",
      "{y}/unknown_top.yaml"),
    C("sweep-unknown-base-key", r"unknown key 'optim\.epoch'", "sweep", "{y}/unknown_base.yaml"),
    C("sweep-unknown-method-key", r"unknown key 'allocaton'", "sweep", "{y}/method_key.yaml"),
    C("sweep-density-negative", r"densities: density must be in .*got -0\.1", "sweep",
      "{y}/neg_density.yaml"),
    C("sweep-density-nan", r"got nan", "sweep", "{y}/nan_density.yaml"),
    C("sweep-density-string", r"not a density: 'ten'", "sweep", "{y}/str_density.yaml"),
    C("sweep-executor-typo-dry-run", r"unknown executor 'slrum'\. Did you mean 'slurm'\?",
      "sweep", "{y}/seeds_bad.yaml", "--executor", "slrum", "--dry-run"),
    C("figure-executor-typo-dry-run", r"unknown executor 'slrum'",
      "figure", "density-lenet5-cifar10", "--executor", "slrum", "--dry-run"),
    C("sweep-seeds-strings", r"seeds must be integers, got 'a'", "sweep", "{y}/seeds_bad.yaml"),
    C("sweep-slurm-not-a-mapping", r"slurm must be a mapping", "sweep", "{y}/slurm_bad.yaml"),
    C("sweep-grid-key-twice", r"grid_twice\.yaml is not valid YAML: line 3, column 17: key 'seed' "
      r"is given twice", "sweep", "{y}/grid_twice.yaml", "--dry-run"),
    C("sweep-config-missing", r"cannot read sweep config .*nope\.yaml", "sweep",
      "{y}/nope.yaml"),
    C("sweep-config-of-a-figure-missing", r"cannot read sweep config .*A\.1\.yaml: no such file "
      r"\(.*`dctps figure A\.1 --print-config > A\.1\.yaml` writes this grid\)", "sweep",
      "{tmp}/configs/A.1.yaml"),
    C("sweep-out-under-a-file", r"file\.txt is a file, not a folder", "sweep",
      "{y}/good_grid.yaml", "--out", "{file}/x", "-q"),
    C("sweep-db-under-a-file", r"file\.txt is a file, not a folder", "sweep",
      "{y}/good_grid.yaml", "--out", "{tmp}/sweep_db", "--db", "{file}/r.db", "-q"),
    C("sweep-cli-workers-0", r"workers must be a positive integer, got 0", "sweep",
      "{y}/good_grid.yaml", "--out", "{tmp}/s0", "--workers", "0", "-q"),
    C("sweep-cli-threads-negative", r"--threads must be >= 0 \(0 = torch's default\), got -1",
      "sweep", "{y}/good_grid.yaml", "--threads", "-1", "--dry-run"),
    C("figure-threads-too-many", r"--threads 100000 is more than 4x this machine's",
      "figure", "density-lenet5-cifar10", "--threads", "100000", "--dry-run"),
    C("sweep-set-batch-size-0", r"optim\.batch_size \(--batch-size\) must be a positive "
      r"integer, got 0", "sweep", "{y}/good_grid.yaml", "--set", "optim.batch_size=0",
      "--dry-run"),
    C("sweep-seeds-huge", r"seeds: 100,000,000,000 seeds is more than 10,000: give a count up "
      r"to it, or a list of seeds such as \[0, 1, 2\]", "sweep", "{y}/seeds_huge.yaml",
      "--dry-run"),
    C("sweep-set-empty-value", r"--set optim\.epochs= has no value: give one "
      r"\(optim\.epochs=VALUE\), or optim\.epochs=null for the default", "sweep",
      "{y}/good_grid.yaml", "--set", "optim.epochs=", "--dry-run"),
    C("train-config-empty-section", r"model is an empty section: give its settings \(model: "
      r"\{name: \.\.\.\}\), or leave the key out", "train", "--config", "{y}/model_blank.yaml",
      "--out", "{tmp}/out"),
    C("sweep-set-short-key", r"overrides: unknown key 'epochs': it is a setting of optim, "
      r"written optim\.epochs \(in YAML: optim: \{epochs: \.\.\.\}\)$", "sweep",
      "{y}/good_grid.yaml", "--set", "epochs=3", "--dry-run"),
    C("sweep-set-unknown-key", r"overrides: unknown key 'optim\.foo'", "sweep",
      "{y}/good_grid.yaml", "--set", "optim.foo=1", "--dry-run"),
    C("sweep-into-good-bad-density", r"density must be in .*got 2", "sweep",
      "{y}/good_grid.yaml", "--out", "{good}", "--set", "sparsity.density=2", "-q"),
    C("figure-name-case", r"unknown figure 'a1'\. Did you mean 'A\.1'\?", "figure", "a1"),
    C("figure-density", r"--density: density must be in .*got '2'", "figure", "A.1",
      "--density", "2", "--dry-run"),
    C("figure-model-typo", r"unknown model 'resnet81'\. Did you mean 'resnet18'\?", "figure",
      "A.1", "--model", "resnet81", "--dry-run"),
    C("figure-seeds-0", r"number of seeds must be >= 1, got 0", "figure", "A.1", "--seeds", "0",
      "--dry-run"),
    C("figure-plot-only-no-db", r"no results database at .*empty", "figure", "A.1",
      "--plot-only", "--out", "{tmp}/empty"),
    C("plot-x", r"--x must be density, nonzeros or epoch, got 'foo'", "plot", "--db", "{good}",
      "--x", "foo"),
    C("plot-metric", r"--metric must be auto, test_acc or val_acc for --x density, got 'foo'$",
      "plot", "--db", "{good}", "--metric", "foo"),
    C("plot-metric-per-epoch", r"got 'train_loss' \(a per-epoch metric: draw learning curves "
      r"with --x epoch\)", "plot", "--db", "{good}", "--metric", "train_loss"),
    C("plot-epoch-test-acc", r"a learning curve's metric \(--metric with --x epoch\) must be "
      r"auto or one of val_acc, train_acc, .*got 'test_acc' \(test_acc is recorded once per "
      r"run, after training, not per epoch\)", "plot", "--db", "{good}", "--x", "epoch",
      "--metric", "test_acc"),
    C("results-metric-without-summary", r"--metric val_acc chooses the accuracy that "
      r"--summary averages; add --summary", "results", "--db", "{good}", "--metric", "val_acc"),
    C("results-summary-metric", r"--metric must be auto, test_acc or val_acc, got 'loss'",
      "results", "--db", "{good}", "--summary", "--metric", "loss"),
    C("plot-epoch-no-match", r"nothing to plot: no runs in .* match", "plot", "--db", "{good}",
      "--x", "epoch", "--where", "model=vgg19"),
    C("plot-out-empty", r"--out is empty; give a path, e.g\. plot\.png", "plot", "--db",
      "{good}", "--out", ""),
    C("export-out-empty", r"OUT is empty; give a path", "export", "{tmp}/nope.pt", ""),
    C("plot-out-dash", r"a figure is written to files .*not to standard output: give a path",
      "plot", "--db", "{good}", "--out", "-"),
    # an unset shell variable: each meant the current folder (or the default) without a word
    C("export-ckpt-empty", r"CKPT is empty; give a path", "export", "", "{tmp}/x.dctps"),
    C("inspect-empty", r"CKPT is empty; give a path", "inspect", " "),
    C("results-db-empty", r"--db is empty; give a path", "results", "--db", ""),
    C("results-csv-empty", r"--csv is empty; give a path", "results", "--db", "{good}",
      "--csv", ""),
    C("results-json-empty", r"--json is empty; give a path", "results", "--db", "{good}",
      "--json", ""),
    C("plot-db-empty", r"--db is empty; give a path", "plot", "--db", ""),
    C("sweep-config-empty", r"CONFIG is empty; give a path", "sweep", ""),
    C("sweep-out-empty", r"--out is empty; give a path", "sweep", "{tmp}/g.yaml", "--out", ""),
    C("sweep-db-empty", r"--db is empty; give a path", "sweep", "{tmp}/g.yaml", "--db", " "),
    C("sweep-data-root-empty", r"--data-root is empty; give a path", "sweep", "{tmp}/g.yaml",
      "--data-root", ""),
    C("figure-out-empty", r"--out is empty; give a path", "figure", "A.1", "--out", ""),
    C("figure-data-root-empty", r"--data-root is empty; give a path", "figure", "A.1",
      "--data-root", ""),
    C("figure-config-empty", r"--config is empty; give a path", "figure", "A.1", "--config", ""),
    C("train-data-root-empty", r"data\.root \(--data-root\) is empty \(''\)", *TRAIN,
      "--data-root", "", "--out", "{tmp}/out"),
    C("train-milestones-empty", r"milestones is empty \(''\): give comma-separated values",
      *TRAIN_AT, "--milestones", ""),
    C("train-milestones-empty-entry", r"milestones has an empty entry \('1,,2'\)", *TRAIN_AT,
      "--milestones", "1,,2"),
    C("plot-out-under-a-file", r"file\.txt is a file, not a folder", "plot", "--db", "{good}",
      "--out", "{file}/x.png"),
    C("plot-not-a-database", r"notes\.txt is not a results database", "plot", "--db", "{notdb}"),
    C("inspect-truncated", r"trunc\.dctps is truncated or corrupt", "inspect", "{trunc_ck}"),
    C("inspect-torch-file", r"torch\.save file, not a dctps train checkpoint", "inspect",
      "{torch_file}"),
    C("inspect-folder", r"is a folder, not a checkpoint: give a file \(a run's .*/best\.pt",
      "inspect", "{tmp}"),
    C("bench-name-typo", r"unknown benchmark 'lineer'\. Did you mean 'linear'\?", "bench",
      "lineer"),
    C("bench-device", r"--device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'", "bench",
      "linear", "--device", "tpu"),
    C("figure-density-empty-item", r"--density '1%,,0\.1%' is empty or has an empty item "
      r"between commas", "figure", "A.1", "--density", "1%,,0.1%", "--dry-run", "--out",
      "{tmp}/fq"),
    C("figure-db-missing", r"no results database at .*elsewhere\.db", "figure", "A.1",
      "--plot-only", "--out", "{tmp}/empty", "--db", "{tmp}/elsewhere.db"),
    C("bench-threads-negative", r"--threads must be >= 0", "bench", "linear", "--threads", "-1"),
    # ------------------------------------------------------------------ CLI, real processes
    P("proc-path-with-a-dash", r"No such option: -m \(a path that starts with '-': write "
      r"\./-m\.dctps, or put -- before it\)$", "export", "{ck}", "-m.dctps"),
    P("proc-unknown-short-flag", r"No such option: -x \(see `.*results --help`\)$",
      "results", "--db", "{good}", "-x"),
    P("proc-float-flag-not-a-number", r"Invalid value for '--lr': .*, got 'abc'", "train",
      "--lr", "abc"),
    P("proc-int-flag-not-an-int", r"Invalid value for '--epochs': .*, got '1\.5' \(see", "demo",
      "--epochs=1.5"),
    P("proc-density-not-a-number", r"--density: not a density: 'abc'", "budgets", "resnet18",
      "--density", "abc"),
    P("proc-unknown-flag", r"No such option: --densty", "budgets", "resnet18", "--densty", "0.1"),
    P("proc-unknown-command", r"No such command 'trian'", "trian"),
    P("proc-demo-threads", r"--threads must be >= 0", "demo", "--threads", "-2"),
    P("proc-train-yaml-syntax", r"bad\.yaml is not valid YAML: line 2, column 5", "train",
      "--config", "{y}/bad.yaml"),
    P("proc-train-out-under-a-file", r"file\.txt is a file, not a folder",
      *TRAIN, "--data-root", "{data}", "--out", "{file}/sub"),
    P("proc-train-into-good", r"density must be in", "train", "--config", "{y}/good.yaml",
      "--out", "{good}", "--density", "0"),
    P("proc-sweep-slurm", r"slurm must be a mapping", "sweep", "{y}/slurm_bad.yaml"),
    P("proc-results-not-a-database", r"notes\.txt is not a results database", "results",
      "--db", "{notdb}"),
    P("proc-inspect-truncated", r"truncated or corrupt", "inspect", "{trunc_ck}"),
    P("proc-figure-case", r"Did you mean 'A\.1'\?", "figure", "a1"),
]  # fmt: skip


def _args(case: Case, env: SimpleNamespace) -> list[str]:
    return [a.format(**env.paths) for a in case.what]  # type: ignore[union-attr]


def _message(case: Case, env: SimpleNamespace) -> str:
    if case.how == "lib":
        with pytest.raises(DctpsError) as info:
            case.what(env)  # type: ignore[operator]
        return str(info.value)
    if case.how == "cli":
        res = runner.invoke(app, _args(case, env))
        assert res.exit_code != 0
        assert isinstance(res.exception, DctpsError), (res.exception, res.output)
        return str(res.exception)
    p = subprocess.run([sys.executable, "-m", "dctps.cli", *_args(case, env)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, env):
    before = snapshot(env)
    msg = _message(case, env)
    assert re.search(case.needle, msg), msg
    assert "\n" not in msg and len(msg) < 600, msg
    assert snapshot(env) == before, "a bad input changed the finished run"


def test_table_size():
    """The issue asks for at least 40 cases; count them by kind (recorded in RELIABILITY.md)."""
    kinds = {k: sum(c.how == k for c in CASES) for k in ("lib", "cli", "proc")}
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) >= 40 and kinds["proc"] >= 10
    print(f"\nRELIABILITY bad input: {len(CASES)} cases ({kinds['lib']} library, "
          f"{kinds['cli']} CLI in process, {kinds['proc']} CLI processes)")  # fmt: skip


def test_yaml_merges_that_override_keys_still_load(tmp_path):
    """The duplicate-key check must not take a merge's override for a repeat, also where an
    anchored mapping that merges is merged again (its keys are copied in by then)."""
    from dctps.train.config import read_yaml

    texts = [
        "defaults:\n  - &common {optim: {epochs: 1, batch_size: 32}}\n  - &fast\n"
        "    <<: *common\n    optim: {epochs: 2}\nrun:\n  <<: *fast\n  seed: 3\n",
        "b: &b {lr: 1}\nx: {<<: *b, lr: 2}\ny: {<<: [*b], lr: 3}\n",
    ]
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.yaml").write_text(text)
        assert read_yaml(tmp_path / f"{i}.yaml", "config") == yaml.safe_load(text)


def test_yaml_aliases_that_expand_beyond_reason_are_refused(tmp_path):
    """A safety review: PyYAML shares an alias's value, but every reader walks it whole: 354
    bytes of nested aliases made an error message of 2.3 billion characters (4.7 GB, 114 s).
    A file expanding to more than MAX_YAML_VALUES is refused as it is read; a bad value that
    expands less is quoted cut short (the message keeps its advice at the end)."""
    import time

    from dctps.errors import MAX_MESSAGE
    from dctps.train.config import MAX_YAML_VALUES, expanded_size, load_config

    def laughs(levels: int) -> str:
        parts = ["&a [x,x,x,x,x,x,x,x,x]"] + [
            f"&{'abcdefghijkl'[i]} [" + ",".join([f"*{'abcdefghijkl'[i - 1]}"] * 9) + "]"
            for i in range(1, levels)
        ]
        return ("sparsity:\n  method: dctps\n  density: 0.1\n  options:\n    exclude: ["
                + ", ".join(parts) + "]\n")  # fmt: skip

    big = tmp_path / "big.yaml"
    big.write_text(laughs(9))
    assert big.stat().st_size < 400
    start = time.perf_counter()
    with pytest.raises(DctpsError, match=r"big\.yaml expands to more than 1,000,000 values "
                                         r"through its aliases"):  # fmt: skip
        load_config(big)
    assert time.perf_counter() - start < 5
    small = tmp_path / "small.yaml"
    small.write_text(laughs(3))  # 9**3 names: read, then refused as a value
    with pytest.raises(DctpsError) as info:
        load_config(small).resolve()
    msg = str(info.value)
    assert len(msg) <= MAX_MESSAGE and "characters cut" in msg
    assert msg.startswith("option exclude of method dctps takes layer names")
    shared: list = [1, 2]
    assert expanded_size([shared, shared, {"k": shared}]) == 1 + 3 + 3 + (1 + 1 + 3)
    loop: list = []
    loop.append(loop)
    assert expanded_size(loop) > MAX_YAML_VALUES  # a cycle is too big, not endless


def test_a_path_with_an_over_long_name_is_named_not_a_traceback(tmp_path):
    """A safety review: `--out`, `--db` and `export`'s checkpoint with a 300-character name
    gave Python's "OSError: [Errno 36] File name too long" from the first stat."""
    from dctps.errors import NAME_MAX, user_path

    long = tmp_path / ("a" * 300)
    with pytest.raises(DctpsError, match=rf"has a name of 300 bytes .* at most {NAME_MAX} bytes"):
        user_path(long / "x.db")
    assert user_path(tmp_path / ("é" * 127)) == tmp_path / ("é" * 127)  # 254 bytes: fine
    commands = [["results", "--db", str(long / "x.db")],
                ["export", str(long / "last.pt"), str(tmp_path / "m.dctps")],
                ["train", "--model", "lenet5", "--method", "dense", "--out", str(long)],
                ]  # fmt: skip
    for args in commands:
        res = runner.invoke(app, args)
        assert res.exit_code != 0 and isinstance(res.exception, DctpsError), res.output
        assert "has a name of 300 bytes" in str(res.exception)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_cuda_asked_for_where_there_is_none_says_so_and_what_to_give(env):
    """The four places a CUDA device is checked share one message, each with its own advice."""
    from dctps.bench import bench_device
    from dctps.train.distributed import device_kind

    x, y = torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)
    cases = [
        (lambda: bench_device("cuda"), r"--device cuda requested .* \(give --device cpu\)$"),
        (lambda: device_kind("cuda:0"), r"device 'cuda:0' requested .*\(give device cpu or "
         r"auto\)$"),
        (lambda: dctps.data.Loader(x, y, 2, shuffle=False, augment=False, device="cuda",
                                   info=dctps.data.get_info("digits")),
         r"Loader: device 'cuda' requested .*\(give device='cpu'\)$"),
    ]  # fmt: skip
    for call, needle in cases:
        with pytest.raises(DctpsError, match=needle) as info:
            call()
        assert "CUDA is not available on this host" in str(info.value)
    res = runner.invoke(app, [*TRAIN_AT[:-4], "--device", "cuda", "--data-root",
                              str(env.data), "--out", str(env.tmp / "cuda")])  # fmt: skip
    assert res.exit_code != 0 and isinstance(res.exception, DctpsError), res.output
    assert "CUDA is not available on this host (give device cpu or auto)" in str(res.exception)


def test_long_messages_keep_their_advice_and_names_are_measured_in_bytes():
    """A mutation audit: the end a long message keeps, and NAME_MAX counted in characters."""
    from dctps.errors import user_path

    advice = "give a shorter list; " + "z" * 229
    text = str(DctpsError("a" * 2000 + advice))
    assert text.endswith(advice) and "[1,350 characters cut]" in text
    assert str(DctpsError("got Net(\n  (fc): Linear()\n)")) == "got Net( (fc): Linear() )"
    assert user_path("a" * 255).name == "a" * 255
    with pytest.raises(DctpsError, match="has a name of 256 bytes"):
        user_path("é" * 128)  # 128 characters, 256 bytes in UTF-8


def test_a_dctps_warning_is_one_line_in_the_cli_wherever_it_is_attributed():
    """A diff review: under `dctps train` warn_at_caller attributes a warning to typer's
    frame, and the CLI wrote Python's two-line format for it; dctps marks its warnings."""
    import warnings

    from dctps.cli import _format_warning
    from dctps.errors import dctps_warning, warn_at_caller

    marked = dctps_warning(RuntimeWarning)
    assert issubclass(marked, RuntimeWarning) and dctps_warning(RuntimeWarning) is marked
    text = _format_warning("no locks here", marked, "/site-packages/typer/main.py", 1445)
    assert text.endswith("warning: no locks here\n") and "typer" not in text
    plain = _format_warning("other", RuntimeWarning, "/site-packages/typer/main.py", 1)
    assert "typer/main.py:1" in plain  # others as Python writes them
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        warn_at_caller("x", RuntimeWarning)
    assert got[0].category is marked and got[0].filename == __file__
    # found again by name in a fresh process (pytest-xdist's controller crashed on a made
    # class no module held)
    import pickle
    import subprocess
    import sys

    code = "import pickle, sys; print(repr(pickle.loads(sys.stdin.buffer.read())))"
    for category in (RuntimeWarning, UserWarning):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                             input=pickle.dumps(dctps_warning(category)("x")))  # fmt: skip
        assert out.stdout.decode().strip() == f"Dctps{category.__name__}('x')"


def test_python_arguments_a_user_would_give_do_what_they_say(tmp_path):
    """An API fuzz: a bool given as a word was read as True (`rigl="false"` trained with
    RigL), one name as a string was split into letters (`models="lenet5"` asked for model
    'l'), one config or None for "none" raised a TypeError. Each now means what it says."""
    from dctps.results import figures
    from dctps.results.store import parse_where
    from dctps.results.sweep import apply_sets, plan, slurm_overrides

    c = RunConfig(sparsity=SparsityConfig("dctps", 0.05, rigl="false"),  # type: ignore[arg-type]
                  optim=OptimConfig(fused="no"))  # type: ignore[arg-type]  # fmt: skip
    r = c.resolve()
    assert r.sparsity.rigl is False and r.optim.fused is False
    assert r.config_hash() == RunConfig(sparsity=SparsityConfig("dctps", 0.05)).config_hash()
    g = figures.figure_grid("density-lenet5-cifar10", quick=True, models="lenet5",
                            datasets="digits", densities=0.01)  # fmt: skip
    assert (g["models"], g["datasets"], g["densities"]) == (["lenet5"], ["digits"], [0.01])
    one = RunConfig(sparsity=SparsityConfig("dctps", 0.05))
    assert [p.hash for p in plan(one, tmp_path)] == [one.config_hash()]
    assert apply_sets(None) == {} and parse_where(None) == {} and slurm_overrides(None, None) == {}
    assert apply_sets("optim.lr=0.5") == {"optim": {"lr": 0.5}}
    assert parse_where("seed=1") == {"seed": 1}
    # and numbers and paths as numpy and pathlib give them (a diff review: a Path root and a
    # float32 density were refused once Python configs were checked as YAML ones)
    import numpy as np

    typed = RunConfig(
        data=DataConfig("digits", root=tmp_path),  # type: ignore[arg-type]
        sparsity=SparsityConfig("dctps", np.float64(0.05)),  # type: ignore
        seed=np.int64(3),
        optim=OptimConfig(epochs=np.int64(2)),
    )  # type: ignore
    plain = RunConfig(
        data=DataConfig("digits", root=str(tmp_path)),
        sparsity=SparsityConfig("dctps", 0.05),
        seed=3,
        optim=OptimConfig(epochs=2),
    )
    assert typed.resolve() == plain.resolve() and typed.config_hash() == plain.config_hash()
