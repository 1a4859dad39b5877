"""Figures: specs and their YAML configs agree, quick grids, plotted data equal the store's rows,
failed points are drawn at chance, allocation figures (A.2, C.10), `dctps plot`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dctps.cli import app
from dctps.errors import DctpsError
from dctps.results import Store
from dctps.results import figures as F
from dctps.results.plots import _nothing_drawn, aggregate, plot_runs
from dctps.results.sweep import expand_grid, load_grid
from dctps.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, SparsityConfig

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_figure_list_names_every_supplement_figure():
    r = runner.invoke(app, ["figure", "--list"])
    assert r.exit_code == 0, r.output
    names = [ln.split()[0] for ln in r.output.strip().splitlines()]
    for n in ("A.1", "A.2", "A.3", "A.4", "A.5", "A.6", "A.7", "C.10"):
        assert n in names
    assert "density-lenet5-cifar10" in names and "density-resnet50-cifar100" in names
    assert names == F.names()


def hashes(cfgs) -> set[str]:
    return {c.config_hash() for c in cfgs}


@pytest.mark.parametrize("name", [n for n, s in F.FIGURES.items() if s.grid is not None])
def test_config_files_equal_figure_specs(name):
    path = REPO / "configs" / f"{name}.yaml"
    from_file = expand_grid(load_grid(path), str(path))
    assert hashes(from_file) == hashes(F.figure_configs(name))
    # the README: `dctps figure NAME --print-config > grid.yaml` writes the same file
    printed = CliRunner().invoke(app, ["figure", name, "--print-config"])
    assert printed.exit_code == 0 and printed.output == path.read_text(encoding="utf-8")


def test_figure_contents():
    a1 = F.figure_configs("A.1")
    assert {c.sparsity.method for c in a1} == {"dense", "dctps", "synflow", "iter_snip", "force"}
    assert {c.data.dataset for c in a1} == {"tiny_imagenet"} and len({c.seed for c in a1}) == 3
    a4 = F.figure_configs("A.4")
    assert {c.optim.recipe for c in a4} == {"sgd"} and {c.optim.optimizer for c in a4} == {"sgd"}
    assert {c.optim.lr for c in a4 if c.sparsity.method == "dctps"} == {0.03}
    a6 = F.figure_configs("A.6")
    assert {c.sparsity.train_alpha for c in a6 if c.sparsity.method == "dctps"} == {True, False}
    a7 = F.figure_configs("A.7")
    assert {c.sparsity.allocation for c in a7 if c.sparsity.method == "dctps"} == {
        "uniform", "epl", "epf", "erk"}  # fmt: skip
    dens = F.figure_configs("density-vgg19-cifar100")
    kinds = {(c.sparsity.method, c.sparsity.rigl, c.sparsity.allocation) for c in dens}
    assert ("random", True, "erk") in kinds and ("dctps", True, "epl") in kinds
    assert {c.sparsity.density for c in dens} == {1.0, 0.1, 0.05, 0.01, 0.001, 0.0001}
    lenet = expand_grid(load_grid(REPO / "configs" / "lenet5_cifar10.yaml"))
    assert len(lenet) == 3 + 6 * 3 * 3  # dense x 3 seeds; 6 methods x 3 densities x 3 seeds
    assert hashes(lenet) <= hashes(F.figure_configs("density-lenet5-cifar10"))


def test_quick_grid_shrinks_runs_not_structure():
    full = F.figure_configs("density-resnet18-cifar10")
    quick = F.figure_configs("density-resnet18-cifar10", quick=True)
    assert {c.sparsity.density for c in quick} == {1.0, 0.01, 0.001}
    assert {c.seed for c in quick} == {0} and {c.optim.epochs for c in quick} == {1}
    assert {c.data.subset for c in quick} == {256}  # a large net: 1 epoch of 256 images
    meth = lambda cs: {(c.sparsity.method, c.sparsity.rigl) for c in cs}  # noqa: E731
    assert meth(quick) == meth(full)
    opts = {c.sparsity.method: c.sparsity.options for c in quick if not c.sparsity.rigl}
    # num_batches=1 is CIFAR-10's Table E.2 default, so the run's identity leaves it out
    assert opts["iter_snip"] == {"steps": 5} and opts["synflow"]["iterations"]
    tiny = F.figure_configs("density-resnet18-cifar100", quick=True)
    force = [c.sparsity.options for c in tiny if c.sparsity.method == "force"]
    assert force and all(o.get("num_batches") == 1 for o in force)
    # 2 steps (256 images, batch 128): RigL may update at step 1 only (with delta_t 4, every
    # quick RigL run of a large model was refused: "RigL would never update the supports")
    rigl = {(c.sparsity.rigl_delta_t, c.sparsity.rigl_t_end) for c in quick if c.sparsity.rigl}
    assert rigl == {(1, 1.0)}
    lenet = F.figure_configs("density-lenet5-cifar10", quick=True)
    assert {c.sparsity.rigl_delta_t for c in lenet if c.sparsity.rigl} == {4}
    mixed = F.figure_configs("A.7", quick=True, models=["resnet18", "lenet5"])
    from dctps.train.setup import check_rigl_schedule

    for c in quick + lenet + mixed:  # the steps of their quick size, as dctps train counts them
        if c.sparsity.rigl:
            check_rigl_schedule(c, -(-c.data.subset // c.optim.batch_size) * c.optim.epochs)
    with pytest.raises(DctpsError, match="unknown figure"):
        F.get("A.9")


def test_quick_sizes_are_per_model_and_overrides_win():
    lenet = F.figure_configs("density-lenet5-cifar10", quick=True)
    assert {(c.optim.epochs, c.data.subset) for c in lenet} == {(2, 2000)}
    mixed = F.figure_configs("A.7", quick=True, models=["resnet18", "lenet5"])
    sizes = {(c.model.name, c.optim.epochs, c.data.subset) for c in mixed}
    assert sizes == {("resnet18", 1, 256), ("lenet5", 2, 2000)}
    one = F.figure_configs("A.7", quick=True, models=["resnet18"])
    per_model = {c.config_hash() for c in mixed if c.model.name == "resnet18"}
    assert per_model == {c.config_hash() for c in one}  # splitting does not change a run
    assert len(mixed) == len({c.config_hash() for c in mixed})
    over = F.figure_configs("A.7", {"data": {"subset": 500}, "optim": {"epochs": 3}}, quick=True,
                            models=["resnet18", "lenet5"])  # fmt: skip
    assert {(c.optim.epochs, c.data.subset) for c in over} == {(3, 500)}


# ----------------------------------------------------------------------------- plotted data
def stats(values):
    return sum(values) / len(values), min(values), max(values)


def test_a3_quick_cli_plots_the_store(fake_cifar10, tmp_path):
    out = tmp_path / "res.v2"  # an --out folder whose name has a dot is still a folder
    args = ["figure", "A.3", "--quick", "--model", "lenet5", "--dataset", "cifar10",
            "--data-root", str(fake_cifar10), "--out", str(out), "--seeds", "2", "-q"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    # not the paper's A.3 (ResNet50/VGG19), nor its quick one (1 seed)
    png = out / "figures" / "A.3-quick-lenet5-cifar10-seeds=0+1.png"
    assert png.stat().st_size > 0 and png.with_suffix(".pdf").exists()
    assert not (out / "figures" / "A.3-quick.png").exists()
    data = json.loads(png.with_suffix(".json").read_text())
    assert data["title"] == (
        "Figure A.3: EPL vs EPF (DCTpS)\nnot the paper's setting: model resnet50, vgg19 → lenet5; "
        "data set cifar10, cifar100 → cifar10; seeds 0 → 0, 1"
    )
    (panel,) = data["panels"]
    assert panel["title"] == "LeNet-5, CIFAR-10" and panel["metric"] == "test_acc"
    assert set(panel["series"]) == {"DCTpS (EPL)", "DCTpS (EPF)"}
    # the same numbers straight from the store
    rows = Store(out).query({"status": "done"})
    assert len(rows) == 2 + 2 * 2 * 2  # dense x 2 seeds + 2 allocations x 2 densities x 2 seeds
    for label, alloc in (("DCTpS (EPL)", "epl"), ("DCTpS (EPF)", "epf")):
        pts = panel["series"][label]
        assert [p["density"] for p in pts] == [0.001, 0.01]
        for p in pts:
            accs = [r["test_acc"] for r in rows
                    if r["allocation"] == alloc and r["density"] == p["density"]]  # fmt: skip
            assert len(accs) == 2 and p["n_ok"] == 2 and not p["failed"]
            assert (p["mean"], p["min"], p["max"]) == pytest.approx(stats(accs))
    dense = [r["test_acc"] for r in rows if r["method"] == "dense"]
    d = panel["dense"]["Dense"]
    assert (d["mean"], d["min"], d["max"]) == pytest.approx(stats(dense))
    # a second call trains nothing; --plot-only draws the same data
    r = runner.invoke(app, [*args, "--plot-only"])
    assert r.exit_code == 0 and json.loads(png.with_suffix(".json").read_text()) == data
    r = runner.invoke(app, args)
    assert "10 runs: 10 skip-done" in r.output


def cfg(method, density=None, seed=0, optim=None, **sp):
    return RunConfig(
        model=ModelConfig("lenet5"),
        data=DataConfig("cifar10"),
        sparsity=SparsityConfig(method, density, **sp),
        optim=OptimConfig(**(optim or {})),
        seed=seed,
    ).resolve()


def record(store, c, acc=None, reason=None):
    h = c.config_hash()
    store.start(h, c.to_dict())
    if reason:
        store.fail(h, reason)
    else:
        store.finish(h, test_acc=acc, val_acc=acc, nonzeros=1)
    return h


def test_failed_points_are_drawn_dashed_at_chance(tmp_path):
    store = Store(tmp_path)
    record(store, cfg("dense"), 0.6)
    record(store, cfg("dense", seed=1), 0.7)
    for s in range(3):  # all seeds failed at 0.01%: drawn at chance
        record(store, cfg("iter_snip", 1e-4, s), reason="iter_snip: all-zero saliency")
    record(store, cfg("iter_snip", 1e-3, 0), 0.3)  # one of three failed: average the other two
    record(store, cfg("iter_snip", 1e-3, 1), 0.5)
    record(store, cfg("iter_snip", 1e-3, 2), reason="iter_snip: shortfall")
    record(store, cfg("iter_snip", 1e-2, 0), 0.55)
    running = cfg("iter_snip", 1e-2, 1)  # a running row is ignored
    store.start(running.config_hash(), running.to_dict())
    data = plot_runs(store.query({}), tmp_path / "p.png")
    assert (tmp_path / "p.png").exists() and (tmp_path / "p.pdf").exists()
    (panel,) = data.panels
    assert panel.chance == pytest.approx(0.1)
    pts = panel.series["FORCE (paper's) = Iter-SNIP"]
    assert [(p.density, p.failed, p.n_ok, p.n_failed) for p in pts] == [
        (1e-4, True, 0, 3), (1e-3, False, 2, 1), (1e-2, False, 1, 0)]  # fmt: skip
    assert (pts[0].mean, pts[0].min, pts[0].max) == (0.1, 0.1, 0.1)
    assert (pts[1].mean, pts[1].min, pts[1].max) == pytest.approx((0.4, 0.3, 0.5))
    dense = panel.dense["Dense"]
    assert (dense.mean, dense.min, dense.max) == pytest.approx((0.65, 0.6, 0.7))
    assert "drawn at chance" in data.table()


def test_failed_points_sit_at_the_data_sets_own_chance(tmp_path):
    """Chance is 1/classes of the panel's data set: 1% on CIFAR-100, 0.5% on Tiny ImageNet."""
    store = Store(tmp_path)
    for dataset in ("cifar100", "tiny_imagenet"):
        c = dataclasses.replace(cfg("iter_snip", 1e-4), data=DataConfig(dataset)).resolve()
        record(store, c, reason="iter_snip: all-zero saliency")
        record(store, dataclasses.replace(c, seed=1).resolve(), reason="shortfall")
    data = plot_runs(store.query({}), tmp_path / "p.png")
    chances = {p.dataset: p.chance for p in data.panels}
    assert chances == pytest.approx({"cifar100": 0.01, "tiny_imagenet": 0.005})
    for p in data.panels:
        (pt,) = next(iter(p.series.values()))
        assert pt.failed and pt.mean == pytest.approx(chances[p.dataset])


