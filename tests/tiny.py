"""Tiny configurations shared by the tests (seconds on a 2-core CPU)."""
from __future__ import annotations

import jax
import numpy as np

from soundstorm_jax import ConformerWrapper, SoundStorm

TINY_CONFORMER = dict(dim=32, depth=2, heads=2, dim_head=8, ff_mult=2, conv_kernel_size=5)


def tiny_net(codebook_size: int = 16, num_quantizers: int = 3, **overrides) -> ConformerWrapper:
    conformer = dict(TINY_CONFORMER, **overrides.pop("conformer", {}))
    return ConformerWrapper(codebook_size=codebook_size, num_quantizers=num_quantizers, conformer=conformer,
                            **overrides)


def random_codes(seed: int, shape, codebook_size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, codebook_size, shape).astype(np.int32)


def padding_mask(lengths, frames: int) -> np.ndarray:
    return np.arange(frames)[None, :] < np.asarray(lengths)[:, None]


def init_model(model: SoundStorm, codes, mask=None, seed: int = 0, **kwargs):
    keys = {"params": jax.random.key(seed), "masking": jax.random.key(seed + 1)}
    return jax.jit(lambda: model.init(keys, codes, mask, **kwargs))()


SAMPLE_RATE = 8000  # tiny_engine's codec


def tiny_engine(**options):
    """A `serving.Engine` for a tiny random SoundStorm on phoneme ids (text works: 100 phoneme frames/s, one per
    codec frame) with a tiny random causal codec (8 kHz, hop 8, 3 levels x 16 codes); random weights, no
    training. Options: Engine's keyword arguments (default max_batch 4, max_frames 200, frame_bucket 32)."""
    import ml_collections

    from soundstorm_jax.codec import SoundStream
    from soundstorm_jax.codec.soundstream import SoundStreamCodec
    from soundstorm_jax.data.phonemes import VOCAB_SIZE
    from soundstorm_jax.serving import Engine

    net = tiny_net(codebook_size=16, num_quantizers=3, num_semantic_token_ids=VOCAB_SIZE)
    model = SoundStorm(net, steps=3, cond_drop_prob=0.2)
    variables = init_model(model, random_codes(0, (1, 8, 3)), semantic_ids=np.ones((1, 8), np.int32))
    stream = SoundStream(codebook_size=16, rq_num_quantizers=3, strides=(2, 4), channels=8, dim=16, attn_depth=0,
                         causal=True, target_sample_hz=SAMPLE_RATE)
    codec_vars = jax.jit(lambda: stream.init(jax.random.key(1), np.zeros((1, 64), np.float32)))()
    fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    codec = SoundStreamCodec(stream, codec_vars, compiler_options=fast)
    config = ml_collections.ConfigDict({"data": {"semantic_rate": 100.0}})
    return Engine(model, variables, config=config, codec=codec,
                  **dict(dict(max_batch=4, max_frames=200, frame_bucket=32), **options))
