"""generate(..., output_dir=): the seed's "return list of audio files when generating"."""
import os

import jax
import numpy as np
import pytest
import soundfile

from soundstorm_jax import SoundStorm
from soundstorm_jax.data.audio_io import AudioError
from test_soundstorm_codec import tiny_codec
from tiny import tiny_net


def test_output_dir_writes_one_trimmed_wav_per_example_and_returns_the_paths(tmp_path):
    model = SoundStorm(tiny_net(), steps=2, soundstream=tiny_codec())
    audio = np.zeros((1, 40), np.float32)
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, audio)
    options = dict(seconds=0.1, batch_size=2, lengths=[10, 7], key=jax.random.key(3))
    waveforms = model.generate(variables, **options)
    paths, codes = model.generate(variables, output_dir=tmp_path / "out", file_prefix="take", return_codes=True,
                                  **options)
    assert paths == [str(tmp_path / "out" / f"take_{i:03d}.wav") for i in range(2)]
    assert codes.shape == (2, 10, 3)
    for path, wave in zip(paths, waveforms):
        written, rate = soundfile.read(path, dtype="float32")
        assert rate == 400 and written.shape == wave.shape  # trimmed per example: 40 and 28 samples
        np.testing.assert_allclose(written, np.clip(wave, -1, 1), atol=1.0 / 32767)

    with pytest.raises(ValueError, match="output_dir= writes audio files"):
        model.generate(variables, output_dir=tmp_path, decode_audio=False, **options)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(AudioError, match="cannot create output folder"):
        model.generate(variables, output_dir=blocker / "sub", **options)
    assert not os.path.exists(blocker / "sub")
