"""One short codec training run, shared by several tests.

Compiling is the expensive part on CPU, so the training run (init + one compiled
step + a few dozen updates) happens once per test run (shared by the xdist workers)
and its final state serves the training, round-trip, causality and bad-input tests.
"""
from __future__ import annotations

import fcntl
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codec_test_utils import (TRAIN_BATCH, TRAIN_SAMPLES, TRAIN_STEPS, compile_for_test, simple_audio,
                              tiny_train_config)
from soundstorm_jax.codec import codec_eval_step, codec_train_step, init_codec_train_state


@pytest.fixture(scope="session")
def trained_codec(tmp_path_factory):
    """(config, final state, per-step metrics list, eval mel loss after step 1, eval mel loss at the end).

    Under pytest-xdist the run is made once per test run, not once per worker: the first worker to need it trains
    and pickles it into the run's shared temporary folder while holding a lock there; the other loads it.
    """
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:
        return _train_tiny_codec()
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's basetemp
    with open(shared / f"trained_codec-{run_id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        cached = shared / f"trained_codec-{run_id}.pkl"
        if cached.exists():
            return pickle.loads(cached.read_bytes())
        result = _train_tiny_codec()
        cached.write_bytes(pickle.dumps(result))
        return result


def _train_tiny_codec():
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
    # Host arrays: what every worker gets, whether it trained the run or loaded it.
    return jax.device_get((config, state, history, eval_after_first, eval_final))
