"""Audio decoding and the AudioFolder TFDS builder (ArrayRecord, no TensorFlow)."""
import os
import sys

import numpy as np
import pytest
import soundfile

from data_test_utils import tone, write_wav
from soundstorm_jax.data import audio_folder, audio_io


def test_read_audio_roundtrips_int16_and_mixes_stereo_down(tmp_path):
    path = str(tmp_path / "a.wav")
    x = tone(0.1, 16000)
    write_wav(path, x, 16000)
    audio, rate = audio_io.read_audio(path, dtype=np.int16)
    assert rate == 16000 and audio.dtype == np.int16 and audio.shape == x.shape
    np.testing.assert_allclose(audio / 32767.0, x, atol=1.5 / 32767)

    stereo = str(tmp_path / "s.wav")
    write_wav(stereo, np.stack([x, np.zeros_like(x)], axis=1), 16000)
    mono, _ = audio_io.read_audio(stereo, dtype=np.int16)
    np.testing.assert_allclose(mono / 32767.0, x / 2, atol=1.5 / 32767)


def test_read_audio_gives_float32_by_default_clipped_to_unit_range(tmp_path):
    path = str(tmp_path / "loud.wav")
    x = tone(0.1, 16000, amplitude=1.5)  # peaks beyond [-1, 1]: a FLOAT WAV keeps them
    write_wav(path, x, 16000, subtype="FLOAT")
    audio, rate = audio_io.read_audio(path)
    assert rate == 16000 and audio.dtype == np.float32
    np.testing.assert_allclose(audio, np.clip(x, -1.0, 1.0), atol=1e-6)
    assert audio.max() == 1.0 and audio.min() == -1.0 and np.any(np.abs(audio) < 0.5)
    with pytest.raises(ValueError, match="dtype must be float32 or int16"):
        audio_io.read_audio(path, dtype=np.float64)


def test_flac_and_ogg_are_read(tmp_path):
    x = tone(0.2, 16000, amplitude=0.5)
    for ext, fmt in ((".flac", "FLAC"), (".ogg", "OGG")):
        path = str(tmp_path / ("a" + ext))
        soundfile.write(path, x, 16000, format=fmt)
        audio, rate = audio_io.read_audio(path, dtype=np.int16)
        assert rate == 16000 and abs(len(audio) - len(x)) < 64
        assert np.abs(audio).max() > 0.3 * 32767


def test_unreadable_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF this is not really a wave file")
    with pytest.raises(audio_io.AudioError, match="broken.wav"):
        audio_io.read_audio(str(path))


def test_nan_audio_error_names_the_file(tmp_path):
    path = str(tmp_path / "nan.wav")
    x = tone(0.1, 16000)
    x[10:13] = np.nan
    write_wav(path, x, 16000, subtype="FLOAT")
    with pytest.raises(audio_io.AudioError, match=r"nan.wav.*3 NaN/Inf"):
        audio_io.read_audio(path)


def test_sample_rate_mismatch_is_refused_or_resampled(tmp_path):
    path = str(tmp_path / "a8k.wav")
    write_wav(path, tone(0.5, 8000, freq=440.0), 8000)
    with pytest.raises(audio_io.SampleRateError, match=r"a8k.wav.*8000 Hz.*16000 Hz") as refused:
        audio_io.read_audio(path, 16000, allow_resample=False, dtype=np.int16)
    assert (refused.value.rate, refused.value.target_rate) == (8000, 16000)
    seen = []
    audio, rate = audio_io.read_audio(path, 16000, dtype=np.int16, on_resample=seen.append)
    assert rate == 16000 and len(audio) == 8000 and seen == [8000]
    # The tone keeps its pitch: the spectrum peaks at 440 Hz (2 Hz bins).
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440.0) <= 2.0


def test_resample_is_band_limited():
    # A 10 kHz tone cannot exist at 16 kHz: a proper resampler removes it
    # (naive decimation would alias it to 6 kHz at full level) and keeps 5 kHz.
    rms = lambda y: np.sqrt(np.mean(y[200:-200] ** 2))
    stop = audio_io.resample(tone(0.5, 22050, freq=10000.0, amplitude=0.5), 22050, 16000)
    passed = audio_io.resample(tone(0.5, 22050, freq=5000.0, amplitude=0.5), 22050, 16000)
    assert len(stop) == len(passed) == 8000
    assert rms(stop) < 0.005 and abs(rms(passed) - 0.5 / np.sqrt(2)) < 0.01


