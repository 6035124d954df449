"""The seed README's model: dim 512, depth 2; its codebook size, levels and rates are the codes dataset's (12
levels x 1024 codes at 50 Hz with configs/codec_paper.py's codec; unset here, see configs/common.py).

    python train.py --config configs/base.py --workdir runs/base --config.data.dir=/path/to/codes

Sharding strategies are a change of mesh.shape (rules in configs/common.py):
    config.mesh.shape = dict(data=-1, fsdp=1, tensor=1)   # data parallel (default)
    config.mesh.shape = dict(data=1, fsdp=-1, tensor=1)   # FSDP / ZeRO-3 over all devices
    config.mesh.shape = dict(data=-1, fsdp=1, tensor=4)   # tensor parallel x4, DP the rest
    config.mesh.shape = dict(data=-1, fsdp=4, tensor=2)   # mix: DP x FSDP x TP
FSDP on the FFN width instead of the model dimension: in config.mesh.rules
replace ("embed", "fsdp") with ("mlp", "fsdp") placed before ("mlp", "tensor").
"""
import ml_collections

from soundstorm_jax.configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config()
    config.total_steps = 100_000
    config.model.conformer = ml_collections.ConfigDict(dict(
        dim=512, depth=2, heads=8, dim_head=64, ff_mult=4, conv_kernel_size=31,
        scan_layers=True, remat_policy="none", attention_impl="xla"))
    config.data.batch_size = 32
    config.data.max_frames = 1024
    config.optimizer.lr = 3e-4
    config.optimizer.warmup_steps = 2000
    config.optimizer.ema_decay = 0.999
    config.checkpoint.every_steps = 1000
    config.logging.every_steps = 50
    config.logging.eval_every_steps = 2000
    config.logging.eval_batches = 50
    # mesh.shape = dict(data=1, fsdp=-1, tensor=1)  # switch to FSDP
    return config
