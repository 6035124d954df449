"""``generate``: validated inputs in, one compiled demasking program, codes out.

Everything a user can get wrong is checked here, on the host, before anything
is traced. The program itself is one ``jax.jit`` function cached by
``(model, options)`` and by shapes; frames are rounded up to a multiple of
``frame_bucket`` (extra frames are padding, which never affects valid frames),
so a service generating many lengths compiles once per bucket, batch size and
step schedule.
"""
from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from soundstorm_jax import validation
from soundstorm_jax.maskgit.schedules import get_schedule, resolve_steps
from soundstorm_jax.model.wrapper import semantic_frames
from soundstorm_jax.sampler.loop import Decoder, DecodePlan, DecodeState, SamplingOptions, decode, pass_schedule

DEFAULT_FRAME_BUCKET = 64


def _frame_lengths(num_frames, batch_size, lengths, mask, semantic_ids, net):
    """Resolve ``(batch, frames, valid (b, n))`` from whichever of the arguments were given."""
    sizes = {}
    if semantic_ids is not None:
        sizes["semantic_ids"] = np.shape(semantic_ids)[0]
    if mask is not None:
        sizes["mask"] = np.shape(mask)[0]
    if lengths is not None:
        sizes["lengths"] = np.shape(lengths)[0] if np.ndim(lengths) else None
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        sizes["batch_size"] = int(batch_size)
    if len({v for v in sizes.values()}) > 1:
        raise ValueError(f"batch sizes disagree: {sizes}")
    b = next(iter(sizes.values()), 1)

    if semantic_ids is not None:
        validation.check_semantic_ids(semantic_ids, batch=b, num_semantic_token_ids=net.num_semantic_token_ids,
                                      pad_id=net.semantic_pad_id)
        ids = np.asarray(semantic_ids)
        implied = semantic_frames(ids.shape[1], net.acoustic_per_semantic)
        num_frames = implied if num_frames is None else num_frames
        if lengths is None and mask is None:
            # Tokens up to each example's last valid one: the frames its conditioning covers.
            counts = np.max(np.where(ids != net.semantic_pad_id, np.arange(ids.shape[1]) + 1, 0), axis=1)
            lengths = [min(num_frames, semantic_frames(int(c), net.acoustic_per_semantic)) for c in counts]
    if mask is not None:
        validation.check_mask(mask, (b, np.shape(mask)[1]))
        num_frames = np.shape(mask)[1] if num_frames is None else num_frames
    if num_frames is None:
        raise ValueError("give num_frames (or seconds with a codec, semantic_ids, or a mask) to set the length")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    n = int(num_frames)
    if mask is not None:
        valid = np.asarray(mask, bool)
        if valid.shape[1] != n:
            raise ValueError(f"mask has {valid.shape[1]} frames but num_frames is {n}")
    elif lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (b,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"lengths must be {b} integers, one per example, got {lengths!r}")
        if lengths.min() < 1 or lengths.max() > n:
            raise ValueError(f"lengths must lie in [1, num_frames={n}], got {lengths.tolist()}")
        valid = np.arange(n)[None, :] < lengths[:, None]
    else:
        valid = np.ones((b, n), bool)
    return b, n, valid


