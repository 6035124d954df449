"""The SoundStream codec as a training task (`config.kind = 'codec'`).

    python train.py --config codec_tiny --workdir runs/codec [--config.data.dir=AUDIO_DATASET]

The codec's own pure step (`soundstorm_jax.codec.codec_train_step`: generator,
discriminators and EMA codebooks in one update) runs inside the shared
trainer: the same mesh, `Checkpointer` (state + iterator position + model
signature), resume, SIGTERM handling and metrics JSONL as SoundStorm.

State (`CodecRunState`): the codec's `CodecTrainState` (step, params
{'generator', 'discriminator'}, vq_stats, opt_state) plus the run's rng
(step s draws from fold_in(rng, s)) and the count of skipped steps. A step
whose losses or gradient norms are NaN/Inf keeps params, codebooks and
optimizer state (the step counter advances: the batch was consumed).

Sharding. The batch (audio, (B, T)) is split over the mesh's batch axes
('data', 'fsdp' by `config.mesh.rules`); XLA reduces gradients, EMA
codebook statistics and k-means over the global batch, so a sharded step
equals the one-device step. With `mesh.shape.fsdp > 1` every parameter,
codebook and optimizer array follows the fallback rule for arrays without
logical names (`sharding.fallback_spec`: at least `mesh.fsdp_min_size`
elements -> split over 'fsdp' along its largest divisible dimension, the
usual ZeRO-3 rule for convolutions). `config.optimizer.flatten` picks the Adam state's layout:
True (default, cheapest to compile) keeps one flat vector per parameter
group, which FSDP can split only when its length divides the axis (else it
is replicated); False keeps one array per parameter, split like the
parameter (ZeRO-3). The layout is part of the checkpoint: resume with the
same value. The 'tensor' axis must be 1: the codec has no tensor-parallel
layout.

Data: `config.data.dir` is a prepared `AudioFolder` dataset
(`soundstorm_jax.data.prepare_audio_folder(AUDIO_DIR, DIR, sample_rate=...)`)
at the codec's sample rate; when it is not set, the embedded eSpeak corpus
(`prepare_corpus(config.data.corpus)`) is built (seconds) and used, so the
codec trains with no download. Examples are random crops of
`config.data.segment_samples` samples (shorter files are zero-padded).

Evaluation: the multi-scale mel loss (and the waveform L1 over real samples)
of the full-bitrate reconstruction, per example, over the first window of
every validation file.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from soundstorm_jax.codec import (CodecDiscriminator, CodecTrainConfig, CodecTrainState, SoundStream,
                                  SoundStreamCodec, codec_from_state, codec_train_step, init_codec_train_state,
                                  multiscale_mel_loss)
from soundstorm_jax.data import PipelineConfig, prepare_corpus
from soundstorm_jax.training import config as config_lib, sharding
from soundstorm_jax.training.trainer import JitStep, keep_if_finite, open_dataset

log = logging.getLogger(__name__)

LOGGED = ("generator_loss", "discriminator_loss", "mel_loss", "commit_loss", "adversarial_loss",
          "feature_matching_loss", "waveform_l1", "levels_used", "generator_grad_norm", "discriminator_grad_norm",
          "skipped", "nonfinite_count")


@flax.struct.dataclass
class CodecRunState:
    """codec: the codec's CodecTrainState; rng: uint32 (2,), step s uses fold_in(rng, s);
    nonfinite_count: int32 (), steps skipped for a NaN/Inf loss or gradient."""
    codec: CodecTrainState
    rng: jax.Array
    nonfinite_count: jax.Array

    @property
    def step(self) -> jax.Array:
        return self.codec.step


# ---- config -> CodecTrainConfig ----------------------------------------------------------------------------

def _tuples(value: Any) -> Any:
    """Lists (from JSON or the command line) -> tuples, so the config stays hashable (it is static under jit)."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def _module(cls, config: Any, path: str):
    values = {k: _tuples(v) for k, v in config_lib.read_section(config, path).items()}
    if isinstance(values.get("dtype"), str):
        values["dtype"] = jnp.dtype(values["dtype"])
    return cls(**values)


