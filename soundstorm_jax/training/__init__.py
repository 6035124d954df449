"""Training at scale: meshes and sharding rules, the sharded TrainState, the
jitted steps, Orbax checkpoints and metrics. `train.py` strings them together.

  mesh        mesh from config, logical-axis rules, batch sharding, distributed init
  factory     config -> SoundStorm model and pipeline configs; model signatures
  optimizer   AdamW + warmup/cosine + clipping
  state       TrainState, sharded creation (eval_shape -> shardings -> jit)
  step        train/eval steps: microbatch scan, NaN skip, EMA, global batches
  experiment  everything built from a config for one mesh
  checkpoint  Orbax CheckpointManager (state + iterator + model config), SIGTERM
  metrics     JSON-lines writer, FLOP estimates, MFU
  tasks       one trainer core, two models: the per-kind task train.py drives (config.kind)
  codec_task  the SoundStream codec as a task: sharded state, NaN skip, audio data, mel-loss eval
  loop        train_and_evaluate: the loop train.py (and the demo) runs, with an optional time limit
"""
from soundstorm_jax.training.checkpoint import Checkpointer, PreemptionFlag, check_saved_config, save_config
from soundstorm_jax.training.experiment import Experiment, build
from soundstorm_jax.training.loop import TrainSummary, train_and_evaluate
from soundstorm_jax.training.mesh import (MESH_AXES, batch_sharding, make_mesh, maybe_initialize_distributed,
                                          resolve_mesh_shape, rules_from_config)
from soundstorm_jax.training.state import TrainState, bytes_per_device, create_train_state
from soundstorm_jax.training.step import combine_metrics, global_batch, host_batch
from soundstorm_jax.training.tasks import KINDS, SoundStormTask, Task, build_task, kind_of

__all__ = ["Checkpointer", "Experiment", "KINDS", "MESH_AXES", "PreemptionFlag", "SoundStormTask", "Task",
           "TrainState", "TrainSummary", "batch_sharding", "build", "build_task", "bytes_per_device", "check_saved_config",
           "combine_metrics", "create_train_state", "global_batch", "host_batch", "kind_of", "make_mesh",
           "maybe_initialize_distributed", "resolve_mesh_shape", "rules_from_config", "save_config", "train_and_evaluate"]
