"""The demo's claim: DCTpS beats random pruning at equal density on the embedded digits."""

from dctps.demo import run_demo


def test_demo_dctps_beats_random(capsys):
    rows = run_demo(epochs=20, seed=0)
    by = {(r.method, r.density): r for r in rows}
    assert by[("dctps", 0.01)].trainable_weights == by[("random", 0.01)].trainable_weights
    assert by[("dctps", 0.01)].test_acc > by[("random", 0.01)].test_acc + 0.3
    assert by[("dctps", 0.1)].test_acc > by[("random", 0.1)].test_acc
    assert by[("dense", 1.0)].test_acc > 0.9
    out = capsys.readouterr().out
    assert "trainable weights" in out and "vs random pruning" in out