def test_curves_split_by_what_differs(tmp_path):
    store = Store(tmp_path)
    record(store, cfg("dctps", 0.01, optim={"recipe": "sgd"}), 0.5)
    record(store, cfg("dctps", 0.01), 0.4)
    record(store, cfg("dctps", 0.01, train_alpha=False), 0.3)
    record(store, cfg("random", 0.01, rigl=True), 0.2)
    (panel,) = aggregate(store.query({}))
    # a recipe that differs within the panel is named on every curve of it
    expected = {"DCTpS [recipe=lenet]", "DCTpS [recipe=sgd]", "DCTpS, fixed α = 1 [recipe=lenet]",
                "RigL (ERK) [recipe=lenet]"}  # fmt: skip
    assert set(panel.series) == expected


def test_curves_do_not_split_on_non_identity_fields_or_keys_older_rows_lack(tmp_path):
    """One experiment is one curve: a seed run with --batched-rebuild on (not part of a run's
    identity), or stored by an older version whose config lacks a newer field, joins it."""
    import dataclasses

    store = Store(tmp_path)
    record(store, cfg("dctps", 0.01, seed=0), 0.4)
    record(store, dataclasses.replace(cfg("dctps", 0.01, seed=1), batched_rebuild="on"), 0.5)
    old = cfg("dctps", 0.01, seed=2)
    d = old.to_dict()
    del d["batched_rebuild"], d["sparsity"]["offset"]  # as an older version stored it
    store.start(old.config_hash(), d)
    store.finish(old.config_hash(), test_acc=0.6, val_acc=0.6, nonzeros=1)
    (panel,) = aggregate(store.query({}))
    assert list(panel.series) == ["DCTpS"]
    (pt,) = panel.series["DCTpS"]
    assert pt.n_ok == 3 and pt.mean == pytest.approx(0.5)


def test_an_incomplete_figure_says_so_and_names_the_missing_runs(tmp_path):
    configs = [cfg("dctps", 0.01, seed=s) for s in range(3)]
    store = Store(tmp_path)
    for c in configs[:2]:
        record(store, c, 0.5)
    data = F.draw("density-lenet5-cifar10", store, configs, tmp_path / "f.png")
    assert data.missing == 1 and data.missing_runs == [configs[2].summary()]
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["missing_runs"] == [configs[2].summary()]


def test_plot_out_without_a_suffix_writes_and_reports_png(tmp_path):
    store = Store(tmp_path)
    record(store, cfg("dctps", 0.01), 0.4)
    data = plot_runs(store.query({}), tmp_path / "fig")
    assert [p.name for p in data.paths] == ["fig.png", "fig.pdf", "fig.json"]
    assert all(p.is_file() for p in data.paths)


def test_cli_plot_out_folder_writes_plot_png_inside(tmp_path):
    """`--out figs/` (or an existing folder) is a folder, as for train/sweep/figure: it wrote
    ./figs.png, ./figs.pdf and ./figs.json instead. The "wrote" line names all three files."""
    store = Store(tmp_path)
    record(store, cfg("dctps", 0.01), 0.4)
    for out in (f"{tmp_path / 'figs'}/", str(tmp_path)):
        r = runner.invoke(app, ["plot", "--db", str(tmp_path), "--out", out])
        assert r.exit_code == 0, r.output
        folder = Path(out)
        names = ("plot.png", "plot.pdf", "plot.json")
        assert all((folder / n).is_file() for n in names)
        assert r.output.splitlines()[-1] == "wrote " + ", ".join(str(folder / n) for n in names)
    assert not (tmp_path / "figs.png").exists()


def test_a_figure_never_replaces_a_file_it_did_not_write(tmp_path):
    """`dctps results --json runs.json`, then `dctps plot --out runs.png`: the plot's JSON data
    replaced the export without a word. A file of another kind at any of the figure's three
    paths is refused, before anything is written; the figure's own files are replaced."""
    store = Store(tmp_path)
    record(store, cfg("dctps", 0.01), 0.4)
    export = tmp_path / "runs.json"
    r = runner.invoke(app, ["results", "--db", str(tmp_path), "--json", str(export)])
    assert r.exit_code == 0, r.output
    before = export.read_bytes()
    assert before.startswith(b"[")
    r = runner.invoke(app, ["plot", "--db", str(tmp_path), "--out", str(tmp_path / "runs.png")])
    assert isinstance(r.exception, DctpsError), r.output
    assert f"{export} exists and is not a figure's JSON data" in str(r.exception)
    assert export.read_bytes() == before
    assert not (tmp_path / "runs.png").exists() and not (tmp_path / "runs.pdf").exists()
    # a PDF beside a PNG figure that is no PDF; an empty file, or the figure's own, is replaced
    (tmp_path / "fig.pdf").write_text("my notes")
    with pytest.raises(DctpsError, match="fig.pdf exists and is not a PDF"):
        F.check_figure_path(tmp_path / "fig.png")
    (tmp_path / "fig.pdf").write_text("")
    for _ in range(2):
        r = runner.invoke(app, ["plot", "--db", str(tmp_path), "--out", str(tmp_path / "fig")])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")


def test_dctps_curves_are_drawn_above_the_baselines(tmp_path, monkeypatch):
    """DCTpS is drawn first; at the same accuracy as a baseline (a quick run at chance) its
    line was hidden under the baseline's."""
    from dctps.results import plots

    store = Store(tmp_path)
    for method in ("dctps", "random", "snip"):
        record(store, cfg(method, 0.01), 0.1)
    axes = []
    real = plots._subplots

    def subplots(*a, **k):
        fig, ax = real(*a, **k)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(plots, "_subplots", subplots)
    plot_runs(store.query({}), tmp_path / "f.png")
    z = {ln.get_label(): ln.get_zorder() for ln in axes[0].flat[0].lines}
    assert z["DCTpS"] > max(v for k, v in z.items() if k in ("Random", "SNIP"))


