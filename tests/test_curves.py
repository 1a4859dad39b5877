"""Learning curves (`dctps plot --x epoch`, dctps.results.curves): numbers, not pixels."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from dctps.cli import app
from dctps.errors import DctpsError
from dctps.results import Store
from dctps.results import curves as cv
from dctps.results.plots import aggregate
from dctps.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, SparsityConfig

runner = CliRunner()


def cfg(method, density=None, seed=0, model="lenet5", optim=None, **sp):
    return RunConfig(
        model=ModelConfig(model),
        data=DataConfig("cifar10"),
        sparsity=SparsityConfig(method, density, **sp),
        optim=OptimConfig(**(optim or {})),
        seed=seed,
    ).resolve()


def record(store, c, epochs, fail=None, **final):
    """A run of config ``c`` with per-epoch metric dicts ``epochs`` (epoch 1, 2, ...); failed
    with reason ``fail`` after them, else done."""
    h = c.config_hash()
    store.start(h, c.to_dict())
    for i, e in enumerate(epochs, start=1):
        store.log_epoch(h, i, **e)
    if fail:
        store.fail(h, fail)
    else:
        store.finish(h, **{"test_acc": 0.5, "val_acc": 0.5, "nonzeros": 1, **final})
    return h


def stats(vs):
    return sum(vs) / len(vs), min(vs), max(vs)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db")
    acc = {0: [0.2, 0.4, 0.5], 1: [0.3, 0.5, 0.7]}
    for seed in (0, 1):
        record(s, cfg("dense", seed=seed), [{"val_acc": a, "train_loss": 2 - a} for a in acc[seed]])
        sparse = [{"val_acc": a / 2, "train_loss": 2 - a / 2} for a in acc[seed]]
        record(s, cfg("dctps", 0.01, seed), sparse)
        record(s, cfg("dctps", 0.001, seed), sparse[:2])
    # SNIP at 0.1%: seed 0 diverges after epoch 2; seed 1 fails before training (pruning)
    record(s, cfg("snip", 0.001, 0), [{"val_acc": 0.15, "train_loss": 2.1},
                                      {"val_acc": 0.12, "train_loss": math.inf}],
           fail="non-finite loss at epoch 3")  # fmt: skip
    record(s, cfg("snip", 0.001, 1), [], fail="snip: layer collapse")
    return s


def test_curves_average_each_epoch_over_the_seeds_that_recorded_it(store, tmp_path):
    data = cv.plot_curves(store.runs_with_epochs(), tmp_path / "c.png")
    assert [(p.title, p.density, p.metric) for p in data.panels] == [
        ("LeNet-5, CIFAR-10, density 0.1%", 0.001, "val_acc"),
        ("LeNet-5, CIFAR-10, density 1%", 0.01, "val_acc"),
    ]
    low, high = data.panels
    # the dense reference is in every density panel of its model and data set, first
    assert [c.label for c in high.curves] == ["Dense", "DCTpS"]
    assert [c.label for c in low.curves] == ["Dense", "DCTpS", "SNIP"]
    dense = high.curves[0]
    assert dense.dense and (dense.done, dense.failed) == (2, 0)
    for i, pt in enumerate(dense.points):
        assert pt.epoch == i + 1 and pt.n == 2
        assert (pt.mean, pt.min, pt.max) == pytest.approx(stats([[0.2, 0.4, 0.5][i],
                                                                  [0.3, 0.5, 0.7][i]]))  # fmt: skip
    assert [p.epoch for p in low.curves[1].points] == [1, 2]  # its runs stopped at epoch 2
    assert low.curves[1].points[1].mean == pytest.approx((0.2 + 0.25) / 2)
    snip = low.curves[2]
    # the diverged seed is drawn up to its last epoch; the pruning failure has no epoch
    assert (snip.done, snip.failed, sorted(snip.failed_at)) == (0, 2, [0, 2])
    assert [(p.epoch, p.mean, p.n) for p in snip.points] == [(1, 0.15, 1), (2, 0.12, 1)]
    assert snip.reasons == ["non-finite loss at epoch 3", "snip: layer collapse"]
    # (0: no epoch recorded, e.g. pruning failed, or the first epoch's loss diverged)
    assert snip.status() == "2 seeds, 2 failed (1 before recording an epoch, 1 after epoch 2)"
    # the JSON beside the figure holds the same numbers
    written = json.loads((tmp_path / "c.json").read_text())
    assert written["panels"] == json.loads(json.dumps(data.to_dict()))["panels"]
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "c.pdf").exists()
    table = data.table()
    assert "SNIP" in table and "1 after epoch 2" in table
    assert "epoch 3: 60.00% [50.00%, 70.00%] (2 seeds)" in table  # dense at 1%, in %


def test_a_non_finite_value_is_not_averaged_and_losses_read_lowest_best(store):
    (low, _) = cv.aggregate_curves(store.runs_with_epochs(), "train_loss")
    snip = low.curves[2]
    assert [(p.epoch, p.mean) for p in snip.points] == [(1, 2.1)]  # the inf loss of epoch 2
    assert low.metric == "train_loss"


def test_auto_draws_training_accuracy_where_no_run_of_the_panel_validated(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dctps", 0.01), [{"train_acc": 0.3}, {"train_acc": 0.4}])
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    assert p.metric == "train_acc" and [pt.mean for pt in p.curves[0].points] == [0.3, 0.4]


def test_curve_labels_are_the_accuracy_plots_labels(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dctps", 0.01, optim={"recipe": "sgd"}), [{"val_acc": 0.5}])
    record(s, cfg("dctps", 0.01), [{"val_acc": 0.4}])
    record(s, cfg("dctps", 0.01, train_alpha=False), [{"val_acc": 0.3}])
    (panel,) = aggregate(s.query({}))
    (curves,) = cv.aggregate_curves(s.runs_with_epochs())
    assert [c.label for c in curves.curves] == list(panel.series)
    expected = {"DCTpS [recipe=lenet]", "DCTpS [recipe=sgd]", "DCTpS, fixed α = 1 [recipe=lenet]"}
    assert {c.label for c in curves.curves} == expected


def test_store_rows_need_their_epochs_and_too_many_panels_name_a_filter(store, tmp_path):
    rows = store.query({})
    with pytest.raises(DctpsError, match=r"rows\[0\] has no per-epoch records"):
        cv.aggregate_curves(rows)
    # the epochs read apart from the rows (the CLI's chunked reader) give the same panels
    apart = cv.aggregate_curves(rows, epochs=store._with_epochs(rows))
    together = cv.aggregate_curves(store.runs_with_epochs())
    assert [p.to_dict() for p in apart] == [p.to_dict() for p in together]
    s = Store(tmp_path / "many")
    for i in range(cv.MAX_PANELS + 1):
        record(s, cfg("dctps", 0.5 / (i + 1)), [{"val_acc": 0.1}])
    with pytest.raises(DctpsError, match=r"25 learning-curve panels .* more than one figure draws "
                       r"\(24\); filter with --where, e\.g\. --where density="):  # fmt: skip
        cv.aggregate_curves(s.runs_with_epochs())


def test_a_panel_of_dense_runs_only_and_runs_that_never_logged_an_epoch(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dense"), [{"val_acc": 0.5}])
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    assert p.density is None and p.title == "LeNet-5, CIFAR-10"
    only_failed = Store(tmp_path / "f")
    record(only_failed, cfg("snip", 0.001), [], fail="snip: layer collapse")
    with pytest.raises(DctpsError, match="none of the matching runs recorded an epoch"):
        cv.plot_curves(only_failed.runs_with_epochs(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_plot_x_epoch(store, tmp_path):
    db = str(tmp_path / "db")
    out = tmp_path / "figs" / "curves.png"
    r = runner.invoke(app, ["plot", "--db", db, "--x", "epoch", "--where", "density=0.1%",
                            "--metric", "train_loss", "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(out.with_suffix(".json").read_text())
    (panel,) = data["panels"]  # the filter kept the 0.1% runs (dense runs sit at 100%)
    assert panel["density"] == 0.001 and panel["metric"] == "train_loss"
    assert [c["label"] for c in panel["curves"]] == ["DCTpS", "SNIP"]
    assert "LeNet-5, CIFAR-10, density 0.1% (train_loss by epoch" in r.output
    assert "no epoch recorded" not in r.output  # SNIP seed 0 drew epoch 1
    assert f"wrote {out}" in r.output
    # a folder as --out: plot.png in it, as the accuracy plot does
    r = runner.invoke(app, ["plot", "--db", db, "--x", "epoch", "--out", str(tmp_path / "figs")])
    assert r.exit_code == 0 and (tmp_path / "figs" / "plot.json").exists()


def test_a_mean_over_fewer_seeds_says_so_and_is_drawn_dotted(tmp_path, monkeypatch):
    """A seed that stops (failed, or still running) makes the mean jump: the table says how
    many seeds each number covers, and the plot draws those segments dotted and the failure
    with an x, dense curves too."""
    s = Store(tmp_path)
    record(s, cfg("dense", seed=0), [{"val_acc": v} for v in (0.2, 0.4, 0.6)])
    record(s, cfg("dense", seed=1), [{"val_acc": 0.3}, {"val_acc": 0.5}], fail="non-finite loss")
    record(s, cfg("dctps", 0.01, 0), [{"val_acc": v} for v in (0.1, 0.2, 0.3)])
    c = cfg("dctps", 0.01, 1)  # still running, after one epoch
    s.start(c.config_hash(), c.to_dict())
    s.log_epoch(c.config_hash(), 1, val_acc=0.3)
    drawn = []
    from matplotlib.axes import Axes

    real = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, *a, **k: drawn.append((a, k)) or real(ax, *a, **k))
    data = cv.plot_curves(s.runs_with_epochs(), tmp_path / "c.png")
    (p,) = data.panels
    dense, dctps = p.curves
    assert [pt.n for pt in dense.points] == [2, 2, 1] and dense.failed_at == [2]
    assert dctps.status() == "2 seeds, 1 running"
    table = data.table()
    assert "epoch 3: 60.00% [60.00%, 60.00%] over 1 of 2 seeds" in table
    assert "epoch 3: 30.00% [30.00%, 30.00%] over 1 of 2 seeds (2 seeds, 1 running)" in table
    dotted = [a for a, k in drawn if len(a) > 2 and a[2] == ":"]
    # DCTpS: 2 seeds at epoch 1 only, so 1-2 and 2-3; dense: 2-3
    assert sorted(a[0] for a in dotted) == [(1, 2), (2, 3), (2, 3)]
    crosses = [(a[0], k["color"]) for a, k in drawn if len(a) > 2 and a[2] == "x"]
    assert crosses == [([2], "k")]  # the dense seed that failed after epoch 2


def test_segments_split_the_line_where_fewer_seeds_are_averaged():
    solid, thin = cv._segments([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0], [True, True, False, True])
    assert solid[:2] == [1.0, 2.0] and math.isnan(solid[2]) and solid[3] == 4.0
    assert thin == [[(2, 2.0), (3, 3.0)], [(3, 3.0), (4, 4.0)]]
    solid, _ = cv._segments([1, 2], [1.0, 2.0], [True, False])  # one full point: marked alone
    assert all(math.isnan(v) for v in solid)


def test_epochs_without_the_metric_are_not_called_no_epochs(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dctps", 0.01), [{"val_acc": 0.2}])
    c = cfg("dctps", 0.01, optim={"epochs": 3})
    record(s, c, [{"train_acc": 0.1}] * 3)  # trained without validation: epochs, no val_acc
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    text = cv.CurvesData([p], []).table()
    assert "no val_acc in its 3 recorded epochs (1 seed)" in text


def test_too_many_panels_suggest_a_density_that_keeps_the_dense_runs(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dense"), [{"val_acc": 0.5}])
    for i in range(cv.MAX_PANELS + 1):
        record(s, cfg("dctps", 0.5 / (i + 1)), [{"val_acc": 0.1}])
    with pytest.raises(DctpsError) as info:
        cv.aggregate_curves(s.runs_with_epochs())
    msg = str(info.value)
    assert "--where density=50%,100%" in msg and "the dense runs" in msg
    assert "model=" not in msg  # one model: that filter would cut nothing


def test_variants_keep_the_accuracy_plots_colours_and_order_across_densities(tmp_path, monkeypatch):
    """Panels are drawn lowest density first: a variant run only at the lower density took
    the first colour there, and the accuracy plot gave it the second; with two models, each
    model's variants in turn, as the accuracy plot takes them."""
    from matplotlib.figure import Figure

    from dctps.results import plots

    s = Store(tmp_path)
    for seed in (0, 1):
        record(s, cfg("dctps", 0.01, seed, optim={"lr": 0.05}), [{"val_acc": 0.3}])
        record(s, cfg("dctps", 0.001, seed, optim={"lr": 0.01}), [{"val_acc": 0.2}])
        record(s, cfg("dctps", 0.01, seed, "vgg19", optim={"lr": 0.0024}), [{"val_acc": 0.3}])
        record(s, cfg("dctps", 0.01, seed, "vgg19", optim={"lr": 0.01}), [{"val_acc": 0.3}])
        record(s, cfg("dense", None, seed), [{"val_acc": 0.5}])
        # a model whose runs are all still running: no panel in the accuracy plot, so its
        # variants must not take the first colours in the curves' plot either
        h = cfg("dctps", 0.01, seed, "resnet18", optim={"lr": 0.5}).config_hash()
        s.start(h, cfg("dctps", 0.01, seed, "resnet18", optim={"lr": 0.5}).to_dict())
        s.log_epoch(h, 1, val_acc=0.1)
    asked, legends = [], []
    real, legend = plots.series_colours, Figure.legend
    monkeypatch.setattr(cv, "series_colours", lambda labels: asked.append(list(labels)) or
                        real(labels))  # fmt: skip
    monkeypatch.setattr(plots, "series_colours", lambda labels: asked.append(list(labels)) or
                        real(labels))  # fmt: skip
    monkeypatch.setattr(Figure, "legend", lambda fig, h, labs, **k: legends.append(list(labs))
                        or legend(fig, h, labs, **k))  # fmt: skip
    plots.plot_runs(s.query({}), tmp_path / "a.png")
    cv.plot_curves(s.runs_with_epochs(), tmp_path / "c.png")
    first = s.query({})[0]["model"]  # the accuracy plot's first panel: the rows' order
    # its model's variants by value, then the other's new one (lenet5: 0.01, 0.05; vgg19:
    # 0.0024, 0.01): a sort by rank alone across models read 0.0024, 0.01, 0.05 either way
    assert asked[0] == (["DCTpS [lr=0.01]", "DCTpS [lr=0.05]", "DCTpS [lr=0.0024]"]
                        if first == "lenet5" else
                        ["DCTpS [lr=0.0024]", "DCTpS [lr=0.01]", "DCTpS [lr=0.05]"])  # fmt: skip
    # (resnet18 has one setting: its curve is named DCTpS alone)
    assert asked[1][: len(asked[0])] == asked[0] and asked[1][len(asked[0]) :] == ["DCTpS"]
    # the legends list the variants alike, and dense after them
    assert [x for x in legends[1] if x.startswith("DCTpS")] == asked[1]
    assert [x for x in legends[0] if x.startswith("DCTpS")] == asked[0]
    # sparse curves first, dense after them, as each panel of the accuracy plot lists them
    dense = [i for i, x in enumerate(legends[1]) if x.startswith("Dense")]
    assert dense == [len(asked[1])], legends[1]


