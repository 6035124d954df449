"""The CodesDataset builder: from .npy files and from audio through an encoder."""
import math

import numpy as np
import pytest

from soundstorm_jax.data import audio_folder, codes_dataset

K, Q = 1024, 4


def _write_codes(root, count=6, seed=0):
    """`count` random code files (frames, Q); file k has 10 + 7k frames."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for k in range(count):
        codes = rng.integers(0, K, (10 + 7 * k, Q))
        np.save(root / f"c{k}.npy", codes)
        np.save(root / f"c{k}.semantic.npy", np.arange((10 + 7 * k) // 2))
        written[f"c{k}"] = codes
    return written


def test_codes_from_npy_files_roundtrip(tmp_path):
    written = _write_codes(tmp_path / "npy")
    builder = codes_dataset.prepare_codes_dataset(
        str(tmp_path / "tfds"), npy_dir=str(tmp_path / "npy"), codebook_size=K,
        validation_fraction=1 / 3, metadata={"frame_rate": 50})
    assert builder.info.metadata["num_levels"] == Q
    assert builder.info.metadata["frame_rate"] == 50
    train, val = builder.as_data_source("train"), builder.as_data_source("validation")
    assert (len(train), len(val)) == (4, 2)
    for r in [*train, *val]:
        name = r["id"].decode()
        assert r["codes"].dtype == np.int16  # K fits int16.
        np.testing.assert_array_equal(r["codes"], written[name])
        np.testing.assert_array_equal(r["semantic_ids"], np.arange(len(written[name]) // 2))


@pytest.mark.parametrize("bad, message", [
    (np.full((5, Q), K), r"ids in \[1024, 1024\], outside the codebook \[0, 1023\]"),
    (np.full((5, Q), -1), r"ids in \[-1, -1\]"),
    (np.zeros((5,), np.int32), r"must have shape \(frames, levels\)"),
    (np.zeros((5, Q), np.float32), "must be integers"),
    (np.zeros((5, Q + 1), np.int32), "5 levels, expected 4"),
    (np.zeros((0, Q), np.int32), "zero frames"),
])
def test_bad_codes_name_the_file(tmp_path, bad, message):
    _write_codes(tmp_path / "npy", count=2)
    np.save(tmp_path / "npy" / "zz_bad.npy", bad)
    with pytest.raises(codes_dataset.CodesError, match=message) as error:
        codes_dataset.prepare_codes_dataset(str(tmp_path / "tfds"), npy_dir=str(tmp_path / "npy"),
                                            codebook_size=K, validation_fraction=0.0)
    assert "zz_bad.npy" in str(error.value)


def test_unreadable_codes_file_is_named(tmp_path):
    _write_codes(tmp_path / "npy", count=2)
    (tmp_path / "npy" / "zz_garbage.npy").write_bytes(b"not numpy at all")
    with pytest.raises(codes_dataset.CodesError, match="cannot read codes file.*zz_garbage.npy"):
        codes_dataset.prepare_codes_dataset(str(tmp_path / "tfds"), npy_dir=str(tmp_path / "npy"),
                                            codebook_size=K, validation_fraction=0.0)


def test_missing_codes_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        codes_dataset.CodesDataset(npy_dir=str(tmp_path / "nowhere"), data_dir=str(tmp_path))


HOP = 160


def frame_energy_codec(audio):
    """A stand-in codec: level q of frame t quantises the frame's RMS times (q+1).

    (B, samples) -> (B, samples // HOP, Q): a real function of the audio, so a
    wrong frame count, order or padding shows up in the codes.
    """
    b, n = audio.shape
    frames = audio[:, :n // HOP * HOP].reshape(b, n // HOP, HOP)
    rms = np.sqrt(np.mean(frames ** 2, axis=-1))
    return np.stack([np.minimum((rms * 1000 * (q + 1)).astype(np.int32), K - 1)
                     for q in range(Q)], axis=-1)


def test_codes_from_audio_through_an_encoder(audio_dir, tmp_path):
    audio = audio_folder.prepare_audio_folder(audio_dir, str(tmp_path / "audio"),
                                              validation_fraction=0.25)
    calls = []

    def encode(batch):
        calls.append(batch.shape)
        return frame_energy_codec(batch)

    codes = codes_dataset.prepare_codes_dataset(
        str(tmp_path / "codes"), audio_source=audio, encode_fn=encode, samples_per_frame=HOP,
        num_levels=Q, codebook_size=K, encode_batch_size=3, pad_to_multiple=HOP * 8)
    # Fixed batch size, lengths padded to the multiple: few distinct shapes.
    assert all(shape[0] == 3 and shape[1] % (HOP * 8) == 0 for shape in calls)
    for split in ("train", "validation"):
        sources = {r["id"]: r for r in audio.as_data_source(split)}
        records = list(codes.as_data_source(split))
        assert len(records) == len(sources)
        for r in records:
            source = sources[r["id"]]
            wave = source["audio"].astype(np.float32)[None] / 32767.0
            frames = math.ceil(wave.shape[1] / HOP)
            padded = np.pad(wave, ((0, 0), (0, frames * HOP - wave.shape[1])))
            np.testing.assert_array_equal(r["codes"], frame_energy_codec(padded)[0])
            np.testing.assert_array_equal(r["semantic_ids"], source["semantic_ids"])
            assert r["text"] == source["text"]


def test_encoder_returning_too_few_frames_is_an_error(audio_dir, tmp_path):
    audio = audio_folder.prepare_audio_folder(audio_dir, str(tmp_path / "audio"))
    with pytest.raises(codes_dataset.CodesError, match="samples_per_frame=160"):
        codes_dataset.prepare_codes_dataset(
            str(tmp_path / "codes"), audio_source=audio,
            encode_fn=lambda batch: frame_energy_codec(batch)[:, :3], samples_per_frame=HOP,
            num_levels=Q, codebook_size=K)
