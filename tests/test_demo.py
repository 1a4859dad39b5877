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


def test_demo_leaves_torchs_thread_count_and_random_stream_as_they_were(capsys):
    """A notebook review: `run_demo(threads=2)` left the kernel at 2 threads; a hygiene review:
    and torch's global generator seeded with the last network's seed."""
    import pytest
    import torch

    from dctps import DctpsError

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        torch.manual_seed(123)
        rng = torch.get_rng_state()
        run_demo(epochs=1, seed=0, threads=1)
        assert torch.get_num_threads() == 2
        assert torch.equal(torch.get_rng_state(), rng)  # each network's seed: not the caller's
        with pytest.raises(DctpsError, match=r"--epochs must be an integer >= 1, got 2.5"):
            run_demo(epochs=2.5)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)
    assert "vs random pruning" in capsys.readouterr().out