def _prompt_tokens(prompt, b: int, valid: np.ndarray, net):
    """Validated prompt ``(b, P, Qp)`` and the fixed-token mask ``(b, n, c)``.

    ``prompt`` is one array for every example (``(P, Qp)`` or ``(b, P, Qp)``) or
    a list of ``b`` arrays ``(P_i, Qp_i)`` / None, one per example (ragged: each
    fixes only its own frames and levels; the rest of the returned array is 0).
    """
    n, c = valid.shape[1], net.num_columns
    fixed = np.zeros((b, n, c), bool)
    if prompt is None:
        return None, fixed
    if isinstance(prompt, (list, tuple)):
        if len(prompt) != b:
            raise ValueError(f"prompt as a list must hold one array (or None) per example ({b}), got {len(prompt)}")
        prompts = [None if p is None else np.asarray(p) for p in prompt]
    else:
        prompt = np.asarray(prompt)
        if prompt.ndim == 2:
            prompt = np.broadcast_to(prompt, (b,) + prompt.shape)
        if prompt.ndim != 3 or prompt.shape[0] != b:
            raise ValueError(f"prompt must have shape (batch={b}, prompt frames, levels) or (prompt frames, levels), "
                             f"got {np.shape(prompt)}")
        prompts = list(prompt)
    lengths = valid.sum(axis=1)
    for i, p in enumerate(prompts):
        if p is None:
            continue
        where = f"prompt[{i}]" if isinstance(prompt, (list, tuple)) else "prompt"
        if p.ndim != 2:
            raise ValueError(f"{where} must have shape (prompt frames, levels), got {p.shape}")
        if p.shape[1] < 1 or p.shape[1] > c:
            raise ValueError(f"{where} has {p.shape[1]} levels; it may give the first 1 to {c} levels")
        if p.shape[0] < 1:
            raise ValueError(f"{where} must hold at least one frame")
        if p.shape[0] > lengths[i]:
            raise ValueError(f"{where} has {p.shape[0]} frames but the output has only {int(lengths[i])} valid "
                             f"frames (num_frames={n}); the prompt must not be longer than the output")
        validation.check_codes(p[None], codebook_size=net.codebook_size, num_quantizers=p.shape[1], name=where)
        fixed[i, :p.shape[0], :p.shape[1]] = True
    if all(p is None for p in prompts):
        return None, fixed
    frames = max(p.shape[0] for p in prompts if p is not None)
    levels = max(p.shape[1] for p in prompts if p is not None)
    out = np.zeros((b, frames, levels), np.int32)
    for i, p in enumerate(prompts):
        if p is not None:
            out[i, :p.shape[0], :p.shape[1]] = p
    return out, fixed


def model_functions(model, variables, valid, condition, guidance_scale=None, use_critic: bool = False):
    """A ``SoundStorm`` as the sampler sees it: ``(logits_fn, critic_fn, initial carry)`` (see :mod:`.loop`).

    valid ``(b, n)`` bool; condition ``(b, n, d)`` or None; ``guidance_scale``
    a scalar for classifier-free guidance or None; ``critic_fn`` is None unless
    ``use_critic``. With self-conditioning the carry is ``(source (b or 2b, n, d),
    has_source ())``: the previous pass's head-output sum, absent before the first.
    """
    b, n = valid.shape

    def apply(codes, valid, columns, condition, drop, carry):
        source, has_source = (None, None) if carry is None else carry
        logits, source = model.apply(variables, codes, valid, columns, condition, drop, source, has_source,
                                     method=type(model).decode_logits)
        return logits, None if carry is None else (source, jnp.ones((), bool))

    def logits_fn(codes, columns, carry):
        if guidance_scale is None:
            return apply(codes, valid, columns, condition, None, carry)
        # Conditional and unconditional halves in one batch; self-conditioning keeps both histories.
        twice = lambda x: None if x is None else jnp.concatenate([x, x])
        drop = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
        logits, carry = apply(twice(codes), twice(valid), columns, twice(condition), drop, carry)
        conditional, unconditional = logits[:b], logits[b:]
        return unconditional + guidance_scale * (conditional - unconditional), carry

    def critic_fn(codes, columns):
        return model.apply(variables, codes, valid, columns, condition, method=type(model).critic_logits)

    carry = None
    if model.self_cond:
        rows = b * (1 if guidance_scale is None else 2)
        carry = (jnp.zeros((rows, n, model.net.dim), model.net.dtype), jnp.zeros((), bool))
    return logits_fn, critic_fn if use_critic else None, carry


