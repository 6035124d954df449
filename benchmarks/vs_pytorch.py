"""soundstorm-jax against soundstorm-pytorch 0.6.1, side by side in one run, same configuration and weights.

    python benchmarks/vs_pytorch.py --reference-python ../refenv/bin/python

The reference needs its own environment (torch + soundstorm-pytorch; see
``tools/reference_env.sh``); ``--reference-python`` (or the environment
variable ``SOUNDSTORM_REFERENCE_PYTHON``) names its interpreter. We build the
README configuration (dim 512, depth 2, 12 levels x 1024 codes) with the
reference's defaults (4 residual streams, value residual), export our weights
into its state dict, and time on codes ``(2, 1024, 12)``: (a) one training step
(forward + backward, no optimizer), (b) ``generate(1024, batch_size=2)`` with 18
steps on the first level and one on each later level, (c) a network forward
with all 12 heads. Medians after a warm-up; each side's FLOP/s is what it
actually computes (the reference evaluates every head each pass, we evaluate
the one needed) against the larger of the two matmul peaks measured here.

Our two layers run unrolled (``scan_layers=False``: same parameters; a scan's
backward pass stacks and slices every saved activation, 0.2 s per training step
here). The allocator matters on CPU: XLA allocates its buffers afresh on every
call, and with glibc's malloc the big ones arrive as fresh pages each time (we
counted 430,000 page faults, 1.7 GB, per training step); with
``LD_PRELOAD=libtcmalloc_minimal.so.4`` none after warm-up. The reference side
runs in a subprocess with the same environment, so both sides get the same
allocator, and the report names it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (B, K, N, Q, README_CONFORMER, STEPS, forward_flops, machine, matmul_peak_flops,  # noqa: E402
                    median_seconds, readme_model)

from soundstorm_jax.interop import export_state_dict  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


def ours(parts, repeats, warmup, attention):
    model, variables, codes = readme_model(attention_impl=attention, scan_layers=False)
    net = model.net
    out = {"model": model, "variables": variables, "codes": np.asarray(codes)}
    if "forward" in parts:
        forward = jax.jit(lambda v, c: net.apply({"params": v["params"]["net"]}, c))
        out["forward_logits_sample"] = np.asarray(forward(variables, codes)[0, :2, 0, :4]).tolist()
        out["forward_seconds"], out["forward_all_seconds"] = median_seconds(
            lambda: forward(variables, codes).block_until_ready(), warmup=warmup, repeats=repeats)
    if "train" in parts:
        step = jax.jit(jax.value_and_grad(lambda v, key: model.apply(v, codes, rngs={"masking": key})[0]))
        out["train_seconds"], out["train_all_seconds"] = median_seconds(
            lambda: jax.block_until_ready(step(variables, jax.random.key(3))), warmup=warmup, repeats=repeats)
    if "generate" in parts:
        out["generate_seconds"], out["generate_all_seconds"] = median_seconds(
            lambda: model.generate(variables, N, batch_size=B, key=jax.random.key(4)).block_until_ready(),
            warmup=warmup, repeats=repeats)
    return out


def reference(python, model, variables, codes, parts, repeats, warmup):
    venv = pathlib.Path(python).absolute().parents[1]  # not resolve(): venv pythons are symlinks
    env = dict(os.environ)
    stub = venv / "fairseq_stub"  # tools/reference_env.sh's stand-in for fairseq
    if stub.exists():
        env["PYTHONPATH"] = str(stub)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/weights.npz", **export_state_dict(variables, model))
        np.save(f"{tmp}/codes.npy", codes)
        spec = dict(weights=f"{tmp}/weights.npz", codes=f"{tmp}/codes.npy", parts=parts, repeats=repeats,
                    warmup=warmup, batch=B, frames=N, levels=Q, codebook_size=K,
                    wrapper=dict(codebook_size=K, num_quantizers=Q, conformer=README_CONFORMER),
                    soundstorm=dict(steps=STEPS, schedule="cosine"))
        pathlib.Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
        done = subprocess.run([python, str(HERE / "reference_side.py"), f"{tmp}/spec.json"], env=env,
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the reference side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", default=os.environ.get("SOUNDSTORM_REFERENCE_PYTHON"),
                        help="interpreter of an environment with torch and soundstorm-pytorch 0.6.1")
    parser.add_argument("--parts", default="forward,train,generate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--attention", default="einsum" if jax.default_backend() == "cpu" else "xla",
                        choices=["xla", "einsum", "cudnn"], help="our attention_impl (einsum is fastest on CPU)")
    args = parser.parse_args()
    if not args.reference_python:
        parser.error("name the reference's interpreter with --reference-python or SOUNDSTORM_REFERENCE_PYTHON")
    parts = args.parts.split(",")

    jax_peak = matmul_peak_flops()
    mine = ours(parts, args.repeats, args.warmup, args.attention)
    theirs = reference(args.reference_python, mine.pop("model"), mine.pop("variables"), mine.pop("codes"), parts,
                       args.repeats, args.warmup)
    peak = max(jax_peak, theirs["matmul_peak_flops_per_second"])

    shape = dict(README_CONFORMER, codebook_size=K, batch=B, frames=N)
    all_heads, one_head = forward_flops(heads_computed=Q, **shape), forward_flops(heads_computed=1, **shape)
    passes = STEPS + Q - 1
    # Backward is about twice the forward. Our loss evaluates one head per example; the reference's all twelve.
    work = {
        "forward": (all_heads, all_heads),
        "train": (3 * one_head, 3 * all_heads),
        "generate": (passes * one_head, passes * all_heads),
    }
    report = {"benchmark": "vs_pytorch", "machine": machine() | {"ld_preload": os.environ.get("LD_PRELOAD", "")}, "config": shape | {"levels": Q, "steps": STEPS, "attention_impl": args.attention},
              "matmul_peak_flops_per_second": {"jax": jax_peak, "torch": theirs["matmul_peak_flops_per_second"]},
              "torch": theirs["torch"], "torch_threads": theirs["threads"]}
    for part in parts:
        ours_s, ref_s = mine[f"{part}_seconds"], theirs[f"{part}_seconds"]
        ours_flops, ref_flops = work[part]
        report[part] = {
            "jax_seconds": ours_s, "pytorch_seconds": ref_s, "speedup": ref_s / ours_s,
            "jax_all_seconds": mine[f"{part}_all_seconds"], "pytorch_all_seconds": theirs[f"{part}_all_seconds"],
            "jax_fraction_of_peak": ours_flops / ours_s / peak, "pytorch_fraction_of_peak": ref_flops / ref_s / peak,
        }
    if "forward" in parts:
        diff = np.abs(np.asarray(mine["forward_logits_sample"]) - np.asarray(theirs["forward_logits_sample"])).max()
        report["forward"]["same_weights_max_abs_logit_difference"] = float(diff)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
