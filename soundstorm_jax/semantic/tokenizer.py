"""``SemanticTokenizer``: 16 kHz speech -> semantic token ids (encoder layer + k-means + optional pooling).

The semantic counterpart of a host-side codec (``codec.host_codec``): bound to its
variables, jitted, every input checked on the host before anything is traced, so a
bad call neither compiles nor leaves an entry in the jit cache.

    tokenizer = load_semantic_tokenizer('hubert_base_ls960.pt', 'hubert_base_ls960_L9_km500.bin', layer=9)
    ids = tokenizer.tokenize(audio, sample_rate=16000, lengths=lengths)   # (b, tokens) int32, pad_id past the end
    tokenizer = LogMelTokenizer(load_kmeans('kmeans.npz'))                 # no weights: log-mel frames' k-means ids

``rate`` is tokens per second (50 for HuBERT, 25 with ``pool=2``), ``vocab_size``
the number of k-means centres. ``tokenize_traced`` is the same computation without
checks for use inside other traced code. ``LogMelTokenizer`` is the same object
over ``log_mel``'s weight-free features instead of an encoder layer.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from soundstorm_jax import validation
from soundstorm_jax.semantic.config import PRESETS, SpeechEncoderConfig
from soundstorm_jax.semantic.encoder import LAST, SpeechEncoder, check_output_layer, param_shapes
from soundstorm_jax.semantic.kmeans import KMeansCodebook, load_kmeans, mean_pool, nearest_center
from soundstorm_jax.semantic.log_mel import NAME as LOG_MEL
from soundstorm_jax.semantic.log_mel import LogMelConfig, log_mel_features, log_mel_variables
from soundstorm_jax.semantic.weights import import_speech_encoder, infer_config, read_state_dict


def _check_variables(variables, config: SpeechEncoderConfig) -> dict:
    """``variables['params']`` must have exactly ``SpeechEncoder(config)``'s shapes."""
    import flax.linen as nn
    params = nn.unbox(variables.get("params") if isinstance(variables, dict) else None)
    expected = jax.tree.map(lambda s: tuple(s.shape), param_shapes(config))
    got = None if params is None else jax.tree.map(np.shape, params)
    if got != expected:
        want, have = dict(_flat(expected)), dict(_flat(got or {}))
        wrong = [f"{k}: got {have.get(k)}, expected {v}" for k, v in want.items() if have.get(k) != v]
        wrong += [f"{k}: unexpected" for k in have if k not in want]
        raise ValueError(f"variables do not fit SpeechEncoder(config) ({len(wrong)} problems): "
                         + "; ".join(wrong[:10]))
    return {"params": params}


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def layer_features(config: SpeechEncoderConfig, layer: int | str, pool: int, variables, audio: jax.Array,
                   lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """audio ``'b s'`` -> (features ``'b t d'`` of ``layer``, mean-pooled over ``pool`` frames, valid tokens
    ``'b t'``): what the k-means sees, for tokenizing and for fitting one (traceable, no checks; also inside
    another module's method, e.g. ``SoundStorm``'s step: the encoder is applied unbound, ``parent=None``).
    A ``LogMelConfig`` gives its log-mel frames (it has no layers: ``layer`` is ignored)."""
    if isinstance(config, LogMelConfig):
        features, mask = log_mel_features(config, variables, audio, lengths)
    else:
        features, mask = SpeechEncoder(config, parent=None).apply(variables, audio, lengths, output_layer=layer)
    if pool > 1:
        features, mask = mean_pool(features, mask, pool)
    return features, mask


class SemanticTokenizer:
    """audio ``(b, samples)`` at 16 kHz -> ids ``(b, tokens)`` int32 in ``[0, vocab_size)``, ``pad_id`` past the end."""

    def __init__(self, config: SpeechEncoderConfig, variables, kmeans: KMeansCodebook, layer: int | str,
                 pool: int = 1, pad_id: int = -1, compiler_options: dict | None = None):
        check_output_layer(layer, config, name="layer")
        self._setup(config, _check_variables(variables, config), kmeans, layer, pool, pad_id,
                    f"layer {layer!r} of this encoder", compiler_options)

    def _setup(self, config, variables: dict, kmeans: KMeansCodebook, layer, pool: int, pad_id: int, source: str,
               compiler_options: dict | None) -> None:
        """The checks and attributes every tokenizer shares; ``source`` names the features in errors."""
        if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 1:
            raise ValueError(f"pool must be a positive int (frames averaged per token; 2: 50 Hz -> 25 Hz), "
                             f"got {pool!r}")
        if not isinstance(kmeans, KMeansCodebook):
            raise ValueError(f"kmeans must be a KMeansCodebook (load_kmeans(path)), got {type(kmeans).__name__}")
        if kmeans.dim != config.hidden_size:
            raise ValueError(f"kmeans has centres of dimension {kmeans.dim}, but {source} gives "
                             f"{config.hidden_size}-dim features; use the k-means fitted on these features")
        if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) or 0 <= pad_id < kmeans.num_clusters:
            raise ValueError(f"pad_id must be an int outside the ids [0, {kmeans.num_clusters}), got {pad_id!r}")
        self.config, self.kmeans, self.layer, self.pool, self.pad_id = config, kmeans, layer, int(pool), int(pad_id)
        self.variables = variables
        self.centers = jnp.asarray(kmeans.centers)
        self._tokenize = jax.jit(self.tokenize_traced, compiler_options=compiler_options)

    sample_rate = property(lambda self: self.config.sample_rate)
    vocab_size = property(lambda self: self.kmeans.num_clusters)
    hop_length = property(lambda self: self.config.hop_length * self.pool)  # samples per token
    rate = property(lambda self: self.config.frame_rate / self.pool)        # tokens per second

    def num_tokens(self, lengths) -> np.ndarray:
        """Valid tokens for clips of ``lengths`` samples."""
        return -(-self.config.frame_lengths(lengths) // self.pool)

    def tokenize_traced(self, variables, centers, audio: jax.Array, lengths: jax.Array) -> jax.Array:
        """The computation without checks (usable inside ``jit``): ids ``(b, tokens)``, ``pad_id`` on padding."""
        features, mask = layer_features(self.config, self.layer, self.pool, variables, audio, lengths)
        return jnp.where(mask, nearest_center(features, centers), self.pad_id).astype(jnp.int32)

    def tokenize(self, audio, sample_rate: int | None = None, lengths=None,
                 return_lengths: bool = False) -> jax.Array | tuple[jax.Array, np.ndarray]:
        """audio ``(b, samples)`` float in [-1, 1] -> ids ``(b, ceil(frames(samples) / pool))`` int32.

        ``lengths`` ``(b,)``: valid samples per row (default: all); tokens past a
        row's own ``num_tokens`` are ``pad_id``. ``return_lengths`` also returns those
        counts. ``sample_rate`` (optional) must be 16000: resample first.
        """
        validation.check_audio(audio)
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise ValueError(f"sample_rate={sample_rate} Hz differs from the semantic tokenizer's "
                             f"{self.sample_rate} Hz; resample the audio first (e.g. scipy.signal.resample_poly("
                             f"audio, {self.sample_rate}, {sample_rate}, axis=-1))")
        b, samples = np.shape(audio)
        if lengths is None:
            lengths = np.full(b, samples, np.int32)
        else:
            if np.shape(lengths) != (b,) or not np.issubdtype(np.asarray(lengths).dtype, np.integer):
                raise ValueError(f"lengths must be integer valid-sample counts of shape (batch,) = ({b},), got "
                                 f"shape {np.shape(lengths)} dtype {np.asarray(lengths).dtype}")
            lengths = np.asarray(lengths, np.int32)
            if (lengths > samples).any() or (lengths < 1).any():
                raise ValueError(f"lengths must lie in [1, {samples}] (the audio's samples), got {lengths.tolist()}")
        short = np.flatnonzero(lengths < self.config.receptive_field)
        if short.size:
            raise ValueError(f"audio rows {short.tolist()} hold {lengths[short].tolist()} samples, fewer than one "
                             f"frame of the encoder ({self.config.receptive_field} samples, "
                             f"{1000 * self.config.receptive_field / self.sample_rate:.0f} ms)")
        ids = self._tokenize(self.variables, self.centers, jnp.asarray(audio, jnp.float32), jnp.asarray(lengths))
        return (ids, self.num_tokens(lengths)) if return_lengths else ids


class LogMelTokenizer(SemanticTokenizer):
    """A ``SemanticTokenizer`` over weight-free log-mel frames (``log_mel``) instead of an encoder layer: audio
    ``(b, samples)`` at ``config.sample_rate`` -> k-means ids ``(b, tokens)`` int32, ``pad_id`` past the end.

    The same interface (``tokenize``, ``rate``, ``vocab_size``, ``sample_rate``, ``hop_length``, ``num_tokens``,
    ``tokenize_traced``), so ``make_semantic_fn``, ``fit_dataset_kmeans`` and ``SoundStorm(semantic_tokenizer=...)``
    take it as they take a HuBERT tokenizer. ``layer`` is ``None``; ``kmeans`` must have ``config.n_mels``-dim
    centres (fit one with ``fit_dataset_kmeans(LogMelConfig(), log_mel_variables(config), None, pool, ...)``).
    """

    def __init__(self, kmeans: KMeansCodebook, config: LogMelConfig | None = None, pool: int = 1, pad_id: int = -1,
                 compiler_options: dict | None = None):
        config = LogMelConfig() if config is None else config
        if not isinstance(config, LogMelConfig):
            raise ValueError(f"config must be a LogMelConfig, got {type(config).__name__}")
        self._setup(config, log_mel_variables(config), kmeans, None, pool, pad_id,
                    f"log-mel with n_mels={config.n_mels}", compiler_options)


def _resolve_config(config, checkpoint) -> SpeechEncoderConfig:
    if isinstance(config, SpeechEncoderConfig):
        return config
    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config]()
    if isinstance(config, (dict, str, os.PathLike)):
        return SpeechEncoderConfig.from_transformers(config)
    if config is None:
        return infer_config(checkpoint)
    raise ValueError(f"config must be a SpeechEncoderConfig, a preset ({sorted(PRESETS)}), a transformers "
                     f"config.json or None (inferred from the checkpoint), got {config!r}")


