"""A pure, jittable SoundStream training step: generator and discriminators in one update.

How to plug in (the shared trainer owns meshes, sharding and checkpoints)::

    config = CodecTrainConfig(codec=SoundStream(...), discriminator=CodecDiscriminator(...))
    state = init_codec_train_state(config, jax.random.key(0), sample_audio)   # sample_audio (b t)
    step = jax.jit(codec_train_step, donate_argnums=0)   # add in/out shardings as needed
    for audio in batches:                                  # audio (b t) float32
        rng, key = jax.random.split(rng)
        state, metrics = step(state, audio, key)
    codec = codec_from_state(state)                        # SoundStreamCodec: encode / decode

``CodecTrainState`` is a pytree: ``step``, ``params = {'generator', 'discriminator'}``,
``vq_stats`` (EMA codebooks) and ``opt_state`` are its leaves (save all four);
``config`` is static (part of the tree structure, hashable). The batch axis of
``audio`` is the only one to shard; the step has no collectives of its own, so
under ``jit`` with a batch-sharded input XLA reduces gradients, EMA counts and
losses over the whole global batch.

One step: the generator reconstructs ``audio`` (EMA codebooks updated, quantizer
dropout on); the discriminators score real audio and the reconstruction. The
total ``generator_loss + discriminator_loss`` is differentiated once w.r.t. both
parameter groups: the generator's adversarial and feature-matching terms see
the discriminator parameters through ``stop_gradient`` and the discriminator's
hinge loss sees ``stop_gradient(reconstruction)`` (scored together with the real
audio in one batch), so each group gets exactly the gradient of its own loss
(``codec_losses`` returns the two losses separately). ``optax.multi_transform``
then applies one clipped Adam per group, by default wrapped in ``optax.flatten``:
the optimizer state then holds one flat vector per group (replicate it, or shard
it along its single axis); ``flatten_optimizer=False`` keeps one state array per
parameter, which FSDP shards exactly like the parameter.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from soundstorm_jax.codec import losses
from soundstorm_jax.codec.discriminators import CodecDiscriminator
from soundstorm_jax.codec.soundstream import SoundStream, SoundStreamCodec


@dataclasses.dataclass(frozen=True)
class CodecTrainConfig:
    """Everything a codec training step needs; frozen and hashable (it is static under jit).

    Loss = ``mel_weight * mel + waveform_weight * mean|x - x'| + commitment_weight * commit
    + adversarial_weight * adv_G + feature_matching_weight * fm`` for the generator (the last two from
    step ``adversarial_start_step`` on) and the hinge loss for the discriminators. The waveform term
    (EnCodec's time-domain loss) is the only one that sees phase: with mel terms alone a codec has no
    reason to put phase in its codes, and its decoder buzzes at multiples of the frame rate.
    ``flatten_optimizer``: Adam state as one flat vector per group (cheap to compile; shardable only
    along that one axis) or one array per parameter (shaped like it: FSDP shards it like the parameter).
    ``lr_decay_steps``: None keeps both learning rates constant; N decays them along a cosine to a tenth over
    the first N steps (a run of known length ends on small steps, which polishes the reconstructions).
    """
    codec: SoundStream = dataclasses.field(default_factory=SoundStream)
    discriminator: CodecDiscriminator = dataclasses.field(default_factory=CodecDiscriminator)
    generator_lr: float = 2e-4
    discriminator_lr: float = 2e-4
    adam_b1: float = 0.5
    adam_b2: float = 0.9
    grad_clip_norm: float | None = 10.0
    mel_scales: Sequence[int] = (64, 128, 256, 512, 1024, 2048)
    mel_bins: int = 64
    mel_weight: float = 1.0
    waveform_weight: float = 0.0
    commitment_weight: float = 1.0
    adversarial_weight: float = 1.0
    feature_matching_weight: float = 3.0
    adversarial_start_step: int = 0
    flatten_optimizer: bool = True
    lr_decay_steps: int | None = None


def learning_rate(config: CodecTrainConfig, peak: float) -> optax.ScalarOrSchedule:
    """`peak`, constant or (with `config.lr_decay_steps`) decayed along a cosine to `peak / 10`."""
    if config.lr_decay_steps is None:
        return peak
    return optax.cosine_decay_schedule(peak, int(config.lr_decay_steps), alpha=0.1)


class CodecTrainState(flax.struct.PyTreeNode):
    """step ``()`` int32; params ``{'generator', 'discriminator'}``; vq_stats; opt_state; config (static)."""
    step: jax.Array
    params: Any
    vq_stats: Any
    opt_state: Any
    config: CodecTrainConfig = flax.struct.field(pytree_node=False)


def codec_optimizer(config: CodecTrainConfig) -> optax.GradientTransformation:
    """One (clipped) Adam per parameter group, over params ``{'generator': ..., 'discriminator': ...}``."""
    def adam(lr):
        opt = optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2)
        if config.grad_clip_norm is not None:
            opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
        # One flat vector per group: a handful of fused ops instead of several per parameter leaf,
        # which makes the update far cheaper to compile (and to run) for conv nets with many small leaves.
        return optax.flatten(opt) if config.flatten_optimizer else opt

    def labels(params):
        return {group: jax.tree.map(lambda _: group, tree) for group, tree in params.items()}

    return optax.multi_transform({'generator': adam(learning_rate(config, config.generator_lr)),
                                  'discriminator': adam(learning_rate(config, config.discriminator_lr))}, labels)


def init_codec_train_state(config: CodecTrainConfig, rng: jax.Array, sample_audio: jax.Array) -> CodecTrainState:
    """Fresh state; ``sample_audio (b t)`` fixes only shapes (k-means runs on the first training batch).

    Pure and traceable: ``jax.eval_shape(partial(init_codec_train_state, config), rng, audio)`` gives the
    state's shapes, and ``jax.jit(partial(init_codec_train_state, config), out_shardings=...)`` initialises
    it sharded. Called eagerly, it compiles its one-off program without backend optimisation passes,
    which dominate its compile time (one random draw per parameter leaf) and buy nothing for one run.
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((rng, sample_audio))):
        return _init(config, rng, sample_audio)
    sample_audio = jnp.asarray(sample_audio, jnp.float32)
    init = jax.jit(_init, static_argnums=0).lower(config, rng, sample_audio).compile(
        compiler_options={'xla_backend_optimization_level': 0})
    return init(rng, sample_audio)


