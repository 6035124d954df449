"""SoundStorm: the MaskGIT objective over residual-VQ codes (and, with the sampler, generation).

``SoundStorm(net)`` is a Flax module whose ``__call__`` is the training loss::

    net = ConformerWrapper(codebook_size=1024, num_quantizers=12, conformer=dict(dim=512, depth=2))
    model = SoundStorm(net, steps=18, schedule='cosine')
    variables = model.init({'params': k1, 'masking': k2}, codes)
    loss, metrics = model.apply(variables, codes, rngs={'masking': k3, 'dropout': k4})

Only the heads of the level each example trains are evaluated, so the loss
costs one head per example instead of one per level.

With ``codec=`` (and ``semantic_tokenizer=``, a ``semantic.SemanticTokenizer``)
the loss also takes raw audio: codes (and semantic ids) are computed inside the
step, with no gradient into either.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from soundstorm_jax import validation
from soundstorm_jax.codec.interface import Codec
from soundstorm_jax.maskgit.masking import TrainingMask, draw_training_mask, masked_inputs
from soundstorm_jax.maskgit.schedules import Schedule, get_schedule, resolve_steps
from soundstorm_jax.model.layers import default_kernel_init, partitioned
from soundstorm_jax.model.wrapper import ConformerWrapper
from soundstorm_jax.semantic.kmeans import nearest_center
from soundstorm_jax.semantic.tokenizer import layer_features


def check_codec_matches(codec, net: ConformerWrapper) -> None:
    """The codec (a ``codec.Codec``) must produce the codes the network reads: say which of codebook size,
    levels and groups differ (the two name them alike)."""
    if not isinstance(codec, Codec):
        raise ValueError(f"codec must implement soundstorm_jax.codec.Codec (e.g. SoundStream, EnCodec), "
                         f"got {type(codec).__name__}")
    names = ("codebook_size", "num_quantizers", "grouped_quantizers")
    differ = [f"{name}: codec {getattr(codec, name)} != network {getattr(net, name)}"
              for name in names if getattr(codec, name) != getattr(net, name)]
    if differ:
        raise ValueError("the codec does not match the ConformerWrapper: " + "; ".join(differ))


def check_semantic_tokenizer_matches(tokenizer, net: ConformerWrapper, codec) -> None:
    """A ``semantic.SemanticTokenizer`` must give the ids the network reads, from the audio the codec encodes, at the
    network's frames-per-token rate: say which of these differ."""
    from soundstorm_jax.semantic.tokenizer import SemanticTokenizer
    if not isinstance(tokenizer, SemanticTokenizer):
        raise ValueError(f"semantic_tokenizer must be a soundstorm_jax.semantic.SemanticTokenizer "
                         f"(load_semantic_tokenizer(checkpoint, kmeans, layer=...)), got {type(tokenizer).__name__}")
    if codec is None:
        raise ValueError("semantic_tokenizer tokenizes raw audio, whose codes need a codec: "
                         "SoundStorm(net, codec=..., semantic_tokenizer=...)")
    differ = []
    if net.num_semantic_token_ids != tokenizer.vocab_size:
        differ.append(f"vocabulary: tokenizer {tokenizer.vocab_size} ids != network num_semantic_token_ids "
                      f"{net.num_semantic_token_ids}")
    if codec.sample_rate != tokenizer.sample_rate:
        differ.append(f"sample rate: codec {codec.sample_rate} Hz != tokenizer {tokenizer.sample_rate} Hz (the step "
                      f"does not resample; precompute the semantic ids with soundstorm prepare --semantic instead)")
    elif not np.isclose(net.acoustic_per_semantic, codec.frame_rate / tokenizer.rate, rtol=1e-6):
        differ.append(f"rate: codec {codec.frame_rate:g} frames/s / tokenizer {tokenizer.rate:g} tokens/s = "
                      f"{codec.frame_rate / tokenizer.rate:g} frames per token != network acoustic_per_semantic "
                      f"{net.acoustic_per_semantic:g}")
    if differ:
        raise ValueError("the semantic tokenizer does not match the ConformerWrapper and codec: " + "; ".join(differ))


