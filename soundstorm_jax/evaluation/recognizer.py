"""A small frame-level phoneme recognizer: dilated 1-D convolutions over log-mel frames, trained with optax.

It labels every frame (at the corpus's phoneme frame rate) with one of the
`data.phonemes` ids, from normalised log-mel features (`features.log_mel`) of
about half a second around it: three dilated convolutions (kernel 5, dilations
1, 2, 4 by default: a receptive field of 29 frames, 0.58 s at 50 Hz) and a
linear head. That is enough context for coarticulation and small enough to train
in seconds on a CPU from the tiny corpus's five training voices.

Training (`train_recognizer`) draws random crops of `crop_frames` frames from
the training utterances, with a random shift of the mel axis by up to
`max_mel_shift` bands (a crude vocal-tract-length perturbation: the tiny
corpus's training voices may all be of one sex while the held-out voice is of
the other), and minimises the frame-level cross entropy with Adam. The whole
loop is one `lax.scan`, so a run compiles once and is a pure function of the
data and the key: same key, same parameters.

Padding: frames past an utterance's end are masked to zero after every layer,
so an utterance is recognised the same alone or padded into a batch.

Cache: with `cache_dir`, `train_recognizer` keeps what it trained in
`<cache_dir>/recognizer-<digest>.msgpack`, the digest covering the training
audio and ids, the key, the config and this module's and `features`' source,
so a later call with the same inputs (the demo run again on the same corpus)
loads it instead of training, and anything that would train differently misses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from functools import partial
from typing import Optional, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from soundstorm_jax.data import phonemes
from soundstorm_jax.evaluation import features as features_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RecognizerConfig:
    """Model size and training schedule. The defaults train in a few seconds on 2 CPU cores."""
    features: features_lib.FeatureConfig = features_lib.FeatureConfig()
    channels: int = 128
    kernel_size: int = 5
    dilations: tuple[int, ...] = (1, 2, 4)
    steps: int = 150
    batch_size: int = 16
    crop_frames: int = 96
    learning_rate: float = 3e-3
    max_mel_shift: int = 2
    bucket_frames: int = 64   # recognition pads to multiples of this: a few compiled shapes


class PhonemeRecognizer(nn.Module):
    """features (b, n, n_mels), valid (b, n) bool -> logits (b, n, phonemes.VOCAB_SIZE)."""
    channels: int
    kernel_size: int
    dilations: tuple[int, ...]
    num_classes: int = phonemes.VOCAB_SIZE

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        keep = valid[..., None].astype(x.dtype)
        x = x * keep
        for dilation in self.dilations:
            x = nn.Dense(self.channels)(_context(x, self.kernel_size, dilation))
            x = nn.LayerNorm()(x)
            # Zeroed after each layer: padded frames then look exactly like SAME padding's zeros.
            x = nn.gelu(x) * keep
        return nn.Dense(self.num_classes)(x)


def _context(x: jax.Array, kernel_size: int, dilation: int) -> jax.Array:
    """x (b, n, c) -> (b, n, kernel_size * c): frames f + dilation * (k - kernel_size // 2), zeros past the ends.

    A dilated 'SAME' convolution is this followed by a Dense layer; written so, because XLA's CPU convolution
    gradients are several times slower than the same matrix products.
    """
    half = kernel_size // 2
    n = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (half * dilation, half * dilation), (0, 0)))
    return jnp.concatenate([padded[:, k * dilation:k * dilation + n] for k in range(kernel_size)], axis=-1)


@dataclasses.dataclass(frozen=True)
class Recognizer:
    """A trained recognizer: its config and parameters (a pytree of arrays)."""
    config: RecognizerConfig
    params: dict

    @property
    def module(self) -> PhonemeRecognizer:
        return _module(self.config)


def _module(config: RecognizerConfig) -> PhonemeRecognizer:
    return PhonemeRecognizer(config.channels, config.kernel_size, tuple(config.dilations))


def pad_batch(sequences: Sequence[np.ndarray], length: int, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """Arrays (n_i, ...) -> (len(sequences), length, ...) padded with `fill`, and valid (len, length) bool."""
    first = np.asarray(sequences[0])
    out = np.full((len(sequences), length) + first.shape[1:], fill, first.dtype)
    valid = np.zeros((len(sequences), length), bool)
    for i, s in enumerate(sequences):
        s = np.asarray(s)[:length]
        out[i, :len(s)] = s
        valid[i, :len(s)] = True
    return out, valid


def _shift_mels(x: jax.Array, shift: jax.Array) -> jax.Array:
    """x (n, m) with its mel axis moved by `shift` bands (edge bands repeated)."""
    m = x.shape[-1]
    index = jnp.clip(jnp.arange(m) - shift, 0, m - 1)
    return x[:, index]


# Training runs 150 steps of one program: its run time, not its compile, is what costs, so it is compiled with
# LLVM's full optimisation even where XLA_FLAGS ask for fast compiles (the test suite's -O0 runs it 3x slower).
@partial(jax.jit, static_argnames=("config",),
         compiler_options={"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False})
def _train(feats: jax.Array, labels: jax.Array, valid: jax.Array, key: jax.Array, config: RecognizerConfig):
    """feats (u, n, m), labels (u, n), valid (u, n) -> (params, losses (steps,))."""
    module = _module(config)
    init_key, loop_key = jax.random.split(key)
    crop = config.crop_frames
    params = module.init(init_key, jnp.zeros((1, crop, feats.shape[-1])), jnp.ones((1, crop), bool))["params"]
    optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.steps, alpha=0.05))
    lengths = valid.sum(axis=1)

    def one_crop(key):
        k_utt, k_start, k_shift = jax.random.split(key, 3)
        u = jax.random.randint(k_utt, (), 0, feats.shape[0])
        start = jax.random.randint(k_start, (), 0, jnp.maximum(lengths[u] - crop, 0) + 1)
        shift = jax.random.randint(k_shift, (), -config.max_mel_shift, config.max_mel_shift + 1)
        x = jax.lax.dynamic_slice_in_dim(feats[u], start, crop)
        return (_shift_mels(x, shift), jax.lax.dynamic_slice_in_dim(labels[u], start, crop),
                jax.lax.dynamic_slice_in_dim(valid[u], start, crop))

    def loss_fn(params, x, y, v):
        logits = module.apply({"params": params}, x, v)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(losses * v) / jnp.maximum(v.sum(), 1)

    def step(carry, key):
        params, opt_state = carry
        x, y, v = jax.vmap(one_crop)(jax.random.split(key, config.batch_size))
        v = v & (y != phonemes.PAD_ID)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, v)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)),
                                       jax.random.split(loop_key, config.steps))
    return params, losses


def train_recognizer(waveforms: Sequence[np.ndarray], phoneme_ids: Sequence[np.ndarray], key: jax.Array,
                     config: RecognizerConfig = RecognizerConfig(),
                     cache_dir: Optional[str] = None) -> tuple[Recognizer, np.ndarray]:
    """Trains a recognizer on utterances with their per-frame phoneme ids.

    Args:
      waveforms: float (samples_i,) each, at `config.features.sample_rate`.
      phoneme_ids: int (frames_i,) each, at `config.features.frame_rate`; an
        utterance whose ids and audio disagree in length is trained on their overlap.
      key: a PRNG key; the result is a pure function of it and the data.
      cache_dir: a local folder to load the result from, or keep it in, for these exact inputs (see the
        module docstring); None trains every time.

    Returns:
      (the recognizer, its training losses (steps,)).
    """
    if len(waveforms) != len(phoneme_ids) or not waveforms:
        raise ValueError(f"need as many phoneme id sequences as waveforms (>0), got {len(waveforms)} "
                         f"and {len(phoneme_ids)}")
    cached = None
    if cache_dir is not None:
        cached = os.path.join(cache_dir, f"recognizer-{_digest(waveforms, phoneme_ids, key, config)}.msgpack")
        if os.path.exists(cached):
            with open(cached, "rb") as f:
                saved = flax.serialization.msgpack_restore(f.read())
            return Recognizer(config, saved["params"]), np.asarray(saved["losses"])
    pairs = [features_lib.overlap(features_lib.log_mel(w, config.features), np.asarray(i, np.int32))
             for w, i in zip(waveforms, phoneme_ids)]
    longest = max(max(len(f) for f, _ in pairs), config.crop_frames)
    feats, valid = pad_batch([f for f, _ in pairs], longest)
    labels, _ = pad_batch([i for _, i in pairs], longest, fill=phonemes.PAD_ID)
    params, losses = _train(jnp.asarray(feats), jnp.asarray(labels), jnp.asarray(valid), key, config)
    params, losses = jax.device_get(params), np.asarray(losses)
    if cached is not None:
        _save(cached, {"params": params, "losses": losses})
    return Recognizer(config, params), losses


def _digest(waveforms, phoneme_ids, key, config: RecognizerConfig) -> str:
    """What the trained recognizer is a function of: the data, the key, the config and the code."""
    h = hashlib.sha256(repr(config).encode())
    for module in (__file__, features_lib.__file__):
        with open(module, "rb") as f:
            h.update(f.read())
    key = jax.random.key_data(key) if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key) else key
    h.update(np.asarray(key).tobytes())
    for w, i in zip(waveforms, phoneme_ids):
        for array in (np.asarray(w, np.float32), np.asarray(i, np.int32)):
            h.update(str(array.shape).encode())
            h.update(array.tobytes())
    return h.hexdigest()[:32]


def _save(path: str, tree) -> None:
    """Written beside its name and renamed: a reader never sees half a file. A cache that cannot be written
    is only a warning (the recognizer was trained)."""
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(flax.serialization.msgpack_serialize(tree))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not keep the trained recognizer in %s: %s", path, e)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


@partial(jax.jit, static_argnames=("config",))
def _logits(params, feats: jax.Array, valid: jax.Array, config: RecognizerConfig) -> jax.Array:
    return _module(config).apply({"params": params}, feats, valid)


def recognize(recognizer: Recognizer, waveforms: Sequence[np.ndarray], *, batch_size: int = 8) -> list[np.ndarray]:
    """The most likely phoneme id of every frame of each waveform.

    Args:
      waveforms: float (samples_i,) each, at the recognizer's sample rate.

    Returns:
      int32 (ceil(samples_i / hop),) per waveform, aligned as the corpus's ids.
    """
    config = recognizer.config
    feats = [features_lib.log_mel(w, config.features) for w in waveforms]
    out = []
    for start in range(0, len(feats), batch_size):
        chunk = feats[start:start + batch_size]
        longest = max(max(len(f) for f in chunk), 1)
        length = -(-longest // config.bucket_frames) * config.bucket_frames
        x, valid = pad_batch(chunk, length)
        rows = np.zeros((batch_size,) + x.shape[1:], np.float32)  # a fixed batch: one compile per length bucket
        rows_valid = np.zeros((batch_size, length), bool)
        rows[:len(chunk)], rows_valid[:len(chunk)] = x, valid
        predicted = np.asarray(jnp.argmax(_logits(recognizer.params, jnp.asarray(rows), jnp.asarray(rows_valid),
                                                  config), axis=-1), np.int32)
        out += [predicted[i, :len(f)] for i, f in enumerate(chunk)]
    return out
