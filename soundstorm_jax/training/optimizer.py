"""The optimiser: AdamW with linear warmup + cosine decay and global-norm clipping.

Weight decay applies to matrices only (kernels, embeddings); biases, norm
scales and other vectors are not decayed. Gradient accumulation is not part
of the optax chain: `soundstorm_task.py` scans over microbatches instead (see there).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import optax


def learning_rate_schedule(config: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine to `lr * end_lr_factor`."""
    lr, warmup = float(config["lr"]), int(config["warmup_steps"])
    decay_steps = max(int(total_steps), warmup + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=decay_steps,
        end_value=lr * float(config.get("end_lr_factor", 0.0)))


def decay_mask(params: Any) -> Any:
    """True for parameters with >= 2 dimensions beyond the scanned layer axis."""
    def is_matrix(path, x) -> bool:
        scanned = any(getattr(k, "key", None) == "layers" for k in path)
        return x.ndim - int(scanned) >= 2
    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(config: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """`config.optimizer` -> clip_by_global_norm(clip_norm) then AdamW(schedule)."""
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if config.get("clip_norm"):
        parts.append(optax.clip_by_global_norm(float(config["clip_norm"])))
    parts.append(optax.adamw(schedule, b1=float(config.get("b1", 0.9)), b2=float(config.get("b2", 0.98)),
                             eps=float(config.get("eps", 1e-8)),
                             weight_decay=float(config.get("weight_decay", 0.0)), mask=decay_mask))
    return optax.chain(*parts)
