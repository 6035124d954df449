"""Run configs: loading, command-line overrides, one strict reader, and the workdir's config.json.

A config is an `ml_collections.ConfigDict` returned by `get_config()` of a
packaged config (`soundstorm_jax/configs/<name>.py`: tiny, base, paper,
codec_tiny, codec_paper, demo, demo_codec) or of any Python file::

    config = load_config("tiny")                        # or "path/to/my_config.py"
    config = apply_overrides(config, ["optimizer.lr=1e-3", "model.conformer.depth=4"])
    check_config(config)                                # unknown keys anywhere -> ConfigError

The schema of a kind ('soundstorm' or 'codec') is its packaged defaults
(`configs/common.py`, `configs/codec_common.py`); the model sections are open
to every field of the module they build (`ConformerWrapper`, `Conformer`,
`SoundStorm`, `SoundStream`, `CodecDiscriminator`), and `compiler_options` to
any XLA option. Every error names the field and, for a misspelling, the
closest valid one.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib
import importlib.util
import json
import os
import pkgutil
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import ml_collections
from etils import epath

from soundstorm_jax import paths

KINDS = ("soundstorm", "codec")
CONFIG_FILE = "config.json"
# SoundStorm's model fields its codes dataset decides when a config leaves them unset (soundstorm_task.py fills them
# when a run starts; the run's config.json keeps them, so a resumed run takes them from there).
DATA_MODEL_FIELDS = ("codebook_size", "num_quantizers", "num_semantic_token_ids", "acoustic_per_semantic")
_TAKEN_FROM_WORKDIR = "_soundstorm_taken_from_workdir"  # {path: workdir}, kept on the ConfigDict object only
# Compute-only model fields: changing them keeps a checkpoint's parameters valid.
RUNTIME_FIELDS = ("dtype", "conformer.remat_policy", "conformer.attention_impl", "conformer.scan_layers",
                  "generator.dtype", "discriminator.dtype")
_NOT_CONFIGS = ("common", "codec_common")


class ConfigError(ValueError):
    """A config that cannot describe a run; the message names the field (the command line exits 2)."""


# ---- loading ---------------------------------------------------------------------------------------------

def packaged_configs() -> list[str]:
    """Names of the configs shipped in `soundstorm_jax.configs`."""
    from soundstorm_jax import configs
    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__) if m.name not in _NOT_CONFIGS)


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a packaged config name or of a Python file.

    `configs/<name>.py` that does not exist relative to the working directory
    is the packaged config `<name>`, so the repository's commands work from
    any directory and from a plain `pip install`.
    """
    spec = str(name_or_path)
    names = packaged_configs()
    stem, ext = os.path.splitext(os.path.basename(spec))
    if not os.path.exists(spec) and (spec in names or (
            ext == ".py" and stem in names and os.path.basename(os.path.dirname(spec)) == "configs")):
        module = importlib.import_module(f"soundstorm_jax.configs.{stem}")
    elif os.path.isfile(spec):
        module_spec = importlib.util.spec_from_file_location(f"soundstorm_user_config_{stem}", spec)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"--config {spec!r} failed to load: {type(e).__name__}: {e}") from e
    else:
        raise ConfigError(f"--config {spec!r} is neither a packaged config ({', '.join(names)}) nor a file")
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config {spec!r} has no get_config() function")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config {spec!r}: get_config() must return an ml_collections.ConfigDict, "
                          f"got {type(config).__name__}")
    return config


# ---- the schema and the strict reader --------------------------------------------------------------------

def kind_of(config: Any) -> str:
    """`config.kind` ('soundstorm' when absent); ConfigError for an unknown kind."""
    kind = config.get("kind", None) or "soundstorm"
    if kind not in KINDS:
        raise ConfigError(f"config.kind={kind!r} is not a known model kind; known: {list(KINDS)}")
    return kind


def _fields(cls, drop: Iterable[str] = ()) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in {"parent", "name", *drop})


def _schema(kind: str) -> tuple[ml_collections.ConfigDict, dict[str, Optional[tuple[str, ...]]]]:
    """(the kind's defaults, open sections: path -> allowed keys, None = any key)."""
    from soundstorm_jax.configs import codec_common, common
    if kind == "codec":
        from soundstorm_jax.codec import CodecDiscriminator, SoundStream
        return codec_common.codec_base_config(), {"model.generator": _fields(SoundStream),
                                                  "model.discriminator": _fields(CodecDiscriminator),
                                                  "compiler_options": None}
    from soundstorm_jax import ConformerWrapper, SoundStorm
    from soundstorm_jax.model import Conformer
    return common.base_config(), {"model": _fields(ConformerWrapper), "model.conformer": _fields(Conformer),
                                  "objective": _fields(SoundStorm, drop=("net", "codec", "soundstream")),
                                  "compiler_options": None}


