"""Learning curves, summary tables and progress lines: the cases a mutation audit of
tests/test_curves.py, test_summary.py and test_progress.py found unchecked (session 27): a
mutant of the code for each of them (a median for a mean, a panel dropped, an interrupted run
read as failed, a cell's counts) had passed every test."""

from __future__ import annotations

import io
import sys
import types

import pytest
from test_curves import cfg, record

from dctps import progress
from dctps.results import Store
from dctps.results import curves as cv
from dctps.results.summary import format_summary, summarise, summary_rows
from dctps.train.config import DataConfig, ModelConfig, RunConfig, SparsityConfig


# ---------------------------------------------------------------- curves
def test_a_mean_over_three_seeds(tmp_path):
    s = Store(tmp_path)
    for seed, v in enumerate((0.1, 0.2, 0.6)):
        record(s, cfg("dctps", 0.01, seed), [{"val_acc": v}])
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    (pt,) = p.curves[0].points
    assert (pt.mean, pt.min, pt.max, pt.n) == (pytest.approx(0.3), 0.1, 0.6, 3)


def test_a_seed_recorded_twice_counts_once(tmp_path):
    """Two records of one seed, each by an older version (its own hash): one seed."""
    s = Store(tmp_path)
    c = cfg("dctps", 0.01, 0)
    for old, acc in (("0ld", 0.2), ("1ld", 0.8)):
        h = old + c.config_hash()[3:]
        s.start(h, c.to_dict())
        s.log_epoch(h, 1, val_acc=acc)
        s.finish(h, test_acc=0.5, val_acc=0.5, nonzeros=1)
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    (curve,) = p.curves
    assert curve.seeds == 1 and curve.points[0].n == 1