def test_builder_prepares_array_records_and_reads_them_back(audio_dir, tmp_path):
    builder = audio_folder.prepare_audio_folder(audio_dir, str(tmp_path / "tfds"),
                                                validation_fraction=0.25, split_seed=3)
    assert builder.info.metadata["sample_rate"] == 16000
    assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(builder.data_dir))
    train, val = builder.as_data_source("train"), builder.as_data_source("validation")
    assert (len(train), len(val)) == (6, 2)
    records = {r["id"].decode(): r for r in [*train, *val]}
    assert sorted(records) == [f"utt{k}" for k in range(8)]
    for k in range(8):
        r = records[f"utt{k}"]
        expected, _ = audio_io.read_audio(os.path.join(audio_dir, f"utt{k}.wav"), dtype=np.int16)
        np.testing.assert_array_equal(r["audio"], expected)
        assert r["sample_rate"] == 16000
        assert r["text"] == (f"utterance number {k}".encode() if k < 4 else b"")
        np.testing.assert_array_equal(r["semantic_ids"],
                                      np.arange(int(0.25 * (k + 1) * 25)) if k < 4 else [])
    # Prepared data reads back without the class and without TensorFlow.
    reopened = audio_folder.open_prepared(builder.data_dir)
    assert len(reopened.as_data_source("train")) == 6
    assert "tensorflow" not in sys.modules


def test_split_is_deterministic_and_seeded(audio_dir):
    files = audio_folder.find_audio_files(audio_dir)
    a = audio_folder.split_files(files, audio_dir, validation_fraction=0.25, seed=1)
    b = audio_folder.split_files(files, audio_dir, validation_fraction=0.25, seed=1)
    c = audio_folder.split_files(files, audio_dir, validation_fraction=0.25, seed=2)
    ids = lambda split: [f.id for f in split["validation"]]
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert sorted(f.id for f in a["train"] + a["validation"]) == sorted(f.id for f in files)


def test_librispeech_layout_and_split_folders(tmp_path):
    root = tmp_path / "libri"
    for split, speaker in (("train", "19"), ("train", "26"), ("validation", "32")):
        chapter = root / split / speaker / "100"
        lines = []
        for u in range(2):
            utt = f"{speaker}-100-{u:04d}"
            write_wav(str(chapter / f"{utt}.flac"), tone(0.1, 16000), 16000, subtype="PCM_16")
            lines.append(f"{utt} HELLO FROM {speaker} NUMBER {u}")
        (chapter / f"{speaker}-100.trans.txt").write_text("\n".join(lines) + "\n")
    files = audio_folder.find_audio_files(str(root))
    splits = audio_folder.split_files(files, str(root), validation_fraction=0.5, seed=0)
    assert [f.id for f in splits["validation"]] == ["validation/32/100/32-100-0000",
                                                    "validation/32/100/32-100-0001"]
    assert len(splits["train"]) == 4
    first = splits["train"][0]
    assert first.text == "HELLO FROM 19 NUMBER 0" and first.speaker == "19"


def test_mixed_sample_rates(tmp_path):
    root = tmp_path / "mixed"
    write_wav(str(root / "a.wav"), tone(0.5, 16000), 16000)
    write_wav(str(root / "b.wav"), tone(0.5, 8000), 8000)
    with pytest.raises(audio_io.AudioError, match=r"b.wav.*8000 Hz.*16000 Hz"):
        audio_folder.prepare_audio_folder(str(root), str(tmp_path / "t1"))
    builder = audio_folder.prepare_audio_folder(str(root), str(tmp_path / "t2"),
                                                sample_rate=16000, validation_fraction=0.0)
    lengths = sorted(len(r["audio"]) for r in builder.as_data_source("train"))
    assert lengths == [8000, 8000]


def test_bad_files_raise_naming_them_or_are_skipped_and_counted(tmp_path):
    root = tmp_path / "bad"
    write_wav(str(root / "good.wav"), tone(0.2, 16000), 16000)
    write_wav(str(root / "good2.wav"), tone(0.2, 16000), 16000)
    (root / "zero.wav").write_bytes(b"")
    with pytest.raises(audio_io.AudioError, match="zero.wav"):
        audio_folder.prepare_audio_folder(str(root), str(tmp_path / "t1"), sample_rate=16000)
    builder = audio_folder.AudioFolder(audio_dir=str(root), data_dir=str(tmp_path / "t2"),
                                       sample_rate=16000, on_bad_file="skip",
                                       validation_fraction=0.0)
    builder.download_and_prepare()
    assert [os.path.basename(p) for p in builder.skipped_files] == ["zero.wav"]
    assert len(builder.as_data_source("train")) == 2


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        audio_folder.find_audio_files(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="holds no audio files"):
        audio_folder.find_audio_files(str(tmp_path / "empty"))
