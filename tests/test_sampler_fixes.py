"""Issue 12's correctness fixes of the objective, the sampler and the semantic conditioning, one test each."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax import SoundStorm
from soundstorm_jax.codec import SoundStream
from soundstorm_jax.sampler import anneal, generate, top_k_filter, top_p_filter
from tiny import init_model, padding_mask, random_codes, tiny_net

K, MASK = 16, 16


# ---- fix 1: padded frames may hold any integer ------------------------------------------------

def test_padded_frames_may_hold_any_integer_eagerly_and_under_jit():
    # Self-conditioning and the critic: every path that reads the codes.
    model = SoundStorm(tiny_net(conformer=dict(depth=1)), steps=4, self_cond=True, self_token_critic=True)
    codes = random_codes(0, (2, 10, 3))
    mask = padding_mask([10, 6], 10)
    variables = init_model(model, codes, mask)
    rngs = {"masking": jax.random.key(3)}

    def padded_with(value):
        out = codes.copy()
        out[1, 6:] = value
        return out

    eager = lambda c: model.apply(variables, c, mask, rngs=rngs)  # noqa: E731
    jitted = jax.jit(lambda c: model.apply(variables, c, mask, rngs=rngs))
    for run in (eager, jitted):
        loss, metrics = run(padded_with(0))
        assert np.isfinite(float(loss))
        for value in (K, 99):
            other_loss, other_metrics = run(padded_with(value))
            assert float(other_loss) == float(loss), f"pad {value}"
            for name, metric in metrics.items():
                assert np.all(np.isfinite(np.asarray(other_metrics[name]))), f"{name} with pad {value}"
                np.testing.assert_array_equal(other_metrics[name], metric, err_msg=f"{name} with pad {value}")


# ---- fix 2: a schedule above zero at t = 1 still decodes every token ---------------------------

@pytest.mark.parametrize("schedule", [lambda t: 0.5 + 0 * t, lambda t: 1 - t / 2])
def test_a_schedule_above_zero_at_the_end_still_leaves_no_mask(schedule):
    model = SoundStorm(tiny_net(), steps=(3, 2, 1), schedule=schedule)
    variables = init_model(model, random_codes(0, (1, 8, 3)))
    out = np.asarray(generate(model, variables, 12, lengths=[12, 9], key=jax.random.key(0)))
    valid = padding_mask([12, 9], 12)
    assert not np.any(out[valid] == MASK)
    assert np.all((out[valid] >= 0) & (out[valid] < K))


# ---- fix 3: masks must be a prefix of valid frames ---------------------------------------------

NOT_A_PREFIX = {
    "left padding": np.array([[True] * 8, [False, False] + [True] * 6]),
    "a hole": np.array([[True] * 8, [True] * 3 + [False] + [True] * 4]),
}


@pytest.mark.parametrize("name", sorted(NOT_A_PREFIX))
def test_masks_that_are_not_a_prefix_are_refused_by_every_entry_point(name):
    mask = NOT_A_PREFIX[name]
    model = SoundStorm(tiny_net(), steps=2)
    codes = random_codes(0, (2, 8, 3))
    message = "mask must mark a prefix of valid frames"
    with pytest.raises(ValueError, match=message):
        model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, codes, mask)
    with pytest.raises(ValueError, match=message):
        model.check_inputs(codes, mask)
    variables = init_model(model, codes)
    with pytest.raises(ValueError, match=message):
        model.apply(variables, codes, mask, rngs={"masking": jax.random.key(2)})
    with pytest.raises(ValueError, match=message):
        generate(model, variables, mask=mask, key=jax.random.key(0))
    # The raw-audio path checks the frame mask the same way.
    codec = SoundStream(codebook_size=K, rq_num_quantizers=3, strides=(2, 2), channels=4, dim=16,
                        target_sample_hz=400)
    with pytest.raises(ValueError, match=message):
        SoundStorm(tiny_net(), codec=codec).check_inputs(np.zeros((2, 32), np.float32), mask)


def test_a_prefix_mask_is_accepted_everywhere():
    model = SoundStorm(tiny_net(), steps=2)
    codes = random_codes(0, (2, 8, 3))
    mask = padding_mask([8, 5], 8)
    variables = init_model(model, codes, mask)
    model.check_inputs(codes, mask)
    out = np.asarray(generate(model, variables, mask=mask, key=jax.random.key(0)))
    assert np.all(out[~mask] == -1) and np.all(out[mask] >= 0)


# ---- fix 5: semantic resampling does not depend on padding -------------------------------------

@pytest.mark.parametrize("rate", [1.5, 2.0, 0.5, 0.75])
def test_semantic_conditioning_does_not_depend_on_how_much_padding_follows(rate):
    net = tiny_net(num_semantic_token_ids=10, acoustic_per_semantic=rate, semantic_pad_id=-1)
    tokens = np.array([3, 1, 4, 1, 5])
    frames = 12
    params = jax.jit(lambda: net.init(jax.random.key(0), random_codes(0, (1, frames, 3)),
                                      semantic_ids=tokens[None]))()
    condition = jax.jit(lambda p, s: net.apply(p, s, frames, method="semantic_condition"))
    alone = np.asarray(condition(params, tokens[None]))
    covered = int(np.ceil(len(tokens) * rate - 1e-9))
    assert np.all(np.abs(alone[0, :min(covered, frames)]).sum(-1) > 0)
    for total in (6, 7, 9, 16):
        padded = np.full((1, total), -1)
        padded[0, :len(tokens)] = tokens
        np.testing.assert_array_equal(np.asarray(condition(params, padded)), alone, err_msg=f"{total} tokens")


def test_training_and_generation_from_semantic_ids_do_not_depend_on_their_padding():
    net = tiny_net(num_semantic_token_ids=10, acoustic_per_semantic=1.5)
    model = SoundStorm(net, steps=2)
    tokens = np.array([[3, 1, 4, 1, 5, 9]])
    codes = random_codes(0, (1, 9, 3))
    variables = init_model(model, codes, semantic_ids=tokens)
    loss = jax.jit(lambda s: model.apply(variables, codes, semantic_ids=s, rngs={"masking": jax.random.key(2)})[0])
    losses, outputs = [], []
    for total in (6, 7, 10):
        ids = np.full((1, total), -1)
        ids[:, :6] = tokens
        losses.append(float(loss(ids)))
        outputs.append(np.asarray(generate(model, variables, 9, semantic_ids=ids, lengths=[9],
                                           key=jax.random.key(1))))
    assert losses[1:] == losses[:1] * 2
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


# ---- fix 6: top_p = 1 keeps every token, top_k keeps exactly k ---------------------------------

def test_top_p_of_one_keeps_every_token_even_when_the_tail_rounds_away():
    # The first token holds all but ~1e-10 of the mass: in fp32 the cumulative mass reaches 1 after it.
    logits = jnp.concatenate([jnp.zeros((1, 1)), jnp.full((1, 1023), -30.0)], axis=-1)
    assert np.all(np.asarray(top_p_filter(logits, 1.0)) == np.asarray(logits))
    kept = np.asarray(top_p_filter(logits, 0.5)) > -1e29
    assert kept.sum() == 1 and kept[0, 0]


def test_top_k_keeps_exactly_k_tokens_when_logits_tie():
    logits = jnp.array([[0.0, 2.0, 1.0, 1.0, 1.0, -1.0]])
    kept = np.asarray(top_k_filter(logits, 2)) > -1e29
    # The largest, then the tie at 1.0 broken towards the lowest token id (as lax.top_k).
    assert kept.tolist() == [[False, True, True, False, False, False]]
    everything_ties = jnp.zeros((3, 4, 16))
    assert np.all((np.asarray(top_k_filter(everything_ties, 5)) > -1e29).sum(-1) == 5)


# ---- fix 7: the first pass samples at exactly the given temperature ----------------------------

def constant_logits_variables(model, variables, level_logits):
    """Variables whose every level predicts ``level_logits (K,)`` whatever the input."""
    params = nn.unbox(variables)["params"]
    net = dict(params["net"])
    net["logits_kernel"] = jnp.zeros_like(net["logits_kernel"])
    net["logits_bias"] = jnp.broadcast_to(jnp.asarray(level_logits, jnp.float32), net["logits_bias"].shape)
    return {"params": dict(params, net=net)}


def test_the_first_pass_of_a_level_samples_at_the_given_temperature():
    # Token 0 is ln(15) above the 15 others: at temperature 1 it is drawn half the time; at 0.5 (the old
    # temperature * (1 - 1/S) for S = 2) 94% of the time. A schedule of 0 commits every sample of the first pass.
    model = SoundStorm(tiny_net(), steps=(2, 1, 1), schedule=lambda t: 0 * t)
    variables = init_model(model, random_codes(0, (1, 8, 3)))
    variables = constant_logits_variables(model, variables, np.r_[np.log(15.0), np.zeros(K - 1)])
    out = np.asarray(generate(model, variables, 256, batch_size=4, temperature=1.0, choice_temperature=0.0,
                              key=jax.random.key(0)))
    share_of_token_0 = np.mean(out[:, :, 0] == 0)
    assert 0.44 < share_of_token_0 < 0.56, share_of_token_0
    # Later (one-pass) levels are greedy.
    assert np.all(out[:, :, 1:] == 0)


def test_the_annealing_factor_is_one_at_a_levels_first_pass_and_zero_at_its_last():
    steps = jnp.array([0, 1, 2, 0, 3, 0])
    totals = jnp.array([3, 3, 3, 1, 4, 2])
    np.testing.assert_allclose(anneal(steps, totals), [1.0, 0.5, 0.0, 0.0, 0.0, 1.0])
