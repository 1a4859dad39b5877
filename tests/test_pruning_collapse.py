"""Tests for the pruning failure checks that the score checks cannot see: a final mask with no
input-output path (layer collapse, ``dctps.pruning.connectivity``), and GraSP's top k filled from
zero scores by index (``check_scores``). Each fails with ``PruningFailed`` and leaves the model
unchanged; connected networks, and models the check cannot judge, pass."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from dctps import count
from dctps.errors import DctpsError, PruningFailed
from dctps.models import build, names
from dctps.models.fixup_resnet import FixupResNet
from dctps.models.resnet import BasicBlock, ResNet
from dctps.pruning import connectivity, prune
from dctps.pruning.common import check_scores, targets
from dctps.pruning.connectivity import checkable, path_flow


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mlp(bias: bool = True, seed: int = 0, layer_norm: bool = False) -> nn.Sequential:
    """20 -> 32 -> 32 -> 32 -> 10 with ReLUs (the reviewer's MLP)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    sizes = [20, 32, 32, 32, 10]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            if layer_norm:
                layers.append(nn.LayerNorm(b))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _mlp_batches(n: int = 20) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 20, generator=g), torch.randint(0, 10, (16,), generator=g))] * n


def _image_batches(b: int = 8, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(b, 3, size, size, generator=g), torch.randint(0, 10, (b,), generator=g))]


def _assert_unchanged(model: nn.Module, before: nn.Module) -> None:
    """No pruning was applied: no weight_mask/weight_orig, every tensor as it was."""
    assert not torch_prune.is_pruned(model)
    assert not any(hasattr(m, "weight_mask") or hasattr(m, "weight_orig") for m in model.modules())
    after, ref = model.state_dict(), before.state_dict()
    assert after.keys() == ref.keys()
    assert all(torch.equal(after[k], ref[k]) for k in ref)


def _fails(model: nn.Module, density: float, method: str, match: str, **kw) -> PruningFailed:
    before = copy.deepcopy(model)
    with pytest.raises(PruningFailed, match=match) as info:
        prune(model, density, method, **kw)
    _assert_unchanged(model, before)
    return info.value


# ----------------------------------------------------------------------------- disconnected


@pytest.mark.parametrize(
    ("method", "seed", "options"),
    [
        ("iter_snip", 0, {"steps": 20}),
        ("force", 0, {"steps": 20}),
        ("synflow", 2, {"iterations": 20, "input_shape": (20,)}),
    ],
)
def test_biases_hide_a_collapse_from_the_score_check(method, seed, options):
    """The reviewer's case: with biased Linear layers the biases keep the last layer's scores
    positive, so "k scores > 0" holds while the first layers keep nothing: a constant network."""
    err = _fails(
        _mlp(bias=True, seed=seed), 0.005, method,
        rf"{method}: the pruned network has no path from input to output \(layer collapse: "
        r"layers 0, 2\b.* keep 0 weights\)",
        batches=None if method == "synflow" else _mlp_batches(), **options,
    )  # fmt: skip
    assert err.reached == 0.005


@pytest.mark.parametrize("density", [0.002, 0.001, 0.0005])
def test_lenet5_snip_leaves_no_chain_of_kept_weights(density):
    """One-shot SNIP on LeNet-5 keeps weights in every layer, but they do not line up."""
    torch.manual_seed(0)
    err = _fails(
        build("lenet5"), density, "snip",
        r"snip: the pruned network has no path from input to output \(every layer keeps weights",
        batches=_image_batches(),
    )  # fmt: skip
    assert err.reached == density


@pytest.mark.parametrize("density", [0.002, 0.0005])
def test_lenet5_grasp_empties_a_layer(density):
    torch.manual_seed(0)
    err = _fails(
        build("lenet5"), density, "grasp",
        r"grasp: the pruned network has no path .*\(layer collapse: layer features\.6 keeps 0 "
        r"weights\)",
        batches=_image_batches(),
    )  # fmt: skip
    assert err.reached == density