def test_cli_plot_where(tmp_path):
    store = Store(tmp_path)
    record(store, cfg("dctps", 0.01), 0.4)
    record(store, cfg("snip", 0.01), 0.2)
    out = tmp_path / "sub.png"
    r = runner.invoke(app, ["plot", "--db", str(tmp_path), "--where", "method=snip",
                            "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    (panel,) = json.loads(out.with_suffix(".json").read_text())["panels"]
    assert list(panel["series"]) == ["SNIP"] and panel["series"]["SNIP"][0]["mean"] == 0.4 / 2
    r = runner.invoke(app, ["plot", "--db", str(tmp_path), "--where", "method=grasp",
                            "--out", str(out)])  # fmt: skip
    assert isinstance(r.exception, DctpsError) and "nothing to plot" in str(r.exception)
    assert "method holds: dctps, snip" in str(r.exception)  # what the filter could have said


# ----------------------------------------------------------------------------- allocation figures
def test_a2_and_c10_allocation_figures(tmp_path):
    from dctps.budgets_report import budget_rows

    data = F.run_figure("A.2", tmp_path, models=["lenet5"], densities=[0.01], echo=lambda s: None)
    (series,) = data.values()
    epl = [r.nonzeros for r in budget_rows("lenet5", 0.01, "epl")]
    assert series["EPL"] == epl and sum(series["EPF"]) == sum(epl) == round(0.01 * 61510)
    assert (tmp_path / "figures" / "A.2-lenet5-cifar10.png").exists()  # not the paper's A.2
    assert not (tmp_path / "figures" / "A.2.png").exists()

    data = F.run_figure("C.10", tmp_path, quick=True, models=["lenet5", "fixup_resnet110"],
                        echo=lambda s: None)  # fmt: skip
    lenet, fixup = data.values()
    assert sum(lenet["SynFlow"]) == round(0.01 * 61510) and lenet["EPL"] == epl
    assert list(fixup) == ["EPL"]  # SynFlow cannot prune Fixup (App. D.2): only EPL drawn
    title = [t for t in data if t.startswith("FixupResNet110")][0]
    assert "SynFlow failed" in title
    assert (tmp_path / "figures" / "C.10-quick-lenet5+fixup_resnet110-cifar10.png").exists()
    # another density gets its own file, as a training figure's does (a review: --density 0.05
    # overwrote the 1% figure's files)
    F.run_figure("A.2", tmp_path, models=["lenet5"], densities=[0.05], echo=lambda s: None)
    assert (tmp_path / "figures" / "A.2-lenet5-cifar10-density=0.05.png").exists()
    # training options have no effect on a figure that trains nothing: refused, not ignored
    with pytest.raises(DctpsError, match=r"A.2 trains nothing .*--seeds, --epochs would have"):
        F.run_figure("A.2", tmp_path, models=["lenet5"], seeds=5, epochs=3, echo=lambda s: None)


@pytest.mark.parametrize(
    ("args", "kw"),
    [
        ([], {}),
        (["--quick", "--seeds", "1"], {"quick": True, "seeds": 1}),
        (["--quick", "--model", "resnet18"], {"quick": True, "models": ["resnet18"]}),
        (["--density", "0.01", "--seeds", "2"], {"densities": [0.01], "seeds": 2}),
    ],
)
def test_print_config_prints_the_grid_the_flags_run(tmp_path, args, kw):
    """`--print-config` with --quick/--model/--seeds/--density is the grid `dctps figure` with
    the same flags would run (it used to print the full grid whatever the flags)."""
    import yaml

    from dctps.results.sweep import expand_grid

    name = "density-lenet5-cifar10"
    r = CliRunner().invoke(app, ["figure", name, "--print-config", *args])
    assert r.exit_code == 0, r.output
    printed = yaml.safe_load(r.output)
    runs = {c.config_hash() for c in expand_grid(printed)}
    assert runs == {c.config_hash() for c in F.figure_configs(name, **kw)}


def test_rows_of_a_changed_computation_are_not_averaged_with_todays(tmp_path):
    """A VGG19 row recorded before revision 2 has the same stored config as today's but another
    hash: it must form its own curve, not be averaged with today's runs."""
    from dctps.train.config import ModelConfig as MC

    store = Store(tmp_path)
    new = dataclasses.replace(cfg("dctps", 0.01), model=MC("vgg19"))
    record(store, new, 0.9)
    store.start("0123456789abcdef", new.to_dict())  # the old hash of the same stored config
    store.finish("0123456789abcdef", test_acc=0.3, val_acc=0.3, nonzeros=1)
    (panel,) = aggregate(store.query({}))
    assert sorted(panel.series) == ["DCTpS", "DCTpS [recorded_by=an older dctps]"]
    assert panel.series["DCTpS"][0].mean == pytest.approx(0.9)
    # the results table tells them apart the same way (it showed two identical-looking rows)
    from dctps.results.store import variant_column

    rows = store.query({})
    marks = dict(zip([r["hash"] for r in rows], variant_column(rows), strict=True))
    assert marks["0123456789abcdef"] == "recorded_by=an older dctps"
    assert marks[new.config_hash()] == ""  # today's run needs no mark


def test_a_method_option_names_its_pairs_and_the_default_run_reads_no_options(tmp_path):
    """A combinations review: beside a run with `exclude`, the default DCTpS run was labelled
    `DCTpS [options={}]` and its variant `options={}`."""
    from dctps.results.store import variant_column

    store = Store(tmp_path)
    plain = record(store, cfg("dctps", 0.01), 0.5)
    ex = record(store, cfg("dctps", 0.01, options={"exclude": ["fc3"]}), 0.4)
    rows = store.query({})
    marks = dict(zip([r["hash"] for r in rows], variant_column(rows), strict=True))
    assert marks == {plain: "no options", ex: 'exclude=["fc3"]'}
    (panel,) = aggregate(rows)
    assert sorted(panel.series) == ['DCTpS [exclude=["fc3"]]', "DCTpS [no options]"]


def test_identities_resolved_once_per_setting_equal_those_resolved_row_by_row(tmp_path):
    """`dctps results` and the plots resolve a config once for all its seeds (10,000 rows took
    ~2 ms each): the identities must equal run_identity's, row by row, for today's rows, a row
    of an older computation (another hash), a foreign config and undecodable JSON."""
    from dctps.results.store import flat_identities, run_identity
    from dctps.results.variants import flatten

    store = Store(tmp_path)
    today = set()
    for seed in range(3):
        for d in (0.01, 0.05):
            today.add(record(store, cfg("dctps", d, seed), 0.5))
        today.add(record(store, cfg("dense", None, seed, optim={"epochs": 2}), 0.6))
    old = cfg("dctps", 0.01, 7)
    store.start("0123456789abcdef", old.to_dict())  # the stored config of today, another hash
    store.finish("0123456789abcdef", test_acc=0.3, val_acc=0.3, nonzeros=1)
    rows = store.query({})
    rows += [
        {"hash": "f" * 16, "config_json": json.dumps({"seed": 3, "nope": {"x": 1}})},
        {"hash": "e" * 16, "config_json": json.dumps({**old.to_dict(), "seed": "3"})},
        {"hash": "d" * 16, "config_json": "{not json"},
        {"hash": "c" * 16, "config_json": json.dumps({**old.to_dict(), "seed": -1})},
    ]
    got = flat_identities(rows)
    assert got == [flatten(run_identity(r)) for r in rows]
    marked = {r["hash"] for r, g in zip(rows, got, strict=True) if "recorded_by" in g}
    assert "0123456789abcdef" in marked and not marked & today
    seeds = [g["seed"] for r, g in zip(rows, got, strict=True) if r["hash"] in today]
    assert sorted(seeds) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_varying_keys_tell_values_apart_as_their_json_does():
    """`_key` skips JSON for plain scalars; it must still tell 1, 1.0 and True apart, and see
    every NaN as the same value (JSON writes them alike)."""
    from dctps.results.variants import varying_keys

    nan = float("nan")
    assert varying_keys([{"a": 1}, {"a": 1.0}]) == ["a"]
    assert varying_keys([{"a": True}, {"a": 1}]) == ["a"]
    assert varying_keys([{"a": "1"}, {"a": 1}]) == ["a"]
    assert varying_keys([{"a": None}, {"a": "None"}]) == ["a"]
    assert varying_keys([{"a": nan}, {"a": float("nan")}, {"a": nan}]) == []
    assert varying_keys([{"a": -0.0}, {"a": 0.0}]) == ["a"]
    assert varying_keys([{"a": 2, "b": "x"}, {"a": 2, "b": "x"}]) == []


# ----------------------------------------------------------------------------- overridden figures
def test_a_figure_names_the_data_set_and_model_it_ran_not_the_papers():
    """`dctps figure density-resnet18-cifar10 --quick --dataset digits` trains on digits: its title
    and file name must not claim ResNet18 on CIFAR-10 (they used to)."""
    name = "density-resnet18-cifar10"
    paper = F.figure_setup(name, F.figure_configs(name, quick=True), quick=True)
    assert paper.is_paper and paper.title() == "Accuracy vs density: ResNet18, CIFAR-10"
    assert paper.stem(quick=True) == "density-resnet18-cifar10-quick"
    digits = F.figure_setup(
        name, F.figure_configs(name, quick=True, datasets=["digits"]), quick=True
    )
    assert not digits.is_paper
    assert digits.title() == ("Accuracy vs density: ResNet18, digits\n"
                              "not the paper's setting: data set cifar10 → digits")  # fmt: skip
    assert "CIFAR-10" not in digits.title()
    assert digits.stem(quick=True) == "density-resnet18-cifar10-quick-resnet18-digits"
    # the same data set set with --set, or the paper's own data set named again
    via_set = F.figure_setup(name, F.figure_configs(name, {"data": {"dataset": "digits"}}))
    assert via_set.title() == digits.title() and via_set.stem() == digits.stem()
    same = F.figure_setup(name, F.figure_configs(name, datasets=["cifar10"], models=["resnet18"]))
    assert same.is_paper and same.stem() == name
    # a model override has the same problem; different overrides never share a file
    lenet = F.figure_setup(name, F.figure_configs(name, models=["lenet5"]))
    assert lenet.title().startswith("Accuracy vs density: LeNet-5, CIFAR-10\n")
    assert "model resnet18 → lenet5" in lenet.title()
    stems = {
        F.figure_setup(name, F.figure_configs(name, models=m, datasets=d)).stem()
        for m, d in [(None, ["digits"]), (["lenet5"], None), (["lenet5"], ["digits"]),
                     (None, ["cifar100"]), (None, ["cifar10", "cifar100"]), (None, None)]
    }  # fmt: skip
    assert len(stems) == 6


def test_overriding_what_the_title_names_beyond_model_and_data_set():
    """A.4's title says "SGD with momentum": another optimizer or recipe must show in the title
    and file name; A.1's title names its data set."""
    a4 = F.figure_setup("A.4")
    assert a4.title() == "Figure A.4: SGD with momentum, ResNet50 and VGG19" and a4.is_paper
    with pytest.raises(
        DctpsError, match=r"optimizer 'adam' with recipe 'sgd'.*give optim\.lr \(--lr\)"
    ):
        F.figure_configs("A.4", {"optim": {"optimizer": "adam"}})  # SGD's lr for Adam: refused
    adam = F.figure_setup(
        "A.4", F.figure_configs("A.4", {"optim": {"optimizer": "adam", "lr": 0.001}})
    )
    assert adam.title().startswith("Figure A.4: Adam, ResNet50 and VGG19\n")
    assert (
        "optim.optimizer sgd → adam" in adam.title()
        and "optim.lr 0.03, 0.1 → 0.001" in adam.title()
    )
    assert "momentum" not in adam.title()  # follows from Adam: not a change of its own
    assert adam.stem() == "A.4-optimizer=adam-lr=0.001"
    lenet = F.figure_setup("A.4", F.figure_configs("A.4", {"optim": {"recipe": "lenet"}}))
    assert "optim.recipe sgd → lenet" in lenet.title() and "SGD" not in lenet.title()
    a1 = F.figure_setup(
        "A.1", F.figure_configs("A.1", quick=True, datasets=["cifar10"]), quick=True
    )
    assert a1.title().startswith("Figure A.1: DCTpS vs SynFlow and FORCE, CIFAR-10\n")
    assert "Tiny ImageNet" not in a1.title() and a1.stem(True) == "A.1-quick-resnet18-cifar10"
    a2 = F.figure_setup("A.2", pairs=F.allocation_pairs("A.2", None, ["cifar100"]))
    assert "data set cifar10 → cifar100" in a2.title()
    assert a2.stem() == "A.2-resnet50+vgg19-cifar100"
    assert F.figure_setup("A.2").stem() == "A.2" and F.figure_setup("A.2").is_paper


def test_dry_run_and_print_config_name_what_runs(tmp_path):
    name = "density-lenet5-cifar10"
    args = ["figure", name, "--quick", "--dataset", "digits", "--density", "0.01", "--seeds", "1"]
    r = runner.invoke(app, [*args, "--dry-run", "--out", str(tmp_path)])
    # the plan and the figure's name are printed; then the dry run refuses, as the sweep would,
    # a grid whose model cannot take its data set (LeNet-5 needs 32x32 images, digits are 8x8)
    assert r.exit_code == 1 and "LeNet-5 needs 32x32" in str(r.exception), r.output
    png = tmp_path / "figures" / "density-lenet5-cifar10-quick-lenet5-digits-density=0.01.png"
    assert r.output.strip().splitlines()[-1] == (
        f"it would draw {png}: Accuracy vs density: LeNet-5, digits — not the paper's setting: "
        "data set cifar10 → digits; density 1%, 0.1% → 1%")  # fmt: skip
    r = runner.invoke(app, [*args, "--print-config"])
    assert r.exit_code == 0, r.output
    head = r.output.splitlines()[:3]
    assert head[0] == (f"# Figure {name}: Accuracy vs density: LeNet-5, digits (quick) — not the "
                       "paper's setting: data set cifar10 → digits; "
                       "density 1%, 0.1% → 1%")  # fmt: skip
    assert "CIFAR-10" not in r.output and f"configs/{name}.yaml" not in r.output
    assert head[2] == (f"# Draw: dctps figure {name} --config grid.yaml --quick --dataset digits "
                       "--density 0.01 --seeds 1 --plot-only")  # fmt: skip
    r = runner.invoke(app, ["figure", "A.2", "--dataset", "cifar100", "--dry-run",
                            "--out", str(tmp_path)])  # fmt: skip
    assert f"{tmp_path / 'figures' / 'A.2-resnet50+vgg19-cifar100.png'}:" in r.output


def test_a_figure_whose_runs_a_flag_changed_is_titled_and_filed_as_such(tmp_path):
    """`--set optim.lr=0.01`, `--epochs 5` or `--set data.subset=500` trained other runs, yet
    the figure was titled as the paper's and written over the paper's file."""
    name = "density-lenet5-cifar10"

    def drawn(*flags):
        r = runner.invoke(app, ["figure", name, "--quick", "--dry-run", "--out", str(tmp_path),
                                *flags])  # fmt: skip
        (line,) = [ln for ln in r.output.splitlines() if ln.startswith("it would draw")]
        return line.removeprefix(f"it would draw {tmp_path / 'figures'}/")

    paper = "density-lenet5-cifar10-quick.png: Accuracy vs density: LeNet-5, CIFAR-10"
    assert drawn() == paper
    assert drawn("--device", "cpu") == paper  # not part of a run's identity: the same runs
    assert drawn("--set", "optim.lr=0.01") == (
        "density-lenet5-cifar10-quick-lr=0.01.png: Accuracy vs density: LeNet-5, CIFAR-10 — "
        "not the paper's setting: optim.lr 0.001 → 0.01")  # fmt: skip
    # the quick figure's own sizes are the reference; milestones that follow epochs go unsaid
    assert drawn("--epochs", "5", "--set", "data.subset=500") == (
        "density-lenet5-cifar10-quick-subset=500-epochs=5.png: Accuracy vs density: LeNet-5, "
        "CIFAR-10 — not the paper's setting: data.subset 2000 → 500; optim.epochs 2 → 5"
    )
    assert drawn("--set", "optim.lr=0.001") == paper  # the figure's own value: no change
    # a value that only follows a changed setting goes unsaid; one set by hand beside it is
    # named (a review: `--set optim.recipe=sgd --set optim.lr=0.5` shared the recipe's file)
    recipe = drawn("--set", "optim.recipe=sgd")
    assert recipe.startswith("density-lenet5-cifar10-quick-recipe=sgd.png: ") and "lr" not in recipe
    assert drawn("--set", "optim.recipe=sgd", "--set", "optim.lr=0.5").startswith(
        "density-lenet5-cifar10-quick-lr=0.5-recipe=sgd.png: "
    )
    assert "milestones=_1_" in drawn("--set", "optim.recipe=sgd", "--epochs", "6",
                                     "--set", "optim.milestones=[1]")  # fmt: skip
    # a figure whose recipe has milestones (A.4, SGD): they follow --epochs, unsaid (a
    # mutation audit: no test drew such a figure with other epochs)
    r = runner.invoke(app, ["figure", "A.4", "--dry-run", "--epochs", "100", "--out",
                            str(tmp_path)])  # fmt: skip
    (a4,) = [ln for ln in r.output.splitlines() if ln.startswith("it would draw")]
    assert a4.endswith("A.4-epochs=100.png: Figure A.4: SGD with momentum, ResNet50 and VGG19 — "
                       "not the paper's setting: optim.epochs 200 → 100")  # fmt: skip
    # a field left out of the identity at its default shows it; methods without the setting
    # (snip's allocation) add no "None"
    assert "optim.fused False → True" in drawn("--set", "optim.fused=true")
    alloc = drawn("--set", "sparsity.allocation=uniform")
    assert alloc.startswith("density-lenet5-cifar10-quick-allocation=uniform.png: ")
    assert alloc.endswith("sparsity.allocation epl, erk, uniform → uniform")
    # some runs fused, some not: not filed or titled as all fused (a review)
    from dctps.results import figures as F

    plain = F.figure_configs(name, quick=True)
    half = plain + F.figure_configs(name, {"optim": {"fused": True}}, quick=True)
    mixed = F.figure_setup(name, half, quick=True)
    assert "optim.fused False → False, True" in mixed.title()
    assert "fused=False+True" in mixed.stem()
    # runs of only the methods that have an allocation: no "allocation X → X" from the None of
    # the others
    some = F.figure_setup(name, [c for c in plain if c.sparsity.allocation is not None], quick=True)
    changes = some.title().split("not the paper's setting: ", 1)[1].split("; ")
    assert all(a != b for a, b in (c.split(" ", 1)[1].split(" → ") for c in changes)), changes
    assert not any(c.startswith("sparsity.allocation") for c in changes), changes


def test_a_drawn_figure_with_an_overridden_data_set_is_titled_and_filed_as_such(
    tmp_path, monkeypatch
):
    name = "density-lenet5-cifar10"
    kw = {"quick": True, "datasets": ["digits"], "densities": [0.01], "seeds": 1}
    store = Store(tmp_path)
    for c in F.figure_configs(name, **kw)[:2]:
        record(store, c, 0.5)
    built = []
    real = F.figure_setup
    monkeypatch.setattr(F, "figure_setup", lambda *a, **k: built.append(1) or real(*a, **k))
    data = F.run_figure(name, tmp_path, plot_only=True, echo=lambda s: None, **kw)
    assert len(built) == 1  # the drawing takes the Setup that named the file
    png = tmp_path / "figures" / "density-lenet5-cifar10-quick-lenet5-digits-density=0.01.png"
    assert data.paths[0] == png and png.is_file()
    assert not (tmp_path / "figures" / "density-lenet5-cifar10-quick.png").exists()
    saved = json.loads(png.with_suffix(".json").read_text())
    assert saved["title"].startswith("Accuracy vs density: LeNet-5, digits\n")
    assert [p["title"] for p in saved["panels"]] == ["LeNet-5, digits"]


def test_plot_only_with_nothing_to_draw_names_the_settings_that_differ(tmp_path):
    """`figure --plot-only` over a store whose runs were trained with other settings said only
    "no finished or failed runs match"; it now names the nearest run and how it differs."""
    name = "density-lenet5-cifar10"
    kw = {"quick": True, "datasets": ["digits"], "densities": [0.01], "seeds": 1}
    store = Store(tmp_path)
    c = F.figure_configs(name, **kw)[0]
    record(store, c, 0.5)
    with pytest.raises(DctpsError) as e:
        F.run_figure(name, tmp_path, quick=True, plot_only=True, echo=lambda s: None)
    msg = str(e.value)
    assert msg.startswith(
        f"nothing to plot: none of the figure's 17 runs has a result. The store's nearest run, "
        f"{c.config_hash()}, differs from them in dataset=digits (the figure's: cifar10), "
        "subset=all (the figure's: 2000): give the figure those settings"
    ), msg
    assert msg.endswith(f"or run the figure without --plot-only to train them (store: "
                        f"{tmp_path / 'results.db'})") and len(msg) < 600  # fmt: skip
    assert not (tmp_path / "figures").exists()
    with pytest.raises(DctpsError, match=r"The store holds no finished run of vgg19: run the"):
        F.run_figure("density-vgg19-cifar10", tmp_path, quick=True, plot_only=True,
                     echo=lambda s: None)  # fmt: skip
    # a setting the figure leaves at its default (offset dct, left out of its identity), and a
    # method's options, are compared too (a diff review: the first was dropped, the second's
    # "no options" raised an IndexError)
    store = Store(tmp_path / "b")
    near = F.figure_configs(name, quick=True, seeds=1)
    record(store, dataclasses.replace(near[1], sparsity=dataclasses.replace(
        near[1].sparsity, offset="hadamard")), 0.5)  # fmt: skip
    with pytest.raises(DctpsError, match=r"differs from them in offset=hadamard \(the figure's: "
                       r"dct\): give"):  # fmt: skip
        F.run_figure(name, tmp_path / "b", quick=True, plot_only=True, echo=lambda s: None)


def test_nearest_difference_finds_the_closest_pair_and_orders_its_keys():
    have = [{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "c": 3, "data.dataset": "x"}]
    want = [{"a": 9, "b": 9, "c": 9}, {"a": 1, "b": 5, "c": 4, "data.dataset": "y"}]
    assert F.nearest_difference(have, want) == (1, 1, ["data.dataset", "c"])
    assert F.nearest_difference(have, want, shown=1) == (1, 1, ["data.dataset"])
    assert F.nearest_difference([{"k": 1}], [{"j": 1}])[2] == ["j", "k"]  # a key one lacks


def test_a_quick_grid_of_mixed_quick_sizes_is_not_printed():
    """offsets mixes LeNet-5 and ResNet18, whose quick sizes differ: the printed YAML had an
    empty base, so its sweep trained every run at full size. Refused, with what to do."""
    r = runner.invoke(app, ["figure", "offsets", "--quick", "--print-config"])
    assert isinstance(r.exception, DctpsError)
    assert "mixes models of different quick sizes (lenet5: 2 epochs" in str(r.exception)
    one = runner.invoke(app, ["figure", "offsets", "--quick", "--model", "lenet5",
                              "--print-config"])  # fmt: skip
    assert one.exit_code == 0 and "subset: 2000" in one.output


def test_quick_figures_say_so_and_overridden_lists_get_their_own_file(tmp_path):
    """A quick figure notes its schedule (its accuracies are not the paper's); --density and
    --seeds are overrides too: another file and a "not the paper's setting" line (they wrote
    over the quick figure without a word)."""
    name = "density-lenet5-cifar10"
    store = Store(tmp_path)
    quick = F.figure_configs(name, quick=True)
    for c in quick:
        record(store, c, 0.3)
    data = F.run_figure(name, tmp_path, quick=True, plot_only=True, echo=lambda s: None)
    assert data.paths[0].name == "density-lenet5-cifar10-quick.png"
    assert data.note == (
        "quick run, not the paper's schedule: LeNet-5 2 epochs on the first 2000 images of "
        "each split; 1 seed; pruning shortened: FORCE (published) steps=5; FORCE (paper's) = "
        "Iter-SNIP steps=5; SynFlow iterations=10"
    )
    # the shortened schedules are in the note, not in the labels (a diff review: Iter-SNIP's
    # num_batches=1 stays in the identity only off CIFAR-10, and one method read as two curves)
    assert not any("[" in label for p in data.panels for label in p.series)
    assert json.loads(data.paths[2].read_text())["note"] == data.note
    kw = {"quick": True, "densities": [0.001], "seeds": 3}
    for c in F.figure_configs(name, **kw):
        record(store, c, 0.2)
    more = F.run_figure(name, tmp_path, plot_only=True, echo=lambda s: None, **kw)
    assert more.paths[0].name == "density-lenet5-cifar10-quick-density=0.001-seeds=0..2.png"
    assert more.title.endswith("density 1%, 0.1% → 0.1%; seeds 0 → 0..2")
    assert "; 3 seeds; pruning shortened: " in more.note


def test_a_fixed_alpha_label_names_the_value_it_keeps():
    """--fixed-alpha keeps alpha at --alpha-init: a Kaiming-initialised run was labelled
    'fixed α = 1'."""
    from dctps.results.plots import default_label

    def cfg(**s):
        return {"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"},
                "sparsity": {"method": "dctps", "density": 0.01, **s}}  # fmt: skip

    assert default_label(cfg(train_alpha=False)).endswith("fixed α = 1")
    assert default_label(cfg(train_alpha=False, alpha_init="kaiming")).endswith("fixed α = Kaiming")
    assert default_label(cfg(train_alpha=False, alpha_init=0.5)).endswith("fixed α = 0.5")
    assert "fixed" not in default_label(cfg(alpha_init="kaiming"))


def test_a_dctps_label_names_its_offset_and_alpha_scope_when_not_the_papers():
    """A combinations review: a DCTpS(+RigL) curve of per-channel alphas was labelled as the
    paper's layer alphas when no other variant sat beside it to be told apart from."""
    from dctps.results.plots import default_label

    def cfg(**s):
        return {"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"},
                "sparsity": {"method": "dctps", "density": 0.01, **s}}  # fmt: skip

    assert default_label(cfg()) == "DCTpS"
    assert default_label(cfg(rigl=True, alpha="channel")) == "DCTpS+RigL, α per channel"
    assert default_label(cfg(offset="hadamard")) == "DCTpS, hadamard"
    assert (default_label(cfg(alpha="channel", charge_alpha=False))
            == "DCTpS, α per channel (+alphas)")  # fmt: skip
    assert (
        default_label(cfg(alpha="channel", train_alpha=False, charge_alpha=False))
        == "DCTpS, α per channel, fixed α = 1"
    )  # fixed alphas are never charged
    assert default_label(cfg(offset="dct_signflip", alpha_init="kaiming")) == (
        "DCTpS, dct_signflip, α init Kaiming"
    )
    assert default_label(cfg(alpha_init=2.0)) == "DCTpS, α init 2.0"
    # the offsets figure names them the same way (it adds the paper's own: "DCTpS (dct, paper)")
    from dctps.results.figures import _offset_label

    for s in ({"offset": "gaussian"}, {"alpha": "channel", "charge_alpha": False}, {}):
        want = default_label(cfg(**s))
        assert _offset_label(cfg(**s)) == (want if want != "DCTpS" else "DCTpS (dct, paper)")


