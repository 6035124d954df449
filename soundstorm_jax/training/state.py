"""SoundStorm's train state, and what a state costs per device.

Parameters and optimiser state are never materialised on one device: the
task traces its init with `jax.eval_shape`, takes the shardings from the
parameters' logical axis names (`sharding.state_shardings`), and
`jax.jit(init, out_shardings=...)` creates every shard where it lives.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np


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


def bytes_per_device(tree: Any) -> dict[int, int]:
    """Bytes of `tree`'s arrays held by each device id."""
    out: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out


def count_params(params: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
