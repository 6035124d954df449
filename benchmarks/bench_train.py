"""Train-step benchmark for the README model (dim 512, depth 2, 12 levels x 1024, batch 2 x 1024 frames).

    python benchmarks/bench_train.py [--steps 5] [--dtype float32|bfloat16]

Prints one JSON object: median step time after warm-up, frames/s and tokens/s
(frames x levels), the analytic model FLOPs per step, XLA's own FLOP count of
the compiled step, the measured peak of a large fp32 matmul on this machine,
and MFU against it. The real jitted train step is timed (AdamW, clipping,
sharded over all local devices, state donated).
"""
import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from soundstorm_jax import training
from soundstorm_jax.configs import base
from soundstorm_jax.training import metrics as metrics_lib, sharding, state as state_lib
from soundstorm_jax.training.soundstorm_task import SoundStormTask


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n fp32 matmul (best of `repeats`): this machine's practical peak."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--dtype", default=None,
                        help="compute dtype; default float32 on CPU (no native bf16), the config's elsewhere")
    args = parser.parse_args()

    config = base.get_config()
    config.data.batch_size, config.data.max_frames = args.batch, args.frames
    config.optimizer.warmup_steps = 10  # A non-zero learning rate from step 1.
    platform_name = jax.devices()[0].platform
    config.model.dtype = args.dtype or ("float32" if platform_name == "cpu" else config.model.dtype)

    mesh = training.make_mesh({"data": -1})
    ex = SoundStormTask(config, mesh)
    state = ex.create_state()
    levels = ex.model.net.num_columns
    rng = np.random.default_rng(0)
    batch = sharding.global_batch(
        {"codes": rng.integers(0, int(config.model.codebook_size), (args.batch, args.frames, levels)).astype(np.int32),
         "mask": np.ones((args.batch, args.frames), bool)}, training.batch_sharding(mesh, ex.rules))

    start = time.perf_counter()
    compiled = ex.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else None

    times = []
    for i in range(2 + args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    flops = metrics_lib.model_flops_per_step(config)
    peak = matmul_peak()
    frames = args.batch * args.frames
    print(json.dumps(dict(
        config="configs/base.py", dim=int(config.model.conformer.dim), depth=int(config.model.conformer.depth),
        levels=levels, codebook_size=int(config.model.codebook_size), batch=args.batch, frames=args.frames,
        dtype=config.model.dtype, devices=mesh.size, platform=platform_name, device_kind=jax.devices()[0].device_kind,
        cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
        params=state_lib.count_params(state.params), compile_s=round(compile_s, 2),
        step_time_s_median=step_time, step_time_s_all=[round(t, 4) for t in times],
        frames_per_s=frames / step_time, tokens_per_s=frames * levels / step_time,
        model_flops_per_step=flops,
        xla_flops_per_step_loop_bodies_once=xla_flops,  # XLA counts the scanned layer stack once
        matmul_peak_flops=peak, mfu=flops / step_time / (peak * mesh.size),
        loss=float(metrics["loss"]))))


if __name__ == "__main__":
    main()