def test_print_config_repeats_the_flags_that_apply_on_top_of_the_grid():
    """--set / --epochs / --device / --data-root are not part of the printed grid: --print-config
    ignored them, so the printed recipe ran something else than `dctps figure` with them."""
    from typer.testing import CliRunner

    from dctps.cli import app

    r = CliRunner().invoke(app, ["figure", "A.3", "--quick", "--epochs", "1", "--set",
                                 "optim.lr=0.01", "--print-config"])  # fmt: skip
    assert r.exit_code == 0, r.output
    run, draw = [ln for ln in r.output.splitlines() if ln.startswith(("# Run:", "# Draw:"))]
    for line in (run, draw):
        assert "--epochs 1 --set optim.lr=0.01" in line
    assert "--data-root DIR" in run


def test_an_emptied_layer_is_marked_on_a_budget_figure(tmp_path, monkeypatch):
    """A layer with 0 non-zeros has no bar (nothing to draw on a log axis): it looked like
    missing data in C.10, where SynFlow emptying layers is the point. It gets an x and a legend
    entry in the series' colour."""
    from dctps.results import plots

    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or [Path(path)])
    plots.plot_allocation_panels(
        [("panel", {"SynFlow": [5, 0, 3, 0], "EPL": [2, 2, 2, 2]})], tmp_path / "c10.png"
    )
    (ax,) = [a for a in drawn[0].axes if a.get_visible()]
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(labels) == ["EPL", "SynFlow", "SynFlow: layer with 0 non-zeros"]
    (marks,) = ax.collections
    assert [round(x, 2) for x, _ in marks.get_offsets()] == [0.8, 2.8]  # layers 1 and 3
    plots.plot_allocation({"EPL": [1, 2]}, "t", tmp_path / "a.png")
    assert not drawn[1].axes[0].collections  # nothing empty, nothing marked


