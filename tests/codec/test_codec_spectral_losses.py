"""STFT and mel filterbank against numpy references; GAN and reconstruction losses on hand-made inputs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from codec_test_utils import run_once
from soundstorm_jax.codec import (feature_matching_loss, hinge_discriminator_loss, hinge_generator_loss,
                                  mel_filterbank, mel_spectrogram, multiscale_mel_loss, stft)
from soundstorm_jax.codec.spectral import hz_to_mel


def test_stft_matches_numpy_reference():
    x = np.random.default_rng(0).normal(size=(2, 1000)).astype(np.float32)
    n_fft, hop = 256, 64
    ours = np.asarray(run_once(lambda x: stft(x, n_fft, hop), jnp.asarray(x)))
    padded = np.pad(x.astype(np.float64), ((0, 0), (n_fft // 2, n_fft // 2)))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = 1 + 1000 // hop
    ref = np.stack([np.fft.rfft(padded[:, i * hop:i * hop + n_fft] * window) for i in range(frames)], axis=1)
    assert ours.shape == ref.shape == (2, frames, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_mel_filterbank_triangles_are_mel_spaced_with_unit_area():
    sr, n_fft, n_mels = 16000, 1024, 40
    fb = np.asarray(mel_filterbank(sr, n_fft, n_mels))
    assert fb.shape == (n_fft // 2 + 1, n_mels) and (fb >= 0).all()
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    peaks = freqs[np.argmax(fb, axis=0)]
    assert np.all(np.diff(peaks) > 0)
    # Peaks equally spaced on the mel scale (to within one FFT bin).
    centres = np.linspace(0, hz_to_mel(sr / 2), n_mels + 2)[1:-1]
    one_bin_in_mel = hz_to_mel(peaks + sr / n_fft) - hz_to_mel(peaks)
    assert np.all(np.abs(hz_to_mel(peaks) - centres) <= one_bin_in_mel)
    # Slaney normalisation: each triangle has unit area in Hz (checked where it spans many bins).
    widths = (fb > 0).sum(axis=0)
    area = fb.sum(axis=0) * sr / n_fft
    np.testing.assert_allclose(area[widths > 10], 1.0, rtol=0.05)


def test_mel_spectrogram_of_a_tone_peaks_at_its_mel_band():
    sr, n_fft = 16000, 512
    t = np.arange(4096) / sr
    tones = np.stack([np.sin(2 * np.pi * f * t) for f in (300.0, 2000.0)]).astype(np.float32)
    mel = np.asarray(run_once(lambda x: mel_spectrogram(x, sr, n_fft, 128, 32), jnp.asarray(tones)))
    assert mel.shape == (2, 1 + 4096 // 128, 32)
    fb = np.asarray(mel_filterbank(sr, n_fft, 32))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    for row, f in zip(mel, (300.0, 2000.0)):
        band = int(np.argmax(row[5:-5].mean(axis=0)))
        assert fb[np.argmin(np.abs(freqs - f)), band] > 0, (f, band)


def test_multiscale_mel_loss_is_zero_on_identity_and_grows_with_error():
    rng = np.random.default_rng(1)
    clean = jnp.asarray(rng.normal(0, 0.3, (2, 2048)).astype(np.float32))
    noise = jnp.asarray(rng.normal(0, 1.0, (2, 2048)).astype(np.float32))

    def run(clean, noise):
        loss = lambda est: multiscale_mel_loss(clean, est, 16000, (64, 256), 32)
        grad = jax.grad(loss)(clean + 0.1 * noise)
        return loss(clean), loss(clean + 0.01 * noise), loss(clean + 0.1 * noise), grad

    same, small, large, grad = run_once(run, clean, noise)
    assert float(same) < 1e-3
    assert 0 < float(small) < float(large)
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0


def test_hinge_and_feature_matching_losses_on_known_values():
    real = [jnp.array([2.0, 0.5]), jnp.array([[-1.0]])]
    fake = [jnp.array([-2.0, 0.0]), jnp.array([[1.0]])]
    # D: scale 1: mean(relu(1 - [2, .5])) = .25, mean(relu(1 + [-2, 0])) = .5; scale 2: 2 + 2. Mean of 0.75, 4.
    np.testing.assert_allclose(float(hinge_discriminator_loss(real, fake)), (0.75 + 4.0) / 2)
    # G: mean(relu(1 - [-2, 0])) = 2, relu(1 - 1) = 0.
    np.testing.assert_allclose(float(hinge_generator_loss(fake)), 1.0)
    feats_real = [[jnp.ones((2, 3)), jnp.zeros((4,))]]
    feats_fake = [[jnp.zeros((2, 3)), jnp.full((4,), 2.0)]]
    np.testing.assert_allclose(float(feature_matching_loss(feats_real, feats_fake)), 1.5)
    # Real features carry no gradient; fake features do.
    g_real, g_fake = jax.grad(lambda r, f: feature_matching_loss([[r]], [[f]]), argnums=(0, 1))(
        jnp.ones(3), jnp.zeros(3))
    assert np.all(np.asarray(g_real) == 0) and np.all(np.asarray(g_fake) != 0)
