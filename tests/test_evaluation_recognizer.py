"""The speech metric's machinery on the tiny eSpeak corpus: the phoneme recognizer, intelligibility, the voice measure.

One recognizer is trained for the module on the training voices' clips (seconds); the held-out voice's clips are
never seen in training. Bounds are wide: the figures on this corpus are about 0.70 on held-out originals and
0.04 against a wrong sentence (docs/drafts/intelligibility.md).
"""
import glob
import json
import os

import jax
import numpy as np
import pytest
import soundfile

from soundstorm_jax.data import espeak_corpus
from soundstorm_jax.evaluation import (enroll, features, fit_voice_space, frame_accuracy, intelligibility, median_f0,
                                       RecognizerConfig, recognize, train_recognizer, voice_embedding, voice_rank)
from soundstorm_jax.evaluation.report import Clip, GeneratedClip, markdown, speech_report

pytestmark = pytest.mark.skipif(not espeak_corpus.espeak_ffi.is_available(), reason="needs eSpeak NG")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """{'train': [...], 'validation': [...]} of (audio, ids, speaker, utterance number)."""
    root = espeak_corpus.build_corpus_folder("tiny", 0, cache_dir=str(tmp_path_factory.mktemp("cache")),
                                             progress=False)
    clips = {}
    for split in ("train", "validation"):
        clips[split] = []
        for wav in sorted(glob.glob(os.path.join(root, split, "*", "*.wav"))):
            audio, rate = soundfile.read(wav, dtype="float32")
            assert rate == 16000
            with open(wav[:-4] + ".json") as f:
                speaker = json.load(f)["speaker"]
            clips[split].append((audio, np.load(wav[:-4] + ".semantic.npy"), speaker, int(wav[-7:-4])))
    return clips


@pytest.fixture(scope="module")
def trained(corpus):
    train = corpus["train"]
    return train_recognizer([c[0] for c in train], [c[1] for c in train], jax.random.PRNGKey(0))


def held_out(corpus):
    return [c[0] for c in corpus["validation"]], [c[1] for c in corpus["validation"]]


def test_features_are_aligned_with_the_corpus_phoneme_frames(corpus):
    for audio, ids, _, _ in corpus["train"][:5]:
        mel = features.log_mel(audio)
        assert mel.shape == (len(ids), 40)
        assert np.allclose(mel.mean(axis=0), 0, atol=1e-4)
    # A tone from sample 4800 = the start of frame 15: frames whose 32 ms window ends before it (centres up to
    # frame 13's, 4320 + 256 samples) are silent, frames from 15 on are loud.
    audio = np.zeros(16001, np.float32)
    audio[4800:] = np.sin(np.arange(11201) * 2 * np.pi * 440 / 16000)
    loudness = features.log_mel(audio).max(axis=1)
    assert len(loudness) == 51  # ceil(16001 / 320)
    assert np.all(loudness[:14] == loudness[0]) and loudness[15:50].min() > loudness[0]


def test_the_recognizer_beats_chance_on_held_out_originals(corpus, trained):
    recognizer, losses = trained
    assert losses[-1] < 0.5 * losses[0]
    audio, ids = held_out(corpus)
    result = frame_accuracy(recognizer, audio, ids)
    every = np.concatenate(ids)
    majority = np.bincount(every).max() / len(every)  # always guessing the commonest id (silence)
    assert result["frames"] == len(every)
    assert result["accuracy"] > 0.5 and result["accuracy"] > majority + 0.3, (result["accuracy"], majority)


def test_the_wrong_sentence_scores_far_below_the_right_one(corpus, trained):
    audio, ids = held_out(corpus)
    wrong = ids[1:] + ids[:1]
    result = intelligibility(trained[0], originals=audio, original_ids=ids, reconstructions=audio,
                             generated=audio, generated_ids=ids, wrong_ids=wrong)
    right = result["originals"]["accuracy"]
    assert result["reconstructions"]["accuracy"] == result["generated"]["accuracy"] == right
    assert result["reconstruction_ratio"] == result["generated_ratio"] == 1.0
    assert result["wrong_sentence"]["accuracy"] < 0.3 * right, result["wrong_sentence"]
    # Over the overlap: each pair is compared on min(len) frames.
    assert result["wrong_sentence"]["frames"] == sum(min(len(a), len(b)) for a, b in zip(ids, wrong))


