"""The jitted train and eval steps.

One `jax.jit` program per step: the batch arrives as a global array sharded
over the batch axes, the state with its parameter shardings, and XLA's SPMD
partitioner adds the gradient all-reduce (data), the weight all-gathers and
gradient reduce-scatters (fsdp) and the tensor-parallel collectives. The
state is donated, so its buffers are reused in place.

Gradient accumulation is a `lax.scan` over microbatches inside the step,
not `optax.MultiSteps`: the loss is a mean over *target tokens*, whose number
varies per microbatch, so microbatch gradients are weighted by their target
counts (equal weights, as MultiSteps uses, would not reproduce the
full-batch gradient); one update happens per call (one compiled program,
one data-iterator position per step, one NaN check over the whole batch),
and the accumulator is a transient of the step, not extra optimizer state
written into every checkpoint.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from soundstorm_jax import SoundStorm
from soundstorm_jax.training import mesh as mesh_lib
from soundstorm_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict]]
"""(params, batch, rng) -> (scalar loss, metrics dict), as `SoundStorm.__call__`."""

MODEL_KEYS = ("codes", "mask", "semantic_ids")


def model_loss_fn(model: SoundStorm, *, deterministic: bool = False) -> LossFn:
    """The SoundStorm objective as a LossFn (masking and dropout rngs from `rng`)."""
    def loss_fn(params, batch, rng):
        k_masking, k_dropout = jax.random.split(rng)
        return model.apply({"params": params}, batch["codes"], batch["mask"],
                           semantic_ids=batch.get("semantic_ids"), deterministic=deterministic,
                           rngs={"masking": k_masking, "dropout": k_dropout})
    return loss_fn


def host_batch(batch: Mapping[str, np.ndarray], model: SoundStorm, *, check: bool = True) -> dict[str, np.ndarray]:
    """A pipeline batch -> the model's inputs (numpy, this host's part).

    Semantic padding becomes the network's `semantic_pad_id`; `check` runs the
    model's host-side input checks (examples with no valid frame, i.e.
    evaluation padding, are left out of the check: they add no targets).
    """
    out = {"codes": np.asarray(batch["codes"], np.int32), "mask": np.asarray(batch["mask"], bool)}
    if "semantic_ids" in batch and model.net.num_semantic_token_ids is not None:
        out["semantic_ids"] = np.where(batch["semantic_mask"], batch["semantic_ids"],
                                       model.net.semantic_pad_id).astype(np.int32)
    if check:
        real = out["mask"].any(axis=1)
        if not real.any():
            raise ValueError("a batch holds no valid frame at all")
        model.check_inputs(out["codes"][real], out["mask"][real],
                           out["semantic_ids"][real] if "semantic_ids" in out else None)
    return out


def global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's numpy batch -> global arrays (batch axis split over the batch mesh axes)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def combine_metrics(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Target-weighted mean of per-(micro)batch metrics (jnp or numpy).

    Token means are weighted by `num_targets`, per-level means by
    `level_targets`; counts add up. Other scalars (e.g. critic_loss) are
    weighted by `num_targets` too.
    """
    total = sum(p["num_targets"] for p in parts)
    level_total = sum(p["level_targets"] for p in parts)
    safe, level_safe = jnp.maximum(total, 1e-9), jnp.maximum(level_total, 1.0)
    out = {"num_targets": total, "level_targets": level_total}
    for key in parts[0]:
        if key in out:
            continue
        if key.startswith("level_"):
            out[key] = sum(p[key] * p["level_targets"] for p in parts) / level_safe
        else:
            out[key] = sum(p[key] * p["num_targets"] for p in parts) / safe
    return out


