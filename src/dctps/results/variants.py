"""What tells runs apart beyond the obvious columns: the config fields that vary among them.

``dctps plot`` names them in curve labels (``DCTpS [epochs=6]``) and ``dctps results`` in its
``variant`` column, so two runs that differ only in, say, their epochs never look like one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["NOT_A_VARIANT", "differing_settings", "flat_value", "flatten", "named_differences",
           "own_settings", "varying_keys"]  # fmt: skip

#: fields that never make a variant: each curve spans them (seed, density) or they do not
#: change what is computed (where the data lives, the device, the evaluation batch)
NOT_A_VARIANT = frozenset({"seed", "sparsity.density", "data.root", "device", "eval_batch_size"})

# A varying recipe explains its varying defaults (lr, epochs, ...): name only the recipe.
_PRIMARY = ("optim.recipe", "optim.optimizer")


def flatten(
    d: Mapping[str, Any], prefix: str = "", atomic: Iterable[str] = ("options",)
) -> dict[str, Any]:
    """A nested config as ``{"optim.epochs": 6, ...}``; a mapping under a key in ``atomic`` (a
    method's ``options``) and lists stay one value, as JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and k not in atomic:
            out.update(flatten(v, key + ".", atomic))
        else:
            out[key] = flat_value(v)
    return out


def flat_value(v: Any) -> Any:
    """A config value as :func:`flatten` stores it: a list or mapping as its JSON text."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def _key(flat: Mapping[str, Any], k: str) -> Any:
    """``flat[k]`` as a set member that tells apart what its JSON text tells apart (``1``,
    ``1.0`` and ``True``; every NaN alike), without writing JSON for the plain scalars of
    :func:`flatten`'s values (10,000 rows: 180,000 dumps took 4 s)."""
    v = flat.get(k)
    if v is None or type(v) in (bool, int, str):
        return (type(v), v)
    if type(v) is float:
        return (float, repr(v))
    return (object, json.dumps(v, sort_keys=True))


def _function_of(flats: Sequence[Mapping[str, Any]], p: str, k: str) -> bool:
    seen: dict[str, str] = {}
    return all(seen.setdefault(_key(f, p), _key(f, k)) == _key(f, k) for f in flats)


def _explained(flats: Sequence[Mapping[str, Any]], varying: list[str]) -> list[str]:
    """``varying`` without the keys that are a function of a varying primary key."""
    prim = [p for p in _PRIMARY if p in varying]
    keep = []
    for k in varying:
        if k in prim:
            if k == prim[0] or not _function_of(flats, prim[0], k):
                keep.append(k)
        elif not any(_function_of(flats, p, k) for p in prim):
            keep.append(k)
    return keep


def varying_keys(flats: Sequence[Mapping[str, Any]], shown: Iterable[str] = ()) -> list[str]:
    """The flattened keys whose value differs among ``flats``, sorted, without
    :data:`NOT_A_VARIANT`, the keys in ``shown`` (already on display) and the keys a varying
    recipe or optimizer explains."""
    keys = sorted({k for f in flats for k in f} - NOT_A_VARIANT - set(shown))
    return _explained(flats, [k for k in keys if len({_key(f, k) for f in flats}) > 1])


def own_settings(flat: Mapping[str, Any], options: bool = True) -> list[str]:
    """The keys a run is always labelled with, whatever runs stand beside it: its method's
    options (``sparsity.options``) when it has any, and ``recorded_by`` for a run an older
    version of its computation recorded. An identity keeps only options that differ
    from their defaults, and they change what a point means: DCTpS with
    ``exclude=["classifier"]`` at "1%" trains 18% of LeNet-5's weights, and SynFlow with
    ``iterations=3`` is not the paper's SynFlow (a review found both drawn under the plain
    method's name). ``options=False`` leaves the options out: a ``--quick`` figure's shortened
    schedules, which its note names (Iter-SNIP's ``num_batches=1`` stays in the identity on
    CIFAR-100 only, where Table E.2's default is 10: named, one method had two labels)."""
    opts = flat.get("sparsity.options")
    keys = ["sparsity.options"] if options and opts not in (None, "{}", {}) else []
    # a run an older version computed is never drawn as today's, even alone in its curve
    return keys + (["recorded_by"] if flat.get("recorded_by") else [])


def named_differences(flat: Mapping[str, Any], varying: Sequence[str]) -> list[str]:
    """``["epochs=6", ...]``: this run's values of the ``varying`` keys (a key it lacks, e.g. one
    an older version did not record, is not named). ``data.subset`` left unset reads
    ``subset=all`` (the whole split), not Python's ``None``."""
    return [_named(k, flat[k]) for k in varying if k in flat]


def _named(key: str, value: Any) -> str:
    """``epochs=6``; a method's options as their own pairs (``exclude=["fc"]``), or ``no
    options`` for none: ``options={}`` named the default run (a combinations review)."""
    name = key.split(".")[-1]
    if name == "options" and isinstance(value, str):
        try:
            opts = json.loads(value)
        except ValueError:
            opts = None
        if isinstance(opts, dict):
            if not opts:
                return "no options"
            return ", ".join(f"{k}={flat_value(v)}" for k, v in sorted(opts.items()))
    return f"{name}={_shown(key, value)}"


def _shown(key: str, value: Any) -> Any:
    return "all" if key == "data.subset" and value is None else value


def _comparable(flat: Mapping[str, Any]) -> dict[str, Any]:
    """What of a flattened run identity curves compared side by side must share: everything
    but :data:`NOT_A_VARIANT`, the method's own settings (``sparsity.*``) and the ``optim``
    values that are its recipe's defaults for its method (SGD trains DCTpS at lr 0.03 and the
    others at 0.1: not a difference), which read ``"recipe default"``."""
    from dctps.train.config import RECIPES, recipe_defaults

    recipe, method = flat.get("optim.recipe"), flat.get("sparsity.method")
    defaults: dict[str, Any] = {}
    if isinstance(recipe, str) and recipe in RECIPES and isinstance(method, str):
        epochs = flat.get("optim.epochs")
        given = epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None
        defaults = recipe_defaults(recipe, method, given)
    out = {}
    for k, v in flat.items():
        if k in NOT_A_VARIANT or k.startswith("sparsity.") or k == "recorded_by":
            continue
        short = k.removeprefix("optim.")
        if (
            k.startswith("optim.")
            and short in defaults
            and _key({"v": v}, "v") == _key({"v": _as_stored(defaults[short])}, "v")
        ):
            v = "recipe default"
        out[k] = v
    return out


def _as_stored(v: Any) -> Any:
    """A :func:`recipe_defaults` value as :func:`flatten` stores a config's (its milestones
    are a tuple there, read only, and a list in a config)."""
    return flat_value(list(v) if isinstance(v, tuple) else v)


def differing_settings(flats: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys, sorted, in which runs shown side by side (the curves of one panel, the rows of
    one model and data set) differ beyond their methods' own settings and their recipes'
    defaults (:func:`_comparable`): a DCTpS curve of 40 epochs beside a SNIP curve of 2 read
    as a 40-point win. Every such key is named in every label, with its actual value."""
    comps = [_comparable(f) for f in flats]
    keys = sorted({k for c in comps for k in c})
    # and whose values differ themselves: lr 0.1 everywhere is no difference, though it is one
    # method's recipe default and not another's
    return [
        k
        for k in keys
        if len({_key(c, k) for c in comps}) > 1 and len({_key(f, k) for f in flats}) > 1
    ]