def test_degraded_speech_scores_lower(corpus, trained):
    audio, ids = held_out(corpus)
    clean = frame_accuracy(trained[0], audio, ids)["accuracy"]
    rng = np.random.default_rng(0)
    noisy = [a + rng.normal(0, 3 * np.std(a), a.shape).astype(np.float32) for a in audio]  # SNR about -10 dB
    spectrum = [np.fft.rfft(a) for a in audio]
    lowpass = [np.fft.irfft(s * (np.fft.rfftfreq(len(a), 1 / 16000) < 400), len(a)).astype(np.float32)
               for s, a in zip(spectrum, audio)]
    for degraded in (noisy, lowpass):
        assert frame_accuracy(trained[0], degraded, ids)["accuracy"] < clean - 0.15


def test_lengths_are_compared_over_their_overlap(corpus, trained):
    audio, ids = held_out(corpus)
    full = frame_accuracy(trained[0], audio[:1], ids[:1])
    longer_ids = frame_accuracy(trained[0], audio[:1], [np.concatenate([ids[0], np.full(50, 5)])])
    assert (longer_ids["accuracy"], longer_ids["frames"]) == (full["accuracy"], full["frames"])
    half = len(ids[0]) // 2
    short_audio = frame_accuracy(trained[0], [audio[0][:half * 320]], ids[:1])
    assert short_audio["frames"] == half
    padded = frame_accuracy(trained[0], audio[:1], [np.concatenate([ids[0][:half], np.zeros(3, np.int32)])])
    assert padded["frames"] == half  # pad ids are not scored


def test_a_batch_scores_like_its_examples_one_by_one(corpus, trained):
    audio, ids = held_out(corpus)
    batch = recognize(trained[0], audio[:5], batch_size=8)
    for a, predicted in zip(audio[:5], batch):
        assert np.array_equal(recognize(trained[0], [a])[0], predicted)
    pooled = frame_accuracy(trained[0], audio[:5], ids[:5])
    weights = [len(i) for i in ids[:5]]
    assert pooled["accuracy"] == pytest.approx(np.average(pooled["per_clip"], weights=weights))


def test_the_same_seed_trains_the_same_recognizer_and_a_cache_keeps_it(corpus, trained, tmp_path, monkeypatch):
    """Trained again with a cache folder: the same parameters and losses, kept there; the next call with the
    same inputs loads them (training would fail); other data, another key or another config would miss."""
    from soundstorm_jax.evaluation import recognizer as recognizer_lib

    audio, ids = [c[0] for c in corpus["train"]], [c[1] for c in corpus["train"]]
    runs = [train_recognizer(audio, ids, jax.random.PRNGKey(0), cache_dir=str(tmp_path))]
    assert len(list(tmp_path.glob("recognizer-*.msgpack"))) == 1
    monkeypatch.setattr(recognizer_lib, "_train", lambda *a: pytest.fail("trained instead of loading the cache"))
    runs.append(train_recognizer(audio, ids, jax.random.PRNGKey(0), cache_dir=str(tmp_path)))
    for again, losses in runs:
        same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), again.params, trained[0].params))
        assert same and all(same) and np.array_equal(losses, trained[1])
        assert np.array_equal(recognize(again, audio[:2])[1], recognize(trained[0], audio[:2])[1])
    digest = recognizer_lib._digest(audio, ids, jax.random.PRNGKey(0), RecognizerConfig())
    assert len({digest, recognizer_lib._digest(audio, ids, jax.random.PRNGKey(1), RecognizerConfig()),
                recognizer_lib._digest(audio[:-1], ids[:-1], jax.random.PRNGKey(0), RecognizerConfig()),
                recognizer_lib._digest(audio, ids, jax.random.PRNGKey(0), RecognizerConfig(steps=10))}) == 4


