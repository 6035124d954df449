"""A training workdir -> its model and inference parameters: what every command that loads a run uses.

    model, variables, config = load_soundstorm("runs/tiny")    # SoundStorm + {'params': EMA or raw}
    codec = load_codec("runs/codec")                             # SoundStreamCodec: encode / decode

The model is rebuilt from `workdir/config.json` (the config the run was
trained with) and the latest complete checkpoint (or `step`) is restored
onto one device, or onto `mesh`. An export (`soundstorm export`, `soundstorm_jax.export`) loads the same
way, from its inference variables.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
from etils import epath
from jax.sharding import Mesh

from soundstorm_jax import paths
from soundstorm_jax.training import checkpoint as checkpoint_lib, config as config_lib, sharding, trainer


@dataclasses.dataclass
class RestoredRun:
    """A workdir's config, the task rebuilt from it, and the restored train state at `step`."""
    workdir: str
    config: Any
    task: Any
    state: Any
    step: int


def rebuild(workdir: str, *, kind: Optional[str] = None, mesh: Optional[Mesh] = None):
    """(config, task) of the run (or export) in `workdir`, rebuilt from its config.json on `mesh` (default: one
    local device) without reading any data. Every problem is a ValueError or FileNotFoundError naming it."""
    paths.check_reachable(workdir, "workdir")
    if not epath.Path(workdir).is_dir():
        raise FileNotFoundError(f"workdir {workdir!r} does not exist or is not a directory")
    config = config_lib.read_saved_config(workdir)
    if config is None:
        raise FileNotFoundError(f"{workdir!r} has no {config_lib.CONFIG_FILE}; is it a training workdir "
                                f"(`soundstorm train --workdir ...`) or an export (`soundstorm export`)?")
    found = config_lib.kind_of(config)
    if kind is not None and found != kind:
        raise config_lib.ConfigError(f"{workdir!r} holds a {found!r} run, not a {kind!r} one")
    # One device of this process (with several processes, each restores its own copy).
    mesh = mesh or sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.local_devices()[:1])
    # Training batch sizes need not divide this mesh: restoring reads no batch.
    ways = sharding.data_parallel_size(mesh, sharding.rules_from_config(config.mesh.rules))
    config.data.batch_size = config.data.eval_batch_size = ways * jax.process_count()
    if "grad_accum_steps" in config.optimizer:
        config.optimizer.grad_accum_steps = 1
    if found == "soundstorm":  # Never the codes dataset: config.json holds what it decided (older runs: defaults).
        from soundstorm_jax.training.model_from_data import fill_without_data
        fill_without_data(config)
    return config, trainer.build_task(config, mesh)


def restore_run(workdir: str, *, step: Optional[int] = None, kind: Optional[str] = None,
                mesh: Optional[Mesh] = None) -> RestoredRun:
    """The run in `workdir` at checkpoint `step` (default: the latest), on `mesh` (default: one local device).

    `kind` ('soundstorm' or 'codec') is what the caller needs; another kind is an error naming both.
    Every problem (no folder, no or a malformed config.json, no checkpoint) is a ValueError or
    FileNotFoundError naming the workdir.
    """
    config, task = rebuild(workdir, kind=kind, mesh=mesh)
    ckpt = checkpoint_lib.Checkpointer(workdir, config.model, every_steps=1, keep=1, async_save=False)
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{workdir!r} has no complete checkpoint yet")
        state, _, restored_step = ckpt.restore(task.abstract_state, step)
    finally:
        ckpt.close()
    return RestoredRun(workdir=workdir, config=config, task=task, state=state, step=restored_step)


def _from_export(path: str, kind: str, step: Optional[int], mesh: Optional[Mesh]):
    """(config, task, variables) of an export: its variables restored in the layout `mesh` wants."""
    from soundstorm_jax import export
    manifest = export.read_manifest(path)
    if step is not None and step != manifest["step"]:
        raise ValueError(f"{path!r} is an export of step {manifest['step']}, not {step}")
    config, task = rebuild(path, kind=kind, mesh=mesh)
    state = task.abstract_state
    if kind == "soundstorm":
        abstract = {"params": state.params}
    else:
        abstract = {"params": state.codec.params["generator"], "vq_stats": state.codec.vq_stats}
    return config, task, export.load_variables(path, abstract)


def load_soundstorm(workdir: str, step: Optional[int] = None, *, mesh: Optional[Mesh] = None):
    """(model, variables, config) of a SoundStorm workdir or export: variables = {'params': EMA params, else raw}."""
    from soundstorm_jax import export
    if export.is_export(workdir):
        config, task, variables = _from_export(workdir, "soundstorm", step, mesh)
        return task.model, variables, config
    run = restore_run(workdir, step=step, kind="soundstorm", mesh=mesh)
    return run.task.model, {"params": nn.unbox(run.task.eval_params(run.state))}, run.config


def load_codec(workdir: str, step: Optional[int] = None, *, mesh: Optional[Mesh] = None):
    """The codec trained in a codec workdir or export (a `SoundStreamCodec`: jitted encode / decode)."""
    from soundstorm_jax import export
    if export.is_export(workdir):
        from soundstorm_jax.codec import SoundStreamCodec
        _, task, variables = _from_export(workdir, "codec", step, mesh)
        return SoundStreamCodec(task.train_config.codec, variables, compiler_options=task.options)
    run = restore_run(workdir, step=step, kind="codec", mesh=mesh)
    return run.task.codec(run.state)


__all__ = ["RestoredRun", "load_codec", "load_soundstorm", "restore_run"]
