"""`soundstorm prepare` never reuses a dataset made from something else, never mislabels audio, reads every audio
format the other commands read, and speaks the command line's language in its errors.

Each case runs the command line's `main` in this process (what the console script calls). The codec cases share one
tiny codec trained for a single step (module fixture); a second "codec" is a copy of its workdir, which is another
codec as far as the codes dataset is concerned (another workdir).
"""
import json
import os
import shutil

import numpy as np
import pytest
import soundfile
from test_cli_messages import bad_input, run_main  # `soundstorm ARGS` in this process

RATE = 16000
CODEC_ARGS = ["--config.total_steps=1", "--config.checkpoint.every_steps=1", "--config.logging.every_steps=1",
              "--config.logging.eval_every_steps=100", "--config.model.generator.strides=(2, 2)",
              "--config.data.segment_samples=512", "--config.data.batch_size=8", "--config.loss.mel_scales=(64,)",
              "--config.model.discriminator.num_scales=1", "--config.model.discriminator.stft_dilations=(1,)",
              "--config.model.generator.codebook_size=16", "--config.model.generator.rq_num_quantizers=3",
              "--config.compiler_options.xla_backend_optimization_level=0",
              "--config.compiler_options.xla_llvm_disable_expensive_passes=True"]


def ok(*args):
    code, stdout, stderr = run_main("--json", *args)
    assert code == 0, (code, stdout[-2000:], stderr[-3000:])
    return json.loads(stdout.strip().splitlines()[-1]), stderr


def refused(*args):
    """`bad_input` (exit 2, one `error: ...` line, no traceback), whose advice names flags, never Python
    functions or arguments; returns the message."""
    message = bad_input(*args)
    assert "prepare_codes_dataset" not in message and "allow_resample" not in message, message
    assert "overwrite=True" not in message, message
    return message


def tone(seconds, rate=RATE, freq=440.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.02, t.shape)).astype(np.float32)


def write_speakers(root, speakers=("spk1", "spk2", "spk3"), rate=RATE, per_speaker=2):
    """LibriSpeech-like `root/<speaker>/<speaker>-<n>.wav`, 0.2 s each; returns root."""
    for s, speaker in enumerate(speakers):
        os.makedirs(os.path.join(root, speaker), exist_ok=True)
        for i in range(per_speaker):
            soundfile.write(os.path.join(root, speaker, f"{speaker}-{i}.wav"),
                            tone(0.2, rate, 200 + 100 * s + 30 * i, i), rate, subtype="PCM_16")
    return str(root)


def version_dir(out, name):
    kind = {"audio": "audio_folder", "codes": "codes_dataset"}[name]
    return os.path.join(out, name, kind, "1.0.0")


# ---- formats ---------------------------------------------------------------------------------------------------

