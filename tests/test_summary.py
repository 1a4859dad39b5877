"""`dctps results --summary` (dctps.results.summary): accuracy over seeds as tables."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest
from typer.testing import CliRunner

from dctps.cli import app
from dctps.errors import DctpsError
from dctps.results import Store
from dctps.results.store import print_results
from dctps.results.summary import SUMMARY_COLUMNS, format_summary, summarise, summary_rows
from dctps.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, SparsityConfig

runner = CliRunner()


def cfg(method, density=None, seed=0):
    return RunConfig(
        model=ModelConfig("lenet5"),
        data=DataConfig("cifar10"),
        sparsity=SparsityConfig(method, density),
        optim=OptimConfig(),
        seed=seed,
    ).resolve()


def record(store, c, acc=None, reason=None, running=False):
    h = c.config_hash()
    store.start(h, c.to_dict())
    if running:
        return
    if reason:
        store.fail(h, reason)
    else:
        store.finish(h, test_acc=acc, val_acc=acc / 2, nonzeros=1)


DCTPS = [0.31, 0.35, 0.30]


@pytest.fixture
def db(tmp_path):
    s = Store(tmp_path / "db")
    record(s, cfg("dense", seed=0), 0.6)
    record(s, cfg("dense", seed=1), 0.7)
    for seed, acc in enumerate(DCTPS):
        record(s, cfg("dctps", 0.01, seed), acc)
    record(s, cfg("dctps", 0.001, 0), 0.2)
    record(s, cfg("dctps", 0.001, 1), reason="non-finite loss")
    record(s, cfg("dctps", 0.001, 2), running=True)
    for seed in range(2):
        record(s, cfg("snip", 0.001, seed), reason="snip: layer collapse")
    return tmp_path / "db"


def test_a_table_per_model_a_row_per_setting_a_column_per_density(db):
    panels = summarise(Store(db).query({}))
    text = format_summary(panels)
    lines = text.splitlines()
    assert lines[0] == "LeNet-5, CIFAR-10: test accuracy in %, mean [min, max] over the seeds"
    head = [c.strip() for c in lines[2].strip("|").split("|")]
    assert head == ["setting", "100%", "1%", "0.1%"]
    table = {r[0]: r[1:] for r in
             ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[4:])}  # fmt: skip
    assert table["Dense"] == ["65.00 [60.00, 70.00]", "", ""]
    mean = 100 * sum(DCTPS) / 3
    assert table["DCTpS"] == [
        "",
        f"{mean:.2f} [30.00, 35.00]",
        "20.00 [20.00, 20.00], 1 seed, 1 of 3 failed (seed 1), 1 without a result yet",
    ]
    assert table["SNIP"] == ["", "", "failed (2 of 2, seeds 0, 1)"]
    # below the table, why: a line per setting, density and reason, the seeds failing alike
    # sharing one, in the table's order
    assert text.endswith("\n\nFailed seeds:\n- DCTpS at 0.1%, seed 1: non-finite loss\n"
                         "- SNIP at 0.1%, seeds 0, 1: snip: layer collapse")  # fmt: skip


def test_seeds_failing_for_different_reasons_are_told_apart(tmp_path):
    s = Store(tmp_path / "db")
    record(s, cfg("force", 0.001, 2), reason="force: all-zero saliency\nat step 60/60")
    record(s, cfg("force", 0.001, 0), reason="force: all-zero saliency at step 52/60")
    record(s, cfg("force", 0.001, 1), 0.1)
    (p,) = summarise(s.query({}))
    (pt,) = p.series["FORCE (published)"]
    assert pt.failed_seeds == (0, 2)  # in seed order, each reason beside its seed
    assert pt.failed_reasons == ("force: all-zero saliency at step 52/60",
                                 "force: all-zero saliency\nat step 60/60")  # fmt: skip
    assert format_summary([p]).splitlines()[-3:] == [
        "Failed seeds:",  # a reason of two lines on one
        "- FORCE (published) at 0.1%, seed 0: force: all-zero saliency at step 52/60",
        "- FORCE (published) at 0.1%, seed 2: force: all-zero saliency at step 60/60",
    ]
    (row,) = summary_rows([p])
    assert row["failed_reasons"] == list(pt.failed_reasons)
    # a table without failures ends with its last row
    record(s, cfg("dense", None, 0), 0.5)
    (p,) = summarise(s.query({"method": "dense"}))
    assert format_summary([p]).splitlines()[-1].startswith("| Dense ")


def test_the_long_form_has_the_standard_deviation_and_the_counts(db):
    rows = {(r["setting"], r["density"]): r for r in summary_rows(summarise(Store(db).query({})))}
    d = rows[("DCTpS", 0.01)]
    assert (d["mean"], d["std"], d["min"], d["max"]) == pytest.approx(
        (statistics.mean(DCTPS), statistics.stdev(DCTPS), 0.30, 0.35)
    )
    assert (d["seeds"], d["failed"], d["open"], d["metric"]) == (3, 0, 0, "test_acc")
    one = rows[("DCTpS", 0.001)]
    assert (one["seeds"], one["failed"], one["open"], one["std"]) == (1, 1, 1, None)
    snip = rows[("SNIP", 0.001)]  # every seed failed: no accuracy (not chance), counted
    assert (snip["mean"], snip["failed"], snip["seeds"]) == (None, 2, 0)
    assert snip["failed_seeds"] == [0, 1]
    assert set(d) == set(SUMMARY_COLUMNS)


def test_validation_accuracy_on_request(db):
    (p,) = summarise(Store(db).query({}), metric="val_acc")
    assert p.dense["Dense"].mean == pytest.approx(0.325)


def test_cli_summary_csv_and_json(db, tmp_path):
    out = tmp_path / "sum.csv"
    args = ["results", "--db", str(db), "--summary", "--csv", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "| DCTpS" in r.output and f"wrote 4 summary rows to {out}" in r.output
    got = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [k for k in got[0]] == list(SUMMARY_COLUMNS)
    assert float(next(g for g in got if g["setting"] == "Dense")["mean"]) == pytest.approx(0.65)
    snip = next(g for g in got if g["setting"] == "SNIP")
    assert snip["failed_seeds"] == "0 1"
    assert json.loads(snip["failed_reasons"]) == ["snip: layer collapse"] * 2
    assert next(g for g in got if g["setting"] == "Dense")["failed_reasons"] == ""
    # a second summary replaces the first; a run CSV there may be replaced by a summary too
    assert runner.invoke(app, args).exit_code == 0
    runs = tmp_path / "runs.csv"
    assert runner.invoke(app, ["results", "--db", str(db), "--csv", str(runs)]).exit_code == 0
    assert runner.invoke(app, [*args[:-1], str(runs)]).exit_code == 0
    assert runs.read_text().startswith("model,dataset,setting,")
    # standard output: the JSON alone
    r = runner.invoke(app, ["results", "--db", str(db), "--summary", "--json", "-"])
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert {d["setting"] for d in data} == {"Dense", "DCTpS", "SNIP"}


def test_summary_refusals(db, tmp_path):
    with pytest.raises(DctpsError, match="--metric val_acc chooses the accuracy that --summary "
                                         "averages; add --summary"):  # fmt: skip
        print_results(db, metric="val_acc")
    with pytest.raises(DctpsError, match="--metric must be auto, test_acc or val_acc, got 'x'"):
        print_results(db, summary=True, metric="x")
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n")
    with pytest.raises(DctpsError, match="is not a CSV written by `dctps results`"):
        print_results(db, summary=True, csv_path=notes)
    assert notes.read_text() == "my,own\n"
    said = []
    print_results(db, ["method=grasp"], summary=True, echo=said.append)
    assert said and said[0].startswith("no runs in ") and "method" in said[0]


def test_a_mixed_table_tags_each_cell_and_a_missing_one_says_why(tmp_path):
    s = Store(tmp_path / "db")
    d, c = cfg("dense"), cfg("dctps", 0.01)
    s.start(d.config_hash(), d.to_dict())
    s.finish(d.config_hash(), test_acc=0.6)  # test accuracy only
    s.start(c.config_hash(), c.to_dict())
    s.finish(c.config_hash(), val_acc=0.3)  # validation accuracy only
    other = RunConfig(model=ModelConfig("lenet5"), data=DataConfig("cifar100"),
                      sparsity=SparsityConfig("dctps", 0.01)).resolve()  # fmt: skip
    s.start(other.config_hash(), other.to_dict())  # running: no table for CIFAR-100
    said = []
    print_results(tmp_path / "db", summary=True, echo=said.append)
    text = "\n".join(said)
    assert "test or validation accuracy" in text
    assert "60.00 [60.00, 60.00] (test)" in text and "30.00 [30.00, 30.00] (val)" in text
    assert "LeNet-5, CIFAR-100: no table (1 without a result yet)" in text
    said.clear()
    print_results(tmp_path / "db", ["dataset=cifar100"], summary=True, echo=said.append)
    assert said == ["LeNet-5, CIFAR-100: no table (1 without a result yet)"]


def test_rows_follow_their_values_and_labels_cannot_break_the_table(tmp_path):
    s = Store(tmp_path)
    for lr in (0.01, 0.0024, 0.1, 0.001):  # stored in this order
        c = RunConfig(
            model=ModelConfig("lenet5"),
            data=DataConfig("cifar10"),
            sparsity=SparsityConfig("dctps", 0.01),
            optim=OptimConfig(lr=lr),
        )
        record(s, c.resolve(), 0.5)
    text = format_summary(summarise(s.query({})))
    lrs = [float(ln.split("lr=")[1].split("]")[0]) for ln in text.splitlines() if "lr=" in ln]
    assert lrs == [0.001, 0.0024, 0.01, 0.1]
    from dctps.results.summary import _md

    assert _md("a|b\nc") == "a\\|b c"


def test_float_noise_in_a_density_is_one_column_and_one_point(tmp_path):
    """A config built in Python may hold 0.1 * 0.1 = 0.010000000000000002: the same 1% as
    0.01 to every reader, and one column (one point, one curve panel), not two headed "1%"."""
    from dctps.results.curves import aggregate_curves

    noisy = 0.1 * 0.1
    assert noisy != 0.01
    s = Store(tmp_path / "db")
    record(s, cfg("dctps", 0.01, 0), 0.3)
    record(s, cfg("dctps", noisy, 1), 0.4)
    record(s, cfg("dctps", 0.010000001, 3), 0.6)  # past the 6 digits a label shows: 1% too
    record(s, cfg("dctps", 0.0100001, 2), 0.5)  # a density of its own (1.00001%)
    (p,) = summarise(s.query({}))
    assert [(pt.density, pt.n_ok) for pt in p.series["DCTpS"]] == [(0.01, 3), (0.0100001, 1)]
    # and --where density=1% picks what the 1% column holds
    assert sorted(r["seed"] for r in s.query({"density": 0.01})) == [0, 1, 3]
    assert sorted(r["seed"] for r in s.query({"density": [0.0100001, None]})) == [2]
    r = runner.invoke(app, ["results", "--db", str(tmp_path / "db"), "--where", "density=1%",
                            "--summary"])  # fmt: skip
    assert r.exit_code == 0 and "| DCTpS   | 43.33 [30.00, 60.00] |" in r.output, r.output
    head = [c.strip() for c in format_summary([p]).splitlines()[2].strip("|").split("|")]
    assert head == ["setting", "1.00001%", "1%"]
    rows = s.runs_with_epochs()
    for r in rows:
        r["epochs"] = [{"epoch": 1, "val_acc": r["test_acc"]}]
    assert [cp.density for cp in aggregate_curves(rows)] == [0.01, 0.0100001]


def test_a_mean_stays_within_its_seeds_and_a_table_without_results_names_no_auto(tmp_path):
    s = Store(tmp_path / "db")
    for seed in range(3):  # fmean of three 0.09 is 0.09000000000000001 > 0.09
        record(s, cfg("dctps", 0.01, seed), 0.09)
    (row,) = summary_rows(summarise(s.query({})))
    assert row["min"] <= row["mean"] <= row["max"] == 0.09
    # every run of the table failed: no accuracy was chosen, and none is named
    t = Store(tmp_path / "t")
    record(t, cfg("snip", 0.001, 0), reason="snip: layer collapse")
    (p,) = summarise(t.query({}))
    assert format_summary([p]).splitlines()[0] == (
        "LeNet-5, CIFAR-10: accuracy in %, mean [min, max] over the seeds"
    )
    assert summary_rows([p])[0]["metric"] == ""
