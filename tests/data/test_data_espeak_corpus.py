"""The embedded eSpeak NG corpus and the phonemiser."""
import concurrent.futures
import json
import math
import os

import numpy as np
import pytest

from soundstorm_jax.data import espeak_corpus, espeak_ffi, grammar, phonemes, pipeline

pytestmark = pytest.mark.skipif(
    not espeak_ffi.is_available(),
    reason="espeakng-loader is not installed (pip install espeakng-loader)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny corpus, built once for this module; returns (builder, audio folder)."""
    cache = str(tmp_path_factory.mktemp("cache"))
    builder = espeak_corpus.prepare_corpus("tiny", seed=0, cache_dir=cache, progress=False)
    return builder, espeak_corpus.build_corpus_folder("tiny", 0, cache_dir=cache)


def _records(builder):
    return [r for split in ("train", "validation") for r in builder.as_data_source(split)]


def _files(root):
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                found[os.path.relpath(os.path.join(directory, name), root)] = f.read()
    return found


def test_same_seed_gives_identical_bytes(tiny, tmp_path):
    _, root = tiny
    again = espeak_corpus.build_corpus_folder("tiny", 0, cache_dir=str(tmp_path), progress=False)
    first, second = _files(root), _files(again)
    assert len(first) == 3 * 72 + 1  # wav + json + semantic.npy per utterance, + marker.
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_the_script_is_a_function_of_the_seed():
    assert espeak_corpus.utterances("tiny", 0) == espeak_corpus.utterances("tiny", 0)
    other = espeak_corpus.utterances("tiny", 1)
    assert [u.text for u in other] != [u.text for u in espeak_corpus.utterances("tiny", 0)]
    assert grammar.sentences(3, 20) == grammar.sentences(3, 20) != grammar.sentences(4, 20)
    small = espeak_corpus.SIZES["small"]
    assert len({s.voice for s in espeak_corpus.speakers(small.num_speakers, 0)}) == 40


def test_tiny_is_a_few_minutes_of_non_silent_speech(tiny):
    builder, _ = tiny
    records = _records(builder)
    assert len(records) == 72
    seconds = sum(len(r["audio"]) for r in records) / 16000
    assert 120 < seconds < 600
    for r in records:
        assert r["sample_rate"] == 16000
        duration = len(r["audio"]) / 16000
        assert 0.5 < duration < 15, r["id"]
        rms = np.sqrt(np.mean((r["audio"] / 32767.0) ** 2))
        assert rms > 0.02, r["id"]
        assert r["text"] and r["speaker"]
    meta = builder.info.metadata
    assert meta["semantic_rate"] == 50.0 and meta["semantic_vocab_size"] == phonemes.VOCAB_SIZE
    assert meta["phonemes"] == list(phonemes.PHONEMES)


def test_validation_speakers_are_held_out(tiny):
    builder, _ = tiny
    train = {r["speaker"] for r in builder.as_data_source("train")}
    val = {r["speaker"] for r in builder.as_data_source("validation")}
    assert len(train) == 5 and len(val) == 1 and not train & val


def test_phoneme_frames_cover_the_audio_and_follow_its_energy(tiny):
    builder, root = tiny
    silent, spoken = [], []
    for r in _records(builder):
        audio, ids = r["audio"] / 32767.0, r["semantic_ids"]
        assert len(ids) == math.ceil(len(audio) * 50 / 16000)
        assert ids.min() >= phonemes.SILENCE_ID and ids.max() < phonemes.VOCAB_SIZE
        assert not np.any(ids == phonemes.UNKNOWN_ID)  # The inventory covers the corpus.
        assert len(set(ids.tolist())) > 8
        with open(os.path.join(root, r["id"].decode() + ".json")) as f:
            meta = json.load(f)
        starts = np.array(meta["start_seconds"])
        assert np.all(np.diff(starts) >= 0) and starts[-1] < len(audio) / 16000
        # Frame f's 20 ms of audio: pauses must be much quieter than phonemes.
        frames = np.pad(audio, (0, len(ids) * 320 - len(audio))).reshape(len(ids), 320)
        rms = np.sqrt(np.mean(frames ** 2, axis=1))
        silent.extend(rms[ids == phonemes.SILENCE_ID])
        spoken.extend(rms[ids != phonemes.SILENCE_ID])
    assert np.mean(silent) < 0.25 * np.mean(spoken)


def _median_f0(audio, sample_rate=espeak_ffi.SAMPLE_RATE):
    """Median pitch (Hz) over voiced 40 ms frames, by autocorrelation in 60-400 Hz."""
    x = audio.astype(np.float64) / 32767.0
    size = int(0.04 * sample_rate)
    f0 = []
    for start in range(0, len(x) - size, size):
        frame = x[start:start + size] - x[start:start + size].mean()
        if np.sqrt(np.mean(frame ** 2)) < 0.02:
            continue
        ac = np.correlate(frame, frame, "full")[size - 1:]
        lo, hi = sample_rate // 400, sample_rate // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0.append(sample_rate / lag)
    return float(np.median(f0))


def test_different_voices_differ():
    text = "The old garden had better water, hurry."
    male = espeak_ffi.synthesize(text, voice="en-us+m1", pitch=50)
    female = espeak_ffi.synthesize(text, voice="en-us+f3", pitch=50)
    assert _median_f0(female.audio) > 1.3 * _median_f0(male.audio)
    american = phonemes.phonemize(text, voice="en-us")
    british = phonemes.phonemize(text, voice="en-gb-x-rp")
    assert american.phonemes != british.phonemes  # e.g. the flapped t of "better".
    with pytest.raises(ValueError, match="no voice named 'xx-nowhere'"):
        espeak_ffi.synthesize(text, voice="xx-nowhere")


def test_phonemiser_times_free_text():
    slow = phonemes.phonemize("Hello world, this is a test.", rate=120, frame_rate=50.0)
    fast = phonemes.phonemize("Hello world, this is a test.", rate=300, frame_rate=50.0)
    for timed in (slow, fast):
        assert len(timed.frame_ids) == math.ceil(timed.duration_seconds * 50 - 1e-9)
        assert timed.frame_ids.dtype == np.int32
        assert phonemes.phoneme_id("h") in timed.frame_ids
    assert len(slow.frame_ids) > 1.5 * len(fast.frame_ids)
    assert len(phonemes.phonemize("Hello.", frame_rate=25.0).frame_ids) * 2 == pytest.approx(
        len(phonemes.phonemize("Hello.", frame_rate=50.0).frame_ids), abs=1)
    with pytest.raises(ValueError, match=r"cannot speak: \['é', '☃'\]"):
        phonemes.phonemize("héllo ☃")
    with pytest.raises(ValueError, match="nothing to speak"):
        phonemes.phonemize(" ... ")


def test_phonemiser_is_thread_safe():
    jobs = [(text, voice) for text in grammar.sentences(5, 3)
            for voice in ("en-us+m2", "en-gb-x-rp+f1", "en-029+m5", "en-us-nyc+f4")]
    serial = [phonemes.phonemize(t, voice=v).phonemes for t, v in jobs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda job: phonemes.phonemize(job[0], voice=job[1]).phonemes,
                                 jobs * 2))
    assert threaded == serial * 2