def setup_decoding(model, variables, *, options: SamplingOptions, level_steps, use_guidance: bool, use_critic: bool,
                   codes, valid, fixed, keys, semantic_ids, cond, scalars) -> tuple[Decoder, DecodePlan, DecodeState]:
    """The loop's decoder, read-only plan and starting state (codes all [MASK] but the prompt)."""
    n = codes.shape[1]
    condition = None
    if semantic_ids is not None or cond is not None:
        condition = model.apply(variables, semantic_ids, cond, n, method=type(model).conditioning)
    logits_fn, critic_fn, carry = model_functions(model, variables, valid, condition,
                                                  scalars["guidance_scale"] if use_guidance else None, use_critic)
    decoder = Decoder(logits_fn=logits_fn, mask_id=model.net.mask_id, schedule=get_schedule(model.schedule),
                      options=options, critic_fn=critic_fn)
    plan = DecodePlan(**pass_schedule(level_steps, model.net.grouped_quantizers), valid=valid, fixed=fixed, keys=keys,
                      temperature=scalars["temperature"], choice_temperature=scalars["choice_temperature"],
                      top_p=scalars["top_p"])
    return decoder, plan, DecodeState(codes=codes, carry=carry)


@partial(jax.jit, static_argnames=("model", "options", "level_steps", "use_guidance", "use_critic", "pad_value",
                                   "rules"))
def _program(model, options, level_steps, use_guidance, use_critic, pad_value, variables, codes, valid, fixed, keys,
             semantic_ids, cond, scalars, rules=()):
    """The whole generation: conditioning, every pass, padding. One XLA program.

    `rules` (logical-axis rules, static) turn the model's activation constraints on when it runs on a mesh.
    """
    with nn.logical_axis_rules(rules):
        decoder, plan, state = setup_decoding(model, variables, options=options, level_steps=level_steps,
                                              use_guidance=use_guidance, use_critic=use_critic, codes=codes,
                                              valid=valid, fixed=fixed, keys=keys, semantic_ids=semantic_ids,
                                              cond=cond, scalars=scalars)
        codes = decode(decoder, plan, state).codes
    return jnp.where(valid[:, :, None], codes, pad_value)


