"""Generation speed: one compiled demasking program, timed after compilation.

    python benchmarks/bench_generate.py                    # README config on this machine
    python benchmarks/bench_generate.py --configs readme,paper --repeats 3
    python benchmarks/bench_generate.py --sweep --configs small   # batch 1..64 x 1, 2, 4, 8 devices (mesh)

Prints one JSON object: per config the median seconds per generation, forward
passes, frames generated per second, FLOPs per generation (XLA's count of one
pass times the number of passes) and the achieved fraction of this machine's
measured matmul peak. With --sweep: throughput (frames and audio seconds per
second) for every batch size in --batches on 1, 2, 4 and 8 devices (a
data-parallel mesh, `generate(mesh=...)`; on a CPU the devices are emulated,
each device count in its own process, set up before JAX starts).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import forward_flops, machine, matmul_peak_flops, median_seconds  # noqa: E402

from soundstorm_jax import ConformerWrapper, SoundStorm  # noqa: E402
from soundstorm_jax.sampler import generate  # noqa: E402

CONFIGS = {
    # A small model for CPU sweeps: dim 256, depth 4, 8 levels x 1024 codes; 250 frames (5 s at 50 Hz), (8, 1, ...).
    "small": dict(conformer=dict(dim=256, depth=4, heads=4, dim_head=64, ff_mult=4, conv_kernel_size=5),
                  codebook_size=1024, num_quantizers=8, batch=1, frames=250, steps=8),
    # The seed README: dim 512, depth 2, 12 levels x 1024 codes; 2 x 1024 frames, 18 steps on level 0.
    "readme": dict(conformer=dict(dim=512, depth=2), codebook_size=1024, num_quantizers=12,
                   batch=2, frames=1024, steps=18),
    # The paper: 12 layers, 16 heads, d 1024, ff 4096, conv kernel 5; 30 s at 50 Hz, (16, 1, ..., 1) steps.
    "paper": dict(conformer=dict(dim=1024, depth=12, heads=16, dim_head=64, ff_mult=4, conv_kernel_size=5),
                  codebook_size=1024, num_quantizers=12, batch=1, frames=1500, steps=16),
}


def bench(name: str, spec: dict, dtype, repeats: int, peak: float, attention: str) -> dict:
    net = ConformerWrapper(codebook_size=spec["codebook_size"], num_quantizers=spec["num_quantizers"],
                           conformer=dict(spec["conformer"], attention_impl=attention), dtype=dtype)
    model = SoundStorm(net, steps=spec["steps"])
    b, n = spec["batch"], spec["frames"]
    codes = jnp.zeros((b, n, net.num_columns), jnp.int32)
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, codes)
    passes = sum(model.level_steps)

    run = lambda: generate(model, variables, n, batch_size=b, key=jax.random.key(2)).block_until_ready()
    seconds, times = median_seconds(run, warmup=1, repeats=repeats)

    # One pass computes the trunk plus one level's head (analytic: XLA counts a scanned layer stack once).
    flops = forward_flops(**spec["conformer"], codebook_size=net.codebook_size, heads_computed=net.grouped_quantizers,
                          batch=b, frames=n) * passes
    return {
        "config": name, "dtype": jnp.dtype(dtype).name, "attention_impl": attention, "batch": b, "frames": n, "steps": list(model.level_steps),
        "forward_passes": passes, "seconds_per_generation": seconds, "all_seconds": times,
        "frames_per_second": b * n / seconds, "flops_per_generation": flops,
        "achieved_flops_per_second": flops / seconds, "fraction_of_matmul_peak": flops / seconds / peak,
    }


def sweep_point(name: str, spec: dict, dtype, batch: int, repeats: int, attention: str) -> dict:
    """Throughput of `generate(mesh=...)` at one batch size on every device of this process."""
    from soundstorm_jax.training import sharding
    net = ConformerWrapper(codebook_size=spec["codebook_size"], num_quantizers=spec["num_quantizers"],
                           conformer=dict(spec["conformer"], attention_impl=attention), dtype=dtype)
    model = SoundStorm(net, steps=spec["steps"])
    n = spec["frames"]
    codes = jnp.zeros((1, n, net.num_columns), jnp.int32)
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, codes)
    mesh = sharding.make_mesh({"data": -1})
    run = lambda: generate(model, variables, n, batch_size=batch, key=jax.random.key(2), mesh=mesh,
                           frame_bucket=None).block_until_ready()
    seconds, _ = median_seconds(run, warmup=1, repeats=repeats)
    return {"config": name, "devices": jax.device_count(), "batch": batch, "frames": n,
            "seconds_per_batch": seconds, "frames_per_second": batch * n / seconds,
            "audio_seconds_per_second_at_50hz": batch * n / 50.0 / seconds}


def sweep(args) -> list[dict]:
    """Each device count in a fresh process (the emulated device count is fixed when JAX starts)."""
    rows = []
    for devices in [int(d) for d in args.devices.split(",")]:
        env = dict(os.environ)
        if jax.default_backend() == "cpu":
            env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        command = [sys.executable, __file__, "--point", "--configs", args.configs, "--batches", args.batches,
                   "--repeats", str(args.repeats), "--dtype", args.dtype, "--attention", args.attention]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        rows += json.loads(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="readme", help="comma-separated: " + ",".join(CONFIGS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention", default="einsum" if jax.default_backend() == "cpu" else "xla",
                        choices=["xla", "einsum", "cudnn"], help="attention_impl (einsum is fastest on CPU)")
    parser.add_argument("--sweep", action="store_true", help="batch sizes x device counts (see the docstring)")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="with --sweep: batch sizes")
    parser.add_argument("--devices", default="1,2,4,8", help="with --sweep on a CPU: emulated device counts")
    parser.add_argument("--point", action="store_true", help=argparse.SUPPRESS)  # One device count (--sweep's child).
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    if args.point:
        name = args.configs.split(",")[0]
        print(json.dumps([sweep_point(name, CONFIGS[name], dtype, int(b), args.repeats, args.attention)
                          for b in args.batches.split(",")]))
        return
    if args.sweep:
        print(json.dumps({"benchmark": "generate_sweep", "machine": machine(), "results": sweep(args)}, indent=2))
        return
    peak = matmul_peak_flops(dtype=dtype)
    results = [bench(name, CONFIGS[name], dtype, args.repeats, peak, args.attention)
               for name in args.configs.split(",")]
    print(json.dumps({"benchmark": "generate", "machine": machine(), "matmul_peak_flops_per_second": peak,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
