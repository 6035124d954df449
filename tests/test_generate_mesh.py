"""Generation over a device mesh (8 emulated CPU devices): the codes of every example equal single-device
generation with the same per-example keys, on data-parallel, FSDP and tensor-parallel meshes, with a batch the
data axes do not divide; one compiled program per mesh and shape."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from soundstorm_jax import SoundStorm
from soundstorm_jax.sampler import generate, mesh as mesh_lib
from soundstorm_jax.sampler.generate import _program, prepare_inputs
from soundstorm_jax.training import sharding
from tiny import init_model, random_codes, tiny_net


@pytest.fixture(scope="module")
def model_and_variables():
    net = tiny_net(codebook_size=16, num_quantizers=3, num_semantic_token_ids=10,
                   conformer=dict(heads=4, dim=32))
    model = SoundStorm(net, steps=4)
    codes = random_codes(0, (2, 12, 3))
    return model, codes, init_model(model, codes, semantic_ids=np.ones((2, 12), np.int32))


def make_mesh(shape):
    return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))


def test_every_mesh_gives_the_single_device_codes_example_by_example(model_and_variables):
    model, codes, variables = model_and_variables
    semantic = np.random.default_rng(1).integers(0, 10, (3, 20)).astype(np.int32)
    semantic[2, 9:] = model.net.semantic_pad_id
    options = dict(key=jax.random.key(3), steps=(3, 2, 1), top_p=0.9, temperature=0.9, prompt=codes[0, :4, :2],
                   semantic_ids=semantic)
    alone = [np.asarray(generate(model, variables, 20, **dict(options, key=jax.random.split(options["key"], 3)[i:i + 1],
                                                               semantic_ids=semantic[i:i + 1])))[0]
             for i in range(3)]
    before = _program._cache_size()
    for shape in ((8, 1, 1), (2, 2, 2), (4, 1, 2)):
        mesh = make_mesh(shape)
        got = np.asarray(generate(model, variables, 20, mesh=mesh, **options))
        assert got.shape == (3, 20, 3)  # The 5 (or 1) dummy examples that pad the batch never come back.
        for i in range(3):
            np.testing.assert_array_equal(got[i], alone[i], err_msg=f"mesh {shape}, example {i}")
        assert np.all(got[2, 9:] == -1)  # Its semantic padding sets its length: padded frames stay padding.
        generate(model, variables, 20, mesh=mesh, **options)  # Same shapes: no new program.
        generate(model, variables, 50, mesh=mesh, **options)  # 50 frames share the 64-frame bucket of 20.
    assert _program._cache_size() - before == 3


def test_inputs_and_parameters_follow_the_training_rules(model_and_variables):
    model, codes, variables = model_and_variables
    inputs = prepare_inputs(model, 16, key=jax.random.key(0), batch_size=3, frame_bucket=16)
    inputs.pop("num_frames")
    mesh = make_mesh((2, 2, 2))
    placed_vars, placed, b = mesh_lib.place_on_mesh(model, variables, inputs, mesh, mesh_lib.default_rules(),
                                                    fsdp_min_size=1)
    assert b == 3 and placed["codes"].shape[0] == 4  # Padded to the 4 data x fsdp shards.
    for name in ("codes", "valid", "fixed", "keys"):
        assert placed[name].sharding.spec == P(("data", "fsdp")), name
    specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(placed_vars)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
    # A pure data-parallel mesh replicates every parameter.
    placed_vars, _, _ = mesh_lib.place_on_mesh(model, variables, inputs, make_mesh((8, 1, 1)),
                                               mesh_lib.default_rules())
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed_vars))


def test_a_bad_mesh_is_a_clear_error(model_and_variables):
    model, _, variables = model_and_variables
    with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh"):
        generate(model, variables, 8, key=jax.random.key(0), mesh="data=8")
    other = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(ValueError, match="the rules split the batch over mesh axes"):
        generate(model, variables, 8, key=jax.random.key(0), mesh=other)