def test_mp3_files_are_prepared_like_the_other_formats(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    formats = {"a.wav": dict(subtype="PCM_16"), "b.mp3": dict(format="MP3"), "c.flac": dict(format="FLAC"),
               "d.caf": dict(format="CAF"), "e.w64": dict(format="W64"), "f.au": dict(format="AU"),
               "g.aiff": dict(format="AIFF"), "h.opus": dict(format="OGG", subtype="OPUS")}
    for i, (name, options) in enumerate(formats.items()):
        soundfile.write(root / name, tone(0.2, freq=330.0 + 50 * i), RATE, **options)
    record, _ = ok("prepare", "--audio", root, "--out", tmp_path / "out", "--validation-fraction", "0")
    assert record["audio_splits"] == {"train": len(formats)}
    from soundstorm_jax.data import open_prepared
    source = open_prepared(version_dir(tmp_path / "out", "audio")).as_data_source("train")
    audio = {r["id"].decode(): r["audio"] for r in source}
    assert sorted(audio) == [os.path.splitext(name)[0] for name in formats]
    # The MP3 decodes to the tone it holds (MP3's encoder delay pads it a little).
    assert abs(len(audio["b"]) - 0.2 * RATE) < 0.05 * RATE and np.abs(audio["b"]).max() > 0.2 * 32767


# ---- stale audio datasets --------------------------------------------------------------------------------------

def test_an_unchanged_folder_is_reused_and_a_removed_speaker_is_named(tmp_path):
    wavs, out = write_speakers(tmp_path / "wavs"), tmp_path / "out"
    first, _ = ok("prepare", "--audio", wavs, "--out", out, "--sample-rate", RATE)
    info = os.path.join(version_dir(out, "audio"), "dataset_info.json")
    built = os.stat(info).st_mtime_ns
    again, stderr = ok("prepare", "--audio", wavs, "--out", out, "--sample-rate", RATE)
    assert again == first and os.stat(info).st_mtime_ns == built  # Reused, not rebuilt.

    shutil.rmtree(os.path.join(wavs, "spk2"))
    message = refused("prepare", "--audio", wavs, "--out", out, "--sample-rate", RATE)
    assert f"{out / 'audio'} is out of date" in message
    assert "2 source files were removed from" in message and "spk2/spk2-0.wav" in message
    assert "--overwrite" in message
    record, _ = ok("prepare", "--audio", wavs, "--out", out, "--sample-rate", RATE, "--overwrite")
    assert sum(record["audio_splits"].values()) == 4

    # A file rewritten (another size) is named too.
    soundfile.write(os.path.join(wavs, "spk1", "spk1-0.wav"), tone(0.3), RATE, subtype="PCM_16")
    message = refused("prepare", "--audio", wavs, "--out", out, "--sample-rate", RATE)
    assert "1 source file was changed (size or modification time)" in message and "spk1/spk1-0.wav" in message


def test_another_sample_rate_or_split_is_named(tmp_path):
    wavs, out = write_speakers(tmp_path / "wavs"), tmp_path / "out"
    ok("prepare", "--audio", wavs, "--out", out, "--sample-rate", RATE)
    message = refused("prepare", "--audio", wavs, "--out", out, "--sample-rate", 8000)
    assert "its audio is at 16000 Hz, not the 8000 Hz asked for" in message and "--overwrite" in message
    message = refused("prepare", "--audio", wavs, "--out", out, "--sample-rate", RATE, "--validation-fraction", "0.5")
    assert "its split was validation fraction 0.05, now validation fraction 0.5" in message
    message = refused("prepare", "--audio", wavs, "--out", out, "--sample-rate", RATE, "--seed", "1")
    assert "its split was seed 0, now seed 1" in message
    # Without --sample-rate the dataset's rate (the first file's) is what is asked for: reused.
    ok("prepare", "--audio", wavs, "--out", out)
    record, _ = ok("prepare", "--audio", wavs, "--out", out, "--sample-rate", 8000, "--overwrite")
    from soundstorm_jax.data import open_prepared
    assert open_prepared(version_dir(out, "audio")).info.metadata["sample_rate"] == 8000


def test_a_dataset_prepared_before_provenance_was_recorded_is_refused(tmp_path):
    wavs, out = write_speakers(tmp_path / "wavs", speakers=("spk1",)), tmp_path / "out"
    ok("prepare", "--audio", wavs, "--out", out)
    metadata_file = os.path.join(version_dir(out, "audio"), "metadata.json")
    with open(metadata_file) as f:
        metadata = json.load(f)
    with open(metadata_file, "w") as f:  # What an older version wrote: the rate, no provenance.
        json.dump({"sample_rate": metadata["sample_rate"]}, f)
    message = refused("prepare", "--audio", wavs, "--out", out)
    assert "records nothing of what it was made from" in message and "--overwrite" in message
    ok("prepare", "--audio", wavs, "--out", out, "--overwrite")
    ok("prepare", "--audio", wavs, "--out", out)


# ---- messages ----------------------------------------------------------------------------------------------------

def test_bad_files_and_other_rates_name_the_flags_and_tfds_stays_quiet(tmp_path):
    root = tmp_path / "wavs"
    write_speakers(root, speakers=("spk1",))
    (root / "spk1" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    message = refused("prepare", "--audio", root, "--out", tmp_path / "o1")
    assert "broken.wav" in message and "--skip-bad-files" in message
    code, stdout, stderr = run_main("prepare", "--audio", root, "--out", tmp_path / "o2", "--skip-bad-files")
    assert code == 0, stderr
    assert "skipped 1 unreadable file(s)" in stdout
    # TFDS's own lines about downloading are noise for a local folder.
    assert "Downloading and preparing" not in stdout + stderr and "downloaded and prepared" not in stdout + stderr
    # Reused with the same flags: the skipped file is reported again.
    code, stdout, _ = run_main("prepare", "--audio", root, "--out", tmp_path / "o2", "--skip-bad-files")
    assert code == 0 and "skipped 1 unreadable file(s)" in stdout
    os.remove(root / "spk1" / "broken.wav")

    soundfile.write(root / "spk1" / "fast.wav", tone(0.2, 22050), 22050, subtype="PCM_16")
    message = refused("prepare", "--audio", root, "--out", tmp_path / "o3", "--sample-rate", RATE, "--no-resample")
    assert "fast.wav" in message and "22050 Hz" in message and "--no-resample" in message
    message = refused("prepare", "--audio", root, "--out", tmp_path / "o4")  # The first file (fast.wav) fixes the rate.
    assert "spk1-0.wav" in message and "22050 Hz" in message and "--sample-rate" in message
    code, _, stderr = run_main("prepare", "--audio", root, "--out", tmp_path / "o5", "--sample-rate", RATE)
    assert code == 0 and "note: resampled 1 file(s) from 22050 Hz to 16000 Hz" in stderr, stderr


def test_the_codes_dataset_refuses_audio_at_another_rate_than_the_codec(tmp_path):
    """The library's own guard: audio is never encoded and labelled with another rate than its own."""
    from soundstorm_jax.data import prepare_audio_folder, prepare_codes_dataset
    audio = prepare_audio_folder(write_speakers(tmp_path / "wavs", speakers=("spk1",), rate=24000),
                                 str(tmp_path / "audio"))
    with pytest.raises(ValueError, match=r"is at 24000 Hz but the codec encodes 16000 Hz"):
        prepare_codes_dataset(str(tmp_path / "codes"), audio_source=audio, encode_fn=lambda a: None,
                              samples_per_frame=8, num_levels=2, codebook_size=16, metadata={"sample_rate": 16000})


# ---- stale codes datasets and the codec's rate -------------------------------------------------------------------

@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    """A tiny codec (16 kHz, 3 levels x 16 codes, hop 4) trained for one step on 0.2 s clips."""
    root = tmp_path_factory.mktemp("codec")
    wavs = write_speakers(root / "wavs", per_speaker=4)  # 11 training clips: a batch of 8 (one per device).
    ok("prepare", "--audio", wavs, "--out", root / "data", "--sample-rate", RATE)
    code, _, stderr = run_main("--quiet", "train", "--config", "codec_tiny", "--workdir", root / "run",
                                 f"--config.data.dir={root / 'data' / 'audio'}", *CODEC_ARGS)
    assert code == 0, stderr[-3000:]
    return str(root / "run")


@pytest.mark.slow
def test_audio_at_24khz_is_not_encoded_by_a_16khz_codec(tmp_path, codec_dir):
    wavs, out = write_speakers(tmp_path / "wavs", rate=24000), tmp_path / "out"
    ok("prepare", "--audio", wavs, "--out", out)  # At the files' 24 kHz.
    message = refused("prepare", "--audio", wavs, "--out", out, "--codec", codec_dir)
    assert "its audio is at 24000 Hz, not the 16000 Hz asked for (the codec's rate)" in message
    assert "--overwrite" in message
    assert not os.path.exists(out / "codes" / "codes_dataset")
    record, stderr = ok("prepare", "--audio", wavs, "--out", out, "--codec", codec_dir, "--overwrite")
    assert "note: resampled 6 file(s) from 24000 Hz to 16000 Hz" in stderr
    from soundstorm_jax.data import open_prepared
    codes = open_prepared(version_dir(out, "codes"))
    assert codes.info.metadata["sample_rate"] == 16000
    hop = codes.info.metadata["hop_length"]
    for r in codes.as_data_source("train"):  # 0.2 s at 16 kHz: every utterance keeps its duration.
        assert r["codes"].shape[0] == -(-int(0.2 * RATE) // hop)


@pytest.mark.slow
def test_another_codec_or_changed_audio_makes_the_codes_stale(tmp_path, codec_dir):
    wavs, out = write_speakers(tmp_path / "wavs"), tmp_path / "out"
    first, _ = ok("prepare", "--audio", wavs, "--out", out, "--codec", codec_dir)
    codes_info = os.path.join(version_dir(out, "codes"), "dataset_info.json")
    built = os.stat(codes_info).st_mtime_ns
    again, _ = ok("prepare", "--audio", wavs, "--out", out, "--codec", codec_dir)
    assert again == first and os.stat(codes_info).st_mtime_ns == built  # Same audio, same codec: reused.

    recorded = json.load(open(os.path.join(version_dir(out, "codes"), "metadata.json")))["provenance"]["codec"]
    assert recorded["workdir"] == os.path.abspath(codec_dir) and recorded["step"] == 1
    assert recorded["num_levels"] == 3 and recorded["codebook_size"] == 16 and len(recorded["weights_sha256"]) == 64

    other = str(tmp_path / "codec2")
    shutil.copytree(codec_dir, other)
    message = refused("prepare", "--audio", wavs, "--out", out, "--codec", other)
    assert (f"{out / 'codes'} is out of date: it was made with a codec of 3 levels x 16 codes at 16000 Hz from "
            f"{os.path.abspath(codec_dir)} step 1; this one is a codec of 3 levels x 16 codes at 16000 Hz from "
            f"{os.path.abspath(other)} step 1") in message
    assert "--overwrite" in message
    ok("prepare", "--audio", wavs, "--out", out, "--codec", other, "--overwrite")
    assert os.stat(codes_info).st_mtime_ns != built

    # The audio dataset rebuilt (a speaker removed) without the codec: the codes made from the old one are stale.
    shutil.rmtree(os.path.join(wavs, "spk3"))
    ok("prepare", "--audio", wavs, "--out", out, "--overwrite")
    message = refused("prepare", "--audio", wavs, "--out", out, "--codec", other)
    assert "the audio dataset it was encoded from" in message and "rebuilt" in message and "--overwrite" in message
    record, _ = ok("prepare", "--audio", wavs, "--out", out, "--codec", other, "--overwrite")
    assert sum(record["codes_splits"].values()) == 4
