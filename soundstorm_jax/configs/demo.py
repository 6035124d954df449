"""The demo's SoundStorm: a small Conformer conditioned on the corpus's time-aligned phoneme ids.

    soundstorm demo                       # trains it as its fourth stage
    python train.py --config configs/demo.py --workdir runs/demo --config.data.dir=CODES_DATASET

CODES_DATASET: the embedded corpus encoded with configs/demo_codec.py's codec
(`soundstorm prepare --corpus tiny --codec runs/demo_codec --out data/demo`).
The codebook size, levels and rates are the dataset's (256 x 6 at 50 frames/s
from that codec); the phoneme vocabulary is set here, so codes without the
corpus's phoneme ids are refused. Phoneme ids come at 50 per second, the
codec's frame rate, so one semantic token conditions one frame
(acoustic_per_semantic=1, derived from the two rates).
"""
import ml_collections

from soundstorm_jax.configs import common
from soundstorm_jax.data import phonemes


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config()
    config.total_steps = 600  # `soundstorm demo` sets this from --minutes

    config.model.num_semantic_token_ids = phonemes.VOCAB_SIZE
    config.model.dtype = "float32"  # bf16 brings nothing on a CPU
    config.model.conformer = ml_collections.ConfigDict(dict(
        dim=128, depth=3, heads=4, dim_head=32, ff_mult=4, conv_kernel_size=15,
        scan_layers=True, remat_policy="none", attention_impl="einsum"))

    config.objective.steps = 8

    config.data.batch_size = 16
    config.data.max_frames = 256  # 5.1 s crops; utterances average ~3.5 s
    config.data.num_threads = 1
    config.data.prefetch_buffer_size = 2

    config.optimizer.lr = 2e-3
    config.optimizer.warmup_steps = 20
    config.optimizer.weight_decay = 0.0

    config.checkpoint.every_steps = 200
    config.checkpoint.keep = 1
    config.checkpoint.async_save = False
    config.logging.every_steps = 25
    config.logging.eval_every_steps = 10**9  # the demo evaluates per level itself
    return config
