"""One short codec training run, shared by several tests.

Compiling is the expensive part on CPU, so the training run (init + one compiled
step + a few dozen updates) happens once per session and its final state serves
the training, round-trip, causality and bad-input tests.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec_test_utils import (TRAIN_BATCH, TRAIN_SAMPLES, TRAIN_STEPS, compile_for_test, simple_audio,
                              tiny_train_config)
from soundstorm_jax.codec import codec_eval_step, codec_train_step, init_codec_train_state


@pytest.fixture(scope="session")
def trained_codec():
    """(config, final state, per-step metrics list, eval mel loss after step 1, eval mel loss at the end)."""
    config = tiny_train_config()
    rng = np.random.default_rng(0)
    state = init_codec_train_state(config, jax.random.key(0), simple_audio(rng, TRAIN_BATCH, TRAIN_SAMPLES))
    held_out = jnp.asarray(simple_audio(np.random.default_rng(123), TRAIN_BATCH, TRAIN_SAMPLES))
    key = jax.random.key(1)
    step = compile_for_test(codec_train_step, state, held_out, key)
    evaluate = compile_for_test(codec_eval_step, state, held_out)
    history, eval_after_first = [], None
    for i in range(TRAIN_STEPS):
        key, sub = jax.random.split(key)
        state, metrics = step(state, jnp.asarray(simple_audio(rng, TRAIN_BATCH, TRAIN_SAMPLES)), sub)
        history.append({k: float(v) for k, v in metrics.items()})
        if i == 0:
            eval_after_first = float(evaluate(state, held_out)['mel_loss'])
    eval_final = float(evaluate(state, held_out)['mel_loss'])
    return config, state, history, eval_after_first, eval_final
