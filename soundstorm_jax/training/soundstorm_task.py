"""SoundStorm as a training task (`config.kind = 'soundstorm'`): everything one step needs, in one file.

    python train.py --config tiny --workdir runs/tiny --config.data.dir=CODES_DATASET

Config sections: `model` (ConformerWrapper fields; dtypes as strings),
`objective` (SoundStorm fields), `data` (where the prepared codes dataset
lives and the grain pipeline), `optimizer` (AdamW, see optimizer.py), `mesh`.

The step is one `jax.jit` program: the batch arrives as a global array split
over the batch axes, the state with its parameters' shardings (logical axis
names -> `config.mesh.rules`), and XLA's SPMD partitioner adds the gradient
all-reduce (data), the weight all-gathers and gradient reduce-scatters (fsdp)
and the tensor-parallel collectives. The state is donated.

The model agrees with its data by construction: the fields the config leaves
unset come from the codes dataset when the task is built (model_from_data.py).

Gradient accumulation is a `lax.scan` over microbatches inside the step, not
`optax.MultiSteps`: the loss is a mean over *target tokens*, whose number
varies per microbatch, so microbatch gradients are weighted by their target
counts (equal weights would not reproduce the full-batch gradient); one
update happens per call, and the accumulator is a transient of the step, not
optimizer state written into every checkpoint.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from soundstorm_jax import ConformerWrapper, SoundStorm
from soundstorm_jax.data import PipelineConfig, config_from_dict
from soundstorm_jax.training import config as config_lib, metrics as metrics_lib, optimizer as optimizer_lib, \
    sharding
from soundstorm_jax.training.model_from_data import fill_without_data, get_field, resolve_from_codes, \
    unresolved_fields
from soundstorm_jax.training.state import TrainState
from soundstorm_jax.training.trainer import JitStep, keep_if_finite, open_dataset

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict]]
"""(params, batch, rng) -> (scalar loss, metrics dict), as `SoundStorm.__call__`."""

PIPELINE_KEYS = ("batch_size", "max_frames", "frame_rate", "semantic_rate", "code_pad_value",
                 "num_threads", "prefetch_buffer_size")
HOW_TO_PREPARE = "prepare one with `soundstorm prepare --audio AUDIO_DIR --codec CODEC_WORKDIR --out DIR`"

log = logging.getLogger(__name__)


# ---- config -> model and inputs --------------------------------------------------------------------------

def build_model(config: Any) -> SoundStorm:
    """`config.model`, `config.objective` -> `SoundStorm(ConformerWrapper(...), ...)` (the config checked first).

    The codebook size and levels must be set (a `SoundStormTask` fills them from its codes dataset);
    num_semantic_token_ids 0 means no semantic conditioning, as None does.
    """
    config_lib.check_config(config)
    fields = config_lib.read_section(config, "model")
    unset = [f"config.model.{k}" for k in ("codebook_size", "num_quantizers") if fields.get(k) is None]
    if unset:
        raise config_lib.ConfigError(f"{' and '.join(unset)} unset: the codes dataset (config.data.dir) decides "
                                     f"them when a run starts; set them to build the model without one")
    if not fields.get("num_semantic_token_ids"):
        fields["num_semantic_token_ids"] = None
    if fields.get("acoustic_per_semantic") is None:
        fields.pop("acoustic_per_semantic", None)
    for name in ("dtype", "param_dtype"):
        fields[name] = jnp.dtype(fields.get(name) or "float32")
    objective = config_lib.read_section(config, "objective")
    if isinstance(objective.get("steps"), list):
        objective["steps"] = tuple(objective["steps"])
    return SoundStorm(ConformerWrapper(**fields), **objective)


def sample_inputs(model: SoundStorm, *, batch: int, frames: int) -> dict[str, np.ndarray]:
    """Dummy inputs with the shapes init needs: codes (b, n, c), mask (b, n), semantic ids (b, m)."""
    net = model.net
    inputs = {"codes": np.zeros((batch, frames, net.num_columns), np.int32), "mask": np.ones((batch, frames), bool)}
    if net.num_semantic_token_ids is not None:
        inputs["semantic_ids"] = np.zeros((batch, max(1, math.ceil(frames / net.acoustic_per_semantic))), np.int32)
    return inputs


def host_batch(batch: Mapping[str, np.ndarray], model: SoundStorm, *, check: bool = True) -> dict[str, np.ndarray]:
    """A pipeline batch -> the model's inputs (numpy, this host's part).

    Semantic padding becomes the network's `semantic_pad_id`; `check` runs the
    model's host-side input checks (examples with no valid frame, i.e.
    evaluation padding, are left out of the check: they add no targets; with
    several hosts one host's part of the last evaluation batch may be all
    padding).
    """
    out = {"codes": np.asarray(batch["codes"], np.int32), "mask": np.asarray(batch["mask"], bool)}
    if "semantic_ids" in batch and model.net.num_semantic_token_ids is not None:
        out["semantic_ids"] = np.where(batch["semantic_mask"], batch["semantic_ids"],
                                       model.net.semantic_pad_id).astype(np.int32)
    if check:
        real = out["mask"].any(axis=1)
        if real.any():
            model.check_inputs(out["codes"][real], out["mask"][real],
                               out["semantic_ids"][real] if "semantic_ids" in out else None)
    return out


def model_loss_fn(model: SoundStorm, *, deterministic: bool = False) -> LossFn:
    """The SoundStorm objective as a LossFn (masking and dropout rngs from `rng`)."""
    def loss_fn(params, batch, rng):
        k_masking, k_dropout = jax.random.split(rng)
        return model.apply({"params": params}, batch["codes"], batch["mask"],
                           semantic_ids=batch.get("semantic_ids"), deterministic=deterministic,
                           rngs={"masking": k_masking, "dropout": k_dropout})
    return loss_fn


# ---- the step --------------------------------------------------------------------------------------------

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


def split_microbatches(batch: Batch, accum_steps: int, micro_sharding: Optional[NamedSharding]) -> Batch:
    """(B, ...) -> (A, B/A, ...): microbatch a holds examples a, a + A, a + 2A, ...

    Strided, so every microbatch keeps the batch's split over all devices.
    """
    def split(x):
        b = x.shape[0]
        y = jnp.swapaxes(x.reshape((b // accum_steps, accum_steps) + x.shape[1:]), 0, 1)
        return y if micro_sharding is None else jax.lax.with_sharding_constraint(y, micro_sharding)
    return jax.tree.map(split, batch)


def gradients(loss_fn: LossFn, params: Any, batch: Batch, rng: jax.Array, accum_steps: int,
              micro_sharding: Optional[NamedSharding] = None) -> tuple[Any, dict]:
    """(grads, metrics) of the whole batch over `accum_steps` microbatches, each weighted by its share of
    the target tokens: the gradient of the batch's token-mean loss."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, metrics), grads = grad_fn(params, batch, rng)
        return grads, dict(metrics, loss=loss)

    def body(carry, inputs):
        index, microbatch = inputs
        (loss, metrics), grads = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
        weight = metrics["num_targets"]
        grads = jax.tree.map(lambda g: g.astype(jnp.float32) * weight, grads)
        return jax.tree.map(jnp.add, carry, grads), dict(metrics, loss=loss)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    micro = split_microbatches(batch, accum_steps, micro_sharding)
    summed, per_micro = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
    metrics = combine_metrics([jax.tree.map(lambda x, i=i: x[i], per_micro) for i in range(accum_steps)])
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
        ema = state.ema_params
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        kept = keep_if_finite(finite, (params, opt_state, ema), (state.params, state.opt_state, state.ema_params))
        new_state = state.replace(step=state.step + 1, params=kept[0], opt_state=kept[1], ema_params=kept[2],
                                  nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32))
        metrics = dict(metrics, grad_norm=grad_norm, skipped=~finite, nonfinite_count=new_state.nonfinite_count)
        if schedule is not None:
            metrics["lr"] = schedule(state.step - state.nonfinite_count)  # Skipped steps did not advance Adam.
        return new_state, metrics
    return step