def test_random_is_checked_too_given_an_input_shape():
    """``random`` at 1% on the MLP: kept weights in every layer, no chain. The input shape comes
    from the batches (random ignores them otherwise) or from ``dctps.models.build``'s record;
    with neither (a bare module, no batches) the check cannot run and the mask is returned."""
    _fails(_mlp(bias=False), 0.01, "random", r"random: .*no path", batches=_mlp_batches(1), seed=0)
    assert torch_prune.is_pruned(prune(_mlp(bias=False), 0.01, "random", seed=0))
    _fails(build("lenet5"), 1e-3, "random", r"random: .*no path", seed=0)
    # require_path=False (a mask RigL will move, which can grow a path back): not checked
    model = prune(build("lenet5"), 1e-3, "random", seed=0, require_path=False)
    assert count(model).nonzeros == round(1e-3 * 61_510)


def test_failure_marks_the_progress_bar_failed(capsys):
    with pytest.raises(PruningFailed):
        prune(_mlp(), 0.005, "force", batches=_mlp_batches(), steps=20, progress=True)
    assert "failed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- GraSP ties at 0


def test_grasp_on_fixup_fills_k_from_zero_scores_by_index():
    """Fixup's zero-initialised conv2s and classifier give almost every GraSP score exactly 0:
    the top k would be filled from the zeros in index order (emptying the classifier). A small
    FixupResNet (1 block per stage, 8x8 inputs) shows it as FixupResNet110 does."""
    torch.manual_seed(0)
    err = _fails(
        FixupResNet(1, 10, 3), 0.1, "grasp",
        r"grasp: step 1/1: only \d+ of 74800 saliency scores are nonzero \(\d+ > 0\) but 7480 "
        r"weights must be kept: .* zero scores by index order",
        batches=_image_batches(b=4, size=8),
    )  # fmt: skip
    assert err.reached == 1.0


def test_signed_scores_tie_at_zero_only_when_zeros_are_split():
    s = [torch.tensor([3.0, 0.0, 0.0, -1.0]), torch.tensor([0.0, 2.0])]
    kw = {"method": "grasp", "step": 1, "steps": 1, "reached": 1.0, "require_positive": False}
    for k in (1, 2, 5, 6):  # k <= #positive, or every zero kept (k >= #non-negative = 5)
        assert check_scores(s, k, **kw)
    for k in (3, 4):  # 2 positive; 3 zeros compete for k - 2 places
        with pytest.raises(PruningFailed, match=rf"only 3 of 6 .* nonzero \(2 > 0\) but {k}"):
            check_scores(s, k, **kw)


# ----------------------------------------------------------------------------- connected


@pytest.mark.parametrize(("method", "density"), [("random", 0.05), ("snip", 0.05), ("snip", 0.01)])
def test_connected_lenet5_passes(method, density):
    torch.manual_seed(0)
    model = prune(build("lenet5"), density, method, batches=_image_batches())
    assert torch_prune.is_pruned(model)


@pytest.mark.parametrize(("method", "density"), [("random", 0.05), ("snip", 0.02)])
def test_connected_narrow_resnet18_passes(method, density, monkeypatch):
    """A ResNet18 of width 4, and the check really ran on it (R > 0)."""
    flows: list[float | None] = []
    real = connectivity.path_flow

    def spy(*args, **kw):
        flows.append(real(*args, **kw))
        return flows[-1]

    monkeypatch.setattr(connectivity, "path_flow", spy)
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (2, 2, 2, 2), 10, 3, width=4)
    prune(model, density, method, batches=_image_batches(b=4, size=16))
    assert torch_prune.is_pruned(model)
    assert len(flows) == 1 and flows[0] is not None and flows[0] > 0


@pytest.mark.parametrize("name", names())
def test_every_architecture_is_checked_and_dense_flow_is_finite(name):
    """All six paper models consist of checkable layers. The dense linearised flow is finite and
    positive (built on the meta device for the check, on the CPU for the flow of the small ones)."""
    with torch.device("meta"):
        assert checkable(build(name))
    if name in ("lenet5", "fixup_resnet110", "mobilenetv2"):
        model = build(name)
        ones = [torch.ones_like(t.weight, dtype=torch.bool) for t in targets(model)]
        r = path_flow(model, ones, (3, 32, 32))
        assert r is not None and r > 0