def test_corpus_feeds_the_pipeline_with_aligned_phonemes(tiny):
    builder, _ = tiny
    source = builder.as_data_source("train")
    config = pipeline.PipelineConfig(batch_size=4, max_frames=16000, feature="audio",
                                     frame_rate=16000.0, semantic_rate=50.0)
    batch = next(pipeline.make_train_iterator(config, source, seed=0, process_index=0,
                                              process_count=1))
    assert batch["semantic_ids"].shape == (4, 50)
    for audio, mask, sem, sem_mask, index in zip(batch["audio"], batch["mask"],
                                                 batch["semantic_ids"], batch["semantic_mask"],
                                                 batch["index"]):
        record = source[int(index)]
        wave = record["audio"] / 32767.0
        starts = [s for s in range(0, len(wave) - 16000 + 1, 320)
                  if np.allclose(wave[s:s + 16000], audio, atol=1e-6)]
        assert mask.all() and sem_mask.all() and starts
        np.testing.assert_array_equal(sem, record["semantic_ids"][starts[0] // 320:][:50])


def test_worker_failures_are_reported(tmp_path):
    job = espeak_ffi.Job("Hello there.", "zz-nowhere", 170, 50, 1, str(tmp_path / "a.npz"))
    with pytest.raises(RuntimeError, match="(?s)eSpeak worker failed.*no voice named 'zz-nowhere'"):
        list(espeak_ffi.synthesize_batch([job]))