def test_a_point_some_seeds_failed_says_so_on_the_figure(tmp_path, monkeypatch):
    """A point averaged over the seeds that ran, some having failed, looked like any other
    point (only the table and JSON told); it is annotated "k/n failed"."""
    from dctps.results import plots

    store = Store(tmp_path)
    ok = cfg("snip", 0.01)
    record(store, ok, 0.4)
    bad = dataclasses.replace(ok, seed=1)
    store.start(bad.config_hash(), bad.to_dict())
    store.fail(bad.config_hash(), "snip: no path from input to output")
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or [Path(path)])
    plots.plot_runs(store.query({}), tmp_path / "f.png")
    texts = [t.get_text() for a in drawn[0].axes for t in a.texts]
    assert texts == ["1/2 failed"]


def test_many_partly_failed_points_are_counted_not_labelled_and_curves_stay_apart(
    tmp_path, monkeypatch
):
    """A scale review: on a 9,000-run figure 713 points carried a "1/10 failed" label (two
    thirds of the drawing time, the curves hidden), and 25 curves shared 10 colours with one
    marker. Past MAX_ANNOTATED_POINTS the panel counts them; a colour's later curves take
    other markers."""
    from dctps.results import plots

    store = Store(tmp_path)
    densities = [10.0 ** (-k / 4) for k in range(1, 12)]
    for method in ("snip", "grasp", "synflow", "random"):
        for d in densities:
            record(store, cfg(method, d), 0.4)
            record(store, cfg(method, d, seed=1), reason=f"{method}: shortfall")
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or [Path(path)])
    monkeypatch.setattr(plots, "MAX_ANNOTATED_POINTS", 40)
    plots.plot_runs(store.query({}), tmp_path / "f.png")
    texts = [t.get_text() for a in drawn[0].axes for t in a.texts]
    assert texts == ["44 points over fewer seeds than were run: see the table"]
    monkeypatch.setattr(plots, "MAX_ANNOTATED_POINTS", 44)
    plots.plot_runs(store.query({}), tmp_path / "f.png")
    assert [t.get_text() for a in drawn[1].axes for t in a.texts] == ["1/2 failed"] * 44
    labels = [f"curve {i}" for i in range(25)]
    colours = plots.series_colours(labels)
    markers = plots.series_markers(colours)
    assert len({(colours[lab], markers[lab]) for lab in labels}) == 25
    assert len(set(colours.values())) < 25 and markers["curve 0"] == "o"