def load_semantic_tokenizer(checkpoint, kmeans, layer: int | str = LAST, *, config: Any = None, pool: int = 1,
                            pad_id: int = -1, compiler_options: dict | None = None) -> SemanticTokenizer:
    """One call from files: ``checkpoint`` (a transformers model directory with ``config.json``, a ``.safetensors``/
    ``.npz``/``.bin``/``.pt`` file of transformers or fairseq weights, or a state dict), ``kmeans`` (a
    ``KMeansCodebook`` or a file ``load_kmeans`` reads), ``layer`` (hidden-state index; fairseq's
    ``output_layer``). ``config`` defaults to the model directory's ``config.json``, else ``infer_config``.
    ``checkpoint='log-mel'`` needs no weights: a ``LogMelTokenizer`` (``config`` a ``LogMelConfig`` or None for the
    default; ``layer`` is not used).
    """
    if isinstance(checkpoint, str) and checkpoint == LOG_MEL:
        codebook = kmeans if isinstance(kmeans, KMeansCodebook) else load_kmeans(kmeans)
        return LogMelTokenizer(codebook, config, pool=pool, pad_id=pad_id, compiler_options=compiler_options)
    arrays, config = _read_checkpoint(checkpoint, config)
    check_output_layer(layer, config, name="layer")
    codebook = kmeans if isinstance(kmeans, KMeansCodebook) else load_kmeans(kmeans)
    if codebook.dim != config.hidden_size:  # before importing: the cheaper, clearer error first
        raise ValueError(f"kmeans has centres of dimension {codebook.dim}, but layer {layer!r} of this encoder "
                         f"gives {config.hidden_size}-dim features; use the k-means fitted on this encoder's features")
    variables = _import(arrays, config)
    return SemanticTokenizer(config, variables, codebook, layer, pool=pool, pad_id=pad_id,
                             compiler_options=compiler_options)