def codec_train_config(config: Any, mesh: Optional[Mesh] = None) -> CodecTrainConfig:
    """`config.model.generator` / `.discriminator`, `config.loss`, `config.optimizer` -> `CodecTrainConfig`."""
    opt = config_lib.read_section(config, "optimizer")
    flatten = bool(opt.get("flatten", True))
    if flatten and mesh is not None and int(mesh.shape.get("fsdp", 1)) > 1:
        log.warning("config.optimizer.flatten=True with fsdp=%d: the Adam state is one vector per parameter "
                        "group, split over 'fsdp' only when its length divides it; set "
                        "config.optimizer.flatten=False to shard it like the parameters", mesh.shape["fsdp"])
    defaults = CodecTrainConfig()
    return CodecTrainConfig(
        codec=_module(SoundStream, config, "model.generator"),
        discriminator=_module(CodecDiscriminator, config, "model.discriminator"),
        generator_lr=float(opt.get("generator_lr", defaults.generator_lr)),
        discriminator_lr=float(opt.get("discriminator_lr", defaults.discriminator_lr)),
        adam_b1=float(opt.get("b1", defaults.adam_b1)), adam_b2=float(opt.get("b2", defaults.adam_b2)),
        grad_clip_norm=None if opt.get("clip_norm") is None else float(opt["clip_norm"]),
        flatten_optimizer=flatten,
        lr_decay_steps=None if opt.get("decay_steps") is None else int(opt["decay_steps"]),
        **{k: _tuples(v) for k, v in config_lib.read_section(config, "loss").items()})


# ---- steps -------------------------------------------------------------------------------------------------

def train_step_fn(state: CodecRunState, batch: Mapping[str, jax.Array]) -> tuple[CodecRunState, dict]:
    """One codec update on batch['audio'] (B, T), with per-step rng and the NaN/Inf skip."""
    rng = jax.random.fold_in(state.rng, state.codec.step)
    new, metrics = codec_train_step(state.codec, batch["audio"], rng)
    finite = jnp.all(jnp.isfinite(jnp.stack([metrics[k] for k in (
        "generator_loss", "discriminator_loss", "generator_grad_norm", "discriminator_grad_norm")])))
    kept = keep_if_finite(finite, new, state.codec).replace(step=new.step)
    count = state.nonfinite_count + (~finite).astype(jnp.int32)
    return (CodecRunState(codec=kept, rng=state.rng, nonfinite_count=count),
            dict(metrics, skipped=~finite, nonfinite_count=count))


def eval_step_fn(codec: CodecTrainState, batch: Mapping[str, jax.Array]) -> dict:
    """Sums over the real examples of a batch: per-example multi-scale mel loss (all levels) and waveform L1.

    An example is real when its mask has a real sample (evaluation pads the
    last batch with fully masked examples); L1 counts real samples only.
    """
    cfg = codec.config
    audio, mask = batch["audio"], batch["mask"]
    out = cfg.codec.apply({"params": codec.params["generator"], "vq_stats": codec.vq_stats}, audio, train=False)
    mel = jax.vmap(lambda a, b: multiscale_mel_loss(a[None], b[None], cfg.codec.sample_rate,
                                                    cfg.mel_scales, cfg.mel_bins))(audio, out.audio)
    real = jnp.any(mask, axis=1).astype(jnp.float32)
    samples = mask.astype(jnp.float32)
    return {"mel_loss_sum": jnp.sum(mel * real), "examples": jnp.sum(real),
            "l1_sum": jnp.sum(jnp.abs(audio - out.audio) * samples), "samples": jnp.sum(samples)}


# ---- the task ----------------------------------------------------------------------------------------------