def test_a_single_density_shows_the_seed_spread(tmp_path, monkeypatch):
    """With one density the min-max band has no width: the spread over seeds was invisible."""
    from matplotlib.container import ErrorbarContainer

    from dctps.results import plots

    store = Store(tmp_path)
    for seed, acc in ((0, 0.3), (1, 0.5)):
        record(store, cfg("snip", 0.01, seed=seed), acc)
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or [Path(path)])
    plots.plot_runs(store.query({}), tmp_path / "f.png")
    (ax,) = [a for a in drawn[0].axes if a.get_visible()]
    (bar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = [seg.get_segments() for seg in bar.lines[2]]
    assert [round(y, 6) for y in segments[0][:, 1]] == [30.0, 50.0]


def test_a_method_keeps_its_colour_and_failing_curves_do_not_hide_each_other(tmp_path, monkeypatch):
    """The colour of a curve came from its order in the plot, so `figure` and `plot` drew SNIP
    in different colours; and two methods failing at one density drew their chance markers on
    top of each other (one vanished)."""
    from matplotlib.colors import to_hex

    from dctps.results import plots

    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or [Path(path)])

    def colours(methods):
        store = Store(tmp_path / "-".join(methods))
        for m in methods:
            record(store, cfg(m, 0.01), 0.4)
            record(store, cfg(m, 0.001), reason=f"{m}: no path from input to output")
        plots.plot_runs(store.query({}), tmp_path / "f.png")
        (ax,) = [a for a in drawn[-1].axes if a.get_visible()]
        lines = {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}
        markers = [ln for ln in ax.lines if ln.get_marker() == "o" and ln.get_linestyle() == "None"]
        return {lab: to_hex(ln.get_color()) for lab, ln in lines.items()}, markers

    one, _ = colours(["snip", "synflow"])
    two, markers = colours(["grasp", "synflow", "snip"])
    assert one["SNIP"] == two["SNIP"] and one["SynFlow"] == two["SynFlow"]
    assert len({two[k] for k in ("SNIP", "SynFlow", "GraSP")}) == 3
    xs = sorted(float(m.get_xdata()[0]) for m in markers)  # three failed points at 0.1%
    assert len(xs) == 3 and len(set(xs)) == 3
    assert xs[0] < 0.1 < xs[2] and xs[1] == pytest.approx(0.1)
    assert [float(m.get_ydata()[0]) for m in markers] == pytest.approx([10.0] * 3)
    # labels without a colour of their own take the cycle's first free ones, never a method's
    mixed = plots.series_colours(["DCTpS", "my variant", "DCTpS (ERK)"])
    assert len(set(mixed.values())) == 3
    assert mixed["DCTpS"] == plots.series_colours(["DCTpS"])["DCTpS"]