def test_an_interrupted_run_is_neither_failed_nor_running(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dctps", 0.01, 0), [{"val_acc": 0.2}, {"val_acc": 0.3}])
    h = record(s, cfg("dctps", 0.01, 1), [{"val_acc": 0.1}], fail=None)
    s.update(h, status="interrupted", reason="interrupted after epoch 1")
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    (curve,) = p.curves
    assert (curve.done, curve.failed, curve.open, curve.interrupted) == (1, 0, 1, 1)
    assert curve.status() == "2 seeds, 1 interrupted"


def test_the_table_names_the_best_epoch_lowest_loss(tmp_path):
    s = Store(tmp_path)
    for seed, extra in enumerate((0.0, 0.2)):
        record(s, cfg("dctps", 0.01, seed),
               [{"train_loss": v + extra} for v in (2.34567, 1.23456, 1.5)])  # fmt: skip
    record(s, cfg("dctps", 0.01, 2), [{"train_loss": 1.0}], fail="non-finite loss")
    (p,) = cv.aggregate_curves(s.runs_with_epochs(), "train_loss")
    line = cv.CurvesData([p], []).table().splitlines()[1]
    # epoch 1: 3 seeds (2.34567, 2.54567, 1.0); epoch 2: 2 (1.23456, 1.43456): the lowest mean
    assert line.split(None, 1)[1] == (
        "epoch 3: 1.6 [1.5, 1.7] over 2 of 3 seeds; best at epoch 2: 1.335 over 2 of 3 seeds "
        "(3 seeds, 1 failed after epoch 1)"
    )


def test_exactly_max_panels_are_drawn(tmp_path):
    s = Store(tmp_path)
    for i in range(cv.MAX_PANELS):
        record(s, cfg("dctps", 0.5 / (i + 1)), [{"val_acc": 0.1}])
    assert len(cv.aggregate_curves(s.runs_with_epochs())) == cv.MAX_PANELS


def test_panels_by_model_then_data_set_and_the_filters_named(tmp_path):
    s = Store(tmp_path)

    def run(model, dataset, density):
        c = RunConfig(model=ModelConfig(model), data=DataConfig(dataset),
                      sparsity=SparsityConfig("dctps", density)).resolve()  # fmt: skip
        record(s, c, [{"val_acc": 0.1}])

    run("vgg19", "cifar10", 0.01)
    run("lenet5", "cifar100", 0.01)
    run("lenet5", "cifar10", 0.01)
    got = [(p.model, p.dataset) for p in cv.aggregate_curves(s.runs_with_epochs())]
    assert got == [("lenet5", "cifar10"), ("lenet5", "cifar100"), ("vgg19", "cifar10")]
    for i in range(cv.MAX_PANELS):
        run("lenet5", "cifar10", 0.5 / (i + 2))
    with pytest.raises(cv.DctpsError) as info:
        cv.aggregate_curves(s.runs_with_epochs())
    assert "--where model=lenet5" in str(info.value)
    assert "--where dataset=cifar10" in str(info.value)
    s2 = Store(tmp_path / "one-dataset")
    for i in range(cv.MAX_PANELS + 1):
        c = cfg("dctps", 0.5 / (i + 1))
        record(s2, c, [{"val_acc": 0.1}])
    record(s2, cfg("dctps", 0.5, model="vgg19"), [{"val_acc": 0.1}])
    with pytest.raises(cv.DctpsError) as info:
        cv.aggregate_curves(s2.runs_with_epochs())
    assert "dataset=" not in str(info.value)


def _drawn(monkeypatch):
    from matplotlib.axes import Axes

    calls = {"plot": [], "annotate": []}
    plot, annotate = Axes.plot, Axes.annotate
    monkeypatch.setattr(Axes, "plot", lambda ax, *a, **k: calls["plot"].append((a, k))
                        or plot(ax, *a, **k))  # fmt: skip
    monkeypatch.setattr(Axes, "annotate", lambda ax, t, *a, **k: calls["annotate"].append(t)
                        or annotate(ax, t, *a, **k))  # fmt: skip
    return calls


def test_a_seed_that_failed_at_pruning_is_named_and_the_rest_drawn_solid(tmp_path, monkeypatch):
    s = Store(tmp_path)
    record(s, cfg("snip", 0.01, 0), [{"val_acc": 0.3}, {"val_acc": 0.2}, {"val_acc": 0.1}],
           fail="non-finite loss at epoch 2")  # fmt: skip
    record(s, cfg("snip", 0.01, 1), [], fail="snip: layer collapse")
    calls = _drawn(monkeypatch)
    cv.plot_curves(s.runs_with_epochs(), tmp_path / "c.png")
    assert calls["annotate"] == ["SNIP: 1 of 2 seeds failed before recording an epoch"]
    assert not [a for a, _ in calls["plot"] if len(a) > 2 and a[2] == ":"]  # no dotted line
    (solid,) = [a for a, k in calls["plot"] if k.get("label") == "SNIP"]
    assert solid[1] == pytest.approx([30.0, 20.0, 10.0])
    assert [a[0] for a, _ in calls["plot"] if len(a) > 2 and a[2] == "x"] == [[3]]

    s = Store(tmp_path / "first")
    record(s, cfg("snip", 0.01, 0), [{"val_acc": 0.3}], fail="non-finite loss at epoch 2")
    record(s, cfg("snip", 0.01, 1), [{"val_acc": 0.3}, {"val_acc": 0.2}])
    calls = _drawn(monkeypatch)
    cv.plot_curves(s.runs_with_epochs(), tmp_path / "d.png")
    assert [a[0] for a, _ in calls["plot"] if len(a) > 2 and a[2] == "x"] == [[1]]


def test_the_legend_lists_dense_after_the_sparse_curves(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    s = Store(tmp_path)
    record(s, cfg("dctps", 0.01), [{"val_acc": 0.3}])
    record(s, cfg("dense"), [{"val_acc": 0.5}])
    legends = []
    legend = Figure.legend
    monkeypatch.setattr(Figure, "legend", lambda fig, h, labs, **k: legends.append(list(labs))
                        or legend(fig, h, labs, **k))  # fmt: skip
    cv.plot_curves(s.runs_with_epochs(), tmp_path / "c.png")
    assert legends == [["DCTpS", "Dense"]]


# ---------------------------------------------------------------- summary
def _sum_cfg(method, density=None, seed=0):
    return RunConfig(model=ModelConfig("lenet5"), data=DataConfig("cifar10"),
                     sparsity=SparsityConfig(method, density), seed=seed).resolve()  # fmt: skip


def _start(s, c):
    s.start(c.config_hash(), c.to_dict())
    return c.config_hash()


@pytest.fixture
def partial(tmp_path):
    """DCTpS at 1%: a seed with a test accuracy, one with only a validation accuracy, one
    failed; at 0.1%: one running seed only; SNIP at 1%: both seeds failed; dense: one seed."""
    s = Store(tmp_path)
    s.finish(_start(s, _sum_cfg("dense")), test_acc=0.7)
    s.finish(_start(s, _sum_cfg("dctps", 0.01, 0)), test_acc=0.4)
    s.finish(_start(s, _sum_cfg("dctps", 0.01, 1)), val_acc=0.3)
    s.fail(_start(s, _sum_cfg("dctps", 0.01, 2)), "non-finite loss")
    _start(s, _sum_cfg("dctps", 0.001, 0))
    for seed in (0, 1):
        s.fail(_start(s, _sum_cfg("snip", 0.01, seed)), "snip: layer collapse")
    return s


def test_cells_count_every_seed_and_dense_comes_first(partial):
    text = format_summary(summarise(partial.query({}), metric="test_acc"))
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines()[4:]
            if ln.startswith("|")]  # fmt: skip
    assert [r[0] for r in rows] == ["Dense", "DCTpS", "SNIP"]
    dctps = rows[1]
    assert dctps[2] == "40.00 [40.00, 40.00], 1 seed, 1 of 3 failed (seed 2), 1 without test_acc"
    assert dctps[3] == "no result (1 without a result yet)"


def test_the_long_form(partial, tmp_path):
    rows = summary_rows(summarise(partial.query({}), metric="test_acc"))
    assert [(r["setting"], r["density"]) for r in rows] == [
        ("Dense", 1.0),
        ("DCTpS", 0.01),
        ("DCTpS", 0.001),
        ("SNIP", 0.01),
    ]
    by = {(r["setting"], r["density"]): r for r in rows}
    assert (by[("DCTpS", 0.01)]["without"], by[("DCTpS", 0.01)]["open"]) == (1, 0)
    assert (by[("DCTpS", 0.001)]["without"], by[("DCTpS", 0.001)]["open"]) == (0, 1)
    snip = by[("SNIP", 0.01)]
    assert [snip[k] for k in ("mean", "std", "min", "max")] == [None] * 4
    # a mixed panel: each row names the accuracy it averaged
    mixed = Store(tmp_path / "mixed")
    mixed.finish(_start(mixed, _sum_cfg("dense")), test_acc=0.6)
    mixed.finish(_start(mixed, _sum_cfg("dctps", 0.01)), val_acc=0.3)
    metrics = {r["setting"]: r["metric"] for r in summary_rows(summarise(mixed.query({})))}
    assert metrics == {"Dense": "test_acc", "DCTpS": "val_acc"}


# ---------------------------------------------------------------- progress
def test_lines_without_a_description_and_seconds_truncated(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    lines = progress.Lines(3)
    now[0] = 59.7
    assert lines.line() == "0/3 it [0:59 elapsed]"
    assert progress.clock(3599.9) == "59:59"


def test_a_notebook_kernel_gets_a_bar(monkeypatch):
    import tqdm.autonotebook  # noqa: F401

    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    widget = type("tqdm_notebook", (), {"__module__": "tqdm.notebook"})
    monkeypatch.setattr(sys.modules["tqdm.autonotebook"], "tqdm", widget)
    assert progress.style(io.StringIO()) == "bar"


# ---------------------------------------------------------------- more (low-harm survivors)
def test_the_table_of_curves_without_points(tmp_path):
    s = Store(tmp_path)
    for seed, why in enumerate(["snip: layer collapse", "snip: layer collapse", "oom"]):
        record(s, cfg("snip", 0.01, seed), [], fail=why)
    record(s, cfg("random", 0.01, 0), [{"train_acc": 0.1}] * 3)
    record(s, cfg("random", 0.01, 1), [{"train_acc": 0.1}])
    record(s, cfg("dctps", 0.01, 1), [{"val_acc": 0.3}])
    from dctps.results.plots import default_label

    def label(c):  # a label longer than the table's 34-character column
        name = default_label(c)
        return name + " with a rather long description" if name == "Random" else name

    (p,) = cv.aggregate_curves(s.runs_with_epochs(), label=label)
    assert p.metric == "val_acc"
    text = cv.CurvesData([p], []).table()
    assert ("no epoch recorded (3 seeds, 3 failed before recording an epoch: snip: layer "
            "collapse (and 1 other reason))") in text  # fmt: skip
    assert "no val_acc in its 3 recorded epochs (2 seeds)" in text
    # a label longer than the column: the numbers still start in one column
    starts = {ln.index(" no ") if " no " in ln else ln.index(" epoch ")
              for ln in text.splitlines()[1:]}  # fmt: skip
    assert len(starts) == 1


def test_a_learning_rate_that_reaches_zero_is_not_drawn_on_a_log_axis(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    s = Store(tmp_path)
    record(s, cfg("dctps", 0.01, 0), [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.0}])
    scales, shapes = [], []
    real, subplots = Axes.set_yscale, cv._subplots
    monkeypatch.setattr(Axes, "set_yscale", lambda ax, v, **k: scales.append(v) or
                        real(ax, v, **k))  # fmt: skip
    monkeypatch.setattr(cv, "_subplots", lambda r, c, **k: shapes.append((r, c)) or
                        subplots(r, c, **k))  # fmt: skip
    cv.plot_curves(s.runs_with_epochs(), tmp_path / "c.png", metric="lr")
    assert "log" not in scales and shapes == [(1, 1)]


def test_summary_columns_line_up(tmp_path):
    s = Store(tmp_path)
    c = _sum_cfg("dctps", 0.01)
    s.finish(_start(s, c), test_acc=0.5)
    s.fail(_start(s, _sum_cfg("dctps", 0.01, 1)), "non-finite loss")
    table = [ln for ln in format_summary(summarise(s.query({}))).splitlines() if ln.startswith("|")]
    assert len({len(ln) for ln in table}) == 1


def test_a_closed_stream_reads_as_a_log(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    closed = io.StringIO()
    closed.close()
    assert progress.style(closed) == "lines"


def test_failures_whose_epochs_were_not_read_are_not_dated(tmp_path):
    s = Store(tmp_path)
    a = record(s, cfg("dctps", 0.01, 0), [{"val_acc": 0.2}] * 2, fail="non-finite loss")
    record(s, cfg("dctps", 0.01, 1), [{"val_acc": 0.3}] * 3, fail="non-finite loss")
    rows = s.query({})
    only_a = [r for r in s._with_epochs(rows) if r["hash"] == a]
    (p,) = cv.aggregate_curves(rows, epochs=only_a)
    assert p.curves[0].status() == "2 seeds, 2 failed (1 after epoch 2)"


def test_a_reason_is_given_only_where_every_seed_failed(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dctps", 0.01, 0), [])  # done, no epoch logged
    record(s, cfg("dctps", 0.01, 1), [], fail="oom")
    record(s, cfg("dense"), [{"val_acc": 0.5}])
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    text = cv.CurvesData([p], []).table()
    assert "no epoch recorded (2 seeds, 1 failed before recording an epoch)" in text


# ---------------------------------------------------------------- progress.tagged
def test_a_gone_stderr_stays_gone_in_a_tagged_block(monkeypatch):
    monkeypatch.setattr("sys.stderr", None)
    with progress.tagged("run"):
        assert sys.stderr is None
        progress.Lines(2, "x").write("dropped")  # no AttributeError from a wrapped None


class _TtyLog(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tagged_lines_are_flushed_and_survive_a_lost_log(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    flushed = []
    log = _TtyLog()
    monkeypatch.setattr(log, "flush", lambda: flushed.append(log.getvalue()))
    monkeypatch.setattr("sys.stderr", log)
    with progress.tagged("a"):
        assert progress.style() == "lines"  # tagged lines are a log's, a terminal underneath
        sys.stderr.write("one\n")
        assert flushed and flushed[-1] == "[a] one\n"  # each line flushed as it is written
        sys.stderr.write("left open")
        monkeypatch.setattr(log, "write", lambda s: (_ for _ in ()).throw(OSError(28, "full")))
    assert sys.stderr is log  # the block ended without raising the lost log's OSError


# ---------------------------------------------------------------- more
def test_an_odd_number_of_panels_draws_every_panel(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    s = Store(tmp_path)
    for d in (0.1, 0.01, 0.001):
        record(s, cfg("dctps", d), [{"val_acc": 0.3}])
    titles = []
    real = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda ax, t, *a, **k: titles.append(t) or
                        real(ax, t, *a, **k))  # fmt: skip
    data = cv.plot_curves(s.runs_with_epochs(), tmp_path / "c.png")
    assert titles == [p.title for p in data.panels] and len(titles) == 3


def test_a_curve_mean_stays_within_its_seeds(tmp_path):
    s = Store(tmp_path)
    for seed in range(3):
        record(s, cfg("dctps", 0.01, seed), [{"val_acc": 0.09}])
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    (pt,) = p.curves[0].points
    assert pt.min <= pt.mean <= pt.max == 0.09


def test_float_noise_keeps_the_dense_reference_in_its_panel(tmp_path):
    s = Store(tmp_path)
    record(s, cfg("dense"), [{"val_acc": 0.5}])
    record(s, cfg("dctps", 0.1 * 0.1, 0), [{"val_acc": 0.3}])
    record(s, cfg("dctps", 0.01, 1), [{"val_acc": 0.4}])
    (p,) = cv.aggregate_curves(s.runs_with_epochs())
    assert [c.label for c in p.curves] == ["Dense", "DCTpS"] and p.density == 0.01


def test_a_model_whose_runs_all_failed_keeps_its_colour_place(tmp_path, monkeypatch):
    from dctps.results import plots

    s = Store(tmp_path)
    record(s, cfg("snip", 0.01), [{"val_acc": 0.1}], fail="non-finite loss at epoch 2")
    record(s, cfg("dctps", 0.01, model="vgg19"), [{"val_acc": 0.3}])
    asked = []
    real = plots.series_colours
    monkeypatch.setattr(cv, "series_colours", lambda labels: asked.append(list(labels)) or
                        real(labels))  # fmt: skip
    monkeypatch.setattr(plots, "series_colours", lambda labels: asked.append(list(labels)) or
                        real(labels))  # fmt: skip
    plots.plot_runs(s.query({}), tmp_path / "a.png")
    cv.plot_curves(s.runs_with_epochs(), tmp_path / "c.png")
    assert asked[1] == asked[0]


def test_failed_seeds_are_listed_in_the_tables_order(tmp_path):
    s = Store(tmp_path)
    s.fail(_start(s, _sum_cfg("dctps", 0.001, 0)), "z: diverged")
    s.fail(_start(s, _sum_cfg("dctps", 0.001, 1)), "a: layer collapse")
    s.fail(_start(s, _sum_cfg("dctps", 0.01, 0)), "z: diverged")
    s.finish(_start(s, _sum_cfg("dctps", 0.01, 1)), test_acc=0.3)
    text = format_summary(summarise(s.query({})))
    assert text.splitlines()[-4:] == [
        "Failed seeds:",
        "- DCTpS at 1%, seed 0: z: diverged",
        "- DCTpS at 0.1%, seed 0: z: diverged",
        "- DCTpS at 0.1%, seed 1: a: layer collapse",
    ]
