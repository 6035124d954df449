"""Held-out accuracy per level (what the demo reports) and its unigram baseline."""
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax import SoundStorm
from soundstorm_jax.maskgit.evaluation import accuracy_table, level_accuracy, unigram_accuracy
from tiny import init_model, random_codes, tiny_net

K, Q, SEMANTIC = 16, 3, 7


@pytest.fixture(scope="module")
def model_and_variables():
    model = SoundStorm(tiny_net(K, Q, num_semantic_token_ids=SEMANTIC, acoustic_per_semantic=1.0), steps=2)
    codes = random_codes(0, (1, 8, Q), K)
    variables = init_model(model, codes, semantic_ids=np.zeros((1, 8), np.int32))
    return model, variables


def _by_hand(model, variables, codes, semantic, prompt_frames):
    """One unpadded example, level by level, straight through decode_logits -> (hits (Q,), counts (Q,))."""
    net, n = model.net, codes.shape[0]
    condition = model.apply(variables, jnp.asarray(semantic[None]), None, n, method=SoundStorm.conditioning)
    hits, counts = np.zeros(Q, int), np.zeros(Q, int)
    for q in range(Q):
        inputs = codes.copy()[None]
        inputs[:, prompt_frames:, q:] = net.mask_id
        logits, _ = model.apply(variables, jnp.asarray(inputs), jnp.ones((1, n), bool), jnp.array([q]),
                                condition, method=SoundStorm.decode_logits)
        guess = np.asarray(jnp.argmax(logits[0, :, 0], axis=-1))
        hits[q] = int((guess[prompt_frames:] == codes[prompt_frames:, q]).sum())
        counts[q] = n - prompt_frames
    return hits, counts


def test_batched_padded_accuracy_equals_examples_scored_one_by_one(model_and_variables):
    model, variables = model_and_variables
    rng = np.random.default_rng(1)
    examples = [dict(codes=random_codes(10 + i, (n, Q), K), semantic_ids=rng.integers(0, SEMANTIC, n))
                for i, n in enumerate((9, 14, 5))]
    got = level_accuracy(model, variables, examples, prompt_frames=3, batch_size=2, frame_multiple=8)
    hits, counts = np.zeros(Q), np.zeros(Q)
    for e in examples:
        h, c = _by_hand(model, variables, e["codes"], e["semantic_ids"], 3)
        hits, counts = hits + h, counts + c
    np.testing.assert_allclose(got, hits / counts, rtol=1e-6)
    assert got.shape == (Q,) and np.all((0 <= got) & (got <= 1))


def test_prompt_frames_are_not_scored_and_a_too_long_prompt_is_an_error(model_and_variables):
    model, variables = model_and_variables
    codes = random_codes(3, (6, Q), K)
    example = dict(codes=codes, semantic_ids=np.zeros(6, np.int32))
    # Changing the truth inside the prompt can change the inputs, but a prompt of all frames scores nothing.
    with pytest.raises(ValueError, match="prompt_frames"):
        level_accuracy(model, variables, [example], prompt_frames=6)
    with pytest.raises(ValueError, match="at least one example"):
        level_accuracy(model, variables, [], prompt_frames=0)


def test_unigram_accuracy_predicts_each_levels_most_frequent_training_code():
    train = [np.array([[1, 2], [1, 3], [4, 3]]), np.array([[1, 3]])]  # level 0: code 1; level 1: code 3
    held_out = [np.array([[0, 0], [1, 3], [1, 0], [2, 3]])]
    got = unigram_accuracy(train, held_out, num_quantizers=2, codebook_size=5, prompt_frames=1)
    np.testing.assert_allclose(got, [2 / 3, 2 / 3])  # frames 1..3: each level hits twice
    # Grouped columns (g * Q + q) count towards their level.
    grouped = unigram_accuracy([np.array([[1, 2, 1, 2]])], [np.array([[1, 0, 0, 2]])], num_quantizers=2,
                               codebook_size=3)
    np.testing.assert_allclose(grouped, [0.5, 0.5])
    rows = accuracy_table(np.array([0.5, 0.2]), got)
    assert rows[0] == dict(level=1, accuracy=0.5, unigram=2 / 3, ratio=0.75)