def _init(config: CodecTrainConfig, rng: jax.Array, sample_audio: jax.Array) -> CodecTrainState:
    k_gen, k_disc = jax.random.split(rng)
    variables = config.codec.init({'params': k_gen}, sample_audio)
    params = {'generator': variables['params'],
              'discriminator': config.discriminator.init(k_disc, sample_audio)['params']}
    return CodecTrainState(step=jnp.zeros((), jnp.int32), params=params, vq_stats=variables['vq_stats'],
                           opt_state=codec_optimizer(config).init(params), config=config)


def _split_batch(outputs, n: int):
    """Discriminator outputs on a ``(2n ...)`` batch -> (outputs on the first n, outputs on the last n)."""
    first = [(logits[:n], [f[:n] for f in feats]) for logits, feats in outputs]
    second = [(logits[n:], [f[n:] for f in feats]) for logits, feats in outputs]
    return first, second


def uses_discriminator(config: CodecTrainConfig) -> bool:
    """False when both GAN weights are 0: training is then mel + commitment only, and the step skips the
    discriminators (about a third of its time and compile)."""
    return config.adversarial_weight != 0 or config.feature_matching_weight != 0


def codec_losses(config: CodecTrainConfig, params, vq_stats, audio: jax.Array, rng: jax.Array, step: jax.Array):
    """Generator and discriminator losses of one batch -> ``(g_loss, d_loss, (metrics, new_vq_stats))``.

    ``d_loss`` depends on the generator parameters only through ``stop_gradient`` and
    ``g_loss`` on the discriminator parameters only through ``stop_gradient``, so
    ``grad(g_loss + d_loss)`` gives each group the gradient of its own loss.
    """
    gen, disc = config.codec, config.discriminator
    adversarial_on = (step >= config.adversarial_start_step).astype(jnp.float32)
    out, updated = gen.apply({'params': params['generator'], 'vq_stats': vq_stats}, audio, train=True,
                             mutable=['vq_stats'], rngs={'vq': rng})
    fake = out.audio
    if uses_discriminator(config):
        # Real and detached fake in one batch: the discriminator's own pass.
        both = disc.apply({'params': params['discriminator']},
                          jnp.concatenate([audio, jax.lax.stop_gradient(fake)], axis=0))
        real_scores, fake_scores_d = _split_batch(both, audio.shape[0])
        fake_scores_g = disc.apply({'params': jax.lax.stop_gradient(params['discriminator'])}, fake)
        d_loss = losses.hinge_discriminator_loss([r for r, _ in real_scores], [f for f, _ in fake_scores_d])
        adv = losses.hinge_generator_loss([f for f, _ in fake_scores_g])
        fm = losses.feature_matching_loss([r for _, r in real_scores], [f for _, f in fake_scores_g])
    else:  # Reconstruction-only training: the discriminators are neither run nor updated.
        d_loss = adv = fm = jnp.zeros((), jnp.float32)
    mel = losses.multiscale_mel_loss(audio, fake, gen.sample_rate, config.mel_scales, config.mel_bins)
    waveform_l1 = jnp.mean(jnp.abs(audio - fake))
    g_loss = (config.mel_weight * mel + config.waveform_weight * waveform_l1
              + config.commitment_weight * out.commit_loss
              + adversarial_on * (config.adversarial_weight * adv + config.feature_matching_weight * fm))
    metrics = {'generator_loss': g_loss, 'discriminator_loss': d_loss, 'mel_loss': mel,
               'commit_loss': out.commit_loss, 'adversarial_loss': adv, 'feature_matching_loss': fm,
               'waveform_l1': waveform_l1,
               'levels_used': jnp.mean(out.num_levels.astype(jnp.float32))}
    return g_loss, d_loss, (metrics, updated['vq_stats'])


