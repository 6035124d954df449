"""Layouts of the HuBERT / wav2vec 2.0 speech encoders: base and large presets, a transformers config reader.

Both families share one architecture (transformers' ``HubertModel`` and
``Wav2Vec2Model`` differ only in names and in HuBERT's optional feature-projection
LayerNorm), so one frozen dataclass describes them:

* **base** (``hubert_base``, ``wav2vec2_base``): group-norm feature extractor
  (a per-channel GroupNorm after the first convolution only), post-norm
  Transformer layers (``do_stable_layer_norm=False``), 12 layers x 768;
* **large** (``hubert_large``, ``wav2vec2_large``): LayerNorm after every
  convolution (with conv biases), pre-norm ("stable layer norm") layers and a
  final LayerNorm, 24 layers x 1024.

``frame_lengths`` is transformers' ``_get_feat_extract_output_lengths``: a frame
is valid when the receptive field of the convolution stack lies inside the clip.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

_CONV_DIM = (512,) * 7
_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)


@dataclass(frozen=True)
class SpeechEncoderConfig:
    """The fields keep transformers' names so a ``config.json`` maps one to one (``from_transformers``)."""

    family: str = "hubert"                 # 'hubert' or 'wav2vec2': parameter names on import only
    conv_dim: tuple[int, ...] = _CONV_DIM
    conv_kernel: tuple[int, ...] = _CONV_KERNEL
    conv_stride: tuple[int, ...] = _CONV_STRIDE
    conv_bias: bool = False
    feat_extract_norm: str = "group"       # 'group' (base) or 'layer' (large)
    feat_proj_layer_norm: bool = True      # HuBERT may drop it; wav2vec 2.0 always has it
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False     # False: post-norm layers (base); True: pre-norm + final norm (large)
    layer_norm_eps: float = 1e-5
    sample_rate: int = 16000

    def __post_init__(self):
        if self.family not in ("hubert", "wav2vec2"):
            raise ValueError(f"family must be 'hubert' or 'wav2vec2', got {self.family!r}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0:
            raise ValueError(f"conv_dim, conv_kernel and conv_stride must have one entry per layer, got lengths "
                             f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of "
                             f"num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}")
        if self.family == "wav2vec2" and not self.feat_proj_layer_norm:
            raise ValueError("feat_proj_layer_norm=False exists for HuBERT only; wav2vec 2.0 always has it")

    @property
    def hop_length(self) -> int:
        """Audio samples per frame (320 for every released model: 50 frames/s at 16 kHz)."""
        return math.prod(self.conv_stride)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees (400 for the released models): shorter clips have no frame."""
        field = 1
        for k, s in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            field = (field - 1) * s + k
        return field

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def frame_lengths(self, lengths, upto: int | None = None) -> np.ndarray:
        """Valid frames after the first ``upto`` convolutions (all by default) for clips of ``lengths`` samples."""
        lengths = np.asarray(lengths, np.int64)
        for k, s in list(zip(self.conv_kernel, self.conv_stride))[:upto]:
            lengths = np.maximum((lengths - k) // s + 1, 0)
        return lengths

    def replace(self, **changes) -> "SpeechEncoderConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SpeechEncoderConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown SpeechEncoderConfig fields {unknown}; known: {sorted(fields)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def from_transformers(cls, config) -> "SpeechEncoderConfig":
        """A transformers ``HubertConfig``/``Wav2Vec2Config``, its ``to_dict()``, or a ``config.json`` path."""
        if isinstance(config, str) or hasattr(config, "__fspath__"):
            with open(config) as f:
                config = json.load(f)
        if not isinstance(config, Mapping):
            config = config.to_dict()
        model_type = config.get("model_type", "hubert")
        if model_type not in ("hubert", "wav2vec2"):
            raise ValueError(f"config model_type must be 'hubert' or 'wav2vec2', got {model_type!r}")
        for key in ("hidden_act", "feat_extract_activation"):
            if config.get(key, "gelu") != "gelu":
                raise ValueError(f"config {key}={config[key]!r} is not supported; only 'gelu' (every released "
                                 f"HuBERT and wav2vec 2.0 model)")
        if config.get("conv_pos_batch_norm", False):
            raise ValueError("config conv_pos_batch_norm=True is not supported (weight-norm positional conv only)")
        fields = {f.name for f in dataclasses.fields(cls)} - {"family", "sample_rate"}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in fields}
        if model_type == "wav2vec2":
            values.pop("feat_proj_layer_norm", None)
        return cls(family=model_type, **values)


def hubert_base() -> SpeechEncoderConfig:
    """``hubert_base_ls960`` / ``facebook/hubert-base-ls960``: what audiolm-pytorch's ``HubertWithKmeans`` uses."""
    return SpeechEncoderConfig(family="hubert")


def hubert_large() -> SpeechEncoderConfig:
    """``hubert_large_ll60k`` / ``facebook/hubert-large-ll60k``."""
    return SpeechEncoderConfig(family="hubert", conv_bias=True, feat_extract_norm="layer", hidden_size=1024,
                               num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                               do_stable_layer_norm=True)


def wav2vec2_base() -> SpeechEncoderConfig:
    """``facebook/wav2vec2-base``."""
    return SpeechEncoderConfig(family="wav2vec2")


def wav2vec2_large() -> SpeechEncoderConfig:
    """``facebook/wav2vec2-large-lv60`` (the LV-60 large models; ``wav2vec2-large`` of LibriSpeech is base-style)."""
    return hubert_large().replace(family="wav2vec2")


PRESETS = {"hubert_base": hubert_base, "hubert_large": hubert_large, "wav2vec2_base": wav2vec2_base,
           "wav2vec2_large": wav2vec2_large}
