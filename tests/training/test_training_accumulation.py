"""Gradient accumulation: the scan over microbatches equals the target-weighted full-batch gradient."""
import flax.linen as nn
import jax
import numpy as np
from conftest import random_batch, tiny_config

from soundstorm_jax.training.soundstorm_task import build_model, gradients, model_loss_fn, sample_inputs

OPTIONS = {"xla_backend_optimization_level": 0}


def test_microbatch_scan_weights_gradients_by_target_count():
    config = tiny_config()
    model = build_model(config)
    inputs = sample_inputs(model, batch=1, frames=16)
    params = jax.jit(lambda: model.init({"params": jax.random.PRNGKey(0), "masking": jax.random.PRNGKey(1)},
                                        inputs["codes"], inputs["mask"])["params"])()
    params = nn.unbox(params)
    loss_fn = model_loss_fn(model)
    batch = random_batch(3)
    rng = jax.random.PRNGKey(7)

    accumulated = jax.jit(lambda p, b: gradients(loss_fn, p, b, rng, 2), compiler_options=OPTIONS)
    grads, metrics = accumulated(params, batch)

    # By hand: microbatch i holds examples i, i + 2, ... and uses fold_in(rng, i).
    single = jax.jit(lambda p, b, r: gradients(loss_fn, p, b, r, 1), compiler_options=OPTIONS)
    parts = [single(params, {k: v[i::2] for k, v in batch.items()}, jax.random.fold_in(rng, i)) for i in range(2)]
    counts = [float(m["num_targets"]) for _, m in parts]
    assert counts[0] != counts[1]  # Unequal microbatches: equal weights would be wrong.
    expected = jax.tree.map(lambda a, b: (counts[0] * a + counts[1] * b) / sum(counts), parts[0][0], parts[1][0])
    for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
    assert float(metrics["num_targets"]) == sum(counts)
    expected_loss = (counts[0] * float(parts[0][1]["loss"]) + counts[1] * float(parts[1][1]["loss"])) / sum(counts)
    np.testing.assert_allclose(float(metrics["loss"]), expected_loss, rtol=1e-6)
