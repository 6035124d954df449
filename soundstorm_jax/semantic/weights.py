"""Import HuBERT / wav2vec 2.0 weights from transformers or fairseq into ``SpeechEncoder`` variables.

``import_speech_encoder(state_dict, config)`` takes a mapping of names to tensors or
arrays, or a file: ``.safetensors`` (read here with NumPy: no torch, no safetensors
package), ``.npz`` (names optionally prefixed ``param/``), or a ``torch.save``-d
``.bin``/``.pt``/``.th`` (needs torch; a fairseq checkpoint's tensors are under its
``model`` key). It returns ``{'params': ...}`` for ``SpeechEncoder(config)``.

Two layouts are recognised by their names:

* transformers ``HubertModel``/``Wav2Vec2Model`` (a ``HubertForCTC`` etc. state dict
  works too: its ``hubert.``/``wav2vec2.`` prefix is dropped and its heads ignored);
* fairseq (``hubert_base_ls960.pt``, what audiolm-pytorch's ``HubertWithKmeans``
  loads): ``FAIRSEQ_NAMES`` below maps every transformers name to it, e.g.
  ``feature_projection.projection`` <-> ``post_extract_proj``,
  ``encoder.pos_conv_embed.conv.parametrizations.weight.original0`` <->
  ``encoder.pos_conv.0.weight_g``, ``encoder.layers.N.attention.k_proj`` <->
  ``encoder.layers.N.self_attn.k_proj``, ``feature_projection.layer_norm`` <->
  ``layer_norm``.

The positional convolution's weight norm (``w = g * v / ||v||``, the norm over
every axis but the kernel axis, ``dim=2``) is folded into a plain kernel;
``weight_g``/``weight_v``, ``parametrizations.weight.original0``/``original1`` and a
plain ``weight`` are accepted. Training-only tensors (``masked_spec_embed``/
``mask_emb``, fairseq's ``final_proj``, ``label_embs_concat``, quantizers, CTC
heads) are ignored. Every missing, unexpected and misshaped tensor is named in one
``ValueError``, in the checkpoint's own layout.
"""
from __future__ import annotations

import json
import os
import re
import struct
from typing import Any, Callable, Mapping

import jax
import numpy as np
from etils import epath

from soundstorm_jax import paths
from soundstorm_jax.semantic.config import SpeechEncoderConfig
from soundstorm_jax.semantic.encoder import param_shapes

# transformers name prefix <-> fairseq name prefix; '{i}' is any index. First match wins, in both directions.
FAIRSEQ_NAMES = (
    ("feature_extractor.conv_layers.{i}.conv.", "feature_extractor.conv_layers.{i}.0."),
    ("feature_extractor.conv_layers.{i}.layer_norm.", None),  # '.2.' (GroupNorm) or '.2.1.' (LayerNorm): see below
    ("feature_projection.layer_norm.", "layer_norm."),
    ("feature_projection.projection.", "post_extract_proj."),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.0.weight_g"),
    ("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.0.weight_v"),
    ("encoder.pos_conv_embed.conv.", "encoder.pos_conv.0."),
    ("encoder.layers.{i}.attention.q_proj.", "encoder.layers.{i}.self_attn.q_proj."),
    ("encoder.layers.{i}.attention.k_proj.", "encoder.layers.{i}.self_attn.k_proj."),
    ("encoder.layers.{i}.attention.v_proj.", "encoder.layers.{i}.self_attn.v_proj."),
    ("encoder.layers.{i}.attention.out_proj.", "encoder.layers.{i}.self_attn.out_proj."),
    ("encoder.layers.{i}.layer_norm.", "encoder.layers.{i}.self_attn_layer_norm."),
    ("encoder.layers.{i}.feed_forward.intermediate_dense.", "encoder.layers.{i}.fc1."),
    ("encoder.layers.{i}.feed_forward.output_dense.", "encoder.layers.{i}.fc2."),
    ("encoder.layers.{i}.final_layer_norm.", "encoder.layers.{i}.final_layer_norm."),
    ("encoder.layer_norm.", "encoder.layer_norm."),
    ("masked_spec_embed", "mask_emb"),
)
# Not part of the encoder: masking embeddings, pre-training targets, quantizers and fine-tuning heads.
_TRAINING_ONLY = ("masked_spec_embed", "mask_emb", "label_embs_concat", "final_proj.", "quantizer.", "project_q.",
                  "project_hid.", "target_glu.", "lm_head.", "projector.", "classifier.")