def codec_train_step(state: CodecTrainState, audio: jax.Array, rng: jax.Array) -> tuple[CodecTrainState, dict]:
    """One update of generator, discriminators and EMA codebooks. audio ``(b t)`` -> (new state, scalar metrics)."""
    def total_loss(params):
        g_loss, d_loss, aux = codec_losses(state.config, params, state.vq_stats, audio, rng, state.step)
        return g_loss + d_loss, aux

    grads, (metrics, vq_stats) = jax.grad(total_loss, has_aux=True)(state.params)
    updates, opt_state = codec_optimizer(state.config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['generator_grad_norm'] = optax.tree.norm(grads['generator'])
    metrics['discriminator_grad_norm'] = optax.tree.norm(grads['discriminator'])
    for group in ('generator', 'discriminator'):  # the rate this update used
        lr = learning_rate(state.config, getattr(state.config, f'{group}_lr'))
        metrics[f'{group}_lr'] = jnp.asarray(lr(state.step) if callable(lr) else lr, jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, vq_stats=vq_stats, opt_state=opt_state)
    return new_state, metrics


def codec_eval_step(state: CodecTrainState, audio: jax.Array) -> dict:
    """Read-only reconstruction metrics with all levels: audio ``(b t)`` -> ``{'mel_loss', 'waveform_l1'}``."""
    cfg = state.config
    out = cfg.codec.apply({'params': state.params['generator'], 'vq_stats': state.vq_stats}, audio, train=False)
    return {'mel_loss': losses.multiscale_mel_loss(audio, out.audio, cfg.codec.sample_rate, cfg.mel_scales,
                                                   cfg.mel_bins),
            'waveform_l1': jnp.mean(jnp.abs(audio - out.audio))}


def codec_from_state(state: CodecTrainState, compiler_options: dict | None = None) -> SoundStreamCodec:
    """The trained codec with jitted encode/decode (generator params + EMA codebooks)."""
    return SoundStreamCodec(state.config.codec, {'params': state.params['generator'], 'vq_stats': state.vq_stats},
                            compiler_options=compiler_options)
