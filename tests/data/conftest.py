"""Fixtures for the data tests: small audio folders written into tmp_path."""
import numpy as np
import pytest

from data_test_utils import tone, write_wav


@pytest.fixture
def audio_dir(tmp_path):
    """Eight 16 kHz WAVs of different lengths, with text and semantic sidecars.

    File k is a tone at 200 + 50k Hz lasting 0.25 (k + 1) s; files 0-3 have a
    transcript and semantic ids 0..n-1 at 25 Hz.
    """
    root = tmp_path / "wavs"
    for k in range(8):
        stem = str(root / f"utt{k}")
        write_wav(stem + ".wav", tone(0.25 * (k + 1), 16000, freq=200 + 50 * k), 16000)
        if k < 4:
            with open(stem + ".txt", "w") as f:
                f.write(f"utterance number {k}\n")
            np.save(stem + ".semantic.npy", np.arange(int(0.25 * (k + 1) * 25)))
    return str(root)