def test_failed_points_on_a_nonzeros_axis_sit_at_their_budget_and_the_json_is_strict(tmp_path):
    """With ``x='nonzeros'`` a failed point had x = NaN (a failed run records no non-zeros):
    it vanished from the figure and its JSON held a bare NaN that strict parsers reject."""
    store = Store(tmp_path)
    record(store, cfg("snip", 0.01), 0.4)
    h = cfg("snip", 0.001).config_hash()
    store.start(h, cfg("snip", 0.001).to_dict())
    store.fail(h, "snip: no path from input to output", weights=61_706)
    data = plot_runs(store.query({}), tmp_path / "p.png", x="nonzeros")
    (panel,) = data.panels
    pts = panel.series["SNIP"]
    assert [(p.failed, p.x) for p in pts] == [(True, 62), (False, 1)]  # round(0.001 * 61706)
    text = (tmp_path / "p.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert "NaN" not in text


def test_long_figure_file_names_are_compacted_and_capped():
    """`dctps figure --seeds 80` joined 80 seeds into the file name (over the file system's
    255 bytes: the figure could never be written, after its whole sweep). Runs of integers
    are ranges in the name and the title; a name still too long ends in a hash of the whole."""
    from dctps.results import figures as F

    name = "density-lenet5-cifar10"
    seeds = F.figure_setup(name, F.figure_configs(name, quick=True, seeds=80), quick=True)
    assert seeds.stem(True) == f"{name}-quick-seeds=0..79"
    assert "seeds 0 → 0..79" in seeds.title()
    assert F._int_ranges([5, 0, 1, 2, 7, 8]) == ["0..2", "5", "7", "8"]
    many = [round(0.5 / 1.1**i, 6) for i in range(60)]
    stems = set()
    for extra in (0.9, 0.8):
        cfgs = F.figure_configs(name, quick=True, densities=[extra, *many], seeds=3)
        stem = F.figure_setup(name, cfgs, quick=True).stem(True)
        assert len(stem) == F.MAX_STEM and re.fullmatch(r".*-[0-9a-f]{10}", stem), stem
        stems.add(stem)
    assert len(stems) == 2  # two grids, two files


def test_a_figure_path_that_cannot_be_written_is_refused_before_the_sweep(tmp_path):
    """With ``OUT/figures`` a file, a figure trained its whole sweep (days, for a paper figure)
    and only then failed to write; a folder at the ``.png`` path said "cannot write figure X:
    cannot write figure X: that is a folder"."""
    (tmp_path / "figures").write_text("notes")
    printed: list[str] = []
    for dry_run in (True, False):
        with pytest.raises(DctpsError, match=r"figures is a file, not a folder"):
            F.run_figure("density-lenet5-cifar10", tmp_path, quick=True, dry_run=dry_run,
                         echo=printed.append)  # fmt: skip
        with pytest.raises(DctpsError, match=r"figures is a file, not a folder"):
            F.run_figure("A.2", tmp_path, models=["lenet5"], dry_run=dry_run, echo=printed.append)
    assert printed == [] and sorted(p.name for p in tmp_path.iterdir()) == ["figures"]
    (tmp_path / "figures").unlink()
    (tmp_path / "fig.png").mkdir()
    with pytest.raises(DctpsError, match=r"cannot write figure .*fig\.png: that is a folder; give"):
        F.run_figure("density-lenet5-cifar10", tmp_path, quick=True, path=tmp_path / "fig.png",
                     echo=printed.append)  # fmt: skip
    assert not (tmp_path / "results.db").exists()
    # without a suffix the figure is PATH.png + PATH.pdf: a folder named PATH is no obstacle
    (tmp_path / "plot").mkdir()
    F.check_figure_path(tmp_path / "plot")
    (tmp_path / "plot.pdf").mkdir()
    with pytest.raises(DctpsError, match=r"cannot write figure .*plot\.pdf: that is a folder"):
        F.check_figure_path(tmp_path / "plot")
    # a device or FIFO without a suffix: the figure went to new files beside it (/dev/full.png)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DctpsError, match=r"pipe: it is not a regular file, .* such as fig\.png$"):
        F.check_figure_path(fifo)
    assert not (tmp_path / "pipe.png").exists()
    # a dry run of --plot-only lists no runs to train
    F.run_figure("density-lenet5-cifar10", tmp_path, quick=True, plot_only=True, dry_run=True,
                 echo=printed.append)  # fmt: skip
    assert len(printed) == 1 and printed[0].startswith("--plot-only trains nothing; it would draw")


def test_auto_never_averages_one_seeds_test_accuracy_with_anothers_validation(tmp_path):
    """`--metric auto` chose per run: a point whose seed 0 recorded only val_acc and seed 1
    both averaged seed 0's validation accuracy with seed 1's test accuracy (a store edited by
    hand, or mixed from two sources). It picks one accuracy per panel (or per point) now."""
    store = Store(tmp_path)

    def finish(c, **acc):
        store.start(c.config_hash(), c.to_dict())
        store.finish(c.config_hash(), nonzeros=1, **acc)

    finish(cfg("dctps", 0.01, seed=0), val_acc=0.40)
    finish(cfg("dctps", 0.01, seed=1), val_acc=0.50, test_acc=0.90)
    (panel,) = aggregate(store.query({}))
    (pt,) = panel.series["DCTpS"]
    # validation accuracy of both seeds (was (0.40 + 0.90) / 2 under a test-accuracy label)
    assert panel.metric == "val_acc" and pt.metric == "val_acc"
    assert pt.mean == pytest.approx(0.45) and pt.n_ok == 2
    data = plot_runs(store.query({}), tmp_path / "p.png")
    assert "LeNet-5, CIFAR-10 (val_acc, " in data.table()

    # no one accuracy covers the panel, each point has its own: the table names each one
    finish(cfg("dctps", 0.05, seed=0), test_acc=0.70)
    (panel,) = aggregate(store.query({}))
    assert panel.metric == "mixed"
    assert [(p.metric, p.mean) for p in panel.series["DCTpS"]] == [
        ("val_acc", pytest.approx(0.45)), ("test_acc", pytest.approx(0.70))]  # fmt: skip
    table = plot_runs(store.query({}), tmp_path / "p.png").table()
    assert re.search(r"1%.*\(2 seeds\)  val_acc$", table, re.M)
    assert re.search(r"5%.*\(1 seed\)  test_acc$", table, re.M)

    # a point no one accuracy covers is refused, naming it and the way out
    finish(cfg("dctps", 0.05, seed=1), val_acc=0.30)
    with pytest.raises(DctpsError, match=(
        r"^LeNet-5, CIFAR-10, DCTpS at 5%: no accuracy is recorded by every seed \(test_acc: "
        r"seeds 0; val_acc: seeds 1\).*give --metric test_acc or --metric val_acc")):  # fmt: skip
        aggregate(store.query({}))
    (panel,) = aggregate(store.query({}), metric="test_acc")  # given: the runs that have it
    assert [(p.density, p.mean, p.n_ok) for p in panel.series["DCTpS"]] == [
        (0.01, pytest.approx(0.90), 1), (0.05, pytest.approx(0.70), 1)]  # fmt: skip
    r = runner.invoke(app, ["plot", "--db", str(tmp_path), "--out", str(tmp_path / "q.png")])
    assert isinstance(r.exception, DctpsError) and not r.output  # refused before any table
    assert "DCTpS at 5%: no accuracy is recorded by every seed" in str(r.exception)


def test_curves_trained_differently_are_labelled_with_what_differs(tmp_path):
    """A figures review: DCTpS at 40 epochs, SNIP at 2 and dense at 1, all on one recipe, were
    drawn as plain "DCTpS", "SNIP" and "Dense": a 40-point win that was the epochs'."""
    store = Store(tmp_path)
    for seed in (0, 1):
        record(store, cfg("dctps", 0.01, seed=seed, optim={"epochs": 40}), 0.6)
        record(store, cfg("snip", 0.01, seed=seed, optim={"epochs": 2}), 0.2)
    record(store, cfg("dense", optim={"epochs": 1}), 0.3)
    (panel,) = aggregate(store.query({}))
    assert set(panel.series) == {"DCTpS [epochs=40]", "SNIP [epochs=2]"}
    assert list(panel.dense) == ["Dense [epochs=1]"]
    assert panel.series["DCTpS [epochs=40]"][0].n_ok == 2  # the seeds still average together


def test_a_runs_own_method_options_are_always_named(tmp_path):
    """A paths review: a lone DCTpS run with ``exclude=["classifier"]`` (18% of LeNet-5's
    weights trainable at "1%") and a SynFlow run of 3 iterations were drawn as plain "DCTpS" and
    "SynFlow", beside nothing that differed; options left at their defaults are not named."""
    store = Store(tmp_path)
    for seed in (0, 1):
        record(store, cfg("dctps", 0.01, seed=seed, options={"exclude": ["classifier"]}), 0.6)
        record(store, cfg("synflow", 0.01, seed=seed, options={"iterations": 3}), 0.2)
        record(store, cfg("snip", 0.01, seed=seed, options={"num_batches": 1}), 0.3)
    (panel,) = aggregate(store.query({}))
    assert set(panel.series) == {'DCTpS [exclude=["classifier"]]', "SynFlow [iterations=3]", "SNIP"}
    assert panel.series['DCTpS [exclude=["classifier"]]'][0].n_ok == 2
    from dctps.results.store import variant_column

    rows = store.query({})
    variants = {r["method"]: v for r, v in zip(rows, variant_column(rows), strict=True)}
    assert variants == {"dctps": 'exclude=["classifier"]', "synflow": "iterations=3", "snip": ""}


def test_a_recipes_own_learning_rates_are_not_a_difference(tmp_path):
    """Under SGD (Table E.3) DCTpS trains at lr 0.03 and the others at 0.1: the paper's
    setting, not a difference to name. An lr given by hand is."""
    store = Store(tmp_path)
    record(store, cfg("dctps", 0.01, optim={"recipe": "sgd"}), 0.5)
    record(store, cfg("snip", 0.01, optim={"recipe": "sgd"}), 0.4)
    record(store, cfg("dense", optim={"recipe": "sgd"}), 0.6)
    (panel,) = aggregate(store.query({}))
    assert set(panel.series) == {"DCTpS", "SNIP"} and list(panel.dense) == ["Dense"]
    record(store, cfg("random", 0.01, optim={"recipe": "sgd", "lr": 0.03}), 0.3)
    (panel,) = aggregate(store.query({}))
    assert set(panel.series) == {"DCTpS [lr=0.03]", "SNIP [lr=0.1]", "Random [lr=0.03]"}
    # lr 0.1 for every run: one method's default and not another's, yet no difference
    store = Store(tmp_path / "same")
    for method in ("dctps", "snip"):
        record(store, cfg(method, 0.01, optim={"recipe": "sgd", "lr": 0.1}), 0.5)
    (panel,) = aggregate(store.query({}))
    assert set(panel.series) == {"DCTpS", "SNIP"}


def test_recipe_defaults_are_what_a_config_resolves_to():
    """variants compares a run's optimiser settings with its recipe's defaults: they must be
    the ones resolve() fills in, for every recipe and method."""
    from dctps.results.variants import _as_stored, flatten
    from dctps.train.config import RECIPES, recipe_defaults

    for recipe in RECIPES:
        for method in ("dense", "dctps", "snip"):
            for epochs in (None, 10):
                c = cfg(method, None if method == "dense" else 0.01,
                        optim={"recipe": recipe, "epochs": epochs})  # fmt: skip
                resolved = flatten(c.to_dict()["optim"])
                want = {
                    k: _as_stored(v) for k, v in recipe_defaults(recipe, method, epochs).items()
                }
                if epochs is not None:
                    want["epochs"] = epochs  # given, not the recipe's
                assert {k: resolved[k] for k in want} == want, (recipe, method, epochs)


def test_unfinished_runs_are_counted_on_the_point_the_table_and_the_json(tmp_path):
    """A figures review: `dctps plot` dropped running and interrupted seeds silently (a point of
    2 done seeds of 3 looked complete), and its JSON said missing: 0."""
    store = Store(tmp_path)
    record(store, cfg("dctps", 0.01, seed=0), 0.4)
    record(store, cfg("dctps", 0.01, seed=1), 0.5)
    running = cfg("dctps", 0.01, seed=2)
    store.start(running.config_hash(), running.to_dict())
    waiting = cfg("snip", 0.01)  # a curve none of whose runs finished
    store.start(waiting.config_hash(), waiting.to_dict())
    data = plot_runs(store.query({}), tmp_path / "p.png")
    (panel,) = data.panels
    (pt,) = panel.series["DCTpS"]
    assert (pt.n_ok, pt.n_open, pt.mean) == (2, 1, pytest.approx(0.45))
    (none,) = panel.series["SNIP"]
    assert none.n_ok == 0 and none.n_open == 1 and not none.failed and none.mean != none.mean
    table = data.table()
    assert (
        "(2 seeds, 1 without a result yet)" in table and "no result yet (1 run): not drawn" in table
    )
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["missing"] == 2 and "incomplete: 2 of 4 runs" in saved["note"]
    assert len(saved["missing_runs"]) == 2 and all("(running)" in m for m in saved["missing_runs"])


def test_a_figure_counts_the_seeds_each_point_lacks_and_names_runs_that_raised(tmp_path):
    """A figures review: a point of 2 of its 3 seeds looked complete beside one of 3, a method
    with no run yet was absent from the legend, and runs that raised were "no result yet"."""
    configs = [cfg("dctps", 0.01, seed=s) for s in range(3)] + [cfg("snip", 0.01)]
    store = Store(tmp_path)
    for c in configs[:2]:
        record(store, c, 0.5)
    errors = [{"hash": configs[3].config_hash(), "status": "error", "reason": "DctpsError: x"}]
    data = F.draw("density-lenet5-cifar10", store, configs, tmp_path / "f.png", errors=errors)
    (panel,) = data.panels
    (pt,) = panel.series["DCTpS"]
    assert (pt.n_ok, pt.n_open) == (2, 1)
    assert panel.series["SNIP"][0].n_open == 1
    assert data.runs == 2 and data.missing == 2
    saved = json.loads((tmp_path / "f.json").read_text())
    assert "1 raised an error" in saved["note"]
    assert saved["errors"] == [{"hash": configs[3].config_hash(), "reason": "DctpsError: x",
                                "traceback_file": None}]  # fmt: skip


def test_a_figure_says_which_missing_runs_an_older_dctps_recorded(tmp_path):
    """An upgrade review: `dctps figure --plot-only` over a store of 0.1.0 said 14 of 17 runs
    had "no result yet", though the store held them, recorded under their old identities."""
    import sqlite3

    configs = [cfg("dctps", 0.01, seed=s) for s in range(3)]
    store = Store(tmp_path)
    for c in configs:
        record(store, c, 0.5)
    with sqlite3.connect(tmp_path / "results.db") as db:  # as an older dctps hashed it
        db.execute("UPDATE runs SET hash = 'feedfacefeedface' WHERE hash = ?",
                   (configs[2].config_hash(),))  # fmt: skip
    data = F.draw("density-lenet5-cifar10", store, configs, tmp_path / "f.png")
    assert (data.runs, data.missing, data.older) == (2, 1, 1)
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["older"] == 1 and (
        "incomplete: 1 of 3 runs have no result yet (1 recorded by an older dctps only, not "
        "drawn: a computation of theirs changed since)" in saved["note"]
    )


def test_a_partly_failed_dense_baseline_says_so_in_its_legend(tmp_path, monkeypatch):
    """A figures review: a dense baseline of 1 done seed and 2 failed was a plain solid line."""
    from dctps.results import plots

    store = Store(tmp_path)
    record(store, cfg("dense", seed=0), 0.6)
    record(store, cfg("dense", seed=1), reason="loss diverged")
    record(store, cfg("dense", seed=2), reason="loss diverged")
    record(store, cfg("dctps", 0.01), 0.5)
    labels = []
    real = plots.save

    def keep(fig, path):
        labels.extend(t.get_text() for leg in fig.legends for t in leg.get_texts())
        return real(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    plot_runs(store.query({}), tmp_path / "p.png")
    assert "Dense (2/3 failed)" in labels


def test_points_at_one_accuracy_are_dodged_apart(tmp_path, monkeypatch):
    """A figures review: Random, Iter-SNIP and FORCE at one accuracy lay exactly under the
    DCTpS dot, listed in the legend but not seen."""
    from dctps.results import plots

    store = Store(tmp_path)
    for method in ("dctps", "snip", "random"):
        record(store, cfg(method, 0.01), 0.25)
    record(store, cfg("dctps", 0.1), 0.5)
    record(store, cfg("snip", 0.1), 0.4)
    xs: dict[str, list[float]] = {}
    real = plots.save

    def keep(fig, path):
        for line in fig.axes[0].get_lines():
            if line.get_marker() == "o" and not line.get_label().startswith("_"):
                xs[line.get_label()] = list(line.get_xdata())
        return real(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    plot_runs(store.query({}), tmp_path / "p.png")
    at_1 = sorted(v[0] for v in xs.values())
    assert len(set(at_1)) == 3 and at_1[0] < 1 < at_1[-1]  # apart, around 1%
    assert at_1[1] == pytest.approx(1.0)
    assert xs["DCTpS"][1] == xs["SNIP"][1] == pytest.approx(10.0)  # apart already: unmoved
    # a chain of points each within 0.01 of the next is one cluster, whatever their rounding
    from dctps.results.plots import Panel, Point, _coincident_shifts

    def pt(mean):
        return Point(0.01, mean, mean, mean, False, 1, 0, 0.01)

    panel = Panel("lenet5", "cifar10", "t", 0.1, "test_acc",
                  {"A": [pt(0.500040)], "B": [pt(0.500060)], "C": [pt(0.6)]})  # fmt: skip
    assert set(_coincident_shifts(panel)) == {("A", 0.01), ("B", 0.01)}


def test_one_seed_recorded_by_two_older_versions_counts_once(tmp_path):
    """A statistics review: a VGG19 DCTpS seed recorded before VGG19's revision 2 and again
    before support revision 2 (two hashes, neither today's) was averaged as "2 seeds" under the
    plain label "DCTpS". One seed counts once (its most recent record), and a run an older
    version computed says so in its label even alone."""
    import copy

    from dctps.train.config import identity_hash

    store = Store(tmp_path)
    c = RunConfig(model=ModelConfig("vgg19"), data=DataConfig("cifar10"),
                  sparsity=SparsityConfig("dctps", 0.01), seed=0).resolve()  # fmt: skip
    ident = c.identity()
    v1 = copy.deepcopy(ident)
    v1["model"].pop("revision")
    v1["sparsity"].pop("support_revision")
    v2 = copy.deepcopy(ident)
    v2["sparsity"].pop("support_revision")
    import sqlite3

    for h, acc, when in ((identity_hash(v1), 0.30, "2026-01-01T00:00:00+00:00"),
                         (identity_hash(v2), 0.50, "2026-06-01T00:00:00+00:00")):  # fmt: skip
        store.start(h, c.to_dict())
        store.finish(h, test_acc=acc, val_acc=acc, nonzeros=1)
        with sqlite3.connect(store.path) as conn:  # months apart, as two versions' records are
            conn.execute("UPDATE runs SET updated = ? WHERE hash = ?", (when, h))
    (panel,) = aggregate(store.query({}))
    ((label, (pt,)),) = panel.series.items()
    assert label == "DCTpS [recorded_by=an older dctps]"
    assert pt.n_ok == 1 and pt.mean == pytest.approx(0.50)  # the later record
    rows = store.query({})
    later = max(rows, key=lambda r: r["updated"])
    assert later["test_acc"] == pytest.approx(0.50)
    # a failed record after a done one is the seed's record: the point is failed, not 0.50
    store.fail(min(rows, key=lambda r: r["updated"])["hash"], "collapse")  # now the later one
    (panel,) = aggregate(store.query({}))
    assert panel.series["DCTpS [recorded_by=an older dctps]"][0].failed
    record(store, c, 0.9)  # today's run of the same seed: its own curve
    (panel,) = aggregate(store.query({}))
    assert panel.series["DCTpS"][0].mean == pytest.approx(0.9)
    assert panel.series["DCTpS [recorded_by=an older dctps]"][0].failed


def test_a_point_whose_seeds_lack_the_chosen_metric_is_not_failed(tmp_path):
    """A statistics review: with --metric test_acc, two Tiny ImageNet seeds that recorded only a
    validation accuracy were dropped, the third seed's failure was left, and the point was drawn
    "failed" at chance (and the 1% point vanished). Nor is a point failed while a seed runs."""
    store = Store(tmp_path)

    def tiny(density, seed):
        model, data = ModelConfig("resnet18"), DataConfig("tiny_imagenet")
        sparsity = SparsityConfig("synflow", density)
        return RunConfig(model=model, data=data, sparsity=sparsity, seed=seed).resolve()

    for seed in (0, 1):
        h = record(store, tiny(0.001, seed))
        store.finish(h, val_acc=0.3 + 0.1 * seed, test_acc=None, nonzeros=1)
        h = record(store, tiny(0.01, seed))
        store.finish(h, val_acc=0.5, test_acc=None, nonzeros=1)
    record(store, tiny(0.001, 2), reason="collapse")
    (panel,) = aggregate(store.query({}), metric="test_acc")
    lo, hi = panel.series["SynFlow"]
    assert not lo.failed and lo.n_ok == 0 and (lo.n_without, lo.n_failed) == (2, 1)
    assert not hi.failed and hi.n_without == 2
    data = plot_runs(store.query({}), tmp_path / "p.png", metric="test_acc")
    assert "no result (2 without test_acc, 1 failed): not drawn" in data.table()
    assert _nothing_drawn(panel.series["SynFlow"], "test_acc") == "no test_acc"  # the legend's
    (panel,) = aggregate(store.query({}))  # auto: validation accuracy, the failure beside it
    lo, _ = panel.series["SynFlow"]
    assert (lo.n_ok, lo.n_failed, lo.mean) == (2, 1, pytest.approx(0.35))
    # one failed seed and one still running: not yet a failed point
    store2 = Store(tmp_path / "b")
    record(store2, cfg("snip", 0.01, seed=0), reason="collapse")
    store2.start(cfg("snip", 0.01, seed=1).config_hash(), cfg("snip", 0.01, seed=1).to_dict())
    (panel,) = aggregate(store2.query({}))
    (pt,) = panel.series["SNIP"]
    assert not pt.failed and (pt.n_failed, pt.n_open) == (1, 1) and pt.mean != pt.mean


def test_a_quick_note_names_only_the_schedules_it_shortened():
    """A README review: the note listed SNIP's num_batches=1, CIFAR-10's Table E.2 default, as
    shortened. Iter-SNIP's num_batches=1 is named where a panel's data set has another default
    (CIFAR-100: 10), once for the figure."""
    note = F._quick_note(F.figure_configs("A.4", quick=True))
    assert note.endswith("pruning shortened: FORCE (paper's) = Iter-SNIP num_batches=1, steps=5")
    note = F._quick_note(F.figure_configs("density-lenet5-cifar10", quick=True))
    assert "num_batches" not in note and "SynFlow iterations=10" in note


def test_the_table_keeps_its_columns_under_a_long_label(tmp_path):
    """A README review: a label past 34 characters (options, an older version's record) pushed
    its row's density and accuracy out of line with the others."""
    store = Store(tmp_path)
    record(store, cfg("synflow", 0.1, options={"iterations": 3, "schedule": "linear"}), 0.3)
    record(store, cfg("snip", 0.1), 0.2)
    lines = plot_runs(store.query({}), tmp_path / "p.png").table().splitlines()[1:]
    assert len(lines) == 2 and len(lines[0].split("[")[0]) > 34
    assert len({line.index("10%") for line in lines}) == 1


def test_chance_markers_and_one_row_per_seed_at_their_edges():
    """A mutation audit: a panel whose runs disagree on their classes, a ninth curve of one
    colour, and two rows of one seed updated at the same moment."""
    from dctps.results import plots

    assert plots._chance("tiny_imagenet", [{"classes": 200}, {"classes": 100}, {}]) == 1 / 200
    markers = plots.series_markers({f"c{i}": "#000" for i in range(10)})
    assert list(markers.values()) == ["o", "s", "^", "D", "v", "P", "X", "*", "o", "s"]

    def row(status, updated, acc=None):
        return {"seed": 0, "status": status, "updated": updated, "test_acc": acc,
                "density": 0.1, "weights": 100, "nonzeros": 10}  # fmt: skip

    old = row("done", "2024-01-01T00:00:00.000001+00:00", 0.1)
    new = row("done", "2024-01-02T00:00:00.000001+00:00", 0.9)
    running = row("running", "2024-01-03T00:00:00.000001+00:00")
    assert plots._one_per_seed([old, new, running]) == [new]
    assert plots._one_per_seed([running, new, old]) == [new]
    assert plots._one_per_seed([new, dict(new)])[0] is new  # a tie: the first kept


def test_importing_the_plots_leaves_matplotlibs_backend_alone(tmp_path):
    """`dctps.results.plots` called `matplotlib.use("Agg")` at import: a notebook that imported
    it (or `dctps.results.figures`) stopped showing its own inline plots (a packaging review).
    The figures are drawn without pyplot, in a fresh process whose backend is a chosen one."""
    code = (
        "import matplotlib; matplotlib.use('pdf'); import dctps.results.figures, sys;"
        "from dctps.results import plots;"
        "plots.plot_allocation({'a': [1, 2]}, 't', sys.argv[1]);"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.png")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pdf", "False"]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"


def test_a_figure_shows_itself_in_a_notebook(tmp_path):
    """A notebook review: a `FigureData` left as a cell's value printed one line of every
    point of every panel; the figure itself took `IPython.display.Image(fd.paths[0])`. It
    now gives IPython its PNG, and a short repr."""
    store = Store(tmp_path)
    for method in ("dctps", "snip"):
        record(store, cfg(method, 0.01), 0.4)
    fd = plot_runs(store.query({}), tmp_path / "f.png", title="two methods")
    assert fd._repr_png_() == (tmp_path / "f.png").read_bytes()
    text = repr(fd)
    assert text.startswith("FigureData('two methods', 1 panel(s), 2 point(s), paths=[")
    assert "Point(" not in text and len(text) - sum(len(str(p)) for p in fd.paths) < 150
    (tmp_path / "f.png").unlink()
    assert fd._repr_png_() is None  # moved since: the text alone


@pytest.mark.parametrize("name", ["A.6", "A.7", "offsets"])
def test_a_figures_curves_keep_its_grids_order(tmp_path, name):
    """A figure's legend (and so its colours, after the methods' own) follows its grid:
    uniform, EPL, EPF, ERK in A.7, trainable before fixed alpha in A.6, as the paper lists
    them; sorting the names had put EPF first and fixed alpha before trainable."""
    configs = F.figure_configs(name, quick=True)
    spec = F.get(name)
    expected = list(dict.fromkeys(spec.label(c.to_dict()) for c in configs
                                  if c.sparsity.method != "dense"))  # fmt: skip
    assert len(expected) >= 2 and expected != sorted(expected)  # a test that could fail
    # and with a whole variant not run yet (drawn from the grid's plan, not the store)
    for missing in (None, expected[0]):
        store = Store(tmp_path / str(missing))
        for c in configs:
            if spec.label(c.to_dict()) != missing:
                record(store, c, 0.5)
        data = F.draw(name, store, configs, tmp_path / f"{missing}.png", quick=True)
        for panel in data.panels:
            assert [k.split(" [")[0] for k in panel.series] == expected, missing
