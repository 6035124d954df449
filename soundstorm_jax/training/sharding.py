"""Device meshes, logical-axis rules and the shardings of a run's state and batches.

The mesh has three named axes (any may have size 1)::

    data    pure data parallelism: the batch is split, parameters replicated
    fsdp    ZeRO-3-like: the batch is split AND parameters + optimizer state
            are sharded; XLA all-gathers weights per layer
    tensor  Megatron-like tensor parallelism over 'heads' / 'mlp' / 'vocab'

`config.mesh.shape` gives their sizes, e.g. ``{'data': -1, 'fsdp': 1, 'tensor': 1}``
(-1 = all remaining devices). Arrays get their shardings in one of two ways:

* arrays with logical axis names (every SoundStorm parameter, created through
  `nn.with_logical_partitioning`) follow `config.mesh.rules`, which map the
  names (batch, length, embed, heads, kv, mlp, vocab, levels, layers) to mesh
  axes; rules are tried in order and a mesh axis is used at most once per
  array (flax's semantics), so ``('batch', ('data', 'fsdp'))`` listed before
  ``('embed', 'fsdp')`` shards activations over the batch and parameters
  over 'embed';
* arrays without names (the codec's layers, optimizer counters, rngs) follow
  one fallback rule: with an 'fsdp' axis > 1, an array of at least
  `config.mesh.fsdp_min_size` elements is split over 'fsdp' along its largest
  dimension that the axis divides; everything else is replicated.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, Any], ...]


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """{'data': -1, 'fsdp': 2, 'tensor': 1} -> concrete sizes whose product is num_devices."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh.shape has unknown axes {unknown}; known: {list(MESH_AXES)}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"mesh.shape may use -1 for at most one axis, got {free}")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"mesh.shape sizes must be positive or -1, got {sizes}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh.shape {sizes}: the fixed axes ({fixed} devices) do not divide "
                             f"the {num_devices} available devices")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"mesh.shape {sizes} uses {fixed} devices but {num_devices} are available; "
                         f"set one axis to -1 or make the product {num_devices}")
    return sizes


def make_mesh(shape: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices of all hosts).

    Axes are `Auto`: shardings come from jit's in/out shardings and the model's
    logical constraints, and XLA's SPMD partitioner inserts the collectives.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(shape, len(devices))
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices)


def rules_from_config(rules: Sequence[Sequence[Any]]) -> Rules:
    """Config rules (lists from the command line or JSON) -> flax's tuple of pairs."""
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"each mesh rule is (logical_axis, mesh_axes), got {rule!r}")
        name, target = rule
        if isinstance(target, (list, tuple)):
            target = tuple(target)
            bad = [t for t in target if t not in MESH_AXES]
        else:
            bad = [] if target is None or target in MESH_AXES else [target]
        if bad:
            raise ValueError(f"mesh rule {rule!r} names unknown mesh axes {bad}; known: {list(MESH_AXES)}")
        out.append((str(name), target))
    return tuple(out)


def batch_axes(rules: Rules) -> tuple[str, ...]:
    """The mesh axes the 'batch' logical axis maps to (first 'batch' rule)."""
    for name, target in rules:
        if name == "batch":
            if target is None:
                return ()
            return tuple(target) if isinstance(target, tuple) else (target,)
    return ()


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch is split."""
    return math.prod(mesh.shape[a] for a in batch_axes(rules))


def check_batch_size(batch_size: int, mesh: Mesh, rules: Rules, *, what: str = "data.batch_size") -> None:
    """The global batch must split evenly over the batch axes (and microbatches)."""
    ways = data_parallel_size(mesh, rules)
    if batch_size % ways:
        raise ValueError(f"{what}={batch_size} is not divisible by the {ways} data-parallel shards "
                         f"(mesh {dict(mesh.shape)}, batch axes {batch_axes(rules)})")
    if batch_size % jax.process_count():
        raise ValueError(f"{what}={batch_size} is not divisible by the {jax.process_count()} processes")


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Leading (batch) axis over the batch axes, the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(rules) or None))


def fit_spec(shape: Sequence[int], spec: P, mesh: Mesh) -> P:
    """Drops the mesh axes of a dimension they do not divide (that dimension is replicated).

    E.g. the code embedding has (K + 1) * Q rows, which an 8-way 'vocab'
    split does not divide; replicating it is what a user would want.
    """
    fitted = []
    for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        ways = math.prod(mesh.shape[a] for a in names)
        if names and size % ways:
            log.info("dimension of size %d is not divisible by mesh axes %s (%d); replicating it",
                         size, names, ways)
            axes = None
        fitted.append(axes)
    return P(*fitted)


def fallback_spec(shape: Sequence[int], mesh: Mesh, min_size: int) -> P:
    """The rule for arrays without logical names: 'fsdp' on the largest dimension it divides, for arrays of
    at least `min_size` elements; else replicated."""
    ways = int(mesh.shape.get("fsdp", 1))
    if ways == 1 or not shape or math.prod(shape) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[dim] % ways == 0:
            return P(*[("fsdp" if i == dim else None) for i in range(len(shape))])
    log.info("array of shape %s: no dimension divisible by fsdp=%d; replicated", tuple(shape), ways)
    return P()


def state_shardings(boxed_abstract: Any, mesh: Mesh, rules: Rules, *, fsdp_min_size: int) -> tuple[Any, Any]:
    """An abstract state (from `jax.eval_shape(init)`, maybe nn.Partitioned-boxed) -> (abstract, shardings).

    `abstract` is the unboxed tree of ShapeDtypeStructs carrying their target
    NamedShardings (what a checkpoint restores into); `shardings` the same
    tree of NamedShardings (jit's in/out shardings). Boxed leaves follow the
    logical rules, the others the fallback rule (see the module docstring).
    """
    def sharding(leaf):
        if isinstance(leaf, nn.Partitioned):
            spec = nn.logical_to_mesh_axes(leaf.names, rules)
            return NamedSharding(mesh, fit_spec(np.shape(leaf.value), spec, mesh))
        return NamedSharding(mesh, fallback_spec(np.shape(leaf), mesh, fsdp_min_size))

    shardings = jax.tree.map(sharding, boxed_abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.unbox(boxed_abstract), shardings)
    return abstract, shardings


def process_rows(sharding: NamedSharding, batch_size: int) -> range:
    """The rows of a global batch of `batch_size` that this process's devices hold under `sharding`.

    The data pipeline loads exactly these rows (`data.make_train_iterator(rows=...)`), and
    `global_batch` assembles the global array from them. They must be contiguous, as they are when each
    host's devices form a block of the batch axes (every mesh `make_mesh` builds).
    """
    held = sorted({index[0].indices(batch_size)[:2]
                   for index in sharding.addressable_devices_indices_map((batch_size,)).values()})
    start, stop = held[0][0], held[-1][1]
    if any(b[0] > a[1] for a, b in zip(held, held[1:])):
        raise ValueError(f"this process's devices hold rows {held} of the batch, not one contiguous block; "
                         f"order the mesh's devices so that each process's devices are adjacent on the batch axes")
    return range(start, stop)


def global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's numpy batch -> global arrays (batch axis split over the batch mesh axes)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
