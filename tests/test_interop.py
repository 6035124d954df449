"""Parity with the PyTorch reference (soundstorm-pytorch 0.6.1) and checkpoint conversion.

Reference outputs come from ``tests/fixtures/*.npz`` (see its README), made by
``tools/make_reference_fixtures.py``; where ``torch`` and ``soundstorm_pytorch``
import, ``test_live_reference`` also rebuilds reference models in-process.
Outputs are compared on valid frames only: the reference's padded frames carry
random codes, ours are read as [MASK], and neither can reach a valid frame.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax import ConformerBlock, ConformerWrapper, SoundStorm
from soundstorm_jax.interop import (
    config_from_reference,
    export_state_dict,
    from_reference,
    import_state_dict,
    load_reference_checkpoint,
)
from soundstorm_jax.model.layers import rotary_angles

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"
# soundstorm-pytorch fixtures are named "<letter>_<config>.npz"; the codec fixtures have their own tests.
FIXTURE_NAMES = sorted(path.stem for path in FIXTURE_DIR.glob("?_*.npz"))
TOLERANCE = 1e-4  # max abs error, fp32


def _reference_importable() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "soundstorm_pytorch"))


@functools.lru_cache(maxsize=None)
def load_fixture(name: str) -> dict:
    with np.load(FIXTURE_DIR / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def state_dict_of(arrays: dict) -> dict[str, np.ndarray]:
    return {key[len("param/"):]: value for key, value in arrays.items() if key.startswith("param/")}


def config_of(arrays: dict) -> dict:
    return json.loads(str(arrays["config_json"]))


# ---- our side of every comparison, one compiled program per configuration ---------------------------------


def block_outputs(net: ConformerWrapper, layers: dict, trunk_in, mask):
    """Each Conformer block's streams ``(b, s, n, d)`` and layer 0's values ``(b, n, h, k)``, block by block."""
    fields = set(ConformerBlock.__dataclass_fields__) - {"parent", "name"}
    block = ConformerBlock(**{k: v for k, v in net.conformer.items() if k in fields})
    depth, s = int(net.conformer["depth"]), block.num_residual_streams
    b, n, _ = trunk_in.shape
    streams = (trunk_in,) * s
    first = jnp.zeros((b, n, block.heads, block.dim_head)) if block.value_residual else None
    angles = rotary_angles(n, block.dim_head)
    outputs = []
    for i in range(depth):
        layer = jax.tree_util.tree_map(lambda x: x[i], layers)
        (streams, values), _ = block.apply({"params": layer}, (streams, first), i, mask, angles)
        first = values if i == 0 else first
        outputs.append(jnp.stack(streams, axis=1))
    return outputs, first


def our_outputs(model: SoundStorm, params, codes, mask, cond, semantic_ids):
    """Every output the fixtures hold, computed by our model (reference layouts)."""
    net = model.net
    net_vars = {"params": params["net"]}
    is_trunk = lambda module, method: module.name == "trunk"  # noqa: E731
    (logits, embeddings), state = net.apply(net_vars, codes, mask, cond=cond, return_embeddings=True,
                                            capture_intermediates=is_trunk)
    trunk_in = net.apply(net_vars, codes, mask, method="embed_codes")
    trunk_in = trunk_in if cond is None else trunk_in + cond
    blocks, values = block_outputs(net, params["net"]["trunk"]["layers"], trunk_in, mask)
    out = dict(logits=logits, embeddings=embeddings, trunk_in=trunk_in,
               trunk_out=state["intermediates"]["trunk"]["__call__"][0])
    for i, streams in enumerate(blocks):
        out[f"block_out_{i}"] = streams                                     # (b, s, n, d)
    if values is not None:
        out["value_residual"] = jnp.transpose(values, (0, 2, 1, 3))          # -> (b, h, n, k)

    variables = {"params": params}
    columns = jnp.arange(net.num_columns)
    if semantic_ids is not None:
        n, m = codes.shape[1], semantic_ids.shape[1]
        uncropped = int(np.ceil(m * net.acoustic_per_semantic - 1e-9))
        out["cond"] = net.apply(net_vars, semantic_ids, n, method="semantic_condition")
        out["cond_uncropped"] = net.apply(net_vars, semantic_ids, uncropped, method="semantic_condition")
        out["semantic_logits"] = net.apply(net_vars, codes, mask, semantic_ids=semantic_ids)
    if model.self_token_critic:
        # The reference's critic runs the shared network without the frame mask or conditioning.
        out["critic_logits"] = model.apply(variables, codes, None, columns, method="critic_logits")
    if model.self_cond:
        out["self_cond_null_sum_embeds"] = model.apply(variables, None, method="self_cond_embedding")
        out["self_cond_null_logits"], _ = model.apply(variables, codes, mask, columns, condition=cond,
                                                      method="decode_logits")
        source = jnp.sum(embeddings, axis=2)
        out["self_cond_sum_embeds"] = model.apply(variables, source, method="self_cond_embedding")
        out["self_cond_logits"], out["self_cond_embeddings"] = model.apply(
            variables, codes, mask, columns, condition=cond, self_cond_source=source, has_source=True,
            method="decode_logits")
    return out


@dataclasses.dataclass
class Case:
    model: SoundStorm
    variables: dict
    forward: object  # jitted (params, codes, mask, cond, semantic_ids) -> outputs


@functools.lru_cache(maxsize=None)
def case_for_config(config_json: str, state_key: str) -> Case:
    """Model, imported variables and compiled forward for a fixture (cached: tests share them)."""
    arrays = load_fixture(state_key)
    config = json.loads(config_json)
    model, variables = from_reference(config["conformer_wrapper"], config["soundstorm"], state_dict_of(arrays))
    # One program per configuration, run a few times: backend optimisation would only double compile time.
    forward = jax.jit(functools.partial(our_outputs, model), compiler_options={"xla_backend_optimization_level": 0})
    return Case(model, variables, forward)


def run_case(case: Case, arrays: dict) -> dict[str, np.ndarray]:
    params = nn.unbox(case.variables)["params"]
    cond = arrays.get("cond")
    out = case.forward(params, jnp.asarray(arrays["codes"], jnp.int32), jnp.asarray(arrays["mask"]),
                       None if cond is None else jnp.asarray(cond),
                       None if "semantic_ids" not in arrays else jnp.asarray(arrays["semantic_ids"], jnp.int32))
    return jax.tree_util.tree_map(np.asarray, out)


def semantic_frames_clear_of_padding(semantic_ids, pad_id: int, frames: int) -> np.ndarray:
    """``(b, frames)`` True where linear upsampling (align_corners=False) reads no padded semantic id.

    Only there do we (padding excluded) and the reference (padding zeroed, then
    interpolated) agree by design.
    """
    m = semantic_ids.shape[1]
    src = np.maximum((np.arange(frames) + 0.5) * m / frames - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), m - 1)
    hi = np.minimum(lo + 1, m - 1)
    uses_hi = (src - lo) > 0
    padded = semantic_ids == pad_id
    return ~(padded[:, lo] | (padded[:, hi] & uses_hi[None, :]))


def parity_errors(arrays: dict, ours: dict) -> dict[str, float]:
    """Max abs error per output against the reference arrays (valid frames, or frames agreed by design)."""
    valid = np.asarray(arrays["mask"])
    errors = {}

    def compare(key, our_key=None, where=None, frame_axis=1, reduce=None):
        ref = arrays[key]
        if reduce is not None:
            ref = reduce(ref)
        got = ours[our_key or key]
        assert got.shape == ref.shape, f"{key}: ours {got.shape}, reference {ref.shape}"
        diff = np.abs(got.astype(np.float64) - ref)
        if where is not None:
            diff = np.moveaxis(diff, frame_axis, 1)[where]
        errors[our_key or key] = float(diff.max())

    for key in ("logits", "embeddings", "trunk_in", "trunk_out"):
        compare(key, where=valid)
    for key in sorted(k for k in arrays if k.startswith("block_out_")):
        compare(key, where=valid, frame_axis=2)
    compare("value_residual", where=valid, frame_axis=2)
    if "semantic_ids" in arrays:
        ids = arrays["semantic_ids"]
        pad_id = int(config_of(arrays)["soundstorm"].get("semantic_pad_id", -1))
        for key in ("cond", "cond_uncropped"):
            clear = semantic_frames_clear_of_padding(ids, pad_id, arrays[key].shape[1])
            assert clear.sum() >= clear.size - 8, "the comparison must cover most frames"
            compare(key, where=clear)
        # Example 0 has no semantic padding: the whole semantic path agrees there.
        assert not (ids[0] == pad_id).any()
        errors["semantic_logits[0]"] = float(np.abs(ours["semantic_logits"][0] - arrays["logits"][0]).max())
    if "critic_logits" in arrays:
        compare("critic_logits")  # every frame: the reference's critic ignores the mask, and so does ours here
    if "self_cond_logits" in arrays:
        compare("self_cond_null_sum_embeds")
        compare("self_cond_null_logits", where=valid)
        compare("self_cond_sum_embeds", where=valid, reduce=lambda x: x.sum(axis=2))
        compare("self_cond_logits", where=valid)
        compare("self_cond_embeddings", where=valid, reduce=lambda x: x.sum(axis=2))
    return errors


def check_parity(arrays: dict, case: Case) -> dict[str, float]:
    errors = parity_errors(arrays, run_case(case, arrays))
    worst = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not worst, f"max abs errors above {TOLERANCE}: {worst} (all: {errors})"
    return errors


# ---- tests ------------------------------------------------------------------------------------------------


def test_every_fixture_is_present():
    required = {"a_readme_reduced", "b_heads_dimhead", "c_plain_residual", "d_grouped", "e_semantic_cond",
                "f_critic_selfcond"}
    assert required <= set(FIXTURE_NAMES), f"missing fixtures: {sorted(required - set(FIXTURE_NAMES))}"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_parity_with_reference_fixture(name):
    arrays = load_fixture(name)
    case = case_for_config(str(arrays["config_json"]), name)
    errors = check_parity(arrays, case)
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))

    # Valid frames do not depend on what padded frames hold (codes, or conditioning added to them).
    padded = ~np.asarray(arrays["mask"])
    assert padded.any()
    changed = dict(arrays)
    codes = np.asarray(arrays["codes"]).copy()
    rng = np.random.default_rng(0)
    codes[padded] = rng.integers(0, config_of(arrays)["mask_id"], codes[padded].shape)
    changed["codes"] = codes
    if "cond" in arrays:
        cond = np.asarray(arrays["cond"]).copy()
        cond[padded] += rng.normal(size=cond[padded].shape).astype(np.float32)
        changed["cond"] = cond
    before, after = run_case(case, arrays), run_case(case, changed)
    valid = ~padded
    for key in ("logits", "embeddings", "trunk_out"):
        np.testing.assert_allclose(after[key][valid], before[key][valid], atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_export_round_trip_is_identical(name):
    arrays = load_fixture(name)
    state_dict = state_dict_of(arrays)
    case = case_for_config(str(arrays["config_json"]), name)
    exported = export_state_dict(case.variables, case.model)
    assert list(exported) == list(state_dict)  # same names, in the reference's state_dict order
    for key, value in state_dict.items():
        assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_bare_conformer_wrapper_state_dict():
    arrays = load_fixture("d_grouped")
    config = config_of(arrays)
    net_state = {k[len("net."):]: v for k, v in state_dict_of(arrays).items() if k.startswith("net.")}
    net, variables = from_reference(config["conformer_wrapper"], None, net_state)
    assert isinstance(net, ConformerWrapper)
    case = case_for_config(str(arrays["config_json"]), "d_grouped")
    same = jax.tree_util.tree_map(np.array_equal, nn.unbox(variables)["params"],
                                  nn.unbox(case.variables)["params"]["net"])
    assert all(jax.tree_util.tree_leaves(same))
    exported = export_state_dict(variables, net)
    assert list(exported) == list(net_state)
    assert all(np.array_equal(exported[k], v) for k, v in net_state.items())
    # A SoundStorm state dict given to a bare wrapper: every name is unexpected, with a hint.
    with pytest.raises(ValueError, match=r"net\.code_embeds\.weight.*SoundStorm state dict"):
        import_state_dict(state_dict_of(arrays), net)


def test_variables_are_boxed_like_init_and_in_param_dtype():
    """Same tree, logical axes and dtypes as ``model.init`` (the importer builds its target from a lighter init)."""
    arrays = load_fixture("f_critic_selfcond")
    config = config_of(arrays)
    model, variables = from_reference(config["conformer_wrapper"], config["soundstorm"], state_dict_of(arrays),
                                      param_dtype=jnp.bfloat16)
    keys = {"params": jax.random.key(0), "masking": jax.random.key(1)}
    codes = jnp.zeros((1, 3, model.net.num_columns), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(keys, codes))
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    assert (jax.tree_util.tree_structure(variables, is_leaf=is_box)
            == jax.tree_util.tree_structure(dict(abstract), is_leaf=is_box))
    assert nn.get_partition_spec(variables) == nn.get_partition_spec(dict(abstract))
    dtypes = [leaf.dtype for leaf in jax.tree_util.tree_leaves(nn.unbox(variables))]
    assert dtypes == [leaf.dtype for leaf in jax.tree_util.tree_leaves(nn.unbox(dict(abstract)))]
    assert all(dtype == jnp.bfloat16 for dtype in dtypes)
    # Export widens bfloat16 to float32; the values are the reference's rounded to bfloat16.
    exported = export_state_dict(variables, model)
    name = "net.to_logits.2.weight"
    assert exported[name].dtype == np.float32
    np.testing.assert_array_equal(exported[name], state_dict_of(arrays)[name].astype(jnp.bfloat16).astype(np.float32))
    # Layer 0's value-residual gate exists (the scan stacks layers) but is unused: zero.
    gate = nn.unbox(variables)["params"]["net"]["trunk"]["layers"]["attn"]["value_residual_mix"]["kernel"]
    assert not np.asarray(gate[0], np.float32).any() and np.asarray(gate[1], np.float32).any()


def test_import_errors_list_every_bad_tensor_by_name():
    arrays = load_fixture("f_critic_selfcond")
    config = config_of(arrays)
    net_kwargs, model_kwargs = config_from_reference(config["conformer_wrapper"], config["soundstorm"])
    model = SoundStorm(ConformerWrapper(**net_kwargs), **model_kwargs)
    state_dict = state_dict_of(arrays)
    del state_dict["net.conformer.layers.1.attn.branch.fn.to_value_residual_mix.0.weight"]
    del state_dict["null_embed"]
    state_dict["net.extra.weight"] = np.zeros(3, np.float32)
    state_dict["net.heads.0.weight"] = state_dict["net.heads.0.weight"].T
    state_dict["token_critic.net.code_embeds.weight"] = state_dict["net.code_embeds.weight"] + 1.0
    with pytest.raises(ValueError) as error:
        import_state_dict(state_dict, model)
    message = str(error.value)
    for expected in ("missing tensors (2)", "net.conformer.layers.1.attn.branch.fn.to_value_residual_mix.0.weight",
                     "null_embed", "unexpected tensors (1): net.extra.weight",
                     "net.heads.0.weight (64, 192) (expected (192, 64))", "token_critic.net.code_embeds.weight"):
        assert expected in message, (expected, message)


def test_models_the_reference_cannot_express_are_refused():
    arrays = load_fixture("a_readme_reduced")
    config = config_of(arrays)
    net_kwargs, _ = config_from_reference(config["conformer_wrapper"])
    no_value_residual = ConformerWrapper(**{**net_kwargs, "conformer": {**net_kwargs["conformer"],
                                                                         "value_residual": False}})
    with pytest.raises(ValueError, match="value_residual=True"):
        import_state_dict({}, no_value_residual)
    semantic = ConformerWrapper(**net_kwargs, num_semantic_token_ids=10)
    with pytest.raises(ValueError, match="semantic_token_emb"):
        import_state_dict({}, semantic)


def test_config_from_reference_fills_the_reference_defaults():
    net_kwargs, model_kwargs = config_from_reference(
        dict(codebook_size=1024, num_quantizers=12, conformer=dict(dim=512, depth=2, attn_flash=True)), {})
    assert net_kwargs == dict(codebook_size=1024, num_quantizers=12, grouped_quantizers=1, conformer=dict(
        dim=512, depth=2, dim_head=64, heads=8, ff_mult=4, conv_expansion_factor=2, conv_kernel_size=31,
        attn_dropout=0.0, ff_dropout=0.0, conv_dropout=0.0, conv_causal=False, num_residual_streams=4,
        value_residual=True))
    assert model_kwargs == dict(steps=18, schedule="linear", no_replace_prob=0.15, random_token_prob=0.1,
                                self_cond=False, self_cond_train_prob=0.75, self_token_critic=False,
                                critic_loss_weight=1.0)
    assert config_from_reference(dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8, depth=1)))[1] is None

    net_kwargs, model_kwargs = config_from_reference(
        dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8, depth=1)),
        dict(num_semantic_token_ids=50, wav2vec_target_sample_hz=16000, wav2vec_downsample_factor=320,
             codec_target_sample_hz=24000, codec_downsample_factor=320, can_mask_prev_unmasked=False, pad_id=-1))
    assert net_kwargs["conformer"]["value_residual"] is False  # one layer: nothing to mix towards
    assert net_kwargs["num_semantic_token_ids"] == 50 and net_kwargs["semantic_pad_id"] == -1
    assert net_kwargs["acoustic_per_semantic"] == pytest.approx(1.5)
    ConformerWrapper(**net_kwargs), SoundStorm(ConformerWrapper(**net_kwargs), **model_kwargs)
    # Without both wav2vec rates the reference does not condition (and has no semantic embedding).
    assert "num_semantic_token_ids" not in config_from_reference(
        dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8, depth=1)), dict(num_semantic_token_ids=50))[0]


@pytest.mark.parametrize("wrapper, soundstorm, match", [
    (dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8, depth=2, t5_rel_pos_bias=True)), None,
     "t5_rel_pos_bias"),
    (dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8, depth=2, rotary=True)), None, r"\['rotary'\]"),
    (dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8)), None, "'depth'"),
    (dict(codebook_size=8, conformer=dict(dim=8, depth=2)), None, "'num_quantizers'"),
    (dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8, depth=2)), dict(soundstream=object()),
     "soundstream is a module"),
    (dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8, depth=2)),
     dict(wav2vec_target_sample_hz=16000, wav2vec_downsample_factor=320), "codec_target_sample_hz"),
    (dict(codebook_size=8, num_quantizers=2, conformer=dict(dim=8, depth=2)), dict(temperature=1.0),
     r"\['temperature'\]"),
])
def test_config_from_reference_rejects_what_it_cannot_convert(wrapper, soundstorm, match):
    with pytest.raises(ValueError, match=match):
        config_from_reference(wrapper, soundstorm)


@pytest.mark.skipif(_reference_importable(), reason="torch is installed; the missing-torch error cannot be shown")
def test_load_reference_checkpoint_needs_torch(tmp_path):
    with pytest.raises(ImportError, match="needs torch"):
        load_reference_checkpoint(tmp_path / "model.pt")


@pytest.mark.skipif(not _reference_importable(), reason="torch and soundstorm_pytorch are not installed")
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_live_reference(name, tmp_path):
    """Rebuild the reference in-process (new seed): convert its torch tensors and compare, save and reload,
    then export weights changed on our side, load them into the reference (strict) and compare again."""
    import torch

    script = REPO / "tools" / "make_reference_fixtures.py"
    module_spec = importlib.util.spec_from_file_location("make_reference_fixtures", script)
    tools = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(tools)
    index = list(tools.CONFIGS).index(name)
    torch.set_default_dtype(torch.float32)
    arrays = tools.run_config(name, tools.CONFIGS[name], tools.BASE_SEED + 1000 * index + 7)
    assert str(arrays["config_json"]) == str(load_fixture(name)["config_json"])
    state_dict = state_dict_of(arrays)
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}

    case = case_for_config(str(arrays["config_json"]), name)       # compiled once per configuration
    live = Case(case.model, import_state_dict(tensors, case.model), case.forward)
    check_parity(arrays, live)

    path = tmp_path / "soundstorm.pt"
    torch.save(dict(model=tensors, optim={}, scheduler={}), path)
    loaded = load_reference_checkpoint(path)
    assert list(loaded) == list(state_dict) and all(np.array_equal(loaded[k], v) for k, v in state_dict.items())
    exported = export_state_dict(live.variables, live.model)
    assert all(torch.equal(torch.from_numpy(exported[k]), t) for k, t in tensors.items())

    # The other direction: weights changed on our side run in the reference with the same outputs.
    from einops import rearrange
    from soundstorm_pytorch import ConformerWrapper as ReferenceWrapper, SoundStorm as ReferenceSoundStorm

    keys = iter(jax.random.split(jax.random.key(index), 1000))
    changed = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype),
                                     nn.unbox(live.variables))
    spec = tools.CONFIGS[name]
    reference = ReferenceSoundStorm(ReferenceWrapper(**spec["wrapper"]), **spec["soundstorm"])
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in export_state_dict(changed, live.model).items()},
                              strict=True)
    reference.eval()
    codes, mask = torch.from_numpy(arrays["codes"]), torch.from_numpy(arrays["mask"])
    with torch.no_grad():
        cond = None
        if "semantic_ids" in arrays:
            cond = reference.maybe_get_condition(torch.from_numpy(arrays["semantic_ids"]), length=codes.shape[1])
        logits = reference.net(rearrange(codes, "b n q -> b (n q)"), mask=mask, cond=cond)
    inputs = dict(arrays) if cond is None else dict(arrays, cond=cond.numpy())  # cond from the changed weights
    ours = run_case(Case(live.model, changed, live.forward), inputs)["logits"]
    expected = rearrange(logits, "b (n q) k -> b n q k", q=ours.shape[2]).numpy()
    assert np.abs(ours - expected)[arrays["mask"]].max() <= TOLERANCE
