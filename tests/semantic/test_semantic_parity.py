"""HuBERT / wav2vec 2.0 encoders: parity with transformers, padding, the fairseq layout, checkpoint files, bad weights.

Fixtures come from ``tools/make_semantic_fixtures.py`` (its docstring lists every key):
``hubert_base_tiny.npz`` (group norm, post-norm) and ``wav2vec2_large_tiny.npz`` (layer norm,
pre-norm) hold random perturbed weights under transformers' names, a padded batch and the
hidden states of every layer of each clip run alone. The live test builds the models with
transformers when torch and transformers are installed.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from soundstorm_jax.semantic import (SpeechEncoder, SpeechEncoderConfig, fairseq_name, hubert_base,
                                     import_speech_encoder, read_safetensors)
from soundstorm_jax.semantic.encoder import param_shapes

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
NAMES = ("hubert_base_tiny", "wav2vec2_large_tiny")
TOLERANCE = 1e-4  # relative to the largest magnitude of each hidden state


def load_fixture(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def state_dict(fixture: dict) -> dict[str, np.ndarray]:
    return {k[len("param/"):]: v for k, v in fixture.items() if k.startswith("param/")}


def config_of(fixture: dict) -> SpeechEncoderConfig:
    return SpeechEncoderConfig.from_transformers(json.loads(str(fixture["config"]))["transformers_config"])


def relative_error(ours, reference, frames) -> float:
    valid = np.arange(reference.shape[-2])[None, :] < frames[:, None]
    return float(np.abs(np.asarray(ours) - reference)[..., valid, :].max() / np.abs(reference).max())


@pytest.fixture(scope="module", params=NAMES)
def case(request):
    fixture = load_fixture(request.param)
    config = config_of(fixture)
    variables = import_speech_encoder(FIXTURES / f"{request.param}.npz", config)
    encode = jax.jit(lambda v, a, n: SpeechEncoder(config).apply(v, a, n))
    return request.param, fixture, config, variables, encode


def test_every_layer_matches_transformers_on_a_padded_batch(case):
    name, fixture, config, variables, encode = case
    hidden, mask = encode(variables, fixture["audio"], fixture["lengths"])
    frames = fixture["frame_lengths"]
    assert hidden.shape == fixture["hidden"].shape == (config.num_hidden_layers + 1, 3, 79, config.hidden_size)
    np.testing.assert_array_equal(np.asarray(mask).sum(-1), frames)
    np.testing.assert_array_equal(config.frame_lengths(fixture["lengths"]), frames)
    errors = [relative_error(hidden[k], fixture["hidden"][k], frames) for k in range(len(hidden))]
    assert max(errors) < TOLERANCE, f"{name}: relative errors per layer {errors}"
    assert not np.asarray(hidden)[:, ~np.asarray(mask)].any()  # padded frames come out as zeros
    # Mapping mistakes would show: the layers differ from each other by far more than the tolerance.
    assert min(relative_error(fixture["hidden"][k], fixture["hidden"][k + 1], frames)
               for k in range(config.num_hidden_layers)) > 100 * TOLERANCE


def test_chosen_layer_and_last_hidden_state(case):
    name, fixture, config, variables, _ = case
    frames = fixture["frame_lengths"]
    for layer, reference in ((1, fixture["hidden"][1]), ("last", fixture["last_hidden_state"])):
        hidden, _ = jax.jit(lambda v, a, n: SpeechEncoder(config).apply(v, a, n, output_layer=layer))(
            variables, fixture["audio"], fixture["lengths"])
        assert hidden.shape == reference.shape
        assert relative_error(hidden, reference, frames) < TOLERANCE, (name, layer)
    top = fixture["hidden"][-1]
    differs = relative_error(top, fixture["last_hidden_state"], frames)
    # Pre-norm: last_hidden_state has the final LayerNorm that hidden_states[-1] lacks; post-norm: they are equal.
    assert (differs > 100 * TOLERANCE) if config.do_stable_layer_norm else (differs == 0.0)
    with pytest.raises(ValueError, match=rf"output_layer must be a hidden-state index in \[0, "
                                         rf"{config.num_hidden_layers}\].*got {config.num_hidden_layers + 1}"):
        SpeechEncoder(config).apply(variables, fixture["audio"], output_layer=config.num_hidden_layers + 1)


def test_padding_never_changes_valid_frames(case):
    """Other padding content and another batch layout leave every valid frame exactly as it was."""
    _, fixture, _, variables, encode = case
    audio, lengths = fixture["audio"].copy(), fixture["lengths"]
    hidden, mask = (np.asarray(x) for x in encode(variables, audio, lengths))
    pad = np.arange(audio.shape[1])[None, :] >= lengths[:, None]
    audio[pad] = np.random.default_rng(0).uniform(-1, 1, pad.sum()) * 10
    again, _ = encode(variables, audio, lengths)
    np.testing.assert_array_equal(np.asarray(again)[:, mask], hidden[:, mask])
    reordered, _ = encode(variables, audio[::-1].copy(), lengths[::-1].copy())
    np.testing.assert_allclose(np.asarray(reordered)[:, ::-1][:, mask], hidden[:, mask], rtol=0, atol=1e-5)


def test_fairseq_layout_gives_the_same_weights(case):
    name, fixture, config, variables, _ = case
    transformers = state_dict(fixture)
    fairseq = {fairseq_name(k, config): v for k, v in transformers.items()}
    # The names of hubert_base_ls960.pt's `model` dict (the conv norm's index depends on the extractor's norm).
    norm = "feature_extractor.conv_layers.0.2.weight" if config.feat_extract_norm == "group" else \
        "feature_extractor.conv_layers.0.2.1.weight"
    for key in ["feature_extractor.conv_layers.0.0.weight", "feature_extractor.conv_layers.2.0.weight", norm,
                "post_extract_proj.weight", "post_extract_proj.bias", "encoder.pos_conv.0.weight_g",
                "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias", "encoder.layers.1.self_attn.k_proj.bias",
                "encoder.layers.0.self_attn.out_proj.weight", "encoder.layers.0.self_attn_layer_norm.weight",
                "encoder.layers.1.fc1.weight", "encoder.layers.0.fc2.bias", "encoder.layers.1.final_layer_norm.bias",
                "encoder.layer_norm.weight", "layer_norm.weight", "layer_norm.bias", "mask_emb"]:
        assert key in fairseq, (key, sorted(fairseq))
    assert len(fairseq) == len(transformers)
    fairseq["label_embs_concat"] = np.zeros((10, 4), np.float32)  # pre-training only: ignored
    fairseq["final_proj.weight"] = np.zeros((4, config.hidden_size), np.float32)
    imported = import_speech_encoder(fairseq, config)
    assert jax.tree.map(np.shape, imported) == jax.tree.map(np.shape, variables)
    for a, b in zip(jax.tree.leaves(imported), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A prefixed fine-tuning checkpoint (HubertForCTC / Wav2Vec2ForCTC) with its head also fits.
    prefix = "hubert." if config.family == "hubert" else "wav2vec2."
    ctc = {prefix + k: v for k, v in transformers.items()} | {"lm_head.weight": np.zeros((5, config.hidden_size))}
    for a, b in zip(jax.tree.leaves(import_speech_encoder(ctc, config)), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_weight_norm_forms_and_safetensors_file():
    fixture = load_fixture("hubert_base_tiny")
    config = config_of(fixture)
    good = state_dict(fixture)
    reference = import_speech_encoder(good, config)["params"]
    from_file = read_safetensors(str(FIXTURES / "hubert_base_tiny.safetensors"))  # written by the safetensors package
    assert sorted(from_file) == sorted(good)
    for k, v in good.items():
        np.testing.assert_array_equal(from_file[k], v)
    prefix = "encoder.pos_conv_embed.conv"
    g = good.pop(f"{prefix}.parametrizations.weight.original0")
    v = good.pop(f"{prefix}.parametrizations.weight.original1")
    old = dict(good, **{f"{prefix}.weight_g": g, f"{prefix}.weight_v": v})  # torch.nn.utils.weight_norm's names
    plain = dict(good, **{f"{prefix}.weight": g * v / np.sqrt((v.astype(np.float64) ** 2).sum((0, 1), keepdims=True))})
    for form in (old, plain):
        for a, b in zip(jax.tree.leaves(import_speech_encoder(form, config)["params"]), jax.tree.leaves(reference)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_bad_checkpoints_list_every_offending_name(tmp_path):
    fixture = load_fixture("hubert_base_tiny")
    config = config_of(fixture)
    bad = state_dict(fixture)
    del bad["encoder.layers.1.attention.k_proj.bias"]
    bad["encoder.layers.2.fc1.weight"] = np.zeros((64, 32), np.float32)
    bad["feature_projection.projection.weight"] = np.zeros((32, 25), np.float32)
    with pytest.raises(ValueError) as err:
        import_speech_encoder(bad, config)
    message = str(err.value)
    for text in ["transformers checkpoint does not fit the hubert encoder (hidden_size=32, num_hidden_layers=2",
                 "1 missing: encoder.layers.1.attention.k_proj.bias (32,)",
                 "1 unexpected: encoder.layers.2.fc1.weight (64, 32)",
                 "1 misshaped: feature_projection.projection.weight: got (32, 25), expected (32, 24)"]:
        assert text in message, (text, message)
    # In the fairseq layout the report uses fairseq's names.
    fairseq = {fairseq_name(k, config): v for k, v in bad.items()}
    with pytest.raises(ValueError, match=r"fairseq checkpoint .*missing: encoder\.layers\.1\.self_attn\.k_proj\.bias"
                       r".*unexpected: encoder\.layers\.2\.fc1\.weight .*misshaped: post_extract_proj"):
        import_speech_encoder(fairseq, config)
    # The base layout's defaults: a checkpoint of the tiny model fits nowhere near, and says so by name.
    with pytest.raises(ValueError, match=r"misshaped: feature_extractor\.conv_layers\.0\.conv\.weight: "
                       r"got \(32, 1, 10\), expected \(512, 1, 10\)"):
        import_speech_encoder(state_dict(fixture), hubert_base())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_speech_encoder(tmp_path / "missing.pt", config)
    if importlib.util.find_spec("torch") is None:
        (tmp_path / "hubert_base_ls960.pt").write_bytes(b"not read")
        with pytest.raises(ImportError, match=r"needs torch .*\.safetensors or \.npz"):
            import_speech_encoder(tmp_path / "hubert_base_ls960.pt", config)


def test_preset_layouts():
    """The released models' sizes: 94.4M (base) and 315.4M (large) parameters, as transformers counts them."""
    for config, expected in ((hubert_base(), 94_371_712), (SpeechEncoderConfig(
            feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True, hidden_size=1024,
            num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096), 315_438_720)):
        shapes = param_shapes(config)
        count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
        # transformers also counts masked_spec_embed (hidden_size) and the weight-norm gain (kernel size).
        assert count + config.hidden_size + config.num_conv_pos_embeddings == expected, count
        assert (config.hop_length, config.receptive_field, config.frame_rate) == (320, 400, 50.0)