def test_numbers_sort_as_numbers_signs_included():
    from dctps.results.plots import natural_key

    names = ["x=1", "x=-2", "x=0.5", "x=-1", "a-1", "x=1e-3"]
    assert sorted(names, key=natural_key) == ["a-1", "x=-2", "x=-1", "x=1e-3", "x=0.5", "x=1"]


def test_a_dead_run_is_not_called_running_and_generators_are_counted(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dctps", 0.01), [{"val_acc": 0.3}])
    c = cfg("dctps", 0.01, seed=1)
    s.start(c.config_hash(), c.to_dict())
    s.log_epoch(c.config_hash(), 1, val_acc=0.2)
    # its owner: a process of this host that is gone (as a killed run leaves it)
    s.update(c.config_hash(), owner=f"{__import__('socket').gethostname()}:999999999")
    data = cv.curves_command(str(tmp_path), out=str(tmp_path / "c.png"))
    (curve,) = data.panels[0].curves
    assert curve.status() == "2 seeds, 1 dead"
    gen = cv.plot_curves((r for r in s.runs_with_epochs()), tmp_path / "g.png")
    assert gen.runs == 2


def test_curves_with_nothing_to_draw_are_named_under_their_panel(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    s = Store(tmp_path)
    record(s, cfg("dense"), [{"val_acc": 0.5}])
    record(s, cfg("snip", 0.001), [], fail="snip: layer collapse")
    c = cfg("dctps", 0.001)
    s.start(c.config_hash(), c.to_dict())  # running, no epoch yet
    notes = []
    real = Axes.annotate
    monkeypatch.setattr(Axes, "annotate", lambda ax, text, *a, **k: notes.append(text) or
                        real(ax, text, *a, **k))  # fmt: skip
    cv.plot_curves(s.runs_with_epochs(), tmp_path / "c.png")
    assert notes == ["DCTpS: 1 seed, 1 running, no epoch recorded\n"
                     "SNIP: 1 seed, 1 failed before recording an epoch"]  # fmt: skip