def test_the_voice_measure_ranks_the_true_speaker_first(corpus):
    clips = corpus["train"] + corpus["validation"]
    embeddings = np.stack([voice_embedding(c[0]) for c in clips])
    speakers = np.array([c[2] for c in clips])
    is_train = np.array([i < len(corpus["train"]) for i in range(len(clips))])
    enrolment = np.array([c[3] < 8 for c in clips])  # utterances 8..11 of every voice are the test clips
    space = fit_voice_space(embeddings[is_train & enrolment], speakers[is_train & enrolment])
    voices = enroll(space, embeddings[enrolment], speakers[enrolment])
    assert len(voices) == 6
    for i in np.where(~enrolment)[0]:  # held-out clips of the training voices and of the held-out voice
        result = voice_rank(space, voices, embeddings[i], speakers[i])
        assert result["rank"] == 1 and result["margin"] > 0 and result["nearest"] == speakers[i], (speakers[i], result)
    other = next(s for s in voices if s != speakers[0])
    assert voice_rank(space, voices, embeddings[0], other)["rank"] > 1


def test_the_speech_report_is_complete(corpus, trained):
    train = [Clip(a, i, s) for a, i, s, n in corpus["train"] if n < 6]
    held = [Clip(a, i, s) for a, i, s, _ in corpus["validation"][:4]]
    generated = [GeneratedClip(c.audio, c.phoneme_ids, held[(k + 1) % 4].phoneme_ids, c.speaker)
                 for k, c in enumerate(held[:2])]
    report = speech_report(train, held, jax.random.PRNGKey(1), reconstructions=[c.audio for c in held],
                           generated=generated, recognizer=trained[0])
    scores = report["intelligibility"]
    assert set(scores) == {"originals", "reconstructions", "generated", "wrong_sentence", "reconstruction_ratio",
                           "generated_ratio"}
    assert report["recognizer"]["training_clips"] == 30 and report["voice"]["voices"] == 6
    assert report["voice"]["originals"]["top1"] == 1.0 and report["voice"]["originals"]["clips"] == 4
    assert len(report["samples"]) == 2 and all(s["voice_rank"] == 1 for s in report["samples"])
    assert scores["wrong_sentence"]["accuracy"] < 0.5 * scores["generated"]["accuracy"]
    assert json.loads(json.dumps(report)) == report  # JSON-ready
    lines = "\n".join(markdown(report))
    assert "| codec reconstructions | the originals' |" in lines and "| generated |" in lines
    # Reconstructions and generated speech that are the originals keep their pitch.
    pitch = report["pitch"]
    assert 80 < pitch["originals_hz"] < 400 and pitch["reconstructions_hz"] == pitch["originals_hz"]
    assert pitch["reconstruction_ratio"] == 1.0 and abs(pitch["generated_ratio"] - 1) < 0.1
    assert all(80 < s["f0_hz"] < 400 for s in report["samples"]) and "| reconstructions |" in lines


def test_median_f0_hears_a_harmonic_voices_pitch_and_none_in_noise_or_silence():
    rate = features.FeatureConfig().sample_rate
    t = np.arange(rate) / rate

    def voiced(f0):  # one second of a glottal-like harmonic series, with a slow vibrato
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 3 * t))) / rate
        return (0.1 * sum(np.sin(k * phase) / k for k in range(1, 10))).astype(np.float32)

    for f0 in (110.0, 190.0, 230.0):
        assert abs(median_f0(voiced(f0)) / f0 - 1) < 0.03, f0
    assert np.isnan(median_f0(np.random.default_rng(0).normal(size=rate).astype(np.float32) * 0.1))
    assert np.isnan(median_f0(np.zeros(rate, np.float32)))