def prepare_inputs(model, num_frames: int | None = None, *, key, batch_size: int | None = None,
                   lengths=None, mask=None, prompt=None, semantic_ids=None, cond=None, steps=None,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   choice_temperature: float = 1.0, guidance_scale: float | None = None,
                   use_critic: bool | None = None, seconds: float | None = None,
                   frame_bucket: int | None = DEFAULT_FRAME_BUCKET) -> dict:
    """Validate :func:`generate`'s arguments on the host and build the program's inputs.

    Returns the keyword arguments of :func:`setup_decoding` (after ``model`` and
    ``variables``) plus ``num_frames`` (the requested length, before bucketing).
    """
    net = model.net
    if seconds is not None:
        if model.codec is None:
            raise ValueError("seconds= needs a codec attached to SoundStorm (SoundStorm(net, codec=...)); "
                             "pass num_frames instead")
        if num_frames is not None:
            raise ValueError("give num_frames or seconds, not both")
        if not (np.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a positive number, got {seconds!r}")
        # As the seed: frames = seconds * sample rate // samples per frame.
        num_frames = max(1, int(seconds * model.codec.sample_rate // model.codec.hop_length))
    level_steps = resolve_steps(model.steps if steps is None else steps, net.num_quantizers)
    b, n, valid = _frame_lengths(num_frames, batch_size, lengths, mask, semantic_ids, net)
    prompt, fixed = _prompt_tokens(prompt, b, valid, net)
    if cond is not None:
        validation.check_cond(cond, batch=b, frames=n, dim=net.dim)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                              or not 1 <= top_k <= net.codebook_size):
        raise ValueError(f"top_k must be an int in [1, codebook_size={net.codebook_size}], got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    for name, value in (("temperature", temperature), ("choice_temperature", choice_temperature)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if guidance_scale is not None:
        if model.cond_drop_prob == 0:
            raise ValueError("guidance_scale needs a model trained with conditioning dropout "
                             "(SoundStorm(cond_drop_prob > 0)); this one was not")
        if semantic_ids is None and cond is None:
            raise ValueError("guidance_scale needs conditioning (semantic_ids or cond) to guide towards")
    use_critic = model.self_token_critic if use_critic is None else bool(use_critic)
    if use_critic and not model.self_token_critic:
        raise ValueError("use_critic=True needs a model with a token critic (SoundStorm(self_token_critic=True))")
    keys = _example_keys(key, b)

    bucket = max(int(frame_bucket or 1), 1)
    padded_n = int(math.ceil(n / bucket) * bucket)
    pad = padded_n - n
    valid = np.pad(valid, ((0, 0), (0, pad)))
    fixed = np.pad(fixed, ((0, 0), (0, pad), (0, 0)))
    codes = np.full((b, padded_n, net.num_columns), net.mask_id, np.int32)
    if prompt is not None:  # Only the fixed tokens: a ragged prompt's zeros elsewhere stay [MASK].
        region = codes[:, :prompt.shape[1], :prompt.shape[2]]
        codes[:, :prompt.shape[1], :prompt.shape[2]] = np.where(fixed[:, :prompt.shape[1], :prompt.shape[2]],
                                                                prompt, region)
    if cond is not None and np.ndim(cond) == 3:
        cond = jnp.pad(jnp.asarray(cond), ((0, 0), (0, pad), (0, 0)))

    options = SamplingOptions(top_k=None if top_k is None else int(top_k), use_top_p=top_p is not None)
    scalars = {name: jnp.asarray(value, jnp.float32) for name, value in (
        ("temperature", temperature), ("choice_temperature", choice_temperature),
        ("top_p", 1.0 if top_p is None else top_p), ("guidance_scale", 1.0 if guidance_scale is None else guidance_scale))}
    return dict(options=options, level_steps=level_steps, use_guidance=guidance_scale is not None,
                use_critic=use_critic, codes=jnp.asarray(codes), valid=jnp.asarray(valid),
                fixed=jnp.asarray(fixed), keys=keys,
                semantic_ids=None if semantic_ids is None else jnp.asarray(semantic_ids, jnp.int32), cond=cond,
                scalars=scalars, num_frames=n)


@partial(jax.jit, static_argnames=("model",))
def _decode_audio(model, variables, codes):
    return model.apply(variables, codes, method=type(model).decode_audio)


def generate(model, variables, num_frames: int | None = None, *, pad_value: int = -1, decode_audio=None,
             return_codes: bool = False, output_dir=None, file_prefix: str = "sample", mesh=None, rules=None,
             **options):
    """Generate codes ``(batch, frames, levels)`` with a trained :class:`SoundStorm`.

    With a codec attached (and ``decode_audio`` not False) returns a list of
    float32 waveforms, one per example, trimmed to its length (valid frames x
    hop); ``return_codes=True`` returns ``(waveforms, codes)``. With
    ``output_dir`` the waveforms are written there instead, as 16-bit WAVs
    ``{file_prefix}_000.wav``, ``..._001.wav``, ..., and the list of paths is
    returned in their place.

    Options (keyword arguments of :func:`prepare_inputs`, which checks them):
      model, variables: the ``SoundStorm`` module and its variables.
      num_frames: output length in codec frames (or implied by ``semantic_ids`` or ``mask``).
      key: a PRNG key, or one key per example ``(b,)``; example ``i`` uses only
        its own key, so a batch decodes exactly like its examples one by one.
      batch_size, lengths, mask: batch size and per-example lengths (or a frame
        mask, True = valid, valid frames first: a mask with left padding or
        holes is a ``ValueError``); padded frames come back as ``pad_value``.
      prompt: acoustic prompt codes ``(b, P, Qp)`` or ``(P, Qp)`` for the first
        ``P`` frames and first ``Qp`` levels, kept bit for bit; or a list of
        one ``(P_i, Qp_i)`` array (or None) per example.
      semantic_ids: ``(b, m)`` conditioning tokens (pad = the net's
        ``semantic_pad_id``); their length sets ``num_frames`` when not given.
      cond: precomputed conditioning ``(b, n, d)`` or ``(b, d)``.
      steps: override the model's ``steps`` (int or one per level).
      temperature: sampling temperature of a level's first pass; pass ``s`` of
        ``S`` samples at ``temperature * (1 - s / (S - 1))``, so the last pass
        is greedy, and a one-pass level is greedy.
      top_k, top_p: filtering before sampling: exactly the ``k`` most likely
        tokens (ties broken towards the lower id); the smallest set of most
        likely tokens whose mass reaches ``top_p`` (``top_p=1`` keeps all).
      choice_temperature: scale of the Gumbel noise on the confidences
        (MaskGIT), annealed like ``temperature``.
      guidance_scale: classifier-free guidance; needs a model trained with
        ``cond_drop_prob > 0`` and some conditioning. 1 = conditional only.
      use_critic: rank by the token critic (default: when the model has one).
      seconds: length in seconds; needs a codec.
      frame_bucket: frames are padded up to a multiple of this for compilation
        reuse (None or 1: exact length).
      pad_value: what padded frames hold in the output.
      mesh: a ``jax.sharding.Mesh`` with axes ``('data', 'fsdp', 'tensor')``
        (``training.sharding.make_mesh``) to generate on: the batch is split
        over the axes ``'batch'`` maps to, parameters follow the training
        rules (see :mod:`.mesh`); None: one device.
      rules: logical-axis rules for ``mesh`` (default: the training configs').
    """
    if output_dir is not None and (model.codec is None or decode_audio is False):
        raise ValueError("output_dir= writes audio files: it needs a codec attached to SoundStorm "
                         "(SoundStorm(net, codec=...)) and decode_audio not False")
    inputs = prepare_inputs(model, num_frames, **options)
    n = inputs.pop("num_frames")
    if decode_audio and model.codec is None:
        raise ValueError("decode_audio=True needs a codec attached to SoundStorm")
    if output_dir is not None:  # An unwritable folder fails before the program runs.
        from soundstorm_jax.data.audio_io import make_output_dir, write_waveforms
        make_output_dir(output_dir)
    if mesh is None:
        codes = _program(model, pad_value=int(pad_value), variables=variables, **inputs)[:, :n]
    else:
        from soundstorm_jax.sampler import mesh as mesh_lib
        rules = mesh_lib.default_rules() if rules is None else sharding_rules(rules)
        variables, inputs, b = mesh_lib.place_on_mesh(model, variables, inputs, mesh, rules)
        with jax.set_mesh(mesh):
            codes = _program(model, pad_value=int(pad_value), variables=variables, rules=rules, **inputs)
        codes = codes[:b, :n]
        inputs["valid"] = inputs["valid"][:b]
    if model.codec is None or decode_audio is False:
        return codes
    audio = np.asarray(_decode_audio(model, variables, codes))
    lengths = np.asarray(inputs["valid"])[:, :n].sum(axis=1) * model.codec.hop_length
    waveforms = [audio[i, :length] for i, length in enumerate(lengths)]
    if output_dir is not None:
        waveforms = write_waveforms(waveforms, output_dir, model.codec.sample_rate, prefix=file_prefix)
    return (waveforms, codes) if return_codes else waveforms


def sharding_rules(rules) -> tuple:
    from soundstorm_jax.training.sharding import rules_from_config
    return rules_from_config(rules)


def _example_keys(key, b: int) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == ():
            return jax.random.split(key, b)
        if key.shape == (b,):
            return key
    elif key.dtype == jnp.uint32:
        if key.shape == (2,):
            return jax.random.split(key, b)
        if key.shape == (b, 2):
            return key
    raise ValueError(f"key must be one PRNG key or one per example ({b}), got shape {key.shape} dtype {key.dtype}")
