"""Generation over a device mesh: the batch split over the data axes, parameters by the training rules.

``generate(..., mesh=mesh)`` places the program's inputs before the one
compiled program runs:

* every per-example array (codes, frame mask, prompt mask, keys, semantic ids,
  conditioning) is split over the mesh axes the ``'batch'`` logical axis maps
  to (``('data', 'fsdp')`` under the default rules); a batch those axes do not
  divide is padded with copies of example 0, decoded and dropped, so they
  never reach the output;
* the parameters follow the same logical-axis rules as training
  (``configs/common.DEFAULT_RULES`` unless ``rules=`` says otherwise):
  replicated on a pure data-parallel mesh, split over ``'fsdp'`` on
  ``'embed'``, over ``'tensor'`` on heads / FFN width / vocabulary; arrays
  without logical names (an attached codec's) follow the training fallback
  rule (``sharding.fallback_spec``).

Each example decodes with its own key, so the codes equal single-device
generation example by example.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from soundstorm_jax.training import sharding

# Arrays of `prepare_inputs` whose leading axis is the batch.
PER_EXAMPLE = ("codes", "valid", "fixed", "keys", "semantic_ids", "cond")


def default_rules() -> sharding.Rules:
    from soundstorm_jax.configs.common import DEFAULT_RULES
    return sharding.rules_from_config(DEFAULT_RULES)


def check_mesh(mesh: Any, rules: sharding.Rules) -> None:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (e.g. soundstorm_jax.training.sharding.make_mesh("
                         f"{{'data': -1}})), got {type(mesh).__name__}")
    missing = [axis for axis in sharding.batch_axes(rules) if axis not in mesh.shape]
    if missing:
        raise ValueError(f"the rules split the batch over mesh axes {list(sharding.batch_axes(rules))} but the "
                         f"mesh has axes {list(mesh.axis_names)}")


def pad_batch(inputs: dict, ways: int) -> tuple[dict, int]:
    """Pads the per-example inputs to a multiple of `ways` rows with copies of example 0; (inputs, batch)."""
    b = int(inputs["codes"].shape[0])
    padded = math.ceil(b / ways) * ways
    if padded == b:
        return inputs, b
    rows = np.concatenate([np.arange(b), np.zeros(padded - b, np.int64)])
    out = dict(inputs)
    for name in PER_EXAMPLE:
        value = inputs.get(name)
        if value is not None and np.ndim(value) >= 1 and value.shape[0] == b:
            out[name] = value[rows]
    return out, b


@functools.lru_cache(maxsize=16)
def logical_names(model) -> dict:
    """{tree path: nn.Partitioned} of the parameters `model.init` creates (their shapes do not depend on the
    input's length, so one small abstract init per model serves every call); {} when init cannot be traced
    from codes (an attached codec takes audio)."""
    net = model.net
    frames = 8
    codes = jax.ShapeDtypeStruct((1, frames, net.num_columns), jnp.int32)
    valid = jax.ShapeDtypeStruct((1, frames), jnp.bool_)
    kwargs = {}
    if net.num_semantic_token_ids is not None:
        kwargs["semantic_ids"] = jax.ShapeDtypeStruct((1, frames), jnp.int32)
    rngs = {name: jax.random.key(0) for name in ("params", "masking", "dropout")}
    try:
        boxed = jax.eval_shape(lambda c, v, **kw: model.init(rngs, c, v, **kw), codes, valid, **kwargs)
    except Exception:  # Without names every parameter follows the fallback rule.
        return {}
    return {path: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]}


def parameter_shardings(model, variables, mesh: Mesh, rules: sharding.Rules, fsdp_min_size: int) -> Any:
    """NamedShardings for (unboxed) `variables`: the logical names `model.init` gives each parameter."""
    named = logical_names(model)

    def place(path, leaf):
        box = named.get(path)
        if isinstance(box, nn.Partitioned) and np.shape(box.value) == np.shape(leaf):
            spec = nn.logical_to_mesh_axes(box.names, rules)
            return NamedSharding(mesh, sharding.fit_spec(np.shape(leaf), spec, mesh))
        return NamedSharding(mesh, sharding.fallback_spec(np.shape(leaf), mesh, fsdp_min_size))

    return jax.tree_util.tree_map_with_path(place, variables)


def place_on_mesh(model, variables, inputs: dict, mesh: Mesh, rules: sharding.Rules, *,
                  fsdp_min_size: int = 4096) -> tuple[Any, dict, int]:
    """(variables, inputs, batch) laid out on `mesh`; `batch` is the caller's, before padding."""
    check_mesh(mesh, rules)
    inputs, b = pad_batch(inputs, sharding.data_parallel_size(mesh, rules))
    rows = NamedSharding(mesh, P(sharding.batch_axes(rules) or None))
    replicated = NamedSharding(mesh, P())
    placed = dict(inputs)
    for name in PER_EXAMPLE:
        value = inputs.get(name)
        if value is not None:
            per_example = np.ndim(value) >= 1 and value.shape[0] == inputs["codes"].shape[0]
            placed[name] = jax.device_put(value, rows if per_example else replicated)
    placed["scalars"] = jax.device_put(inputs["scalars"], replicated)
    variables = nn.unbox(variables)
    variables = jax.device_put(variables, parameter_shardings(model, variables, mesh, rules, fsdp_min_size))
    return variables, placed, b
