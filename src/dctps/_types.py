"""Type variables shared by the public API's annotations."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

#: a model passed in and returned, the same object: its own type is kept for type checkers
#: (``sparsify``, ``prune``, ``set_mode``, ``load(path, model)``, ... return what they were given)
ModuleT = TypeVar("ModuleT", bound=nn.Module)