def attach_codec_variables(variables, codec_variables):
    """Put a trained codec's variables (``params``, ``vq_stats``, ...) into a SoundStorm's, under ``'codec'``.

    Returns a new dict; the codec collections must have the structure
    ``model.init`` created (same codec configuration).
    """
    out = {name: dict(collection) for name, collection in variables.items()}
    for name, collection in codec_variables.items():
        if name not in out or "codec" not in out[name]:
            raise ValueError(f"the SoundStorm variables have no codec collection {name!r}; "
                             f"was the model built with codec=...?")
        expected, given = nn.unbox(out[name]["codec"]), nn.unbox(collection)
        same_tree = jax.tree.structure(expected) == jax.tree.structure(given)
        if not same_tree or [np.shape(x) for x in jax.tree.leaves(expected)] != [
                np.shape(x) for x in jax.tree.leaves(given)]:
            raise ValueError(f"codec variables {name!r} do not match the attached codec's structure")
        out[name]["codec"] = collection
    return out


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


class SoundStorm(nn.Module):
    """MaskGIT training (and generation) for a :class:`ConformerWrapper`.

    Attributes:
      net: the network.
      steps: decoding steps: an int (that many on level 0, one greedy pass on
        every later level) or one entry per level, e.g. ``(16, 1, ..., 1)``.
      schedule: ``'cosine'`` (paper), ``'linear'`` or a callable ``t -> ratio``.
      no_replace_prob / random_token_prob: BERT-style corruption of the targets:
        this fraction keeps its true token / shows a random token instead of
        [MASK]; every target is in the loss. The paper uses neither (0, 0);
        soundstorm-pytorch defaults to (0.15, 0.1).
      label_smoothing: cross-entropy label smoothing.
      self_cond / self_cond_train_prob: self-conditioning on the previous
        pass's head outputs, trained on this fraction of examples.
      self_token_critic / critic_loss_weight: a token critic sharing the
        network, trained to tell sampled-wrong tokens among the targets.
      cond_drop_prob: drop the conditioning of this fraction of examples
        (enables classifier-free guidance at generation).
      codec: a codec module implementing ``codec.Codec`` (``codec.SoundStream``,
        ``codec.EnCodec``): the loss then also takes raw audio (codes are
        computed inside the step, with no gradient into the codec) and
        ``generate`` takes ``seconds=`` and returns waveforms. Its variables
        live under ``'codec'``; put a trained codec's there
        (:func:`attach_codec_variables`).
      soundstream: the seed's name for ``codec``.
      semantic_tokenizer: a ``semantic.SemanticTokenizer`` (with a codec at its
        sample rate): raw audio given to the loss is also tokenized into the
        semantic ids (unless ``semantic_ids`` are given), inside the step and
        with no gradient; ``generate(semantic_audio=...)`` takes the ids from a
        recording. Its weights are copied by ``init`` into the
        ``'semantic_tokenizer'`` collection (never ``'params'``: nothing trains
        them), which the step reads as arguments, not as compiled constants.
      wav2vec: the seed's name for ``semantic_tokenizer``.
    """

    net: ConformerWrapper
    steps: Any = 18
    schedule: Schedule = "cosine"
    no_replace_prob: float = 0.0
    random_token_prob: float = 0.0
    label_smoothing: float = 0.0
    self_cond: bool = False
    self_cond_train_prob: float = 0.75
    self_token_critic: bool = False
    critic_loss_weight: float = 1.0
    cond_drop_prob: float = 0.0
    codec: Any = None
    soundstream: Any = None
    semantic_tokenizer: Any = None
    wav2vec: Any = None

    def __post_init__(self):
        get_schedule(self.schedule)
        if self.soundstream is not None:
            if self.codec is not None:
                raise ValueError("give the codec once: codec= or soundstream= (the seed's name), not both")
            object.__setattr__(self, "codec", self.soundstream)
            object.__setattr__(self, "soundstream", None)
        if self.codec is not None:
            check_codec_matches(self.codec, self.net)
        if self.wav2vec is not None:
            if self.semantic_tokenizer is not None:
                raise ValueError("give the semantic tokenizer once: semantic_tokenizer= or wav2vec= (the seed's name), "
                                 "not both")
            object.__setattr__(self, "semantic_tokenizer", self.wav2vec)
            object.__setattr__(self, "wav2vec", None)
        if self.semantic_tokenizer is not None:
            check_semantic_tokenizer_matches(self.semantic_tokenizer, self.net, self.codec)
        level_steps = resolve_steps(self.steps, self.net.num_quantizers)
        # An int stays an int (the model's settings read as given); a list becomes a hashable tuple.
        object.__setattr__(self, "steps", level_steps if isinstance(self.steps, (list, tuple)) else level_steps[0])
        for name in ("no_replace_prob", "random_token_prob", "label_smoothing", "self_cond_train_prob",
                     "cond_drop_prob"):
            _check_probability(name, getattr(self, name))
        if self.no_replace_prob + self.random_token_prob > 1.0:
            raise ValueError("no_replace_prob + random_token_prob must not exceed 1, got "
                             f"{self.no_replace_prob} + {self.random_token_prob}")
        super().__post_init__()

    @property
    def level_steps(self) -> tuple[int, ...]:
        """Decoding steps per level, ``(Q,)``."""
        return resolve_steps(self.steps, self.net.num_quantizers)

    def setup(self):
        d = self.net.dim
        if self.self_cond:
            self.null_embed = self.param("null_embed", partitioned(nn.initializers.normal(1.0), ("embed",)), (d,),
                                         self.net.param_dtype)
            self.to_self_cond = nn.Dense(d, use_bias=False, dtype=self.net.dtype, param_dtype=self.net.param_dtype,
                                         kernel_init=partitioned(default_kernel_init, ("embed", "mlp")))
        if self.self_token_critic:
            self.critic_head = nn.Dense(1, dtype=self.net.dtype, param_dtype=self.net.param_dtype,
                                        kernel_init=partitioned(default_kernel_init, ("embed", None)),
                                        bias_init=partitioned(nn.initializers.zeros_init(), (None,)))
        if self.semantic_tokenizer is not None:
            tokenizer = self.semantic_tokenizer
            self.semantic_encoder = self.variable("semantic_tokenizer", "encoder", lambda: tokenizer.variables["params"])
            self.semantic_centers = self.variable("semantic_tokenizer", "centers", lambda: jnp.asarray(tokenizer.centers))

    def tokenize_semantic(self, audio: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """Raw audio ``(b, samples)`` with valid samples ``lengths (b,)`` (default: all) -> semantic ids ``(b, tokens)``
        int32 through the attached tokenizer, the net's ``semantic_pad_id`` past each clip's own tokens; no gradient
        flows into the tokenizer. Unchecked: ``generate(semantic_audio=...)`` and the loss check first."""
        tokenizer = self.semantic_tokenizer
        if lengths is None:
            lengths = jnp.full(audio.shape[:1], audio.shape[1], jnp.int32)
        params = {"params": jax.lax.stop_gradient(self.semantic_encoder.value)}
        features, valid = layer_features(tokenizer.config, tokenizer.layer, tokenizer.pool, params,
                                         jnp.asarray(audio, jnp.float32), lengths)
        ids = nearest_center(features, jax.lax.stop_gradient(self.semantic_centers.value))
        return jax.lax.stop_gradient(jnp.where(valid, ids, self.net.semantic_pad_id).astype(jnp.int32))

    def check_inputs(self, codes, mask=None, semantic_ids=None, cond=None) -> None:
        """Raise ``ValueError`` for malformed training inputs (see :mod:`soundstorm_jax.validation`)."""
        net = self.net
        if validation.is_floating(codes):
            if self.codec is None:
                raise ValueError("codes are floating point, i.e. raw audio, but no codec is attached; "
                                 "pass integer codes or SoundStorm(net, codec=...)")
            validation.check_audio(codes, name="audio")
            frames = -(-np.shape(codes)[1] // self.codec.hop_length)
            if self.semantic_tokenizer is not None and semantic_ids is None:
                field = self.semantic_tokenizer.config.receptive_field
                if np.shape(codes)[1] < field:
                    raise ValueError(f"audio has {np.shape(codes)[1]} samples, fewer than one frame of the semantic "
                                     f"tokenizer ({field} samples)")
            if mask is not None:
                validation.check_mask(mask, (np.shape(codes)[0], frames))
            return self._check_conditioning(np.shape(codes)[0], frames, semantic_ids, cond)
        validation.check_codes(codes, codebook_size=net.codebook_size, num_quantizers=net.num_quantizers,
                               grouped_quantizers=net.grouped_quantizers, mask=mask)
        self._check_conditioning(codes.shape[0], codes.shape[1], semantic_ids, cond)

    def _check_conditioning(self, b, n, semantic_ids, cond) -> None:
        net = self.net
        if semantic_ids is not None:
            validation.check_semantic_ids(semantic_ids, batch=b, num_semantic_token_ids=net.num_semantic_token_ids,
                                          pad_id=net.semantic_pad_id)
        if cond is not None:
            validation.check_cond(cond, batch=b, frames=n, dim=net.dim)

    def self_cond_embedding(self, source: jax.Array | None) -> jax.Array:
        """Self-conditioning input: the projected head-output sum ``(b, n, d)``, or the learned null."""
        if source is None:
            return self.to_self_cond(self.null_embed)
        return self.to_self_cond(source)

    def __call__(self, codes, mask=None, *, semantic_ids=None, cond=None, deterministic: bool = False):
        """Training loss for codes ``(b, n, c)``; ``mask (b, n)`` bool marks valid frames (a prefix of each
        example; padded frames may hold any integer).

        Returns ``(loss, metrics)``: the token-averaged cross-entropy on the
        level-q targets (plus the weighted critic loss), and a dict with
        ``generator_loss``, ``critic_loss``, ``accuracy``, ``num_targets`` and
        per-level ``level_loss``, ``level_accuracy``, ``level_targets`` ``(Q,)``.
        Needs the ``'masking'`` rng (and ``'dropout'`` when dropout is on).
        """
        self.check_inputs(codes, mask, semantic_ids, cond)
        net = self.net
        if self.codec is not None:
            if self.is_initializing():
                # Create all the codec's variables (encoder and decoder), so the tree has a place for trained ones.
                self.codec.decode(jnp.zeros((1, 1, net.num_columns), jnp.int32))
                self.codec.encode(jnp.zeros((1, self.codec.hop_length), jnp.float32))
            if validation.is_floating(codes):
                if self.semantic_tokenizer is not None and semantic_ids is None:
                    # A clip's valid samples: its valid code frames x the hop, within the audio.
                    lengths = None if mask is None else jnp.minimum(
                        jnp.sum(jnp.asarray(mask), axis=1) * self.codec.hop_length, codes.shape[1]).astype(jnp.int32)
                    semantic_ids = self.tokenize_semantic(codes, lengths)
                # Tokenise inside the step; the codec is frozen.
                codes = jax.lax.stop_gradient(self.codec.encode(jnp.asarray(codes, jnp.float32)))
        b, n, _ = codes.shape
        q_levels, groups = net.num_quantizers, net.grouped_quantizers
        mask = jnp.ones((b, n), bool) if mask is None else jnp.asarray(mask)
        # Padded frames may hold any integer: read them as 0 so no lookup below goes out of range.
        codes = jnp.where(mask[:, :, None], jnp.asarray(codes, jnp.int32), 0)

        keys = jax.random.split(self.make_rng("masking"), 6)
        draw = draw_training_mask(keys[0], mask, q_levels, groups, get_schedule(self.schedule))
        self.sow("intermediates", "draw", draw)  # for tests and debugging; free unless asked for
        columns = draw.level[:, None] + jnp.arange(groups)[None, :] * q_levels           # (b, g)
        true_tokens = jnp.take_along_axis(codes, columns[:, None, :], axis=2)             # (b, n, g)
        inputs = masked_inputs(codes, mask, draw, self._corrupt_targets(keys[1], true_tokens), net.mask_id,
                               q_levels, groups)

        drop_condition = None
        if self.cond_drop_prob > 0 and (semantic_ids is not None or cond is not None):
            drop_condition = jax.random.bernoulli(keys[2], self.cond_drop_prob, (b,))
        condition = dict(semantic_ids=semantic_ids, cond=cond, drop_condition=drop_condition,
                         deterministic=deterministic)

        sum_embeds = None
        if self.self_cond:
            first = jax.lax.stop_gradient(net.self_cond_source(net.hidden(inputs, mask, **condition)))
            use = jax.random.bernoulli(keys[3], self.self_cond_train_prob, (b,))[:, None, None]
            sum_embeds = jnp.where(use, self.self_cond_embedding(first), self.self_cond_embedding(None))

        hidden = net.hidden(inputs, mask, sum_embeds=sum_embeds, **condition)
        logits = net.logits_from_embeddings(net.head_embeddings(hidden, columns), columns)  # (b, n, g, K)
        loss, metrics = self._generator_loss(logits, true_tokens, draw)

        critic_loss = jnp.zeros((), jnp.float32)
        if self.self_token_critic:
            critic_loss = self._critic_loss(keys[4], logits, true_tokens, codes, mask, draw, columns, condition)
        metrics["critic_loss"] = critic_loss
        return loss + self.critic_loss_weight * critic_loss, metrics

    def decode_audio(self, codes: jax.Array) -> jax.Array:
        """Codes ``(b, n, c)`` -> audio ``(b, n * hop)`` through the attached codec."""
        return self.codec.decode(codes)

    def generate(self, variables, num_frames: int | None = None, *, semantic_audio=None, **kwargs):
        """Generate codes ``(batch, frames, levels)``; see :func:`soundstorm_jax.sampler.generate`.

        ``model.generate(variables, 1024, batch_size=2, key=key)``; with a codec
        attached, ``model.generate(variables, seconds=30, batch_size=2, key=key)``
        returns a list of waveforms. With a semantic tokenizer attached,
        ``semantic_audio`` (``(b, samples)`` or a list of 1-D clips, at the
        tokenizer's sample rate) gives the semantic ids (``semantic_audio_ids``):
        that recording's content, e.g. in a prompt's voice.
        """
        from soundstorm_jax.sampler import generate  # the sampler imports this module

        if semantic_audio is not None:
            if kwargs.get("semantic_ids") is not None:
                raise ValueError("give semantic_ids or semantic_audio (tokenized into them), not both")
            kwargs["semantic_ids"] = self.semantic_audio_ids(variables, semantic_audio)
        return generate(self, variables, num_frames, **kwargs)

    def semantic_audio_ids(self, variables, audio) -> np.ndarray:
        """Semantic ids ``(b, tokens)`` of raw audio through the attached tokenizer and ``variables``'
        ``'semantic_tokenizer'`` weights (what the loss computes in its step), the net's ``semantic_pad_id`` past
        each clip's tokens. ``audio``: ``(b, samples)`` float, or a list of 1-D clips of any lengths."""
        if self.semantic_tokenizer is None:
            raise ValueError("semantic_audio needs a semantic tokenizer attached: "
                             "SoundStorm(net, codec=..., semantic_tokenizer=...)")
        if "semantic_tokenizer" not in variables:
            raise ValueError("variables have no 'semantic_tokenizer' collection: use the variables init made for "
                             "this model (it copies the tokenizer's weights there)")
        clips = [np.asarray(a) for a in audio] if isinstance(audio, (list, tuple)) else None
        if clips is not None:
            if not clips or any(c.ndim != 1 for c in clips):
                raise ValueError("semantic_audio as a list must hold 1-D clips (samples,), at least one")
            lengths = np.array([len(c) for c in clips], np.int32)
            batch = np.zeros((len(clips), max(int(lengths.max()), 1)), np.float32)
            for i, clip in enumerate(clips):
                batch[i, :len(clip)] = clip
            for i, clip in enumerate(clips):
                validation.check_audio(clip[None] if len(clip) else np.zeros((1, 0)), name=f"semantic_audio[{i}]")
        else:
            validation.check_audio(audio, name="semantic_audio")
            batch = np.asarray(audio, np.float32)
            lengths = np.full(batch.shape[0], batch.shape[1], np.int32)
        field = self.semantic_tokenizer.config.receptive_field
        short = np.flatnonzero(lengths < field)
        if short.size:
            raise ValueError(f"semantic_audio clips {short.tolist()} hold {lengths[short].tolist()} samples, fewer "
                             f"than one frame of the semantic tokenizer ({field} samples)")
        ids = _semantic_audio_ids(self, {"semantic_tokenizer": variables["semantic_tokenizer"]}, jnp.asarray(batch),
                                  jnp.asarray(lengths))
        return np.asarray(ids)

    # ---- the pieces the sampler calls, one pass at a time ------------------------------------

    def conditioning(self, semantic_ids, cond, num_frames: int):
        """Semantic ids ``(b, m)`` and/or a precomputed ``cond`` -> one conditioning ``(b, n, d)`` (or None).

        Computed once per generation and reused by every pass.
        """
        total = None
        if semantic_ids is not None:
            total = self.net.semantic_condition(semantic_ids, num_frames)
        if cond is not None:
            cond = jnp.broadcast_to(cond[:, None, :], cond.shape[:1] + (num_frames,) + cond.shape[1:]) \
                if cond.ndim == 2 else cond
            total = cond if total is None else total + cond.astype(total.dtype)
        return total

    def decode_logits(self, codes, mask, columns, condition=None, drop_condition=None, self_cond_source=None,
                      has_source=None):
        """One decoding pass: logits ``(b, n, g, K)`` of ``columns (g,)`` and the next self-cond source.

        ``self_cond_source (b, n, d)`` is the previous pass's head-output sum;
        where ``has_source`` is False (the first pass) the learned null
        embedding is used instead.
        """
        sum_embeds = None
        if self.self_cond:
            sum_embeds = self.self_cond_embedding(None)
            if self_cond_source is not None:
                sum_embeds = jnp.where(has_source, self.self_cond_embedding(self_cond_source), sum_embeds)
        hidden = self.net.hidden(codes, mask, cond=condition, sum_embeds=sum_embeds, drop_condition=drop_condition)
        logits = self.net.logits_from_embeddings(self.net.head_embeddings(hidden, columns), columns)
        source = self.net.self_cond_source(hidden) if self.self_cond else None
        return logits, source

    def critic_logits(self, codes, mask, columns, condition=None):
        """The token critic's logits ``(b, n, g)`` (high = likely a wrong token) for ``columns (g,)``."""
        hidden = self.net.hidden(codes, mask, cond=condition)
        return self.critic_head(self.net.head_embeddings(hidden, columns))[..., 0].astype(jnp.float32)

    def _corrupt_targets(self, key, true_tokens):
        """What the targets show: [MASK], or BERT-style kept / random tokens."""
        mask_tokens = jnp.full_like(true_tokens, self.net.mask_id)
        if self.no_replace_prob == 0 and self.random_token_prob == 0:
            return mask_tokens
        k_choice, k_random = jax.random.split(key)
        u = jax.random.uniform(k_choice, true_tokens.shape)
        random_tokens = jax.random.randint(k_random, true_tokens.shape, 0, self.net.codebook_size)
        shown = jnp.where(u < self.no_replace_prob, true_tokens, mask_tokens)
        return jnp.where((u >= self.no_replace_prob) & (u < self.no_replace_prob + self.random_token_prob),
                         random_tokens, shown)

    def _generator_loss(self, logits, true_tokens, draw: TrainingMask):
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(log_probs, true_tokens[..., None], axis=-1)[..., 0]
        if self.label_smoothing > 0:
            nll = (1 - self.label_smoothing) * nll - self.label_smoothing * jnp.mean(log_probs, axis=-1)
        weights = draw.targets.astype(jnp.float32)                                        # (b, n, g)
        correct = (jnp.argmax(logits, axis=-1) == true_tokens).astype(jnp.float32)
        per_example_nll = jnp.sum(nll * weights, axis=(1, 2))
        per_example_correct = jnp.sum(correct * weights, axis=(1, 2))
        per_example_count = jnp.sum(weights, axis=(1, 2))
        total = jnp.sum(per_example_count)
        loss = jnp.sum(per_example_nll) / total

        by_level = jax.nn.one_hot(draw.level, self.net.num_quantizers, dtype=jnp.float32)  # (b, Q)
        level_count = per_example_count @ by_level
        safe = jnp.maximum(level_count, 1.0)
        metrics = {
            "generator_loss": loss,
            "accuracy": jnp.sum(per_example_correct) / total,
            "num_targets": total,
            "level_loss": (per_example_nll @ by_level) / safe,
            "level_accuracy": (per_example_correct @ by_level) / safe,
            "level_targets": level_count,
        }
        return loss, metrics

    def _critic_loss(self, key, logits, true_tokens, codes, mask, draw, columns, condition):
        """BCE of the critic on the targets only: was the sampled token wrong?"""
        net = self.net
        k_temperature, k_noise = jax.random.split(key)
        temperature = jax.random.uniform(k_temperature, (logits.shape[0], 1, 1, 1))
        gumbel = jax.random.gumbel(k_noise, logits.shape)
        sampled = jax.lax.stop_gradient(jnp.argmax(logits + temperature * gumbel, axis=-1))
        critic_inputs = masked_inputs(codes, mask, draw, sampled, net.mask_id, net.num_quantizers,
                                      net.grouped_quantizers)
        hidden = net.hidden(critic_inputs, mask, **condition)
        critic_logits = self.critic_head(net.head_embeddings(hidden, columns))[..., 0].astype(jnp.float32)
        labels = (sampled != true_tokens).astype(jnp.float32)
        bce = optax.sigmoid_binary_cross_entropy(critic_logits, labels)
        weights = draw.targets.astype(jnp.float32)
        self.sow("intermediates", "critic_weights", weights)
        return jnp.sum(bce * weights) / jnp.sum(weights)


@functools.partial(jax.jit, static_argnames=("model",))
def _semantic_audio_ids(model: SoundStorm, variables, audio: jax.Array, lengths: jax.Array) -> jax.Array:
    return model.apply(variables, audio, lengths, method=SoundStorm.tokenize_semantic)
