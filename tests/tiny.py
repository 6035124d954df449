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