def _unknown(path: str, key: str, allowed: Iterable[str]) -> ConfigError:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    where = f"{path}.{key}" if path else key
    hint = f"did you mean '{f'{path}.' if path else ''}{close[0]}'?" if close else f"valid keys here: {allowed}"
    return ConfigError(f"unknown config field '{where}'; {hint}")


def _allowed(path: str, schema, open_sections) -> Optional[tuple[str, ...]]:
    """Valid keys at `path` (None: any), or () when the schema has no section there."""
    if path in open_sections:
        return open_sections[path]
    node = schema
    for part in path.split(".") if path else ():
        node = node.get(part) if isinstance(node, (ml_collections.ConfigDict, Mapping)) else None
    if isinstance(node, (ml_collections.ConfigDict, Mapping)):
        return tuple(node.keys())
    return ()


def _is_section(value: Any) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, Mapping))


def check_config(config: Any) -> None:
    """ConfigError naming the first unknown key anywhere in `config` (and the closest valid key)."""
    schema, open_sections = _schema(kind_of(config))

    def walk(section, path):
        allowed = _allowed(path, schema, open_sections)
        for key in section.keys():
            if allowed is not None and key not in allowed:
                raise _unknown(path, key, allowed)
            child = f"{path}.{key}" if path else key
            value = section[key]
            if _is_section(value) and (allowed is None or _allowed(child, schema, open_sections) != ()):
                walk(value, child)
    walk(config, "")


def read_section(config: Any, path: str) -> dict[str, Any]:
    """The section at `path` (e.g. 'model.generator') as a plain dict ({} when absent): how every task reads a
    config, after `check_config` has passed it once (each task's constructor does)."""
    node = config
    for part in path.split("."):
        node = node.get(part) if _is_section(node) else None
        if node is None:
            return {}
    return to_dict(node)


def to_dict(config: Any) -> Any:
    """ConfigDict / FrozenDict / nested mappings -> plain dicts and lists (JSON-able)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def compiler_options(config: Any) -> Optional[dict]:
    """The set (non-None) entries of `config.compiler_options`, or None."""
    options = {k: v for k, v in (to_dict(config.get("compiler_options")) or {}).items() if v is not None}
    return options or None


# ---- command-line overrides ------------------------------------------------------------------------------

_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an int", float: "a number", str: "a string",
               tuple: "a tuple, e.g. (2, 4)", list: "a list, e.g. [2, 4]"}


def _parse(text: str, expected: Optional[type], where: str) -> Any:
    """A command-line value of the field's type; ConfigError naming the field otherwise."""
    def fail():
        name = _TYPE_NAMES.get(expected, expected.__name__ if expected else "a value")
        return ConfigError(f"--config.{where}={text}: expected {name}")

    if text.strip() == "None":
        return None
    if expected is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise fail()
    if expected is int:
        try:
            return int(text)
        except ValueError:
            raise fail() from None
    if expected is float:
        try:
            return float(text)
        except ValueError:
            raise fail() from None
    if expected is str:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if expected in (tuple, list, dict, ml_collections.ConfigDict):
            raise fail() from None
        return text  # An unquoted string for a field of no fixed type.
    if expected in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise fail()
        return tuple(value)
    if expected in (dict, ml_collections.ConfigDict):
        if not isinstance(value, dict):
            raise fail()
        return ml_collections.ConfigDict(value)
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `section.field=value` overrides (a leading `--config.` is accepted) to a copy of `config`.

    A field the config does not have yet may be set when the schema allows it
    (e.g. any `Conformer` field under `model.conformer`).
    """
    config = copy.deepcopy(config)
    config.unlock()
    for override in overrides:
        text = override[len("--config."):] if override.startswith("--config.") else override
        if "=" not in text:
            raise ConfigError(f"config override {override!r} must look like --config.section.field=value")
        path, value = text.split("=", 1)
        parts = path.split(".")
        kind = kind_of(config) if parts != ["kind"] else "soundstorm"
        schema, open_sections = _schema(kind)
        node, prefix = config, ""
        for part in parts[:-1]:
            allowed = _allowed(prefix, schema, open_sections)
            if allowed is not None and part not in allowed:
                raise _unknown(prefix, part, allowed)
            if part not in node or node[part] is None:
                node[part] = ml_collections.ConfigDict()
            node, prefix = node[part], f"{prefix}.{part}" if prefix else part
            if not _is_section(node):
                raise ConfigError(f"--config.{path}: '{prefix}' is a value, not a section")
        key = parts[-1]
        allowed = _allowed(prefix, schema, open_sections)
        if allowed is not None and key not in allowed:
            raise _unknown(prefix, key, allowed)
        expected = node.get_type(key) if key in node and node.is_type_safe else None
        if expected is type(None):
            expected = None
        parsed = _parse(value, expected, path)
        try:
            node[key] = parsed
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--config.{path}={value}: expected {_TYPE_NAMES.get(expected, 'another type')}"
                              ) from e
    return config


# ---- the workdir's config.json ---------------------------------------------------------------------------

def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def model_signature(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter-defining model fields, flattened ('conformer.dim': 512, ...).

    `num_semantic_token_ids` 0 (no semantic conditioning, as a run with no semantic tokens records it) reads as
    None, which means the same to the network.
    """
    flat = _flatten(to_dict(model_config))
    if flat.get("num_semantic_token_ids") == 0:
        flat["num_semantic_token_ids"] = None
    return {k: v for k, v in flat.items() if k not in RUNTIME_FIELDS}