def load_speech_encoder(checkpoint, layer: int | str = LAST, *,
                        config: Any = None) -> tuple[SpeechEncoderConfig, dict]:
    """``(config, variables)`` of a speech encoder from the same files as ``load_semantic_tokenizer`` (no k-means:
    e.g. to fit one on its features); ``layer`` is checked against the config."""
    arrays, config = _read_checkpoint(checkpoint, config)
    check_output_layer(layer, config, name="layer")
    return config, _import(arrays, config)


def _read_checkpoint(checkpoint, config) -> tuple[dict, SpeechEncoderConfig]:
    """(arrays, config) of a model folder, weights file or state dict."""
    if isinstance(checkpoint, (str, os.PathLike)) and epath.Path(checkpoint).is_dir():
        folder = epath.Path(checkpoint)
        if config is None and (folder / "config.json").exists():
            config = json.loads((folder / "config.json").read_text())
        files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()]
        if not files:
            raise ValueError(f"checkpoint folder {os.fspath(checkpoint)!r} has no model.safetensors or "
                             f"pytorch_model.bin")
        checkpoint = os.fspath(files[0])
    arrays = read_state_dict(checkpoint)
    return arrays, _resolve_config(config, arrays)


def _import(arrays: dict, config: SpeechEncoderConfig) -> dict:
    try:
        return import_speech_encoder(arrays, config)
    except ValueError as err:
        raise ValueError(f"checkpoint: {err}") from None
