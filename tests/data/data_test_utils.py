"""Helpers shared by the data tests (importable: pytest puts this folder on sys.path)."""
import os

import numpy as np
import soundfile


def write_wav(path, audio, sample_rate, subtype="PCM_16"):
    """Writes float audio in [-1, 1] (samples,) or (samples, channels)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, np.asarray(audio, np.float32), sample_rate, subtype=subtype)


def tone(seconds, sample_rate, freq=220.0, amplitude=0.3, phase=0.0):
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)