_MODEL_PREFIXES = ("hubert.", "wav2vec2.", "w2v_encoder.w2v_model.", "w2v_model.", "model.")
_WEIGHT_NORM_FORMS = (("weight_g", "weight_v"), ("parametrizations.weight.original0",
                                                 "parametrizations.weight.original1"))


def _name_pairs(config: SpeechEncoderConfig) -> list[tuple[str, str]]:
    conv_norm = ("feature_extractor.conv_layers.{i}.2." if config.feat_extract_norm == "group"
                 else "feature_extractor.conv_layers.{i}.2.1.")  # fairseq: Sequential(Transpose, LayerNorm, ...)
    return [(hf, conv_norm if fs is None else fs) for hf, fs in FAIRSEQ_NAMES]


def _rename(name: str, pairs, reverse: bool = False) -> str | None:
    for hf, fs in pairs:
        src, dst = (fs, hf) if reverse else (hf, fs)
        match = re.match(re.escape(src).replace(re.escape("{i}"), r"(\d+)"), name)
        if match:
            head = dst.replace("{i}", match.group(1)) if match.groups() else dst
            return head + name[match.end():]
    return None


def fairseq_name(name: str, config: SpeechEncoderConfig) -> str:
    """The fairseq name of a transformers tensor name (unchanged when the mapping has no entry for it)."""
    return _rename(name, _name_pairs(config)) or name


def transformers_name(name: str, config: SpeechEncoderConfig) -> str:
    """The transformers name of a fairseq tensor name (unchanged when the mapping has no entry for it)."""
    return _rename(name, _name_pairs(config), reverse=True) or name


def is_fairseq_layout(names) -> bool:
    return any(n.startswith(("post_extract_proj.", "encoder.pos_conv.0.")) or ".self_attn." in n for n in names)


