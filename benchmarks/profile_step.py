"""Where a training step's time goes: one traced step, summed per XLA operation.

    python benchmarks/profile_step.py [--streams 4] [--value-residual] [--scan-layers] [--top 25]

Builds the README configuration (dim 512, depth 2, 12 x 1024, codes (2, 1024, 12),
``attention_impl='einsum'``), compiles ``value_and_grad`` of the SoundStorm loss
(the step ``vs_pytorch.py`` times), traces one call with ``jax.profiler`` and
prints one JSON object: the step's wall time, the minor page faults it took, the
busy time of all operations (summed over threads, and as the union of their
intervals), the time per kind of operation (fusion names without their number:
``ynn_fusion`` = matmuls and what XLA fused into them) and the ``--top`` single
operations with their output shape and the model line they come from (from the
compiled HLO's metadata). The perfetto trace stays in ``--trace-dir`` for a
closer look (ui.perfetto.dev).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import resource
import sys
import tempfile
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import readme_model  # noqa: E402

SKIP = ("$", "Thunk", "while", "Slinky", "ThreadpoolListener", "PjitFunction", "Common", "PythonRefManager",
        "Wait for usage holds", "end: ")


def compiled_step(streams: int, value_residual: bool, scan_layers: bool):
    """The compiled ``value_and_grad`` of the loss, its variables and its rng key."""
    model, variables, codes = readme_model(num_residual_streams=streams, value_residual=value_residual,
                                           attention_impl="einsum", scan_layers=scan_layers)
    step = jax.jit(jax.value_and_grad(lambda v, key: model.apply(v, codes, rngs={"masking": key})[0]))
    key = jax.random.key(3)
    return step.lower(variables, key).compile(), variables, key


def operations(trace_dir: pathlib.Path) -> list[dict]:
    """The perfetto trace's complete events that are XLA operations."""
    trace = json.load(gzip.open(sorted(trace_dir.rglob("perfetto_trace.json.gz"))[-1]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and not e["name"].startswith(SKIP)]


def union_ms(ops: list[dict]) -> float:
    total, start, end = 0.0, None, None
    for s, e in sorted((op["ts"], op["ts"] + op["dur"]) for op in ops):
        if end is None or s > end:
            total += 0.0 if end is None else end - start
            start, end = s, e
        else:
            end = max(end, e)
    return (total + (0.0 if end is None else end - start)) / 1e3


def hlo_origins(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (output shape, op_name metadata) from compiled HLO text."""
    found = {}
    for match in re.finditer(r"\n\s*(?:ROOT )?%([\w.\-]+) = (\S+) [^\n]*?op_name=\"([^\"]*)\"", hlo_text):
        found[match.group(1)] = (match.group(2), match.group(3))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4, help="hyper-connection streams (1 = plain residuals)")
    parser.add_argument("--value-residual", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--trace-dir", default=None, help="where the trace goes (default: a temporary folder)")
    args = parser.parse_args()

    step, variables, key = compiled_step(args.streams, args.value_residual, args.scan_layers)
    for _ in range(2):  # warm calls, so allocations settle
        jax.block_until_ready(step(variables, key))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    jax.block_until_ready(step(variables, key))
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    trace_dir = pathlib.Path(args.trace_dir or tempfile.mkdtemp(prefix="soundstorm_profile_"))
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        jax.block_until_ready(step(variables, key))
    ops = operations(trace_dir)
    origins = hlo_origins(step.as_text())

    by_kind, by_op, calls = collections.Counter(), collections.Counter(), collections.Counter()
    for op in ops:
        by_kind[re.sub(r"\.\d+$", "", op["name"])] += op["dur"] / 1e3
        by_op[op["name"]] += op["dur"] / 1e3
        calls[op["name"]] += 1
    top = []
    for name, ms in by_op.most_common(args.top):
        shape, origin = origins.get(name, ("", ""))
        top.append({"op": name, "ms": round(ms, 1), "calls": calls[name], "shape": shape, "origin": origin[-100:]})
    print(json.dumps({
        "benchmark": "profile_step", "config": vars(args) | {"trace_dir": str(trace_dir)},
        "step_seconds_untraced": round(seconds, 3), "minor_page_faults": faults,
        "operations": len(ops), "busy_ms_summed_over_threads": round(sum(by_kind.values()), 1),
        "busy_ms_union": round(union_ms(ops), 1),
        "ms_by_kind": {k: round(v, 1) for k, v in by_kind.most_common(15)}, "top_operations": top,
    }, indent=2))


if __name__ == "__main__":
    main()
