"""Orbax checkpoints: bit-identical round trip, other meshes, retention, model-config checks."""
import jax
import numpy as np
import pytest
from conftest import tiny_config

from soundstorm_jax import training
from soundstorm_jax.training import sharding
from soundstorm_jax.training.soundstorm_task import SoundStormTask


def make(shape, config):
    devices = jax.devices()[:int(np.prod(shape))]
    mesh = training.make_mesh(dict(zip(sharding.MESH_AXES, shape)), devices=devices)
    return SoundStormTask(config, mesh)


@pytest.fixture(scope="module")
def config():
    return tiny_config(**{"optimizer.ema_decay": 0.9})


@pytest.fixture(scope="module")
def state(config):
    """A fresh state created on one device, with EMA params; host copy."""
    return jax.device_get(make((1, 1, 1), config).create_state())


def assert_bit_identical(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_save_restore_is_bit_identical(tmp_path, config, state):
    ex = make((8, 1, 1), config)
    sharded = jax.device_put(state, ex.shardings)
    ckpt = training.Checkpointer(str(tmp_path), config.model, every_steps=1, keep=2)
    assert ckpt.save(5, sharded, {"next_index": 5})
    ckpt.wait_until_finished()
    restored, data_state, step = training.Checkpointer(str(tmp_path), config.model, every_steps=1,
                                                       keep=2).restore(ex.abstract_state)
    assert step == 5 and data_state == {"next_index": 5}
    assert restored.ema_params is not None
    assert_bit_identical(jax.device_get(restored), state)
    for leaf, target in zip(jax.tree.leaves(restored), jax.tree.leaves(ex.shardings)):
        assert leaf.sharding == target
    ckpt.close()


@pytest.mark.parametrize("save_shape,restore_shape", [((1, 8, 1), (1, 1, 1)), ((8, 1, 1), (2, 2, 2)),
                                                      ((2, 2, 2), (4, 1, 1))])
def test_restore_onto_a_different_mesh(tmp_path, config, state, save_shape, restore_shape):
    source, target = make(save_shape, config), make(restore_shape, config)
    ckpt = training.Checkpointer(str(tmp_path), config.model, every_steps=1, keep=1)
    ckpt.save(3, jax.device_put(state, source.shardings), {})
    ckpt.wait_until_finished()
    restored, _, _ = ckpt.restore(target.abstract_state)
    assert_bit_identical(jax.device_get(restored), state)
    kernel = restored.params["net"]["trunk"]["layers"]["ff1"]["wi"]["kernel"]
    assert kernel.sharding.mesh.shape == target.mesh.shape
    assert len(kernel.sharding.device_set) == int(np.prod(restore_shape))
    ckpt.close()


def test_keeps_the_last_k_every_n_steps(tmp_path, config, state):
    ex = make((1, 1, 1), config)
    ckpt = training.Checkpointer(str(tmp_path), config.model, every_steps=2, keep=2)
    saved = [step for step in range(1, 8) if ckpt.save(step, jax.device_put(state, ex.shardings), {})]
    ckpt.wait_until_finished()
    assert saved == [2, 4, 6]
    assert ckpt.all_steps() == [4, 6] and ckpt.latest_step() == 6
    ckpt.close()


def test_model_config_mismatch_names_the_fields(tmp_path, config, state):
    ex = make((1, 1, 1), config)
    ckpt = training.Checkpointer(str(tmp_path), config.model, every_steps=1, keep=1)
    ckpt.save(1, jax.device_put(state, ex.shardings), {})
    ckpt.close()
    other = tiny_config()
    other.model.conformer.dim = 64
    other.model.codebook_size = 32
    other.model.conformer.remat_policy = "full"  # Compute-only: not a mismatch.
    with pytest.raises(ValueError, match=r"conformer\.dim: checkpoint 32 != config 64") as info:
        training.Checkpointer(str(tmp_path), other.model, every_steps=1, keep=1).restore(ex.abstract_state)
    assert "codebook_size: checkpoint 16 != config 32" in str(info.value)
    assert "remat_policy" not in str(info.value)

    training.save_config(str(tmp_path), config)
    training.check_saved_config(str(tmp_path), config)  # Same model: fine.
    with pytest.raises(ValueError, match=r"mismatched config.model fields: codebook_size"):
        training.check_saved_config(str(tmp_path), other)


def test_small_replicated_arrays_are_saved_whole_and_large_ones_in_replica_slices(tmp_path, caplog):
    """Orbax's replica-parallel saving compiles a slice program per array shape and device: for arrays whose
    slices would be under MIN_REPLICA_SLICE_BYTES a save compiles nothing; a larger replicated array is still
    written in slices (one per replica). Both restore exactly."""
    from jax.sharding import NamedSharding, PartitionSpec

    from soundstorm_jax.training import checkpoint
    mesh = training.make_mesh({"data": 8})
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = 8 * -(-checkpoint.MIN_REPLICA_SLICE_BYTES // (4 * 1031))  # 8 slices of float32 rows >= the gate
    cases = {"small": {"bias": np.arange(16, dtype=np.float32), "kernel": np.ones((32, 8), np.float32)},
             "large": {"table": np.arange(rows * 1031, dtype=np.float32).reshape(rows, 1031)}}
    for name, state in cases.items():
        state = jax.device_put(state, replicated)
        ckpt = training.Checkpointer(str(tmp_path / name), {"dim": 1}, every_steps=1, keep=1)
        caplog.clear()
        with caplog.at_level("WARNING"), jax.log_compiles():
            ckpt.save(1, state, {})
            ckpt.wait_until_finished()
        slices = [r.getMessage() for r in caplog.records if "jit(slice)" in r.getMessage()]
        assert (len(slices) > 0) == (name == "large"), (name, slices)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        restored, _, _ = ckpt.restore(abstract)
        assert_bit_identical(jax.device_get(restored), jax.device_get(state))
        ckpt.close()


def test_a_checkpoint_saved_through_orbax_standard_handler_restores(tmp_path, config, state):
    """Checkpoints written before the replica-slice size gate (Orbax's StandardCheckpointHandler, the same files)."""
    import orbax.checkpoint as ocp

    from soundstorm_jax.training import config as config_lib
    ex = make((8, 1, 1), config)
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"), item_names=("state", "data", "model"))
    manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(jax.device_put(state, ex.shardings)),
                                            data=ocp.args.JsonSave({"next_index": 4}),
                                            model=ocp.args.JsonSave(config_lib.model_signature(config.model))))
    manager.wait_until_finished()
    manager.close()
    ckpt = training.Checkpointer(str(tmp_path), config.model, every_steps=1, keep=2)
    restored, data_state, step = ckpt.restore(ex.abstract_state)
    assert step == 4 and data_state == {"next_index": 4}
    assert_bit_identical(jax.device_get(restored), state)
    ckpt.close()