# ---- reading files ----------------------------------------------------------------------------------------------
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file -> NumPy arrays (the format: u64 header size, JSON header, raw little-endian data)."""
    data = epath.Path(path).read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_size])
    start, out = 8 + header_size, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[start + begin:start + end]
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            value = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            value = np.frombuffer(raw, np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{path!r}: tensor {name!r} has dtype {info['dtype']}, which this reader does not know")
        out[name] = value.reshape(info["shape"])
    return out


def _load_file(path: str) -> Mapping[str, Any]:
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"speech encoder checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith(".npz"):
        return paths.read_npz_state_dict(path)
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading the PyTorch checkpoint {path!r} needs torch (pip install torch); or convert it "
                          f"once to .safetensors or .npz (np.savez(f, **{{k: v.numpy() for k, v in "
                          f"state_dict.items()}})), which load without torch") from err
    # fairseq checkpoints pickle their config (argparse Namespace / omegaconf), so weights_only cannot hold.
    loaded = torch.load(paths.readable(path), map_location="cpu", weights_only=False)
    if isinstance(loaded, Mapping) and not all(hasattr(v, "shape") for v in loaded.values()):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), Mapping):
                return loaded[key]
        raise ValueError(f"{path!r} holds a dict with keys {sorted(loaded)[:20]} and none of them is a state dict "
                         f"('model' or 'state_dict')")
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path!r} holds a {type(loaded).__name__}, expected a state dict (name -> tensor)")
    return loaded


def _to_numpy(value) -> np.ndarray:
    if type(value).__module__.startswith("torch"):  # a tensor, converted without importing torch here
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def read_state_dict(state_dict) -> dict[str, np.ndarray]:
    """A mapping or a checkpoint path -> NumPy arrays under their own names, model prefixes dropped."""
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = _load_file(os.fspath(state_dict))
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors/arrays or a checkpoint path, "
                        f"got {type(state_dict).__name__}")
    arrays = {str(k): _to_numpy(v) for k, v in state_dict.items()}
    for prefix in _MODEL_PREFIXES:
        if arrays and any(k.startswith(prefix) for k in arrays) and any(
                k.startswith(prefix + "feature_extractor.") for k in arrays):
            arrays = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in arrays.items()}
    return arrays


# ---- the import -------------------------------------------------------------------------------------------------
def _fold_weight_norm(g: np.ndarray, v: np.ndarray, dim: int) -> np.ndarray:
    v64 = v.astype(np.float64)
    axes = tuple(a for a in range(v.ndim) if a != dim)
    return (g.astype(np.float64) * v64 / np.sqrt(np.sum(v64 * v64, axis=axes, keepdims=True))).astype(np.float32)


class _Reader:
    """Takes tensors by (transformers) name, recording missing and misshaped ones; remembers what was used."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays, self.used, self.missing, self.misshaped = arrays, set(), [], []

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if name not in self.arrays:
            self.missing.append((name, tuple(shape)))
            return None
        self.used.add(name)
        value = self.arrays[name]
        if tuple(value.shape) != tuple(shape):
            self.misshaped.append((name, tuple(value.shape), tuple(shape)))
            return None
        return value.astype(np.float32)

    def weight_normed(self, prefix: str, shape: tuple[int, ...], dim: int) -> np.ndarray | None:
        g_shape = tuple(s if a == dim else 1 for a, s in enumerate(shape))
        for g_name, v_name in _WEIGHT_NORM_FORMS:
            if f"{prefix}.{g_name}" in self.arrays or f"{prefix}.{v_name}" in self.arrays:
                g, v = self.take(f"{prefix}.{g_name}", g_shape), self.take(f"{prefix}.{v_name}", shape)
                return None if g is None or v is None else _fold_weight_norm(g, v, dim)
        if f"{prefix}.weight" in self.arrays:
            return self.take(f"{prefix}.weight", shape)
        self.missing.append((f"{prefix}.parametrizations.weight.original0", g_shape))
        self.missing.append((f"{prefix}.parametrizations.weight.original1", shape))
        return None


def _entries(config: SpeechEncoderConfig, shapes: dict) -> list[tuple[str, tuple[str, ...], str]]:
    """(transformers name, path in params, how to convert) for every parameter of ``SpeechEncoder(config)``."""
    out = []
    for i in range(len(config.conv_dim)):
        out.append((f"feature_extractor.conv_layers.{i}.conv.weight", ("feature_extractor", f"conv{i}_kernel"), "conv"))
        if config.conv_bias:
            out.append((f"feature_extractor.conv_layers.{i}.conv.bias", ("feature_extractor", f"conv{i}_bias"), "same"))
        if f"norm{i}" in shapes["feature_extractor"]:
            for t, f in (("weight", "scale"), ("bias", "bias")):
                out.append((f"feature_extractor.conv_layers.{i}.layer_norm.{t}", ("feature_extractor", f"norm{i}", f),
                            "same"))
    norms = [("feature_projection.layer_norm", ("feature_projection", "layer_norm"))] * config.feat_proj_layer_norm
    norms.append(("encoder.layer_norm", ("encoder", "layer_norm")))
    linears = [("feature_projection.projection", ("feature_projection", "projection"))]
    for i in range(config.num_hidden_layers):
        hf, ours = f"encoder.layers.{i}", ("encoder", f"layer{i}")
        for proj, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            out.append((f"{hf}.attention.{proj}.weight", ours + ("attention", f"{name}_kernel"), "heads_in"))
            out.append((f"{hf}.attention.{proj}.bias", ours + ("attention", f"{name}_bias"), "heads_bias"))
        out.append((f"{hf}.attention.out_proj.weight", ours + ("attention", "out_kernel"), "heads_out"))
        out.append((f"{hf}.attention.out_proj.bias", ours + ("attention", "out_bias"), "same"))
        norms += [(f"{hf}.layer_norm", ours + ("layer_norm",)),
                  (f"{hf}.final_layer_norm", ours + ("final_layer_norm",))]
        linears += [(f"{hf}.feed_forward.intermediate_dense", ours + ("intermediate",)),
                    (f"{hf}.feed_forward.output_dense", ours + ("output",))]
    for hf, ours in norms:
        out += [(f"{hf}.weight", ours + ("scale",), "same"), (f"{hf}.bias", ours + ("bias",), "same")]
    for hf, ours in linears:
        out += [(f"{hf}.weight", ours + ("kernel",), "linear"), (f"{hf}.bias", ours + ("bias",), "same")]
    out.append(("encoder.pos_conv_embed.conv", ("encoder", "pos_conv", "kernel"), "weight_norm"))
    out.append(("encoder.pos_conv_embed.conv.bias", ("encoder", "pos_conv", "bias"), "same"))
    return out


