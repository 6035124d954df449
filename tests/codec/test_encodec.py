"""EnCodec 24 kHz: parity with the PyTorch ``encodec`` package, the real model's layout, and bad inputs.

Fixtures come from ``tools/make_encodec_fixtures.py`` (see its docstring for every key):
``encodec_24khz.npz`` holds a small model with the 24 kHz structure plus its codes and decoded
audio at 1.5 and 6 kbps; ``encodec_24khz_layout.json`` the real model's tensor names and shapes.
The live test builds the real 24 kHz model when torch and encodec are installed.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from codec_test_utils import FAST_COMPILE, run_once
from soundstorm_jax.codec import EnCodec, EnCodecCodec, import_encodec_state_dict, load_encodec
from soundstorm_jax.codec.encodec_import import param_shapes

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / 'tests' / 'fixtures' / 'encodec_24khz.npz'
LAYOUT = ROOT / 'tests' / 'fixtures' / 'encodec_24khz_layout.json'
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope='module')
def small_model(fixture):
    config = json.loads(str(fixture['config']))
    return EnCodec(dimension=config['dimension'], n_filters=config['n_filters'],
                   target_bandwidths=tuple(config['target_bandwidths']), bandwidth=6.0)


@pytest.fixture(scope='module')
def codec(small_model):
    """The small model with its fixture weights, read from the .npz path."""
    return load_encodec(FIXTURE, small_model, compiler_options=FAST_COMPILE)


def _state_dict(fixture) -> dict[str, np.ndarray]:
    return {k[len('param/'):]: v for k, v in fixture.items() if k.startswith('param/')}


@pytest.mark.parametrize('bandwidth, levels', [(1.5, 2), (6.0, 8)])
def test_codes_and_audio_match_the_reference(fixture, codec, bandwidth, levels):
    audio, codes_ref, audio_ref = fixture['audio'], fixture[f'codes/{bandwidth}'], fixture[f'decoded/{bandwidth}']
    at_bw = codec.with_bandwidth(bandwidth)
    assert at_bw.num_quantizers == levels and codes_ref.shape == (2, math.ceil(7000 / 320), levels)
    codes = np.asarray(at_bw.encode(audio, sample_rate=24000))
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, codes_ref)
    assert len(np.unique(codes_ref[..., 0])) > 5  # the codes are not degenerate
    decoded = np.asarray(at_bw.decode(codes_ref))
    assert decoded.shape == audio_ref.shape == (2, 22 * 320)
    err = np.abs(decoded - audio_ref).max()
    assert err < TOLERANCE, f"max abs error {err:.2e} at {bandwidth} kbps"
    # The decoded audio depends on the codes (the fixture's weights keep every layer visible in the output).
    other = fixture[f'decoded/{1.5 if bandwidth == 6.0 else 6.0}']
    assert min(np.abs(audio_ref[0] - audio_ref[1]).mean(), np.abs(audio_ref - other).mean()) > 100 * TOLERANCE
    trimmed = np.asarray(at_bw.decode(codes_ref, length=7000))
    np.testing.assert_array_equal(trimmed, decoded[:, :7000])


def test_short_input_matches_the_reference(fixture, codec):
    """500 samples = 2 frames: the bottleneck's reflect padding is wider than its input."""
    codes = np.asarray(codec.encode(fixture['short/audio']))
    np.testing.assert_array_equal(codes, fixture['short/codes'])
    err = np.abs(np.asarray(codec.decode(codes)) - fixture['short/decoded']).max()
    assert err < TOLERANCE, f"max abs error {err:.2e}"


def test_linen_call_reconstructs_at_the_input_length(fixture, codec):
    """``model.apply`` (no wrapper) = encode then decode trimmed, like the reference ``forward``."""
    audio = fixture['short/audio']
    recon = run_once(lambda v, a: codec.model.apply(v, a), codec.variables, audio)
    assert recon.shape == audio.shape
    np.testing.assert_allclose(np.asarray(recon), fixture['short/decoded'][:, :audio.shape[1]], atol=TOLERANCE)


