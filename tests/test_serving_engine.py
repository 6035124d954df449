"""The request engine shared by request files and the server: strict parsing, checks against the model naming
the field, and batches whose every job gets exactly what it gets alone (codes and audio)."""
import base64
import io

import jax
import numpy as np
import pytest
import soundfile

from soundstorm_jax.data.phonemes import VOCAB_SIZE
from soundstorm_jax.model.wrapper import semantic_frames
from soundstorm_jax.sampler import generate
from soundstorm_jax.sampler.generate import _program
from soundstorm_jax.serving import RequestError, parse_request
from tiny import SAMPLE_RATE, tiny_engine


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


def request(**fields):
    return parse_request(fields, allow_paths=False)


def wav_base64(audio, rate):
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_batch_gives_every_request_what_it_gets_alone(engine):
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 16, (5, 3)).tolist()
    audio_prompt = wav_base64(rng.uniform(-0.5, 0.5, 80).astype(np.float32), SAMPLE_RATE)
    requests = [request(frames=20, seed=1), request(frames=27, seed=2, prompt_codes=prompt),
                request(frames=12, seed=1, prompt_audio_base64=audio_prompt), request(frames=32, seed=7)]
    jobs = [engine.resolve(r) for r in requests]
    assert len(engine.plan(jobs)) == 1  # One bucket (32 frames), one set of options: one batch.
    together = engine.run(jobs)
    for r, got in zip(requests, together):
        alone = engine.run([engine.resolve(r)])[0]
        np.testing.assert_array_equal(got.codes, alone.codes)
        np.testing.assert_array_equal(got.audio, alone.audio)
        assert got.codes.shape == (r.frames, 3) and got.audio.shape == (r.frames * 8,)
    np.testing.assert_array_equal(together[1].codes[:5], np.asarray(prompt))  # The prompt is kept bit for bit.
    assert not np.array_equal(together[0].codes, together[3].codes[:20])  # Different seeds, different codes.


def test_a_request_is_sample_zero_of_generate_with_its_seed(engine):
    got = engine.run([engine.resolve(request(frames=12, seed=5, temperature=0.7, top_k=4))])[0]
    expected = generate(engine.model, engine.variables, 12, key=jax.random.split(jax.random.PRNGKey(5), 1),
                        temperature=0.7, top_k=4, frame_bucket=32)
    np.testing.assert_array_equal(got.codes, np.asarray(expected)[0])


def test_text_with_a_prompt_covers_both(engine):
    job = engine.resolve(request(text="Hello.", prompt_codes=[[1, 2, 3]] * 6, seed=0))
    assert job.semantic[0] == engine.model.net.semantic_pad_id  # The prompt's own frames: unconditioned.
    assert job.frames == semantic_frames(len(job.semantic), engine.model.net.acoustic_per_semantic) > 6
    assert job.semantic[-1] != engine.model.net.semantic_pad_id


def test_batches_group_by_bucket_and_options_and_round_to_powers_of_two(engine):
    jobs = [engine.resolve(request(frames=f, temperature=t)) for f, t in
            ((10, 1.0), (40, 1.0), (12, 1.0), (11, 0.5), (13, 1.0), (14, 1.0), (15, 1.0))]
    batches = engine.plan(jobs)
    assert [[j.frames for j in b] for b in batches] == [[10, 12, 13, 14], [15], [40], [11]]
    assert [engine.batch_size(k) for k in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 4]
    before = _program._cache_size()
    engine.run(jobs[2:3] + jobs[4:6])  # 3 jobs compile the 4-wide program ...
    engine.run(batches[0])             # ... that 4 reuse.
    assert _program._cache_size() - before <= 1
    with pytest.raises(ValueError, match="one batch key"):
        engine.run(jobs[:2])


