"""The training mask follows the paper exactly, example by example, over many seeds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax.maskgit import column_levels, draw_training_mask, get_schedule, masked_inputs
from soundstorm_jax.maskgit.schedules import cosine_schedule, linear_schedule, masked_count
from tiny import padding_mask, random_codes

MASK_ID = 16
NUM_SEEDS = 300


def draws(mask, levels, groups, schedule="cosine"):
    fn = jax.jit(jax.vmap(lambda key: draw_training_mask(key, mask, levels, groups, get_schedule(schedule))))
    return jax.device_get(fn(jax.random.split(jax.random.key(0), NUM_SEEDS)))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_target_counts_follow_the_schedule_exactly(groups, schedule):
    lengths = np.array([20, 13, 1, 7])
    mask = jnp.asarray(padding_mask(lengths, 20))
    d = draws(mask, levels=3, groups=groups, schedule=schedule)
    eligible = (lengths[None, :] - d.prompt_end) * groups                       # (seeds, b)
    expected = np.maximum(np.floor(d.ratio * eligible.astype(np.float32)).astype(np.int32), 1)
    np.testing.assert_array_equal(d.num_targets, expected)
    np.testing.assert_array_equal(d.targets.sum(axis=(2, 3)), expected)
    # Prompt boundaries leave at least one frame; the one-frame example has no prompt.
    assert np.all(d.prompt_end < lengths) and np.all(d.prompt_end[:, 2] == 0)
    frames = np.arange(20)[None, None, :, None]
    assert not np.any(d.targets & (frames < d.prompt_end[:, :, None, None])), "a prompt frame was a target"
    assert not np.any(d.targets & ~np.asarray(mask)[None, :, :, None]), "a padded frame was a target"


def test_draws_are_per_example_and_cover_the_ranges():
    mask = jnp.ones((8, 16), bool)
    d = draws(mask, levels=4, groups=1)
    assert set(np.unique(d.level)) == {0, 1, 2, 3}
    # Examples of one batch draw different levels and boundaries (the reference shares them).
    assert np.mean(np.all(d.level == d.level[:, :1], axis=1)) < 0.05
    assert np.mean(np.all(d.prompt_end == d.prompt_end[:, :1], axis=1)) < 0.05
    assert set(np.unique(d.prompt_end)) == set(range(16))
    # Cosine ratio of a uniform time: mean 2/pi.
    assert abs(d.ratio.mean() - 2 / np.pi) < 0.02


@pytest.mark.parametrize("groups", [1, 2])
def test_masked_inputs_hide_exactly_the_right_tokens(groups):
    levels, n = 3, 12
    lengths = np.array([12, 8])
    mask = jnp.asarray(padding_mask(lengths, n))
    codes = random_codes(0, (2, n, levels * groups))
    fn = jax.jit(jax.vmap(lambda key: masked_inputs(
        codes, mask, draw_training_mask(key, mask, levels, groups, cosine_schedule),
        jnp.full((2, n, groups), MASK_ID), MASK_ID, levels, groups)))
    keys = jax.random.split(jax.random.key(1), 100)
    inputs = np.asarray(fn(keys))
    d = jax.device_get(jax.vmap(lambda key: draw_training_mask(key, mask, levels, groups, cosine_schedule))(keys))
    col_level = np.asarray(column_levels(levels, groups))
    for s in range(100):
        for b in range(2):
            q, t, valid = d.level[s, b], d.prompt_end[s, b], lengths[b]
            x = inputs[s, b]
            assert np.all(x[valid:] == MASK_ID), "padding must be [MASK]"
            np.testing.assert_array_equal(x[:t], codes[b, :t], err_msg="prompt must be visible")
            lower, at, upper = col_level < q, col_level == q, col_level > q
            np.testing.assert_array_equal(x[:valid][:, lower], codes[b, :valid][:, lower])
            assert np.all(x[t:valid][:, upper] == MASK_ID), "levels above q must be [MASK] after the prompt"
            hidden = np.repeat(d.targets[s, b], levels, axis=1)[:, at]
            np.testing.assert_array_equal(x[:valid][:, at] == MASK_ID, hidden[:valid])
            np.testing.assert_array_equal(x[:valid][:, at][~hidden[:valid]], codes[b, :valid][:, at][~hidden[:valid]])


def test_schedules():
    t = jnp.linspace(0, 1, 5)
    np.testing.assert_allclose(cosine_schedule(t), np.cos(np.pi * np.asarray(t) / 2), atol=1e-7)
    np.testing.assert_allclose(linear_schedule(t), 1 - np.asarray(t))
    assert get_schedule(jnp.square) is jnp.square
    with pytest.raises(ValueError, match="schedule"):
        get_schedule("exponential")
    # Counts reach zero at the end and never exceed the total, even for an overshooting schedule.
    assert int(masked_count(cosine_schedule, 1.0, 37)) == 0
    assert int(masked_count(lambda t: 2.0 - t, 0.0, 37)) == 37