# torch shape from our shape, and our value from the torch value
_CONVERT: dict[str, tuple[Callable, Callable]] = {
    "same": (lambda s: s, lambda v, s: v),
    "conv": (lambda s: (s[2], s[1], s[0]), lambda v, s: v.transpose(2, 1, 0)),
    "linear": (lambda s: (s[1], s[0]), lambda v, s: v.T),
    "heads_in": (lambda s: (s[1] * s[2], s[0]), lambda v, s: v.T.reshape(s)),
    "heads_bias": (lambda s: (s[0] * s[1],), lambda v, s: v.reshape(s)),
    "heads_out": (lambda s: (s[2], s[0] * s[1]), lambda v, s: v.T.reshape(s)),
    "weight_norm": (lambda s: (s[2], s[1], s[0]), lambda v, s: v.transpose(2, 1, 0)),
}


def _describe(config: SpeechEncoderConfig) -> str:
    return (f"{config.family} encoder (hidden_size={config.hidden_size}, num_hidden_layers={config.num_hidden_layers}, "
            f"conv_dim={config.conv_dim}, feat_extract_norm={config.feat_extract_norm!r}, "
            f"conv_bias={config.conv_bias}, do_stable_layer_norm={config.do_stable_layer_norm})")


def import_speech_encoder(state_dict, config: SpeechEncoderConfig) -> dict:
    """transformers or fairseq HuBERT / wav2vec 2.0 weights (mapping or path) -> ``{'params': ...}`` for ``config``."""
    arrays = read_state_dict(state_dict)
    fairseq = is_fairseq_layout(arrays)
    pairs = _name_pairs(config)
    if fairseq:
        arrays = {transformers_name(k, config): v for k, v in arrays.items()}
    shapes = param_shapes(config)
    reader, params = _Reader(arrays), {}
    for name, path, kind in _entries(config, shapes):
        target = shapes
        for key in path:
            target = target[key]
        to_torch, to_ours = _CONVERT[kind]
        torch_shape = to_torch(tuple(target.shape))
        value = (reader.weight_normed(name, torch_shape, dim=2) if kind == "weight_norm"
                 else reader.take(name, torch_shape))
        if value is not None:
            tree = params
            for key in path[:-1]:
                tree = tree.setdefault(key, {})
            tree[path[-1]] = to_ours(value, tuple(target.shape))
    ignored = {n for n in arrays if n.startswith(_TRAINING_ONLY) or fairseq_name(n, config).startswith(_TRAINING_ONLY)}
    extra = sorted(set(arrays) - reader.used - ignored)
    shown = (lambda n: _rename(n, pairs) or n) if fairseq else (lambda n: n)
    problems = [(f"{len(reader.missing)} missing", [f"{shown(n)} {s}" for n, s in reader.missing]),
                (f"{len(extra)} unexpected", [f"{shown(n)} {tuple(arrays[n].shape)}" for n in extra]),
                (f"{len(reader.misshaped)} misshaped",
                 [f"{shown(n)}: got {got}, expected {want}" for n, got, want in reader.misshaped])]
    if any(names for _, names in problems):
        report = "; ".join(f"{title}: " + ", ".join(names) for title, names in problems if names)
        layout = "fairseq" if fairseq else "transformers"
        raise ValueError(f"the {layout} checkpoint does not fit the {_describe(config)}: {report}")
    return {"params": jax.device_put(params)}  # Not jnp.asarray: that compiles a copy program per shape.