# ---- the task --------------------------------------------------------------------------------------------

class SoundStormTask:
    """SoundStorm on a prepared codes dataset, on `mesh` (see the module docstring and `trainer.Task`).

    `loss_fn` replaces the model's objective in the train step (tests).
    """

    kind = "soundstorm"

    def __init__(self, config: Any, mesh: Mesh, *, loss_fn: Optional[LossFn] = None):
        self.config, self.mesh = config, mesh
        config_lib.check_config(config)
        self._builder = None
        if unresolved_fields(config):  # The codes dataset decides them (resolve_from_codes), in place.
            if config.data.get("dir") or get_field(config, "model.codebook_size") is None or \
                    get_field(config, "model.num_quantizers") is None:
                self._builder = self._open_builder()
                metadata, facts = self._facts(self._builder)
                resolve_from_codes(config, metadata, where=str(config.data.dir), **facts)
            else:  # No data (tests, a model built to be restored): the defaults.
                fill_without_data(config)
        self.model = build_model(config)
        self.rules = sharding.rules_from_config(config.mesh.rules)
        self.options = config_lib.compiler_options(config)
        data = config_lib.read_section(config, "data")
        batch_size, accum = int(data["batch_size"]), int(config.optimizer.grad_accum_steps)
        sharding.check_batch_size(batch_size, mesh, self.rules)
        if accum < 1 or batch_size % accum:
            raise ValueError(f"optimizer.grad_accum_steps={accum} must be positive and divide "
                             f"data.batch_size={batch_size}")
        if accum > 1:
            sharding.check_batch_size(batch_size // accum, mesh, self.rules, what="microbatch size")
        self.eval_batch_size = int(data.get("eval_batch_size") or batch_size)
        sharding.check_batch_size(self.eval_batch_size, mesh, self.rules, what="data.eval_batch_size")

        self.schedule = optimizer_lib.learning_rate_schedule(config.optimizer, int(config.total_steps))
        self.tx = optimizer_lib.make_optimizer(config.optimizer, int(config.total_steps))
        ema_decay = config.optimizer.get("ema_decay")
        inputs = sample_inputs(self.model, batch=sharding.data_parallel_size(mesh, self.rules),
                               frames=int(data["max_frames"]))
        self.batch_keys = tuple(inputs)
        model, tx = self.model, self.tx

        def init(rng: jax.Array) -> TrainState:
            k_params, k_masking, k_run = jax.random.split(rng, 3)
            params = model.init({"params": k_params, "masking": k_masking}, inputs["codes"], inputs["mask"],
                                semantic_ids=inputs.get("semantic_ids"))["params"]
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                              ema_params=params if ema_decay is not None else None, rng=k_run,
                              nonfinite_count=jnp.zeros((), jnp.int32))

        self.init_fn = init
        # Traced without a mesh context: the model's constraints are then no-ops (flax would otherwise
        # constrain DenseGeneral's flat kernel with the names of its reshaped form).
        boxed = jax.eval_shape(init, jax.random.PRNGKey(int(config.seed)))
        self.abstract_state, self.shardings = sharding.state_shardings(
            boxed, mesh, self.rules, fsdp_min_size=int(config.mesh.get("fsdp_min_size") or 0))
        self.batch_sharding = sharding.batch_sharding(mesh, self.rules)
        batch_shardings = {k: self.batch_sharding for k in self.batch_keys}
        replicated = NamedSharding(mesh, P())
        micro = NamedSharding(mesh, P(None, sharding.batch_axes(self.rules) or None)) if accum > 1 else None
        step = train_step_fn(loss_fn or model_loss_fn(model), tx, accum_steps=accum, ema_decay=ema_decay,
                             schedule=self.schedule, micro_sharding=micro)
        self.train_step = JitStep(step, mesh, self.rules, in_shardings=(self.shardings, batch_shardings),
                                  out_shardings=(self.shardings, replicated), donate_argnums=(0,),
                                  compiler_options=self.options)
        eval_loss = model_loss_fn(model, deterministic=True)

        def evaluate_batch(params, batch, rng):
            loss, metrics = eval_loss(params, batch, rng)
            return dict(metrics, loss=loss)

        self._eval_step = JitStep(evaluate_batch, mesh, self.rules,
                                  in_shardings=(self.shardings.params, batch_shardings, replicated),
                                  out_shardings=replicated, compiler_options=self.options)
        self.flops = metrics_lib.model_flops_per_step(config)
        self.frames = batch_size * int(data["max_frames"])

    def create_state(self) -> TrainState:
        return jax.jit(lambda rng: nn.unbox(self.init_fn(rng)), out_shardings=self.shardings,
                       compiler_options=self.options)(jax.random.PRNGKey(int(self.config.seed)))

    def eval_params(self, state: TrainState) -> Any:
        """EMA parameters when the run keeps them, else the raw ones."""
        return state.params if state.ema_params is None else state.ema_params

    # ---- data ----
    def _open_builder(self) -> tfds.core.DatasetBuilder:
        data_dir = self.config.data.get("dir")
        if not data_dir:
            raise ValueError("config.data.dir is not set: pass --config.data.dir=DIR/codes, a codes dataset made by "
                             "`soundstorm prepare --audio AUDIO_DIR --codec CODEC_WORKDIR --out DIR`")
        return open_dataset(data_dir, "codes_dataset", HOW_TO_PREPARE)

    @staticmethod
    def _facts(builder: tfds.core.DatasetBuilder) -> tuple[dict, dict]:
        """(metadata, {'levels': the codes feature's columns}) of a codes dataset."""
        try:
            levels = builder.info.features["codes"].shape[-1]
        except (KeyError, IndexError, TypeError):
            levels = None
        return dict(builder.info.metadata or {}), {"levels": levels}

    def open_data(self) -> tfds.core.DatasetBuilder:
        """The prepared codes dataset under `config.data.dir`, checked against the config (`resolve_from_codes`)."""
        builder = self._builder or self._open_builder()
        metadata, facts = self._facts(builder)
        filled = resolve_from_codes(self.config, metadata, where=str(self.config.data.dir), **facts)
        if filled:  # Only when data.dir was set after the task was built: the model is another one.
            raise config_lib.ConfigError(f"the codes dataset decided {sorted(filled)} after the model was built; "
                                         f"set config.data.dir before building the SoundStormTask")
        self._builder = builder
        return builder

    def pipeline_config(self, *, train: bool) -> PipelineConfig:
        values = {k: v for k, v in config_lib.read_section(self.config, "data").items() if k in PIPELINE_KEYS}
        if train:
            return config_from_dict(dict(values, shuffle=True, random_crop=True))
        return config_from_dict(dict(values, shuffle=False, random_crop=False, num_epochs=1,
                                     batch_size=self.eval_batch_size))

    def device_batch(self, batch: Mapping[str, np.ndarray], *, train: bool = True) -> dict[str, jax.Array]:
        del train  # Same inputs for training and evaluation.
        inputs = host_batch(batch, self.model)
        return sharding.global_batch({k: inputs[k] for k in self.batch_keys}, self.batch_sharding)

    # ---- evaluation and logs ----
    def eval_step(self, state: TrainState, batch: Batch, index: int) -> dict:
        """Metrics of one evaluation batch; masks from a fixed key, so successive evaluations compare."""
        rng = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed) + 1), index)
        return self._eval_step(self.eval_params(state), batch, rng)

    def summarize_eval(self, parts: list[dict]) -> Optional[dict]:
        parts = [{k: np.asarray(v, np.float64) for k, v in p.items()} for p in parts if p["num_targets"] > 0]
        return combine_metrics(parts) if parts else None

    def log_record(self, metrics: Mapping[str, Any], step_time: float) -> dict:
        record = {k: metrics[k] for k in ("loss", "accuracy", "level_accuracy", "level_loss", "grad_norm", "lr",
                                          "skipped", "nonfinite_count")}
        record.update(step_time=step_time, frames_per_s=self.frames / step_time,
                      tokens_per_s=self.frames * self.model.net.num_columns / step_time)
        utilisation = metrics_lib.mfu(self.flops, step_time, self.config.logging.peak_flops, self.mesh.size)
        if utilisation is not None:
            record["mfu"] = utilisation
        return record


__all__ = ["SoundStormTask", "build_model", "combine_metrics", "gradients", "host_batch", "model_loss_fn",
           "sample_inputs", "split_microbatches", "train_step_fn"]
