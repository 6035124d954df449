"""The train state and its sharded creation.

Parameters and optimiser state are never materialised on one device: the
state's shapes come from `jax.eval_shape`, their shardings from the logical
axis names on the parameters (`nn.get_partition_spec` -> rules -> mesh), and
`jax.jit(init, out_shardings=...)` creates every shard where it lives.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from soundstorm_jax import SoundStorm
from soundstorm_jax.training import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs (besides the data iterator's position).

    step:            int32 (): updates attempted so far (= batches consumed)
    params:          fp32 master weights (the model computes in `config.model.dtype`)
    opt_state:       optax state of `params`
    ema_params:      exponential moving average of `params`, or None
    rng:             uint32 (2,): the run's key; step s uses fold_in(rng, s)
    nonfinite_count: int32 (): steps whose loss or gradient was NaN/Inf and
                     whose update was therefore skipped
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array
    nonfinite_count: jax.Array


def sample_inputs(model: SoundStorm, *, batch: int, frames: int) -> dict[str, np.ndarray]:
    """Dummy inputs with the shapes init needs: codes (batch, frames, C), mask, semantic ids."""
    net = model.net
    inputs = {"codes": np.zeros((batch, frames, net.num_columns), np.int32),
              "mask": np.ones((batch, frames), bool)}
    if net.num_semantic_token_ids is not None:
        tokens = max(1, math.ceil(frames / net.acoustic_per_semantic))
        inputs["semantic_ids"] = np.zeros((batch, tokens), np.int32)
    return inputs


def make_init_fn(model: SoundStorm, tx: optax.GradientTransformation, inputs: dict[str, np.ndarray], *,
                 use_ema: bool) -> Callable[[jax.Array], TrainState]:
    """rng uint32 (2,) -> a TrainState whose params and opt_state are nn.Partitioned-boxed."""
    def init(rng: jax.Array) -> TrainState:
        k_params, k_masking, k_run = jax.random.split(rng, 3)
        variables = model.init({"params": k_params, "masking": k_masking}, inputs["codes"], inputs["mask"],
                               semantic_ids=inputs.get("semantic_ids"))
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema_params=params if use_ema else None, rng=k_run,
                          nonfinite_count=jnp.zeros((), jnp.int32))
    return init


def state_shardings(init_fn: Callable[[jax.Array], TrainState], rng: jax.Array, mesh: Mesh,
                    rules: mesh_lib.Rules) -> tuple[TrainState, TrainState]:
    """(abstract unboxed state of ShapeDtypeStructs with .sharding, its NamedShardings)."""
    # Traced without a mesh context: the model's constraints are then no-ops
    # (flax would otherwise constrain DenseGeneral's flat kernel with the
    # names of its reshaped form); the shardings come from out_shardings.
    boxed = jax.eval_shape(init_fn, rng)
    shardings = mesh_lib.logical_to_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.unbox(boxed), shardings)
    return abstract, shardings


def create_train_state(init_fn: Callable[[jax.Array], TrainState], seed: int, mesh: Mesh,
                       rules: mesh_lib.Rules, compiler_options: Optional[dict] = None) -> tuple[TrainState, TrainState]:
    """A fresh, sharded TrainState and its shardings. Same seed -> same values on any mesh."""
    rng = jax.random.PRNGKey(seed)
    _, shardings = state_shardings(init_fn, rng, mesh, rules)
    state = jax.jit(lambda r: nn.unbox(init_fn(r)), out_shardings=shardings,
                    compiler_options=compiler_options)(rng)
    return state, shardings


def bytes_per_device(tree: Any) -> dict[int, int]:
    """Bytes of `tree`'s arrays held by each device id."""
    out: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out


def count_params(params: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
