"""SoundStorm as in the paper (Borsos et al. 2023): 12 layers, 16 heads, d=1024,
FFN 4096, conv kernel 5, 12 levels x 1024 codes at 50 Hz, semantic tokens at 25 Hz.

    python train.py --config configs/paper.py --workdir gs://bucket/run --config.data.dir=gs://bucket/codes

The paper's codec and semantic tokens are set here, so a codes dataset that records other ones is refused with
the flag to change (configs/tiny.py and configs/base.py take them from the dataset instead).

Sized for accelerators: FSDP by default (params + Adam state ~ 3.5 GB fp32).
    config.mesh.shape = dict(data=-1, fsdp=1, tensor=1)   # pure data parallel
    config.mesh.shape = dict(data=1, fsdp=-1, tensor=1)   # FSDP over all devices
    config.mesh.shape = dict(data=-1, fsdp=8, tensor=1)   # DP across slices, FSDP inside (default)
    config.mesh.shape = dict(data=-1, fsdp=4, tensor=4)   # + tensor parallel over heads/mlp/vocab
"""
import ml_collections

from soundstorm_jax.configs import common


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config()
    config.total_steps = 500_000
    config.model.codebook_size = 1024           # SoundStream: 12 levels x 1024 codes at 50 Hz
    config.model.num_quantizers = 12
    config.model.num_semantic_token_ids = 1024  # e.g. w2v-BERT k-means ids; 0 trains unconditionally
    config.model.acoustic_per_semantic = 2.0    # 50 Hz codes / 25 Hz semantic tokens
    config.model.conformer = ml_collections.ConfigDict(dict(
        dim=1024, depth=12, heads=16, dim_head=64, ff_mult=4, conv_kernel_size=5,
        scan_layers=True, remat_policy="dots_no_batch", attention_impl="xla"))
    config.objective.steps = (16, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    config.data.batch_size = 256
    config.data.max_frames = 1500  # 30 s at 50 Hz
    config.data.frame_rate = 50.0
    config.data.semantic_rate = 25.0
    config.optimizer.lr = 5e-4
    config.optimizer.warmup_steps = 10_000
    config.optimizer.ema_decay = 0.9999
    config.mesh.shape = ml_collections.ConfigDict(dict(data=-1, fsdp=8, tensor=1))
    config.checkpoint.every_steps = 2000
    config.logging.every_steps = 100
    config.logging.eval_every_steps = 5000
    config.logging.eval_batches = 100
    return config