def check_model_matches(saved: Mapping[str, Any], current: Mapping[str, Any], *, where: str) -> None:
    """ValueError naming every field where two model signatures differ."""
    saved, current = dict(saved), dict(current)
    diffs = [f"{k}: checkpoint {saved.get(k, '<absent>')!r} != config {current.get(k, '<absent>')!r}"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        raise ConfigError(f"the checkpoint in {where} was trained with a different model; mismatched "
                          f"config.model fields: " + "; ".join(diffs))


def save_config(workdir: str, config: Any) -> str:
    """Writes the run's full config to `workdir/config.json` (process 0) and returns the path."""
    path = epath.Path(workdir) / CONFIG_FILE
    if jax.process_index() == 0:
        text = json.dumps(to_dict(config), indent=2, sort_keys=True, default=str)
        if paths.is_remote(workdir):  # An upload replaces an object whole: no temporary file to rename.
            path.write_text(text)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(CONFIG_FILE + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return os.fspath(path)


def read_saved_config(workdir: str) -> Optional[ml_collections.ConfigDict]:
    """The config in `workdir/config.json` (None when absent); ConfigError when it is malformed."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not a readable JSON config ({e}); restore it or use another --workdir"
                          ) from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(values).__name__}")
    config = ml_collections.ConfigDict(values)
    try:
        check_config(config)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    return config


def check_saved_config(workdir: str, config: Any) -> None:
    """ConfigError if `workdir/config.json` describes another kind or model than `config`.

    The SoundStorm model fields `config` leaves unset for the codes dataset to decide (`DATA_MODEL_FIELDS`) are
    taken from config.json, in place: a resumed run keeps its model (`taken_from_workdir` names them).
    """
    saved = read_saved_config(workdir)
    if saved is None:
        return
    kinds = kind_of(saved), kind_of(config)
    if kinds[0] != kinds[1]:
        raise ConfigError(f"{workdir} holds a {kinds[0]!r} run but config.kind is {kinds[1]!r}; "
                          f"use another --workdir")
    if kinds[0] == "soundstorm":
        taken = {}
        for key in DATA_MODEL_FIELDS:
            value = (saved.get("model") or {}).get(key)
            if config.model.get(key) is None and value is not None:
                with config.model.unlocked():
                    config.model[key] = value
                taken[f"model.{key}"] = workdir
        if taken:
            object.__setattr__(config, _TAKEN_FROM_WORKDIR, {**taken_from_workdir(config), **taken})
    check_model_matches(model_signature(saved.get("model", {})), model_signature(config.model), where=workdir)


def taken_from_workdir(config: Any) -> dict[str, str]:
    """{'model.codebook_size': workdir, ...}: the fields `check_saved_config` filled from a workdir's config.json."""
    return dict(getattr(config, _TAKEN_FROM_WORKDIR, None) or {})


__all__ = ["CONFIG_FILE", "ConfigError", "DATA_MODEL_FIELDS", "KINDS", "apply_overrides", "check_config",
           "check_model_matches", "check_saved_config", "compiler_options", "kind_of", "load_config", "model_signature",
           "packaged_configs", "read_saved_config", "read_section", "save_config", "taken_from_workdir", "to_dict"]