_STANDARD_KERNELS = {(10, 3, 3, 3, 3, 2, 2): (5, 2, 2, 2, 2, 2, 2)}


def infer_config(state_dict) -> SpeechEncoderConfig:
    """The ``SpeechEncoderConfig`` a checkpoint's tensor shapes imply (transformers or fairseq layout).

    Shapes give every size but three, which follow the released models: conv strides
    ``(5, 2, 2, 2, 2, 2, 2)`` for their kernels ``(10, 3, 3, 3, 3, 2, 2)`` (other
    kernels need an explicit config); 64-dim attention heads; pre-norm layers
    (``do_stable_layer_norm``) exactly when the feature extractor has a LayerNorm
    after every convolution (true of every released HuBERT and wav2vec 2.0 model;
    base and wav2vec2-large-960h: group norm, post-norm; LV-60, XLS-R and HuBERT
    large: layer norm, pre-norm).
    """
    arrays = read_state_dict(state_dict)
    if is_fairseq_layout(arrays):
        group = "feature_extractor.conv_layers.0.2.weight" in arrays
        probe = SpeechEncoderConfig(feat_extract_norm="group" if group else "layer")
        arrays = {transformers_name(k, probe): v for k, v in arrays.items()}
    convs = []
    while f"feature_extractor.conv_layers.{len(convs)}.conv.weight" in arrays:
        convs.append(arrays[f"feature_extractor.conv_layers.{len(convs)}.conv.weight"].shape)
    needed = ["feature_projection.projection.weight", "encoder.layers.0.feed_forward.intermediate_dense.weight"]
    absent = [n for n in needed if n not in arrays] + (["feature_extractor.conv_layers.0.conv.weight"] * (not convs))
    if absent:
        raise ValueError(f"cannot infer the encoder's layout: the checkpoint has no {', '.join(absent)} "
                         f"(is it a HuBERT / wav2vec 2.0 state dict?); pass config= explicitly")
    kernels = tuple(int(s[2]) for s in convs)
    if kernels not in _STANDARD_KERNELS:
        raise ValueError(f"cannot infer the conv strides for conv kernels {kernels} (only the released models' "
                         f"{next(iter(_STANDARD_KERNELS))}); pass config= with conv_stride")
    layer_norms = "feature_extractor.conv_layers.1.layer_norm.weight" in arrays
    hidden = int(arrays["feature_projection.projection.weight"].shape[0])
    layers = 0
    while f"encoder.layers.{layers}.feed_forward.intermediate_dense.weight" in arrays:
        layers += 1
    pos = next((arrays[f"encoder.pos_conv_embed.conv.{n}"] for n in ("weight", "weight_v",
                "parametrizations.weight.original1") if f"encoder.pos_conv_embed.conv.{n}" in arrays), None)
    if pos is None:
        raise ValueError("cannot infer the positional convolution: the checkpoint has no "
                         "encoder.pos_conv_embed.conv weight; pass config= explicitly")
    return SpeechEncoderConfig(
        family="hubert", conv_dim=tuple(int(s[0]) for s in convs), conv_kernel=kernels,
        conv_stride=_STANDARD_KERNELS[kernels],
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in arrays,
        feat_extract_norm="layer" if layer_norms else "group",
        feat_proj_layer_norm="feature_projection.layer_norm.weight" in arrays, hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
        intermediate_size=int(arrays["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0]),
        num_conv_pos_embeddings=int(pos.shape[2]), num_conv_pos_embedding_groups=hidden // int(pos.shape[1]),
        do_stable_layer_norm=layer_norms)
