"""Config sections -> the SoundStorm model and the data pipeline's configs.

`config.model` holds the `ConformerWrapper` fields (with dtypes as strings,
e.g. 'bfloat16') and `config.objective` the `SoundStorm` fields. The model
fields that decide the parameters (everything but the compute-only knobs in
`RUNTIME_FIELDS`) must match between a checkpoint and the run restoring it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax.numpy as jnp

from soundstorm_jax import ConformerWrapper, SoundStorm
from soundstorm_jax.data import PipelineConfig, config_from_dict

# Compute-only fields: changing them keeps the parameters valid (bf16 <-> fp32
# compute, remat, attention kernel, scan unrolling).
RUNTIME_FIELDS = ("dtype", "conformer.remat_policy", "conformer.attention_impl", "conformer.scan_layers",
                  "generator.dtype", "discriminator.dtype")  # The last two: the codec (config.kind='codec').
PIPELINE_KEYS = ("batch_size", "max_frames", "frame_rate", "semantic_rate", "code_pad_value",
                 "num_threads", "prefetch_buffer_size")


def to_dict(config: Any) -> Any:
    """ConfigDict / FrozenDict / nested mappings -> plain dicts and lists (JSON-able)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def _dtype(name: Any):
    return jnp.dtype(name) if isinstance(name, str) else name


def build_model(model_config: Mapping[str, Any], objective_config: Mapping[str, Any]) -> SoundStorm:
    """`config.model`, `config.objective` -> `SoundStorm(ConformerWrapper(...), ...)`."""
    fields = to_dict(model_config)
    fields["dtype"] = _dtype(fields.get("dtype", "float32"))
    fields["param_dtype"] = _dtype(fields.get("param_dtype", "float32"))
    known = set(ConformerWrapper.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"config.model has unknown field(s) {unknown}; known: {sorted(known)}")
    net = ConformerWrapper(**fields)
    objective = to_dict(objective_config)
    if isinstance(objective.get("steps"), list):
        objective["steps"] = tuple(objective["steps"])
    known = set(SoundStorm.__dataclass_fields__) - {"parent", "name", "net"}
    unknown = sorted(set(objective) - known)
    if unknown:
        raise ValueError(f"config.objective has unknown field(s) {unknown}; known: {sorted(known)}")
    return SoundStorm(net, **objective)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def model_signature(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter-defining model fields, flattened ('conformer.dim': 512, ...)."""
    flat = _flatten(to_dict(model_config))
    return {k: v for k, v in flat.items() if k not in RUNTIME_FIELDS}


def check_model_matches(saved: Mapping[str, Any], current: Mapping[str, Any], *, where: str) -> None:
    """ValueError naming every field where two model signatures differ."""
    saved, current = dict(saved), dict(current)
    diffs = [f"{k}: checkpoint {saved.get(k, '<absent>')!r} != config {current.get(k, '<absent>')!r}"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError(f"the checkpoint in {where} was trained with a different model; mismatched "
                         f"config.model fields: " + "; ".join(diffs))


def pipeline_configs(data_config: Mapping[str, Any], *,
                     eval_batch_size: Optional[int] = None) -> tuple[PipelineConfig, PipelineConfig]:
    """`config.data` -> (train, eval) `PipelineConfig`s (eval: ordered first windows)."""
    values = {k: v for k, v in to_dict(data_config).items() if k in PIPELINE_KEYS}
    train = config_from_dict(dict(values, shuffle=True, random_crop=True))
    evaluation = config_from_dict(dict(values, shuffle=False, random_crop=False, num_epochs=1,
                                       batch_size=eval_batch_size or values["batch_size"]))
    return train, evaluation