@pytest.mark.parametrize("fields, field, message", [
    (dict(frames=4, colour=1), "colour", "unknown field"),
    (dict(frames=4, temprature=1.0), "temprature", "did you mean 'temperature'"),
    (dict(seed=1), "frames", "give the length"),
    (dict(frames=0), "frames", "positive integer"),
    (dict(frames=True), "frames", "positive integer"),
    (dict(frames=4, top_p=1.5), "top_p", r"\(0, 1\]"),
    (dict(frames=4, temperature="hot"), "temperature", "number"),
    (dict(text="caf\u00e9 \u2603"), "text", "cannot speak"),
    (dict(frames=4, prompt_audio="voice.wav"), "prompt_audio", "prompt_audio_base64"),
    (dict(semantic="ids.npy"), "semantic", "request files only"),
    (dict(frames=4, prompt_codes=[[1, 2], [3]]), "prompt_codes", "same number of levels"),
    (dict(frames=4, prompt_text="hi"), "prompt_text", "goes with text"),
    (dict(frames=4, seconds=1.0), "seconds", "not both"),
    (dict(frames=4, guidance_scale=2.0), "guidance_scale", "needs conditioning"),
    (dict(frames=4, steps=[2, 0]), "steps", "positive int"),
    (dict(frames=4, name="../x"), "name", "file stem"),
    (dict(frames=4, seed=-1), "seed", r"\[0, 2\*\*32\)"),
])
def test_bad_fields_are_named_before_anything_runs(fields, field, message):
    with pytest.raises(RequestError, match=message) as info:
        parse_request(fields, allow_paths=False)
    assert info.value.field == field
    with pytest.raises(RequestError, match="must be a JSON object"):
        parse_request([fields], allow_paths=True)


@pytest.mark.parametrize("fields, field, message", [
    (dict(frames=4, top_k=17), "top_k", r"\[1, 16\]"),
    (dict(frames=4, steps=[2, 1]), "steps", "3 levels"),
    (dict(frames=201), "frames", "at most 200 frames"),
    (dict(seconds=1.0), "seconds", "at most 200 frames"),
    (dict(frames=4, prompt_codes=[[1, 2, 3]] * 5), "prompt_codes", "only 4"),
    (dict(frames=4, prompt_codes=[[1, 2, 16]]), "prompt_codes", r"\[0, 16\)"),
    (dict(frames=4, prompt_codes=[[1, 2, 3, 4]]), "prompt_codes", "4 levels"),
    (dict(semantic=[1, VOCAB_SIZE + 5]), "semantic", "must lie in"),
    (dict(frames=4, prompt_audio_base64="not base64!"), "prompt_audio_base64", "base64"),
    (dict(frames=4, prompt_audio_base64=base64.b64encode(b"RIFF....WAVEjunk").decode()), "prompt_audio_base64",
     "cannot read"),
    (dict(frames=4, prompt_audio_base64=wav_base64(np.array([0.1, np.nan] * 8, np.float32), SAMPLE_RATE)),
     "prompt_audio_base64", "NaN"),
    (dict(text="Hello.", voice="no-such-voice"), "voice", "no voice named"),
])
def test_requests_the_model_cannot_serve_are_named(engine, fields, field, message):
    with pytest.raises(RequestError, match=message) as info:
        engine.resolve(request(**fields))
    assert info.value.field == field


def test_prompt_audio_at_another_rate_is_resampled_with_a_notice(engine):
    audio = np.sin(np.arange(400) / 5).astype(np.float32) * 0.3
    job = engine.resolve(request(frames=30, prompt_audio_base64=wav_base64(audio, 16000)))
    assert job.prompt.shape == (25, 3)  # 400 samples at 16 kHz -> 200 at 8 kHz -> 25 frames of 8.
    assert any("16000 Hz; resampled" in n for n in job.notices)


def test_an_engine_on_a_mesh_gives_the_single_device_results(engine):
    from soundstorm_jax.training import sharding
    requests = [request(frames=f, seed=s) for f, s in ((20, 1), (25, 2), (17, 3))]
    on_mesh = tiny_engine(mesh=sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2}))
    for alone, sharded in zip(engine.generate(requests), on_mesh.generate(requests)):
        np.testing.assert_array_equal(sharded.codes, alone.codes)
        np.testing.assert_array_equal(sharded.audio, alone.audio)
