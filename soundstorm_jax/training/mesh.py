"""Device meshes and logical-axis rules from the config.

The mesh has three named axes (any may have size 1)::

    data    pure data parallelism: the batch is split, parameters replicated
    fsdp    ZeRO-3-like: the batch is split AND parameters + optimizer state
            are sharded (on 'embed' or 'mlp'); XLA all-gathers weights per layer
    tensor  Megatron-like tensor parallelism over 'heads' / 'mlp' / 'vocab'

`config.mesh.shape` gives their sizes, e.g. ``{'data': -1, 'fsdp': 1, 'tensor': 1}``
(-1 = all remaining devices). `config.mesh.rules` maps the model's logical axis
names (batch, length, embed, heads, kv, mlp, vocab, levels, layers) to mesh axes;
rules are tried in order and a mesh axis is used at most once per array
(flax's semantics), so ``('batch', ('data', 'fsdp'))`` listed before
``('embed', 'fsdp')`` shards activations over the batch and parameters over
'embed'.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# Logical axes the batch is split over: every mesh axis that carries data.
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, Any], ...]


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize()` when the environment describes several processes.

    Cluster environments (TPU VMs, SLURM, or JAX_COORDINATOR_ADDRESS +
    JAX_NUM_PROCESSES + JAX_PROCESS_ID) are detected by JAX itself; a plain
    single-process run skips it. Must run before anything touches devices.
    Returns whether it initialised.
    """
    env = os.environ
    multi = (int(env.get("JAX_NUM_PROCESSES", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in env
             or int(env.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in env
             or "MEGASCALE_COORDINATOR_ADDRESS" in env)
    if not multi:
        return False
    jax.distributed.initialize()
    return True


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
            logging.info("dimension of size %d is not divisible by mesh axes %s (%d); replicating it",
                         size, names, ways)
            axes = None
        fitted.append(axes)
    return P(*fitted)


def logical_to_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Boxed (nn.Partitioned) abstract tree -> NamedShardings of its unboxed leaves.

    Leaves without logical names (step counters, rng) are replicated.
    """
    logical = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(logical, rules)
    shapes = nn.unbox(abstract_tree)
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, fit_spec(np.shape(x), spec, mesh)),
                        mesh_specs, shapes, is_leaf=lambda s: isinstance(s, P))