def test_defaults_have_the_real_24khz_layout():
    """EnCodec() takes exactly the state dict of ``encodec_model_24khz`` (names and shapes, no values)."""
    layout = json.loads(LAYOUT.read_text())['state_dict']
    model = EnCodec()
    assert (model.target_sample_hz, model.hop_length, model.frame_rate) == (24000, 320, 75.0)
    assert (model.codebook_size, model.max_quantizers, model.num_quantizers) == (1024, 32, 8)
    assert [model.levels_for_bandwidth(bw) for bw in (1.5, 3.0, 6.0, 12.0, 24.0)] == [2, 4, 8, 16, 32]
    fake = {name: np.broadcast_to(np.float32(1.0), shape) for name, shape in layout.items()}
    variables = import_encodec_state_dict(fake, model)
    shapes = param_shapes(model)
    assert jax.tree.map(np.shape, variables['params']) == jax.tree.map(lambda s: s.shape, shapes)
    # Every value is used once (gains fold into kernels; LSTM bias pairs sum; codebook statistics are ignored).
    used = [shape for name, shape in layout.items()
            if not name.endswith(('weight_g', 'bias_hh_l0', 'bias_hh_l1', 'inited', 'cluster_size', 'embed_avg'))]
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == sum(int(np.prod(s)) for s in used)


def test_bad_state_dicts_list_every_offending_name(fixture, small_model):
    good = _state_dict(fixture)
    bad = dict(good)
    del bad['encoder.model.0.conv.conv.weight_g']
    del bad['decoder.model.1.lstm.bias_hh_l1']
    bad['decoder.model.99.conv.conv.bias'] = np.zeros(3, np.float32)
    bad['quantizer.vq.layers.3._codebook.embed'] = np.zeros((1024, 31), np.float32)
    bad['decoder.model.3.convtr.convtr.weight_v'] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError) as err:
        import_encodec_state_dict(bad, small_model)
    message = str(err.value)
    for text in ['2 missing', 'encoder.model.0.conv.conv.weight_g (4, 1, 1)', 'decoder.model.1.lstm.bias_hh_l1',
                 '1 unexpected: decoder.model.99.conv.conv.bias (3,)', '2 misshaped',
                 'quantizer.vq.layers.3._codebook.embed: got (1024, 31), expected (1024, 32)',
                 'decoder.model.3.convtr.convtr.weight_v: got (1, 2, 3), expected (64, 32, 16)']:
        assert text in message, (text, message)
    # A state dict of the real 24 kHz model does not fit the small one: named, not a shape crash.
    layout = json.loads(LAYOUT.read_text())['state_dict']
    with pytest.raises(ValueError, match=r"unexpected: .*quantizer\.vq\.layers\.31\._codebook\.embed"):
        import_encodec_state_dict({k: np.zeros(v, np.float32) for k, v in layout.items()}, small_model)


def test_state_dict_forms(fixture, small_model, tmp_path):
    """Unnormalised weights, the parametrization names and an uninitialised codebook are handled."""
    good = _state_dict(fixture)
    reference = import_encodec_state_dict(good, small_model)['params']
    prefix = 'encoder.model.0.conv.conv'
    g, v = good.pop(f'{prefix}.weight_g'), good.pop(f'{prefix}.weight_v')
    good[f'{prefix}.parametrizations.weight.original0'], good[f'{prefix}.parametrizations.weight.original1'] = g, v
    prefix = 'decoder.model.15.conv.conv'
    g, v = good.pop(f'{prefix}.weight_g'), good.pop(f'{prefix}.weight_v')
    good[f'{prefix}.weight'] = g * v / np.sqrt((v.astype(np.float64) ** 2).sum((1, 2), keepdims=True))
    good['quantizer.vq.layers.0._codebook.inited'] = np.zeros(1, np.float32)
    with pytest.warns(UserWarning, match=r'codebook levels \[0\] have inited == 0'):
        params = import_encodec_state_dict(good, small_model)['params']
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        import_encodec_state_dict(tmp_path / 'missing.th', small_model)
    if importlib.util.find_spec('torch') is None:
        (tmp_path / 'model.th').write_bytes(b'not read')
        with pytest.raises(ImportError, match='needs torch'):
            import_encodec_state_dict(tmp_path / 'model.th', small_model)


