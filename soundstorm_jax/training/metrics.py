"""Metrics: JSON lines (stdout + workdir/metrics.jsonl) and FLOP/MFU estimates."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Optional

import jax
import numpy as np
from etils import epath

from soundstorm_jax import paths


def to_python(value: Any) -> Any:
    """Arrays -> floats / ints / lists for JSON."""
    value = np.asarray(jax.device_get(value))
    if value.ndim == 0:
        return value.item()
    return value.tolist()


class MetricsWriter:
    """Appends one JSON object per call to `workdir/metrics.jsonl` and prints it (process 0)."""

    def __init__(self, workdir: str, *, stream=sys.stdout):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.stream = stream
        self.enabled = jax.process_index() == 0
        # Cloud Storage objects cannot be appended to: a remote file's lines are kept here and the whole file
        # is uploaded on every write (each upload replaces the object atomically).
        self._remote_text = None
        if self.enabled and paths.is_remote(workdir):
            path = epath.Path(self.path)
            text = path.read_text() if path.exists() else ""
            self._remote_text = text + "\n" if text and not text.endswith("\n") else text
        elif self.enabled:
            os.makedirs(workdir, exist_ok=True)
            # A run killed mid-write leaves a partial line; start the resumed run on a new one.
            if os.path.exists(self.path) and os.path.getsize(self.path):
                with open(self.path, "rb+") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: to_python(v) for k, v in record.items()}, sort_keys=True)
        if self._remote_text is not None:
            self._remote_text += line + "\n"
            epath.Path(self.path).write_text(self._remote_text)
        else:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if self.stream is not None:
            print(line, file=self.stream, flush=True)


def model_flops_per_step(config: Any, *, batch_size: Optional[int] = None, frames: Optional[int] = None) -> float:
    """Analytic training FLOPs of one step (forward + backward = 3x forward matmul FLOPs).

    Per frame and layer: two macaron FFNs (2 x 2 x 2 d.(m d)), attention
    projections (2 x 4 d.h.k) and scores/values (2 x 2 n.h.k), the conv module
    (pointwise in 2 d.2ed, depthwise 2 ed.kernel, pointwise out 2 ed.d); per
    frame once: the trained level's head (2 d.d + 2 d.K per group). Embedding
    lookups, norms and softmax are left out, as is usual for MFU.
    """
    m = config.model
    c = m.conformer
    b = int(batch_size or config.data.batch_size)
    n = int(frames or config.data.max_frames)
    d, depth = int(c["dim"]), int(c["depth"])
    heads, dim_head = int(c.get("heads", 8)), int(c.get("dim_head", 64))
    ff_mult, kernel = int(c.get("ff_mult", 4)), int(c.get("conv_kernel_size", 31))
    e = int(c.get("conv_expansion_factor", 2)) * d
    hk = heads * dim_head
    per_layer = (2 * 2 * 2 * d * ff_mult * d       # ff1 + ff2
                 + 2 * 4 * d * hk                   # q, k, v, out
                 + 2 * 2 * n * hk                   # q.k and attn.v
                 + 2 * d * 2 * e + 2 * e * kernel + 2 * e * d)  # conv module
    groups = int(m.get("grouped_quantizers", 1))
    heads_out = groups * (2 * d * d + 2 * d * int(m.codebook_size))
    forward = b * n * (depth * per_layer + heads_out)
    return 3.0 * forward


def mfu(flops_per_step: float, step_time: float, peak_flops_per_device: Optional[float],
        num_devices: int) -> Optional[float]:
    """Model FLOP utilisation, or None when no peak is given."""
    if not peak_flops_per_device or step_time <= 0:
        return None
    return flops_per_step / step_time / (peak_flops_per_device * num_devices)
