"""Training at scale: one trainer, one file per model kind.

  trainer          the loop (train_and_evaluate), the Task protocol, JitStep, the NaN guard, datasets, evaluation
  soundstorm_task  SoundStorm: model from config, inputs, loss, microbatched step, evaluation
  codec_task       the SoundStream codec: generator + discriminators step, audio data, mel-loss evaluation
  config           loading configs (packaged names or files), overrides, the strict reader, config.json
  sharding         meshes, logical-axis rules and the fallback rule, state and batch shardings
  restore          a workdir -> model + inference parameters (every command that loads a run)
  checkpoint       Orbax checkpoints (state + iterator position + model signature), SIGTERM
  state            SoundStorm's TrainState, bytes per device
  optimizer        AdamW + warmup/cosine + clipping
  metrics          JSON-lines writer, FLOP estimates, MFU
  tensorboard      TensorBoard event files (tensorboardX): every metric, audio samples and spectrograms
  compile_cache    the run's persistent compilation cache (WORKDIR/compile_cache), what the first step loaded
"""
from soundstorm_jax.training.checkpoint import Checkpointer, PreemptionFlag
from soundstorm_jax.training.config import (ConfigError, apply_overrides, check_config, check_saved_config,
                                            load_config, save_config)
from soundstorm_jax.training.restore import load_codec, load_soundstorm, restore_run
from soundstorm_jax.distributed import maybe_initialize_distributed
from soundstorm_jax.training.sharding import MESH_AXES, batch_sharding, make_mesh, resolve_mesh_shape, rules_from_config
from soundstorm_jax.training.state import TrainState, bytes_per_device
from soundstorm_jax.training.trainer import Task, TrainSummary, build_task, train_and_evaluate

__all__ = ["Checkpointer", "ConfigError", "MESH_AXES", "PreemptionFlag", "Task", "TrainState", "TrainSummary",
           "apply_overrides", "batch_sharding", "build_task", "bytes_per_device", "check_config",
           "check_saved_config", "load_codec", "load_config", "load_soundstorm", "make_mesh",
           "maybe_initialize_distributed", "resolve_mesh_shape", "restore_run", "rules_from_config", "save_config",
           "train_and_evaluate"]
