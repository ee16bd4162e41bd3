"""Parameters of an NNX module by path: the walk shared by loading, export and sharding.

Paths are the ``nnx.state`` paths with integer keys as Python ints, e.g.
``('layers', 3, 'self_attn', 'q_proj', 'kernel')`` (the paths of
:func:`toolrl_jax.models.hf_mapping.hf_name_to_path`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

__all__ = ["get_variable", "param_variables"]


def get_variable(model: nnx.Module, path: tuple) -> nnx.Variable:
    """The ``nnx.Variable`` at ``path`` (attribute names and list indices)."""
    node: Any = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def param_variables(model: nnx.Module) -> list[tuple[tuple, nnx.Variable]]:
    """``(path, Variable)`` for every ``nnx.Param`` of the model, paths as in ``nnx.state``."""
    out = []
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            out.append((tuple(int(k) if isinstance(k, (int, np.integer)) else k for k in path), var))
    return out