class CodecTask:
    """SoundStream training on an audio dataset (see the module docstring and `trainer.Task`)."""

    kind = "codec"

    def __init__(self, config: Any, mesh: Mesh):
        config_lib.check_config(config)
        self.config, self.mesh = config, mesh
        if int(mesh.shape.get("tensor", 1)) != 1:
            raise ValueError(f"the codec has no tensor-parallel layout: set mesh.shape.tensor=1 "
                             f"(got mesh {dict(mesh.shape)}); use the data and fsdp axes")
        data = config_lib.read_section(config, "data")
        self.rules = sharding.rules_from_config(config.mesh.rules)
        self.train_config = codec_train_config(config, mesh)
        self.sample_rate = int(self.train_config.codec.sample_rate)
        self.segment = int(data["segment_samples"])
        self.batch_size = int(data["batch_size"])
        self.eval_batch_size = int(data.get("eval_batch_size") or self.batch_size)
        sharding.check_batch_size(self.batch_size, mesh, self.rules)
        sharding.check_batch_size(self.eval_batch_size, mesh, self.rules, what="data.eval_batch_size")
        self.options = config_lib.compiler_options(config)

        sample = np.zeros((1, self.segment), np.float32)  # Fixes shapes only (k-means runs on the first batch).
        train_config = self.train_config

        def init(rng):
            k_codec, k_run = jax.random.split(rng)
            return CodecRunState(codec=init_codec_train_state(train_config, k_codec, sample), rng=k_run,
                                 nonfinite_count=jnp.zeros((), jnp.int32))

        self.init_fn = init
        self.abstract_state, self.shardings = sharding.state_shardings(
            jax.eval_shape(init, jax.random.PRNGKey(int(config.seed))), mesh, self.rules,
            fsdp_min_size=int(config.mesh.get("fsdp_min_size") or 0))
        self.batch_sharding = sharding.batch_sharding(mesh, self.rules)
        replicated = NamedSharding(mesh, P())
        self.train_step = JitStep(
            train_step_fn, mesh, self.rules, in_shardings=(self.shardings, {"audio": self.batch_sharding}),
            out_shardings=(self.shardings, replicated), donate_argnums=(0,), compiler_options=self.options)
        self._eval_step = JitStep(
            eval_step_fn, mesh, self.rules,
            in_shardings=(self.shardings.codec, {"audio": self.batch_sharding, "mask": self.batch_sharding}),
            out_shardings=replicated, compiler_options=self.options)

    def create_state(self) -> CodecRunState:
        """A fresh state, each array created where its shards live. Same seed -> same values on any mesh."""
        # A one-off program: on a CPU, skip the backend's optimisation passes unless the config says otherwise
        # (they dominate its compile time: one random draw per parameter leaf).
        options = self.options or ({"xla_backend_optimization_level": 0}
                                   if jax.devices()[0].platform == "cpu" else None)
        return jax.jit(self.init_fn, out_shardings=self.shardings,
                       compiler_options=options)(jax.random.PRNGKey(int(self.config.seed)))

    def codec(self, state: CodecRunState) -> SoundStreamCodec:
        """The trained codec (jitted encode/decode) of a state."""
        return codec_from_state(state.codec, compiler_options=self.options)

    # ---- data ----
    def open_data(self) -> tfds.core.DatasetBuilder:
        """`config.data.dir`'s prepared audio dataset, or the embedded corpus; at the codec's sample rate."""
        data = self.config.data
        if data.get("dir"):
            builder = open_dataset(data.dir, "audio_folder",
                                   f"prepare a folder of audio files with `soundstorm prepare --audio AUDIO_DIR "
                                   f"--out {data.dir} --sample-rate {self.sample_rate}`")
        else:
            corpus = data.get("corpus") or "tiny"
            log.info("config.data.dir is not set: using the embedded eSpeak corpus %r at %d Hz",
                         corpus, self.sample_rate)
            builder = prepare_corpus(corpus, sample_rate=self.sample_rate, progress=jax.process_index() == 0)
        rate = (builder.info.metadata or {}).get("sample_rate")
        if rate is not None and int(rate) != self.sample_rate:
            raise ValueError(
                f"the audio dataset in {builder.data_dir!r} is at {int(rate)} Hz but the codec expects "
                f"{self.sample_rate} Hz (config.model.generator.target_sample_hz); prepare it again at the "
                f"codec's rate: `soundstorm prepare --audio AUDIO_DIR --out NEW_DIR --sample-rate {self.sample_rate}`")
        return builder

    def pipeline_config(self, *, train: bool) -> PipelineConfig:
        data = self.config.data
        common = dict(max_frames=self.segment, feature="audio", frame_rate=float(self.sample_rate),
                      num_threads=int(data.num_threads), prefetch_buffer_size=int(data.prefetch_buffer_size))
        if train:
            return PipelineConfig(batch_size=self.batch_size, shuffle=True, random_crop=True, **common)
        return PipelineConfig(batch_size=self.eval_batch_size, shuffle=False, random_crop=False, num_epochs=1,
                              **common)

    def device_batch(self, batch: Mapping[str, np.ndarray], *, train: bool = True) -> dict[str, jax.Array]:
        keys = ("audio",) if train else ("audio", "mask")
        return sharding.global_batch({k: batch[k] for k in keys}, self.batch_sharding)

    # ---- evaluation and logs ----
    def eval_step(self, state: CodecRunState, batch: Mapping[str, jax.Array], index: int) -> dict:
        del index  # Deterministic: no randomness in the codec's evaluation.
        return self._eval_step(state.codec, batch)

    def summarize_eval(self, parts: list[dict]) -> Optional[dict]:
        """{'mel_loss', 'waveform_l1', 'examples'} over the evaluated examples (None if there were none)."""
        totals = {k: sum(float(p[k]) for p in parts) for k in parts[0]}
        if not totals["examples"]:
            return None
        return {"mel_loss": totals["mel_loss_sum"] / totals["examples"],
                "waveform_l1": totals["l1_sum"] / max(totals["samples"], 1.0),
                "examples": int(totals["examples"])}

    def log_record(self, metrics: Mapping[str, Any], step_time: float) -> dict:
        record = {k: metrics[k] for k in LOGGED}
        seconds = self.batch_size * self.segment / self.sample_rate
        record.update(step_time=step_time, audio_seconds_per_s=seconds / step_time,
                      generator_lr=metrics["generator_lr"], discriminator_lr=metrics["discriminator_lr"])
        return record


__all__ = ["CodecRunState", "CodecTask", "codec_train_config", "eval_step_fn", "train_step_fn"]
