"""SoundStorm's model fields that its codes dataset decides.

The codebook size, the number of levels (code columns), the frame rate and,
when the dataset has them, the semantic vocabulary and rate are the codes
dataset's (its metadata) wherever the config leaves them unset (`placeholder`s
in the packaged configs). `SoundStormTask` fills them into the config when it
is built (`resolve_from_codes`), so the run's config.json holds them and a
resumed run or `restore` never needs the dataset again; a value the config
sets that disagrees with the dataset is a ConfigError naming both and the
flag that fixes it. `fill_without_data` gives a config the defaults it gets
without any dataset.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional

from soundstorm_jax.training import config as config_lib

DEFAULT_FRAME_RATE = 50.0
"""config.data.frame_rate when neither the config nor the codes dataset gives one (e.g. `.npy` codes)."""

log = logging.getLogger(__name__)

_FROM_DATA = ("model.codebook_size", "model.num_quantizers", "data.frame_rate", "model.num_semantic_token_ids")
_SEMANTIC = ("data.semantic_rate", "model.acoustic_per_semantic")


def get_field(config: Any, path: str) -> Any:
    section, key = path.split(".")
    return config[section].get(key)


def set_field(config: Any, path: str, value: Any) -> None:
    section, key = path.split(".")
    with config[section].unlocked():
        config[section][key] = value


def unresolved_fields(config: Any) -> list[str]:
    """The fields ('model.codebook_size', ...) `config` leaves for the codes dataset to decide."""
    missing = [path for path in _FROM_DATA if get_field(config, path) is None]
    if get_field(config, "model.num_semantic_token_ids"):
        missing += [path for path in _SEMANTIC if get_field(config, path) is None]
    return missing


def fill_without_data(config: Any) -> None:
    """What a config gets without a codes dataset, in place: data.frame_rate `DEFAULT_FRAME_RATE`, no semantic
    conditioning (num_semantic_token_ids 0) and acoustic_per_semantic from the two rates when both are set.

    A workdir's config.json (written when its run started) never needs this, except from before the dataset
    decided these fields, when an unset vocabulary meant no conditioning.
    """
    if get_field(config, "data.frame_rate") is None:
        set_field(config, "data.frame_rate", DEFAULT_FRAME_RATE)
    if get_field(config, "model.num_semantic_token_ids") is None:
        set_field(config, "model.num_semantic_token_ids", 0)
    if (get_field(config, "model.num_semantic_token_ids") and get_field(config, "model.acoustic_per_semantic") is None
            and get_field(config, "data.semantic_rate")):
        set_field(config, "model.acoustic_per_semantic",
             float(get_field(config, "data.frame_rate")) / float(get_field(config, "data.semantic_rate")))


def _codec_record(metadata: Mapping[str, Any]) -> Any:
    """What the dataset records of the codec that encoded it (its provenance's `codec`, as `soundstorm prepare`
    writes it: workdir or EnCodec file, levels, rates), or None."""
    provenance = metadata.get("provenance")
    codec = provenance.get("codec") if isinstance(provenance, Mapping) else None
    return codec or metadata.get("codec")


def _made_with(metadata: Mapping[str, Any]) -> str:
    """' (codec /abs/runs/codec)' or ' (EnCodec FILE)' when the dataset records what encoded it, else ''."""
    codec = _codec_record(metadata)
    if isinstance(codec, Mapping):
        if codec.get("encodec"):
            return f" (EnCodec {codec['encodec']})"
        codec = next((codec[k] for k in ("workdir", "path", "file", "checkpoint") if codec.get(k)), None)
    return f" (codec {codec})" if isinstance(codec, str) and codec else ""


def _number(value: Any) -> str:
    return f"{float(value):g}" if isinstance(value, float) else str(value)


def resolve_from_codes(config: Any, metadata: Mapping[str, Any], *, where: str,
                       levels: Optional[int] = None) -> dict[str, Any]:
    """Fills `config`'s unset data-decided fields from a codes dataset and checks the ones it sets, in place.

    The fields: model.codebook_size (metadata `codebook_size`), model.num_quantizers (`num_levels`, divided by
    model.grouped_quantizers), data.frame_rate (`frame_rate`, else the recorded codec's, else `sample_rate /
    hop_length`, else `DEFAULT_FRAME_RATE`), model.num_semantic_token_ids (`semantic_vocab_size`; else 0, no semantic
    conditioning), data.semantic_rate (`semantic_rate`) and model.acoustic_per_semantic (frame_rate /
    semantic_rate). A config value that disagrees with the dataset is a ConfigError naming both and the flag.

    Args:
      metadata: the dataset's metadata (`builder.info.metadata`).
      where: the dataset as the config names it (config.data.dir), for messages.
      levels: the dataset's code columns when its metadata has no `num_levels` (the codes feature's shape).

    Returns:
      {field: value} of the fields filled from the dataset (or a default where it records nothing).
    """
    meta = dict(metadata or {})
    source, made_with = f"the codes dataset {where}", _made_with(meta)
    from_workdir = config_lib.taken_from_workdir(config)
    filled: dict[str, Any] = {}

    def conflict(path: str, value: Any, has: str, fix: Any, note: str = "", *,
                 but: Optional[str] = None, unset: str = "take the dataset's") -> config_lib.ConfigError:
        but = but or f"{source} has {has}{made_with}"
        if path in from_workdir:  # A resumed run's own model, from its config.json: the data changed, not the run.
            return config_lib.ConfigError(
                f"config.{path} is {value}{note} in the run being resumed ({from_workdir[path]}/config.json) but "
                f"{but}; resume it on the codes it was trained on, or train on these in another --workdir")
        return config_lib.ConfigError(
            f"config.{path} is {value}{note} but {but}; set --config.{path}={fix} or leave it unset to {unset}")

    def fill(path: str, value: Any) -> None:
        set_field(config, path, value)
        filled[path] = value

    # Codebook size.
    size, current = meta.get("codebook_size"), get_field(config, "model.codebook_size")
    if size is not None:
        size = int(size)
        if current is None:
            fill("model.codebook_size", size)
        elif int(current) != size:
            raise conflict("model.codebook_size", current, f"codebook size {size}", size)
    elif current is None:
        raise config_lib.ConfigError(f"config.model.codebook_size is unset and {source} records no codebook size; "
                                     f"set --config.model.codebook_size=K")

    # Levels (code columns: num_quantizers x grouped_quantizers).
    columns = meta.get("num_levels", levels)
    groups = int(get_field(config, "model.grouped_quantizers") or 1)
    current = get_field(config, "model.num_quantizers")
    if columns is not None:
        columns = int(columns)
        has = f"{columns} levels" if groups == 1 else f"{columns} code columns"
        if columns % groups:
            raise config_lib.ConfigError(
                f"config.model.grouped_quantizers is {groups} but {source} has {has}{made_with}, not a multiple of "
                f"it; set --config.model.grouped_quantizers to a divisor of {columns}")
        if current is None:
            fill("model.num_quantizers", columns // groups)
        elif int(current) * groups != columns:
            note = "" if groups == 1 else f" (x grouped_quantizers {groups} = {int(current) * groups} code columns)"
            raise conflict("model.num_quantizers", current, has, columns // groups, note)
    elif current is None:
        raise config_lib.ConfigError(f"config.model.num_quantizers is unset and {source} records no number of "
                                     f"levels; set --config.model.num_quantizers=Q")

    # Frame rate.
    rate, current = meta.get("frame_rate"), get_field(config, "data.frame_rate")
    codec = _codec_record(meta)
    if rate is None and isinstance(codec, Mapping):
        rate = codec.get("frame_rate")
    if rate is None and meta.get("sample_rate") and meta.get("hop_length"):
        rate = float(meta["sample_rate"]) / float(meta["hop_length"])
    if rate is not None:
        rate = float(rate)
        if current is None:
            fill("data.frame_rate", rate)
        elif not math.isclose(float(current), rate, rel_tol=1e-6):
            raise conflict("data.frame_rate", _number(float(current)), f"frame rate {rate:g} frames/s", f"{rate:g}")
    elif current is None:
        fill("data.frame_rate", DEFAULT_FRAME_RATE)
        log.info("%s records no frame rate: config.data.frame_rate is %g (set --config.data.frame_rate=FRAMES_PER_S "
                 "for the codec's)", source, DEFAULT_FRAME_RATE)

    # Semantic vocabulary and rate.
    vocab, current = meta.get("semantic_vocab_size"), get_field(config, "model.num_semantic_token_ids")
    if current is None:
        fill("model.num_semantic_token_ids", 0 if vocab is None else int(vocab))
    elif current and vocab is not None and int(current) != int(vocab):
        raise conflict("model.num_semantic_token_ids", current, f"a semantic vocabulary of {int(vocab)} ids",
                       int(vocab))
    vocab = get_field(config, "model.num_semantic_token_ids")
    if vocab:
        rate, current = meta.get("semantic_rate"), get_field(config, "data.semantic_rate")
        if rate is not None:
            rate = float(rate)
            if current is None:
                fill("data.semantic_rate", rate)
            elif not math.isclose(float(current), rate, rel_tol=1e-6):
                raise conflict("data.semantic_rate", _number(float(current)), f"semantic rate {rate:g} tokens/s",
                               f"{rate:g}")
        elif current is None:
            raise config_lib.ConfigError(
                f"config.model.num_semantic_token_ids is {vocab} but config.data.semantic_rate is unset and {source} "
                f"records no semantic rate; set --config.data.semantic_rate=TOKENS_PER_S (or "
                f"--config.model.num_semantic_token_ids=0 to train without semantic conditioning)")
        frame_rate, semantic_rate = float(get_field(config, "data.frame_rate")), float(get_field(config, "data.semantic_rate"))
        ratio, current = frame_rate / semantic_rate, get_field(config, "model.acoustic_per_semantic")
        if current is None:
            fill("model.acoustic_per_semantic", ratio)
        elif not math.isclose(float(current), ratio, rel_tol=1e-6):
            raise conflict("model.acoustic_per_semantic", _number(float(current)), "", f"{ratio:g}",
                           but=f"config.data.frame_rate / config.data.semantic_rate is {frame_rate:g} / "
                               f"{semantic_rate:g} = {ratio:g} (frames per semantic token)", unset="derive it")
    if filled:
        log.info("from %s: %s", source, ", ".join(f"{path}={_number(value)}" for path, value in filled.items()))
    return filled


__all__ = ["DEFAULT_FRAME_RATE", "fill_without_data", "get_field", "resolve_from_codes", "set_field",
           "unresolved_fields"]
