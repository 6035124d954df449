"""Same loss and gradients on every mesh; FSDP memory; one compilation per run; NaN skip.

One module-scoped fixture runs the real jitted train step on five meshes of
the 8 emulated devices (compiling is the expensive part on a 2-core CPU, so
every test below reads its results).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_batch, tiny_config

from soundstorm_jax import training
from soundstorm_jax.training import sharding
from soundstorm_jax.training.soundstorm_task import SoundStormTask, build_model, model_loss_fn

MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2), (4, 1, 2)]


def nan_on_zero_codes(model):
    """The model's loss, but NaN for a batch whose codes are all zero (a poisoned batch)."""
    base = model_loss_fn(model)

    def loss_fn(params, batch, rng):
        loss, metrics = base(params, batch, rng)
        return loss + jnp.where(jnp.all(batch["codes"] == 0), jnp.nan, 0.0), metrics
    return loss_fn


@pytest.fixture(scope="module")
def runs():
    config = tiny_config()
    model = build_model(config)
    batches = [random_batch(1), random_batch(2)]
    out = {}
    reference = None
    for shape in MESHES:
        devices = jax.devices()[:int(np.prod(shape))]
        mesh = training.make_mesh(dict(zip(sharding.MESH_AXES, shape)), devices=devices)
        ex = SoundStormTask(config, mesh, loss_fn=nan_on_zero_codes(model))
        if shape in ((1, 1, 1), (1, 8, 1)):
            state = ex.create_state()  # Created sharded, never on one device.
        else:
            state = jax.device_put(reference, ex.shardings)
        if reference is None:
            reference = jax.device_get(state)
        initial = jax.device_get(state)
        param_bytes = max(training.bytes_per_device(state.params).values())
        opt_bytes = max(training.bytes_per_device(state.opt_state).values())
        metrics = []
        for batch in batches:
            state, m = ex.train_step(state, ex_batch(ex, batch))
            metrics.append(jax.device_get(m))
            if len(metrics) == 1:
                first_moment = jax.device_get(state.opt_state[1][0].mu)
        record = dict(initial=initial, metrics=metrics, mu=first_moment, param_bytes=param_bytes,
                      opt_bytes=opt_bytes, ex=ex, state=state)
        if shape == (1, 1, 1):
            before = jax.device_get(state)
            poisoned = dict(batches[0], codes=np.zeros_like(batches[0]["codes"]))
            state, m = ex.train_step(state, ex_batch(ex, poisoned))
            record.update(poisoned_metrics=jax.device_get(m), before_poison=before,
                          after_poison=jax.device_get(state))
            state, m = ex.train_step(state, ex_batch(ex, batches[1]))
            record.update(after_recovery=jax.device_get(m))
        record.update(cache_size=ex.train_step.cache_size())
        out[shape] = record
    return out


def ex_batch(ex, batch):
    return sharding.global_batch(batch, sharding.batch_sharding(ex.mesh, ex.rules))


def assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.mark.parametrize("shape", MESHES[1:])
def test_same_loss_and_gradients_on_every_mesh(runs, shape):
    ref, run = runs[(1, 1, 1)], runs[shape]
    for m_ref, m in zip(ref["metrics"], run["metrics"]):
        np.testing.assert_allclose(m["loss"], m_ref["loss"], rtol=1e-5)
        np.testing.assert_allclose(m["grad_norm"], m_ref["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(m["level_accuracy"], m_ref["level_accuracy"], atol=1e-6)
    # Adam's first moment after one step is (1 - b1) * gradient: the full gradient tree.
    assert_trees_close(run["mu"], ref["mu"], rtol=1e-4, atol=1e-7)
    # And the updated parameters after two steps.
    assert_trees_close(run["state"].params, ref["state"].params, rtol=1e-4, atol=1e-6)


def test_sharded_init_gives_the_same_values_on_any_mesh(runs):
    assert_trees_close(runs[(1, 8, 1)]["initial"], runs[(1, 1, 1)]["initial"], rtol=0, atol=0)


def test_fsdp_divides_parameter_and_optimizer_bytes(runs):
    dp, fsdp = runs[(8, 1, 1)], runs[(1, 8, 1)]
    assert dp["param_bytes"] == runs[(1, 1, 1)]["param_bytes"]  # DP replicates.
    # Only small vectors not split on 'embed' (levels x vocab biases) stay replicated.
    assert dp["param_bytes"] / fsdp["param_bytes"] > 6
    assert dp["opt_bytes"] / fsdp["opt_bytes"] > 6
    leaf = fsdp["state"].params["net"]["trunk"]["layers"]["ff1"]["wi"]["kernel"]
    assert leaf.sharding.spec[1] == "fsdp"  # (layers, embed, mlp): embed split


def test_tensor_parallel_shards_heads(runs):
    leaf = runs[(2, 2, 2)]["state"].params["net"]["trunk"]["layers"]["attn"]["query"]["kernel"]
    assert tuple(leaf.sharding.spec)[:3] == (None, "fsdp", "tensor")


@pytest.mark.parametrize("shape", MESHES)
def test_train_step_compiles_once(runs, shape):
    assert runs[shape]["cache_size"] == 1


def test_nonfinite_loss_skips_the_update_and_is_counted(runs):
    run = runs[(1, 1, 1)]
    m = run["poisoned_metrics"]
    assert not np.isfinite(m["loss"]) and bool(m["skipped"]) and int(m["nonfinite_count"]) == 1
    before, after = run["before_poison"], run["after_poison"]
    assert_trees_close(after.params, before.params, rtol=0, atol=0)
    assert_trees_close(after.opt_state, before.opt_state, rtol=0, atol=0)
    assert int(after.step) == int(before.step) + 1 and int(after.nonfinite_count) == 1
    recovered = run["after_recovery"]
    assert np.isfinite(recovered["loss"]) and not bool(recovered["skipped"])
    assert int(recovered["nonfinite_count"]) == 1


def test_mesh_shape_errors():
    assert training.resolve_mesh_shape({"data": -1, "tensor": 2}, 8) == {"data": 4, "fsdp": 1, "tensor": 2}
    with pytest.raises(ValueError, match="do not divide"):
        training.resolve_mesh_shape({"data": -1, "tensor": 3}, 8)
    with pytest.raises(ValueError, match="uses 4 devices but 8"):
        training.resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        training.resolve_mesh_shape({"model": 2}, 8)
    with pytest.raises(ValueError, match="at most one"):
        training.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)


def test_batch_not_divisible_by_data_axes():
    mesh = training.make_mesh({"data": -1})
    with pytest.raises(ValueError, match="not divisible by the 8 data-parallel shards"):
        SoundStormTask(tiny_config(**{"data.batch_size": 6}), mesh)