def split_microbatches(batch: Batch, accum_steps: int, sharding: Optional[NamedSharding]) -> Batch:
    """(B, ...) -> (A, B/A, ...): microbatch a holds examples a, a + A, a + 2A, ...

    Strided, so every microbatch keeps the batch's split over all devices.
    """
    def split(x):
        b = x.shape[0]
        y = jnp.swapaxes(x.reshape((b // accum_steps, accum_steps) + x.shape[1:]), 0, 1)
        return y if sharding is None else jax.lax.with_sharding_constraint(y, sharding)
    return jax.tree.map(split, batch)


def gradients(loss_fn: LossFn, params: Any, batch: Batch, rng: jax.Array, accum_steps: int,
              micro_sharding: Optional[NamedSharding] = None) -> tuple[Any, dict]:
    """(grads, metrics) of the whole batch, over `accum_steps` microbatches.

    Microbatch gradients are weighted by their share of the target tokens, so
    the result is the gradient of the batch's token-mean loss.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, metrics), grads = grad_fn(params, batch, rng)
        return grads, dict(metrics, loss=loss)

    micro = split_microbatches(batch, accum_steps, micro_sharding)

    def body(carry, inputs):
        index, mb = inputs
        (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, index))
        weight = metrics["num_targets"]
        grads = jax.tree.map(lambda g: g.astype(jnp.float32) * weight, grads)
        return jax.tree.map(jnp.add, carry, grads), dict(metrics, loss=loss)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    summed, per_micro = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
    parts = [jax.tree.map(lambda x, i=i: x[i], per_micro) for i in range(accum_steps)]
    metrics = combine_metrics(parts)
    grads = jax.tree.map(lambda g, p: (g / jnp.maximum(metrics["num_targets"], 1e-9)).astype(p.dtype),
                         summed, params)
    return grads, metrics


def train_step_fn(loss_fn: LossFn, tx: optax.GradientTransformation, *, accum_steps: int = 1,
                  ema_decay: Optional[float] = None, schedule: Optional[optax.Schedule] = None,
                  micro_sharding: Optional[NamedSharding] = None) -> Callable:
    """The pure step: (state, batch) -> (state, metrics).

    Per-step randomness is fold_in(state.rng, state.step). A NaN/Inf loss or
    gradient norm keeps params, opt_state and EMA unchanged (the step counter
    still advances: the batch was consumed) and increments nonfinite_count.
    """
    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grads, metrics = gradients(loss_fn, state.params, batch, rng, accum_steps, micro_sharding)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        ema = state.ema_params
        if ema is not None:
            ema = keep_if_finite(jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params), ema)
        new_state = state.replace(step=state.step + 1, params=keep_if_finite(params, state.params),
                                  opt_state=keep_if_finite(opt_state, state.opt_state), ema_params=ema,
                                  nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32))
        metrics = dict(metrics, grad_norm=grad_norm, skipped=~finite, nonfinite_count=new_state.nonfinite_count)
        if schedule is not None:
            # The optimiser's own count: skipped steps did not advance it.
            metrics["lr"] = schedule(state.step - state.nonfinite_count)
        return new_state, metrics
    return step


class JitStep:
    """A jitted step traced under the mesh and the logical-axis rules.

    `traces` counts how often the Python function was traced (= compiled):
    once per run when shapes and shardings stay fixed.
    """

    def __init__(self, fn: Callable, mesh: Mesh, rules: mesh_lib.Rules, *, in_shardings, out_shardings,
                 donate_argnums=(), mesh_context: bool = True, compiler_options: Optional[dict] = None):
        self.mesh, self.rules, self.traces, self.mesh_context = mesh, rules, 0, mesh_context

        def traced(*args):
            self.traces += 1
            with nn.logical_axis_rules(rules):
                return fn(*args)

        self._jitted = jax.jit(traced, in_shardings=in_shardings, out_shardings=out_shardings,
                               donate_argnums=donate_argnums, compiler_options=compiler_options)

    def _context(self):
        # The mesh context turns the model's logical activation constraints on;
        # without it they are no-ops and XLA propagates the in/out shardings.
        return jax.set_mesh(self.mesh) if self.mesh_context else contextlib.nullcontext()

    def __call__(self, *args):
        with self._context():
            return self._jitted(*args)

    def lower(self, *args):
        with self._context():
            return self._jitted.lower(*args)

    def cache_size(self) -> int:
        return self._jitted._cache_size()


def batch_shardings(mesh: Mesh, rules: mesh_lib.Rules, keys) -> dict[str, NamedSharding]:
    sharding = mesh_lib.batch_sharding(mesh, rules)
    return {k: sharding for k in keys}


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, shardings: TrainState, mesh: Mesh,
                    rules: mesh_lib.Rules, batch_keys, *, accum_steps: int = 1, ema_decay: Optional[float] = None,
                    schedule: Optional[optax.Schedule] = None, mesh_context: bool = True,
                    compiler_options: Optional[dict] = None) -> JitStep:
    """The train step jitted with explicit shardings and the state donated."""
    micro = NamedSharding(mesh, P(None, mesh_lib.batch_axes(rules) or None))
    fn = train_step_fn(loss_fn, tx, accum_steps=accum_steps, ema_decay=ema_decay, schedule=schedule,
                       micro_sharding=micro if accum_steps > 1 else None)
    return JitStep(fn, mesh, rules, in_shardings=(shardings, batch_shardings(mesh, rules, batch_keys)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,),
                   mesh_context=mesh_context, compiler_options=compiler_options)


def make_eval_step(loss_fn: LossFn, param_shardings: Any, mesh: Mesh, rules: mesh_lib.Rules, batch_keys, *,
                   mesh_context: bool = True, compiler_options: Optional[dict] = None) -> JitStep:
    """(params, batch, rng) -> metrics; `loss_fn` should be deterministic (no dropout)."""
    def evaluate(params, batch, rng):
        loss, metrics = loss_fn(params, batch, rng)
        return dict(metrics, loss=loss)
    return JitStep(evaluate, mesh, rules,
                   in_shardings=(param_shardings, batch_shardings(mesh, rules, batch_keys), NamedSharding(mesh, P())),
                   out_shardings=NamedSharding(mesh, P()), mesh_context=mesh_context,
                   compiler_options=compiler_options)
