"""The PyTorch side of ``vs_pytorch.py``: run by the reference's own Python (torch + soundstorm-pytorch).

    python benchmarks/reference_side.py SPEC.json

SPEC names the weights (an .npz of our exported state dict), the configuration,
the parts to time and the repeats. Prints one JSON object. Imports the
installed reference; none of its code lives here.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np
import torch
from soundstorm_pytorch import ConformerWrapper, SoundStorm


def median_seconds(fn, warmup: int, repeats: int):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    torch.manual_seed(0)
    net = ConformerWrapper(**spec["wrapper"])
    model = SoundStorm(net, **spec["soundstorm"])
    weights = np.load(spec["weights"])
    model.load_state_dict({name: torch.from_numpy(weights[name]) for name in weights.files}, strict=True)
    b, n, q, k = spec["batch"], spec["frames"], spec["levels"], spec["codebook_size"]
    codes = torch.from_numpy(np.load(spec["codes"])).long()
    results = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    size = 2048
    a, c = torch.randn(size, size), torch.randn(size, size)
    seconds, _ = median_seconds(lambda: a @ c, warmup=2, repeats=5)
    results["matmul_peak_flops_per_second"] = 2 * size ** 3 / seconds

    repeats, warmup = spec["repeats"], spec["warmup"]
    if "forward" in spec["parts"]:
        model.eval()
        flat = codes.reshape(b, n * q)
        with torch.no_grad():
            logits = net(flat, mask=torch.ones(b, n, dtype=torch.bool))
            results["forward_logits_sample"] = logits.reshape(b, n, q, k)[0, :2, 0, :4].tolist()
            results["forward_seconds"], results["forward_all_seconds"] = median_seconds(
                lambda: net(flat, mask=torch.ones(b, n, dtype=torch.bool)), warmup, repeats)
    if "train" in spec["parts"]:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            loss, _ = model(codes)
            loss.backward()

        results["train_seconds"], results["train_all_seconds"] = median_seconds(step, warmup, repeats)
    if "generate" in spec["parts"]:
        model.eval()
        results["generate_seconds"], results["generate_all_seconds"] = median_seconds(
            lambda: model.generate(n, batch_size=b), warmup, max(1, repeats))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
