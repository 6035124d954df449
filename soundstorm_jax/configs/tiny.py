"""Tiny SoundStorm: seconds on a CPU. Used by the tests and for smoke runs.

    python train.py --config configs/tiny.py --workdir /path/to/run --config.data.dir=/path/to/codes

The codebook size, levels, frame rate and semantic tokens are the codes dataset's (unset here, see
configs/common.py): e.g. 64 x 4 at 2,000 frames/s on codes from configs/codec_tiny.py's codec.

Sharding strategy (any mix is a change of mesh.shape; see configs/base.py for the rules):
    data parallel (default)      --config.mesh.shape.data=-1
    FSDP over 8 devices          --config.mesh.shape.data=1 --config.mesh.shape.fsdp=-1
    tensor parallel x2 + DP      --config.mesh.shape.data=-1 --config.mesh.shape.tensor=2
    FSDP x2, TP x2, DP the rest  --config.mesh.shape.fsdp=2 --config.mesh.shape.tensor=2
"""
import ml_collections

from soundstorm_jax.configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config()
    config.total_steps = 40

    config.model.dtype = "float32"  # bf16 brings nothing on a CPU
    config.model.conformer = ml_collections.ConfigDict(dict(
        dim=32, depth=2, heads=2, dim_head=8, ff_mult=2, conv_kernel_size=5,
        scan_layers=True, remat_policy="none", attention_impl="xla"))

    config.objective.steps = 4

    config.data.batch_size = 8
    config.data.max_frames = 32
    config.data.num_threads = 1
    config.data.prefetch_buffer_size = 2

    config.optimizer.lr = 3e-3
    config.optimizer.warmup_steps = 5

    config.checkpoint.every_steps = 10
    config.checkpoint.keep = 2
    config.logging.every_steps = 1
    config.logging.eval_every_steps = 20
    config.logging.eval_batches = 2
    return config