def test_empty_middle_layer_of_a_residual_block_is_not_a_collapse():
    """An identity shortcut carries the signal past an emptied branch: no failure there, but an
    emptied stem is one."""
    model = ResNet(BasicBlock, (1, 1, 1, 1), 10, 3, width=4)
    layers = targets(model)
    masks = [torch.ones_like(t.weight, dtype=torch.bool) for t in layers]
    branch = next(i for i, t in enumerate(layers) if t.name == "features.2.branch.0.0")
    masks[branch].zero_()
    assert path_flow(model, masks, (3, 16, 16)) > 0
    masks[0].zero_()  # the stem conv
    assert path_flow(model, masks, (3, 16, 16)) == 0


# ----------------------------------------------------------------------------- not checkable


def test_layer_norm_model_is_not_checked(monkeypatch):
    """LayerNorm subtracts the mean: on the all-ones input the linearised flow is 0 even dense,
    so the check would fail every such model. It is skipped (path_flow is never called)."""
    model = _mlp(bias=False, layer_norm=True)
    ones = [torch.ones_like(t.weight, dtype=torch.bool) for t in targets(model)]
    assert path_flow(model, ones, (20,)) == 0  # why it must be skipped
    assert not checkable(model)
    assert checkable(_mlp(bias=False))

    def never(*args, **kw):
        raise AssertionError("path_flow called on an uncheckable model")

    monkeypatch.setattr(connectivity, "path_flow", never)
    pruned = prune(model, 0.01, "random", batches=_mlp_batches(1), seed=0)
    assert torch_prune.is_pruned(pruned)


def test_attention_and_untracked_batch_norm_are_not_checked():
    attn = nn.Sequential(nn.Linear(8, 8))
    attn.add_module("attn", nn.MultiheadAttention(8, 2))  # children are Linear: still refused
    assert not checkable(attn)
    assert not checkable(
        nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8, track_running_stats=False))
    )
    assert checkable(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.GELU()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_check_runs_on_the_models_device():
    """On CUDA: the copy, the masks and the all-ones input stay on the model's device."""
    torch.manual_seed(0)
    batches = [(x.cuda(), y.cuda()) for x, y in _image_batches()]
    model = build("lenet5").cuda()
    _fails(model, 0.001, "snip", r"snip: .*no path", batches=batches)
    assert torch_prune.is_pruned(prune(model, 0.05, "snip", batches=batches))
    assert model.features[0].weight_mask.is_cuda


def test_the_path_check_neither_reads_rng_nor_needs_a_copyable_model():
    """random needs no data: the check may draw one batch for the input shape, but the global
    RNG (which a shuffling loader seeds from) is as before; a model deepcopy cannot copy is left
    unchecked rather than unprunable (the data methods, which must copy it, say why)."""
    import threading

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))

    data = torch.utils.data.TensorDataset(torch.randn(64, 12), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    model = make()
    state = torch.get_rng_state()
    prune(model, 0.3, "random", loader, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    locked = make()
    locked.lock = threading.Lock()  # type: ignore[attr-defined]
    prune(locked, 0.3, "random", loader, seed=3)
    assert hasattr(locked[0], "weight_mask")
    locked2 = make()
    locked2.lock = threading.Lock()  # type: ignore[attr-defined]
    with pytest.raises(DctpsError, match="copy.deepcopy failed: TypeError"):
        prune(locked2, 0.3, "snip", loader)


def test_a_network_cut_off_behind_a_sigmoid_is_a_failure():
    """A baselines review: sigmoid(0) = 0.5 let the linearised copy pass a positive value on
    from a layer that kept no weight, so SNIP's network of constant output (its first layer
    emptied) passed the path check."""
    from dctps.errors import PruningFailed
    from dctps.pruning import prune

    def net(act):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(20, 16, bias=False), act(),
                                torch.nn.Linear(16, 10, bias=False))  # fmt: skip
        with torch.no_grad():
            m[0].weight.mul_(1e-3)  # its scores tiny: SNIP keeps none of them
        return m

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 20, generator=g), torch.randint(0, 10, (16,), generator=g))]
    with pytest.raises(PruningFailed, match=r"layer 0 keeps 0 weights"):
        prune(net(torch.nn.Sigmoid), 0.2, "snip", batches)
    kept = prune(net(torch.nn.Tanh), 0.2, "snip", batches)  # the same scores: a path is kept
    assert int(kept[0].weight_mask.sum()) > 0
