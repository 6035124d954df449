"""Everything a run builds from its config before the loop: model, optimiser,
mesh rules, state shardings and the jitted steps. Shared by train.py, the
benchmark and the tests, so they all run the same programs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import optax
from jax.sharding import Mesh

from soundstorm_jax import SoundStorm
from soundstorm_jax.training import factory, mesh as mesh_lib, optimizer as optimizer_lib, state as state_lib, step as step_lib


@dataclasses.dataclass
class Experiment:
    config: Any
    model: SoundStorm
    mesh: Mesh
    rules: mesh_lib.Rules
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_fn: Callable
    abstract_state: state_lib.TrainState  # ShapeDtypeStructs carrying their target shardings
    shardings: state_lib.TrainState
    batch_keys: tuple[str, ...]
    train_step: step_lib.JitStep
    eval_step: step_lib.JitStep

    def create_state(self) -> state_lib.TrainState:
        state, _ = state_lib.create_train_state(self.init_fn, int(self.config.seed), self.mesh, self.rules,
                                                compiler_options(self.config))
        return state

    def eval_params(self, state: state_lib.TrainState) -> Any:
        """EMA parameters when the run keeps them, else the raw ones."""
        return state.params if state.ema_params is None else state.ema_params


def compiler_options(config: Any) -> Optional[dict]:
    """The set (non-None) entries of `config.compiler_options`, or None."""
    options = {k: v for k, v in (factory.to_dict(config.get("compiler_options")) or {}).items() if v is not None}
    return options or None


def build(config: Any, mesh: Mesh, *, loss_fn: Optional[step_lib.LossFn] = None) -> Experiment:
    """config + mesh -> Experiment. `loss_fn` replaces the model's objective (tests).

    `config.compiler_options` (optional) go to XLA for the steps, e.g.
    {'xla_backend_optimization_level': 0} compiles a CPU test run ~3x faster.
    """
    model = factory.build_model(config.model, config.objective)
    options = compiler_options(config)
    rules = mesh_lib.rules_from_config(config.mesh.rules)
    mesh_lib.check_batch_size(int(config.data.batch_size), mesh, rules)
    accum = int(config.optimizer.grad_accum_steps)
    if accum < 1 or int(config.data.batch_size) % accum:
        raise ValueError(f"optimizer.grad_accum_steps={accum} must be positive and divide "
                         f"data.batch_size={config.data.batch_size}")
    if accum > 1:
        mesh_lib.check_batch_size(int(config.data.batch_size) // accum, mesh, rules, what="microbatch size")
    schedule = optimizer_lib.learning_rate_schedule(config.optimizer, int(config.total_steps))
    tx = optimizer_lib.make_optimizer(config.optimizer, int(config.total_steps))
    ema_decay = config.optimizer.get("ema_decay")
    ways = mesh_lib.data_parallel_size(mesh, rules)
    inputs = state_lib.sample_inputs(model, batch=ways, frames=int(config.data.max_frames))
    init_fn = state_lib.make_init_fn(model, tx, inputs, use_ema=ema_decay is not None)
    abstract, shardings = state_lib.state_shardings(init_fn, jax.random.PRNGKey(int(config.seed)), mesh, rules)
    batch_keys = tuple(inputs)
    train_step = step_lib.make_train_step(loss_fn or step_lib.model_loss_fn(model), tx, shardings, mesh, rules,
                                          batch_keys, accum_steps=accum, ema_decay=ema_decay, schedule=schedule,
                                          compiler_options=options)
    eval_step = step_lib.make_eval_step(step_lib.model_loss_fn(model, deterministic=True), shardings.params,
                                        mesh, rules, batch_keys,
                                        compiler_options=options)
    return Experiment(config, model, mesh, rules, tx, schedule, init_fn, abstract, shardings, batch_keys,
                      train_step, eval_step)
