"""The demasking sampler: exact schedule, prompts, padding, determinism, one compiled program."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from soundstorm_jax import SoundStorm
from soundstorm_jax.maskgit.schedules import cosine_schedule
from soundstorm_jax.maskgit.schedules import linear_schedule
from soundstorm_jax.sampler import Decoder, DecodePlan, DecodeState, decode, decode_pass, generate, \
    lowest_confidence, pass_schedule, top_k_filter, top_p_filter
from soundstorm_jax.sampler.generate import _program, prepare_inputs, setup_decoding
from tiny import init_model, padding_mask, random_codes, tiny_net

MASK = 16


@pytest.fixture(scope="module")
def trained_free():
    """A tiny untrained model and its variables (decoding logic does not need a good model)."""
    model = SoundStorm(tiny_net(), steps=5)
    return model, init_model(model, random_codes(0, (1, 8, 3)))


def run_pass_by_pass(model, variables, **kwargs):
    """Decode with the loop body called from Python, returning the state after every pass."""
    inputs = prepare_inputs(model, **kwargs)
    n = inputs.pop("num_frames")
    decoder, plan, state = setup_decoding(model, variables, **inputs)
    step = jax.jit(lambda st, i: decode_pass(decoder, plan, st, i))
    states = [state]
    for i in range(plan.pass_level.shape[0]):
        states.append(step(states[-1], i))
    return plan, inputs, n, states


def test_every_pass_follows_the_schedule_and_commits_for_good(trained_free):
    model, variables = trained_free
    lengths = np.array([20, 13])
    prompt = random_codes(1, (2, 3, 3))
    plan, inputs, n, states = run_pass_by_pass(model, variables, num_frames=20, lengths=lengths, prompt=prompt,
                                               key=jax.random.key(0), frame_bucket=None)
    levels, steps, totals = map(np.asarray, (plan.pass_level, plan.pass_step, plan.pass_total))
    assert list(levels) == [0] * 5 + [1, 2] and list(totals) == [5] * 5 + [1, 1]
    valid = np.asarray(plan.valid)
    for i in range(len(levels)):
        before, after = np.asarray(states[i].codes), np.asarray(states[i + 1].codes)
        q, s, total = levels[i], steps[i], totals[i]
        decodable = valid & (np.arange(20)[None, :] >= 3)           # the prompt covers every level
        masked_at_q = (after[:, :, q] == MASK) & decodable
        # floor(schedule((s + 1) / S) * N), the ratio clipped to [0, 1] (cos(pi/2) is -4e-8 in fp32).
        ratio = np.clip(np.float32(cosine_schedule(jnp.float32((s + 1) / total))), 0, 1)
        expected = np.floor(ratio * decodable.sum(axis=1).astype(np.float32)).astype(int)
        np.testing.assert_array_equal(masked_at_q.sum(axis=1), expected, err_msg=f"pass {i}")
        committed = before != MASK
        np.testing.assert_array_equal(after[committed], before[committed], err_msg="a committed token changed")
        np.testing.assert_array_equal(after[:, :3], prompt, err_msg="the prompt changed")
        assert np.all(after[~valid] == MASK), "a padded frame was sampled"
        assert np.all(after[:, 3:, q + 1:][valid[:, 3:]] == MASK), "a level above the current one was filled"
    final = np.asarray(states[-1].codes)
    assert not np.any(final[valid] == MASK)


def test_generate_equals_the_pass_by_pass_loop_and_pads(trained_free):
    model, variables = trained_free
    kwargs = dict(num_frames=20, lengths=np.array([20, 13]), key=jax.random.key(3), frame_bucket=None)
    _, _, _, states = run_pass_by_pass(model, variables, **kwargs)
    out = np.asarray(generate(model, variables, pad_value=-7, **kwargs))
    expected = np.where(np.asarray(states[0].codes) == 0, 0, np.asarray(states[-1].codes))
    valid = np.arange(20)[None, :] < np.array([[20], [13]])
    np.testing.assert_array_equal(out[valid], expected[valid])
    assert np.all(out[~valid] == -7)
    assert out.min() >= 0 or np.all(out[out < 0] == -7)
    assert not np.any(out == MASK)


def test_same_key_same_output_and_batch_equals_examples_alone(trained_free):
    model, variables = trained_free
    keys = jax.random.split(jax.random.key(11), 2)
    lengths = np.array([24, 17])
    kwargs = dict(num_frames=24, temperature=1.0, top_k=8)
    batch = np.asarray(generate(model, variables, key=keys, lengths=lengths, **kwargs))
    again = np.asarray(generate(model, variables, key=keys, lengths=lengths, **kwargs))
    np.testing.assert_array_equal(batch, again)
    other = np.asarray(generate(model, variables, key=jax.random.split(jax.random.key(12), 2), lengths=lengths,
                                **kwargs))
    assert not np.array_equal(batch, other)
    for i in range(2):
        alone = np.asarray(generate(model, variables, key=keys[i:i + 1], lengths=lengths[i:i + 1], **kwargs))
        np.testing.assert_array_equal(alone[0], batch[i])


def test_one_compiled_program_per_bucket(trained_free):
    model, variables = trained_free
    before = _program._cache_size()
    for frames in (40, 50, 64):  # one bucket of 64 frames
        generate(model, variables, frames, batch_size=1, key=jax.random.key(frames))
    assert _program._cache_size() - before == 1
    # The passes are one loop in the program (fori_loop with static bounds lowers to a scan):
    # the loop runs once per pass and its body does not grow with the number of passes.
    bodies = []
    for steps, passes in ((2, 4), (9, 11)):
        inputs = prepare_inputs(model, 16, batch_size=1, key=jax.random.key(0), steps=steps)
        inputs.pop("num_frames")
        program = lambda v, c: _program.__wrapped__(model, pad_value=-1, variables=v, **dict(inputs, codes=c))
        jaxpr = jax.make_jaxpr(program)(variables, inputs["codes"]).jaxpr
        loops = [eqn for eqn in jaxpr.eqns if eqn.primitive.name in ("scan", "while")]
        assert len(loops) == 1
        assert loops[0].params["length"] == passes
        bodies.append(len(loops[0].params["jaxpr"].jaxpr.eqns))
    assert bodies[0] == bodies[1]


def test_partial_prompt_keeps_its_levels_and_decodes_the_rest(trained_free):
    model, variables = trained_free
    prompt = random_codes(4, (5, 1))            # first 5 frames, first level only
    out = np.asarray(generate(model, variables, 12, batch_size=2, prompt=prompt, key=jax.random.key(1)))
    np.testing.assert_array_equal(out[:, :5, :1], np.broadcast_to(prompt, (2, 5, 1)))
    assert np.all((out >= 0) & (out < MASK))


def test_greedy_decoding_of_an_overfit_model_reproduces_its_sequence():
    k, n = 8, 16
    net = tiny_net(codebook_size=k, num_quantizers=2, num_semantic_token_ids=n, conformer=dict(depth=1))
    model = SoundStorm(net, steps=4)
    codes = random_codes(5, (1, n, 2), k)
    semantic = np.arange(n)[None]
    variables = init_model(model, codes, semantic_ids=semantic)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(variables)

    @jax.jit
    def train(variables, opt_state, key):
        grads = jax.grad(lambda v: model.apply(v, codes, semantic_ids=semantic, rngs={"masking": key})[0])(variables)
        updates, opt_state = optimizer.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    for i in range(200):
        variables, opt_state = train(variables, opt_state, jax.random.key(i))
    out = generate(model, variables, semantic_ids=semantic, temperature=0.0, choice_temperature=0.0,
                   key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out), codes)


@pytest.mark.parametrize("options", [
    dict(self_cond=True),
    dict(self_token_critic=True),
    dict(cond_drop_prob=0.2, net=dict(num_semantic_token_ids=10, acoustic_per_semantic=2.0)),
    dict(net=dict(grouped_quantizers=2)),
])
def test_sampler_options_run(options):
    options = dict(options)
    net = tiny_net(**options.pop("net", {}))
    model = SoundStorm(net, steps=3, **options)
    semantic = np.array([[1, 2, 3, 4, 5], [6, 7, 8, -1, -1]]) if net.num_semantic_token_ids else None
    variables = init_model(model, random_codes(0, (2, 10, net.num_columns)), semantic_ids=semantic)
    kwargs = dict(key=jax.random.key(0), top_p=0.9)
    if semantic is not None:
        out = generate(model, variables, semantic_ids=semantic, guidance_scale=3.0, **kwargs)
        assert out.shape == (2, 10, 3)
        assert np.all(np.asarray(out[1, 6:]) == -1)     # 3 valid tokens -> 6 frames
        assert np.all(np.asarray(out[0]) >= 0)
    else:
        out = generate(model, variables, 10, batch_size=2, **kwargs)
        assert out.shape == (2, 10, net.num_columns) and np.all((np.asarray(out) >= 0) & (np.asarray(out) < 16))


def test_the_loop_needs_only_a_logits_function():
    """No model: logits that favour column + frame (mod K) are decoded greedily; the carry counts the passes."""
    b, n, c, k = 2, 6, 3, 8
    target = (np.arange(n)[:, None] + np.arange(c)[None, :]) % k                      # (n, c)
    seen_columns = []

    def logits_fn(codes, columns, passes):
        seen_columns.append(columns.shape)
        logits = 5.0 * jax.nn.one_hot(jnp.asarray(target)[:, columns], k)             # (n, g, K)
        return jnp.broadcast_to(logits, (b,) + logits.shape), passes + 1

    decoder = Decoder(logits_fn=logits_fn, mask_id=k, schedule=linear_schedule)
    plan = DecodePlan(**pass_schedule((3, 2, 1)), valid=jnp.asarray(padding_mask([6, 4], n)),
                      fixed=jnp.zeros((b, n, c), bool), keys=jax.random.split(jax.random.key(0), b),
                      temperature=jnp.float32(0.0), choice_temperature=jnp.float32(0.0), top_p=jnp.float32(1.0))
    state = jax.jit(lambda p, s: decode(decoder, p, s))(plan, DecodeState(codes=jnp.full((b, n, c), k), carry=0))
    codes = np.asarray(state.codes)
    np.testing.assert_array_equal(codes[0], target)
    np.testing.assert_array_equal(codes[1, :4], target[:4])
    assert np.all(codes[1, 4:] == k), "padded frames stay [MASK]"
    assert int(state.carry) == 6 and seen_columns == [(1,)]   # traced once, in the loop body


def test_filters_and_ranking():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(np.asarray(top_k_filter(logits, 2))).tolist() == [[True, True, True, True]]
    kept = np.asarray(top_k_filter(logits, 2)) > -1e29
    assert kept.tolist() == [[True, True, False, False]]
    assert (np.asarray(top_p_filter(logits, 0.7)) > -1e29).tolist() == [[True, True, False, False]]
    assert (np.asarray(top_p_filter(logits, 0.1)) > -1e29).tolist() == [[True, False, False, False]]
    assert (np.asarray(top_p_filter(logits, 1.0)) > -1e29).all()
    confidence = jnp.array([[0.9, 0.1, 0.5, 0.2, 0.05]])
    candidates = jnp.array([[True, True, True, True, False]])
    chosen = lowest_confidence(confidence, candidates, jnp.array([2]))
    assert np.asarray(chosen).tolist() == [[False, True, False, True, False]]


BAD = [
    (dict(steps=0), "steps must be a positive"),
    (dict(steps=(4, 1)), "steps has 2 entries"),
    (dict(prompt=np.zeros((13, 3), np.int32)), "longer than the output"),
    (dict(prompt=np.zeros((4, 4), np.int32)), "prompt has 4 levels"),
    (dict(prompt=np.full((4, 3), 16)), "prompt must lie in \\[0, 16\\)"),
    (dict(top_p=0.0), "top_p must lie in \\(0, 1\\]"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(guidance_scale=2.0), "conditioning dropout"),
    (dict(seconds=2.0), "needs a codec"),
    (dict(lengths=np.array([13, 4])), "lengths must lie in"),
    (dict(use_critic=True), "token critic"),
    (dict(temperature=-1.0), "temperature"),
    (dict(key=jax.random.split(jax.random.key(0), 3)), "one per example"),
]


@pytest.mark.parametrize("bad, message", BAD)
def test_bad_generation_arguments(trained_free, bad, message):
    model, variables = trained_free
    args = dict(num_frames=12, batch_size=2, key=jax.random.key(0))
    args.update(bad)
    before = _program._cache_size()
    with pytest.raises(ValueError, match=message):
        generate(model, variables, **args)
    assert _program._cache_size() == before, "nothing may compile before the error"
