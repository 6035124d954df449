"""Shared benchmark helpers: timing, the machine's matmul peak, analytic FLOP counts."""
from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

# The README configuration with the reference's defaults, on codes (B, N, Q).
README_CONFORMER = dict(dim=512, depth=2, num_residual_streams=4)
K, Q, B, N, STEPS = 1024, 12, 2, 1024, 18


def readme_model(**conformer):
    """``(model, variables, codes)``: SoundStorm over the README network (value residual on), initialised.

    ``conformer`` overrides the Conformer's options (attention_impl, scan_layers, num_residual_streams, ...).
    """
    from soundstorm_jax import ConformerWrapper, SoundStorm

    net = ConformerWrapper(codebook_size=K, num_quantizers=Q,
                           conformer=dict(README_CONFORMER, value_residual=True) | conformer)
    model = SoundStorm(net, steps=STEPS, schedule="cosine")
    codes = jax.random.randint(jax.random.key(0), (B, N, Q), 0, K)
    variables = jax.jit(model.init)({"params": jax.random.key(1), "masking": jax.random.key(2)}, codes)
    return model, variables, codes


def median_seconds(fn, *, warmup: int = 1, repeats: int = 3) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` (which must block until done) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_peak_flops(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak of this device."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    seconds, _ = median_seconds(lambda: matmul(a, b).block_until_ready(), warmup=2, repeats=repeats)
    return 2 * size ** 3 / seconds


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device": getattr(device, "device_kind", str(device)),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def forward_flops(*, dim: int, depth: int, heads: int = 8, dim_head: int = 64, ff_mult: int = 4,
                  conv_expansion_factor: int = 2, conv_kernel_size: int = 31, num_residual_streams: int = 1,
                  codebook_size: int, heads_computed: int, batch: int, frames: int, **_) -> float:
    """Analytic FLOPs (2 per multiply-add) of one network forward pass.

    ``heads_computed`` output heads (``d x d`` then ``d x K`` each): all levels
    for a plain forward, one for a decoding pass or our training loss.
    """
    d, inner, s = dim, dim * conv_expansion_factor, num_residual_streams
    attention = 4 * d * heads * dim_head + 2 * frames * heads * dim_head      # projections + scores/values
    feed_forward = 2 * (2 * d * ff_mult * d)
    conv = d * 2 * inner + conv_kernel_size * inner + inner * d
    streams = 0 if s == 1 else 4 * (d * (s + 1) * s + d * s + s * (s + 1) * d)
    per_frame = depth * (attention + feed_forward + conv + streams) + heads_computed * (d * d + d * codebook_size)
    return 2.0 * per_frame * batch * frames