def test_live_parity_with_transformers(tmp_path):
    """Both families in both layouts, built by transformers with random weights, against ours; .bin and fairseq
    .pt files written by torch.save."""
    torch = pytest.importorskip("torch", reason="the live comparison needs torch")
    pytest.importorskip("transformers", reason="the live comparison needs transformers")
    script = ROOT / "tools" / "make_semantic_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_semantic_fixtures", script)
    tools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tools)
    base, large = tools.TINY["hubert_base_tiny"][1], tools.TINY["wav2vec2_large_tiny"][1]
    for family, fields in (("wav2vec2", base), ("hubert", large), ("hubert", dict(base, feat_proj_layer_norm=False))):
        model = tools.build_reference(family, fields, seed=11)
        tools.perturb(model, seed=11)
        audio, lengths = tools.make_audio(seed=12, lengths=(1600, 999, 480))
        reference, frames = tools.reference_hidden_states(model, audio, lengths)
        config = SpeechEncoderConfig.from_transformers(model.config)
        variables = import_speech_encoder(model.state_dict(), config)  # torch tensors go in as they are
        hidden, _ = jax.jit(lambda v, a, n: SpeechEncoder(config).apply(v, a, n))(variables, audio, lengths)
        errors = [relative_error(hidden[k], reference[k], frames) for k in range(len(hidden))]
        assert max(errors) < TOLERANCE, (family, fields, errors)
        assert isinstance(next(iter(model.state_dict().values())), torch.Tensor)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    fairseq = {fairseq_name(k, config): v for k, v in model.state_dict().items()}
    torch.save({"cfg": {"model": {"_name": "hubert"}}, "model": fairseq}, tmp_path / "hubert.pt")
    for path in (tmp_path / "pytorch_model.bin", tmp_path / "hubert.pt"):
        for a, b in zip(jax.tree.leaves(import_speech_encoder(path, config)), jax.tree.leaves(variables)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_parameters_shard_by_the_conformer_rules():
    """Every parameter carries logical names; sharded over data x fsdp x tensor by the trainer's default rules,
    the encoder gives the same features as on one device."""
    import flax.linen as nn
    from soundstorm_jax.configs.common import DEFAULT_RULES
    from soundstorm_jax.semantic import init_speech_encoder
    from soundstorm_jax.training import sharding

    if jax.device_count() < 8:
        pytest.skip("needs the 8 emulated CPU devices of tests/conftest.py")
    fixture = load_fixture("wav2vec2_large_tiny")
    config = config_of(fixture)
    boxed = jax.eval_shape(lambda k: init_speech_encoder(config, k), jax.random.key(0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    known = {name for name, _ in DEFAULT_RULES}
    assert {n for x in leaves for n in x.names if n is not None} <= known
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, shardings = sharding.state_shardings(boxed, mesh, DEFAULT_RULES, fsdp_min_size=0)
    specs = {str(s.spec) for s in jax.tree.leaves(shardings)}
    assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)  # really split, not replicated
    variables = import_speech_encoder(FIXTURES / "wav2vec2_large_tiny.npz", config)
    placed = jax.device_put(variables, nn.unbox(shardings))
    run = jax.jit(lambda v, a, n: SpeechEncoder(config).apply(v, a, n, output_layer=2))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        hidden, _ = run(placed, fixture["audio"][:2], fixture["lengths"][:2])
    assert relative_error(hidden, fixture["hidden"][2][:2], fixture["frame_lengths"][:2]) < TOLERANCE