BAD_AUDIO = [
    (np.full((2, 400), np.nan, np.float32), {}, 'audio must be finite'),
    (np.zeros(400, np.float32), {}, r'shape \(batch, samples\).*audio\[None\]'),
    (np.zeros((1, 1, 400), np.float32), {}, r'audio must have shape \(batch, samples\)'),
    (np.zeros((1, 400), np.float32), {'sample_rate': 16000}, r'sample_rate=16000 Hz differs.*24000.*resample'),
    (np.zeros((1, 400), np.float32), {'num_levels': 9}, r'num_levels must be in \[1, 8\]'),
]


@pytest.mark.parametrize('audio, kwargs, message', BAD_AUDIO)
def test_bad_audio_is_refused_before_compiling(codec, audio, kwargs, message):
    compiled_before = codec._encode._cache_size()
    with pytest.raises(ValueError, match=message):
        codec.encode(audio, **kwargs)
    assert codec._encode._cache_size() == compiled_before


BAD_CODES = [
    (np.full((1, 3, 9), 1, np.int32), 'too many levels.*at most 8 levels'),
    (np.full((1, 3, 2), 1024, np.int32), r'codes must lie in \[0, 1024\); found 1024'),
    (np.full((1, 3), 1, np.int32), r'shape \(batch, frames, levels\)'),
]


@pytest.mark.parametrize('codes, message', BAD_CODES)
def test_bad_codes_are_refused_before_compiling(codec, codes, message):
    compiled_before = codec._decode._cache_size()
    with pytest.raises(ValueError, match=message):
        codec.decode(codes)
    assert codec._decode._cache_size() == compiled_before


def test_unsupported_bandwidth_is_refused(codec):
    with pytest.raises(ValueError, match=r'bandwidth=5.0 kbps is not supported; choose one of \(1.5, 3.0, 6.0\)'):
        codec.with_bandwidth(5.0)
    with pytest.raises(ValueError, match='bandwidth=2.0 kbps'):
        EnCodecCodec(EnCodec(bandwidth=2.0), codec.variables)


def test_live_parity_with_the_encodec_package(tmp_path):
    """The real 24 kHz model (random weights, fixed seed, perturbed as for the fixture) against ours."""
    torch = pytest.importorskip('torch', reason='the live comparison needs torch')
    pytest.importorskip('encodec', reason='the live comparison needs the encodec package')
    spec = importlib.util.spec_from_file_location('make_encodec_fixtures', ROOT / 'tools' / 'make_encodec_fixtures.py')
    tools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tools)
    audio = tools.make_audio(seed=3, batch=2, samples=4000)
    reference = tools.build_reference(small=False, seed=0)
    tools.perturb(reference, audio, seed=0)
    state_dict = reference.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state_dict.values())  # tensors go in as they are
    codec = load_encodec(state_dict, EnCodec(), compiler_options=FAST_COMPILE)
    for bandwidth in (1.5, 6.0):
        codes_ref, audio_ref = tools.reference_outputs(reference, audio, bandwidth)
        at_bw = codec.with_bandwidth(bandwidth)
        np.testing.assert_array_equal(np.asarray(at_bw.encode(audio)), codes_ref)
        err = np.abs(np.asarray(at_bw.decode(codes_ref)) - audio_ref).max()
        assert err < TOLERANCE, f"max abs error {err:.2e} at {bandwidth} kbps"
    # The same weights through a checkpoint file read with torch.load.
    torch.save(state_dict, tmp_path / 'encodec_24khz.th')
    from_file = import_encodec_state_dict(tmp_path / 'encodec_24khz.th', EnCodec())['params']
    for a, b in zip(jax.tree.leaves(from_file), jax.tree.leaves(codec.variables['params'])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
