"""Spectrogram PNGs for `soundstorm generate --spectrogram` and the server's `spectrogram=1`, with no plotting library.

A log-magnitude STFT (Hann window, numpy) drawn as a grayscale image (low
frequencies at the bottom, dark = loud), written with zlib as an 8-bit PNG.
`side_by_side` puts a prompt's spectrogram next to the sample's, split by a
white column, so what the model continued can be seen at a glance.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
from etils import epath

FLOOR_DB = -80.0


def log_power(audio: np.ndarray, *, n_fft: int = 256, hop: int = 64, floor_db: float = -100.0) -> np.ndarray:
    """(bins, frames) STFT magnitudes in absolute dB (full scale sine ~ +42 dB), floored at `floor_db`."""
    audio = np.asarray(audio, np.float64).ravel()
    if audio.size < n_fft:
        audio = np.pad(audio, (0, n_fft - audio.size))
    frames = 1 + (audio.size - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    magnitude = np.abs(np.fft.rfft(audio[index] * window, axis=1)).T  # (bins, frames)
    return np.maximum(20 * np.log10(np.maximum(magnitude, 1e-10)), floor_db)


def log_spectrogram(audio: np.ndarray, *, n_fft: int = 256, hop: int = 64) -> np.ndarray:
    """(bins, frames) magnitudes in dB relative to the loudest bin, floored at FLOOR_DB."""
    db = log_power(audio, n_fft=n_fft, hop=hop, floor_db=-1e9)
    return np.maximum(db - db.max(), FLOOR_DB)


def to_image(db: np.ndarray) -> np.ndarray:
    """dB (bins, frames) -> uint8 (rows, columns): low frequencies at the bottom, loud = dark."""
    scaled = 1.0 - (db - FLOOR_DB) / -FLOOR_DB
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)[::-1]


def side_by_side(*images: np.ndarray, gap: int = 3) -> np.ndarray:
    """Images of equal height, left to right, split by white columns `gap` wide."""
    height = images[0].shape[0]
    if any(img.shape[0] != height for img in images):
        raise ValueError("images must have the same height to stand side by side")
    parts = []
    for i, img in enumerate(images):
        if i:
            parts.append(np.full((height, gap), 255, np.uint8))
        parts.append(img)
    return np.concatenate(parts, axis=1)


def write_png(path: str, image: np.ndarray) -> str:
    """Writes a uint8 (rows, columns) grayscale image as a PNG file."""
    epath.Path(path).write_bytes(png_bytes(image))
    return path


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (rows, columns) grayscale image as the bytes of a PNG file."""
    image = np.ascontiguousarray(image, np.uint8)
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"image must be a non-empty (rows, columns) array, got shape {image.shape}")
    rows, columns = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + image[r].tobytes() for r in range(rows))  # Filter type 0 per row.
    header = struct.pack(">IIBBBBB", columns, rows, 8, 0, 0, 0, 0)  # 8-bit grayscale.
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def read_png(path: str) -> np.ndarray:
    """Reads back a PNG written by `write_png` (8-bit grayscale, filter 0): uint8 (rows, columns)."""
    data = epath.Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path!r} is not a PNG file")
    pos, idat, size = 8, b"", None
    while pos < len(data):
        length, = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    columns, rows = size
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(rows, columns + 1)
    return raw[:, 1:].copy()


def spectrogram_image(audio: np.ndarray, prompt_audio=None) -> np.ndarray:
    """The sample's spectrogram (uint8 rows, columns), next to its prompt's (left) when one is given."""
    image = to_image(log_spectrogram(audio))
    if prompt_audio is not None:
        image = side_by_side(to_image(log_spectrogram(prompt_audio)), image)
    return image


def write_spectrogram(path: str, audio: np.ndarray, prompt_audio=None) -> str:
    """The sample's spectrogram as a PNG, next to its prompt's (left) when one is given."""
    return write_png(path, spectrogram_image(audio, prompt_audio))
