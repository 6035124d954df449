"""Mel spectrogram pictures (matplotlib, Agg) for `generate --spectrogram`, the demo, the server and TensorBoard.

`figure` draws one clip: time in seconds, frequency in Hz on a mel-spaced
axis, dB relative to the loudest bin as colour (with a colour bar) and, when
a prompt is given, a labelled vertical line where the prompt ends and the
continuation begins. `comparison_figure` stacks a reference over an output on
one colour scale (TensorBoard). Figures are built with `matplotlib.figure.Figure`
and `FigureCanvasAgg`, never pyplot: no global state (the server draws in worker threads).

`log_power` (linear-frequency STFT dB) is the demo's log-spectral distance.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from etils import epath

from soundstorm_jax.codec.spectral import hz_to_mel, mel_filterbank_np

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

FLOOR_DB = -80.0  # below the loudest bin: the colour scale's bottom.
SILENCE_DB = -100.0  # absolute: 0 dB is the loudest bin, or this when all is quieter (silence stays dark).
N_MELS = 64
SIZE = (8.0, 3.0)  # inches; at DPI: 800 x 300 pixels, a 10 s clip drawn in about 0.3 s on a 2-core CPU.
DPI = 100
COLORMAP = "magma"
BOUNDARY_COLOR = "#00e5ff"  # cyan: stands out against every colour of magma.
HZ_TICKS = (0, 250, 500, 1000, 2000, 4000, 8000, 16000)
MAX_TITLE = 90


def stft_magnitude(audio: np.ndarray, *, n_fft: int, hop: int) -> np.ndarray:
    """(n_fft // 2 + 1, frames) Hann-windowed STFT magnitudes, frames starting at 0 every `hop` samples."""
    audio = np.asarray(audio, np.float64).ravel()
    if audio.size < n_fft:
        audio = np.pad(audio, (0, n_fft - audio.size))
    frames = 1 + (audio.size - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(audio[index] * window, axis=1)).T


def log_power(audio: np.ndarray, *, n_fft: int = 256, hop: int = 64, floor_db: float = -100.0) -> np.ndarray:
    """(bins, frames) STFT magnitudes in absolute dB (full scale sine ~ +42 dB), floored at `floor_db`."""
    magnitude = stft_magnitude(audio, n_fft=n_fft, hop=hop)
    return np.maximum(20 * np.log10(np.maximum(magnitude, 1e-10)), floor_db)


def fft_size(sample_rate: int) -> int:
    """A power of two near 32 ms: 512 at 16 kHz, 1024 at 24 kHz, 256 at 8 kHz."""
    return max(64, 1 << int(round(np.log2(sample_rate * 0.032))))


def mel_db(audio: np.ndarray, sample_rate: int, *, n_mels: int = N_MELS) -> tuple[np.ndarray, float]:
    """(n_mels, frames) mel magnitudes in absolute dB (floored at -200) and the seconds between frames.

    Frames are centred (`n_fft / 2` zeros each side), one every `n_fft / 4`
    samples, as in `codec.spectral.stft`: frame k describes time k * hop.
    """
    n_fft = fft_size(sample_rate)
    hop = n_fft // 4
    audio = np.pad(np.nan_to_num(np.asarray(audio, np.float64).ravel()), n_fft // 2)
    mel = mel_filterbank_np(sample_rate, n_fft, n_mels).T.astype(np.float64) @ stft_magnitude(audio, n_fft=n_fft,
                                                                                              hop=hop)
    return 20 * np.log10(np.maximum(mel, 1e-10)), hop / sample_rate


def _one_line(title: str) -> str:
    """Titles come from users (texts, request ids): one line, at most MAX_TITLE characters."""
    title = " ".join(title.split())
    return title if len(title) <= MAX_TITLE else title[:MAX_TITLE - 1] + "…"


def _draw(ax, db: np.ndarray, seconds_per_frame: float, sample_rate: int, top_db: float, seconds: float):
    """One mel panel on `ax`: rows are equal steps of mel, labelled in Hz. Returns the image (for a colour bar)."""
    top_mel = float(hz_to_mel(sample_rate / 2))
    frames = db.shape[1]
    # Column k is centred on time k * hop: its edges half a frame either side.
    extent = (-seconds_per_frame / 2, (frames - 0.5) * seconds_per_frame, 0.0, top_mel)
    image = ax.imshow(np.maximum(db - top_db, FLOOR_DB), origin="lower", aspect="auto", extent=extent,
                      cmap=COLORMAP, vmin=FLOOR_DB, vmax=0.0, interpolation="nearest")
    ax.set_xlim(0.0, max(seconds, seconds_per_frame))
    ticks = [hz for hz in HZ_TICKS if hz <= sample_rate / 2]
    ax.set_yticks(hz_to_mel(ticks), [f"{hz // 1000}k" if hz >= 1000 else str(hz) for hz in ticks])
    ax.set_ylabel("frequency (Hz, mel scale)")
    return image


def _panels(fig: Figure, rows: int):
    """`rows` stacked axes sharing time and a colour bar's axes, at fixed margins (inches).

    Fixed margins rather than a layout engine: constrained layout measures every
    label and would double the drawing time; these sizes fit the labels drawn here.
    """
    width, height = fig.get_size_inches()
    left, right, bottom, top, gap, bar = 0.75, 0.85, 0.45, 0.3, 0.35, 0.12
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        hspace=gap * rows / (height - bottom - top - gap * (rows - 1)))
    cax = fig.add_axes((1 - (right - 0.1) / width, bottom / height, bar / width, 1 - (bottom + top) / height))
    return axes, cax


def _new_figure(size: tuple[float, float]) -> Figure:
    # matplotlib is imported here, not with the module: it costs every command line start ~0.5 s.
    from matplotlib.figure import Figure
    return Figure(figsize=size, dpi=DPI)


def _canvas(fig: Figure) -> FigureCanvasAgg:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


def figure(audio: np.ndarray, sample_rate: int, prompt_audio: np.ndarray | None = None, *,
           title: str = "mel spectrogram") -> Figure:
    """The clip's mel spectrogram; with `prompt_audio`, the prompt first and a labelled line where `audio` starts."""
    audio = np.asarray(audio, np.float64).ravel()
    prompt_seconds = None
    if prompt_audio is not None:
        prompt_audio = np.asarray(prompt_audio, np.float64).ravel()
        prompt_seconds = prompt_audio.size / sample_rate
        audio = np.concatenate([prompt_audio, audio])
    db, seconds_per_frame = mel_db(audio, sample_rate)
    fig = _new_figure(SIZE)
    (ax,), cax = _panels(fig, 1)
    image = _draw(ax, db, seconds_per_frame, sample_rate, max(db.max(), SILENCE_DB), audio.size / sample_rate)
    ax.set_xlabel("time (s)")
    ax.set_title(_one_line(title), fontsize=10, parse_math=False)  # A "$" is a dollar, not TeX.
    fig.colorbar(image, cax=cax, format="%+.0f dB")
    if prompt_seconds is not None:
        ax.axvline(prompt_seconds, color=BOUNDARY_COLOR, linewidth=1.5, linestyle="--", gid="prompt-boundary")
        # Labels at the top, either side of the line, on a dark box: readable on any colour below.
        for text, align, shift in (("prompt", "right", -4), ("continuation", "left", 4)):
            ax.annotate(text, (prompt_seconds, 1.0), xycoords=("data", "axes fraction"), xytext=(shift, -4),
                        textcoords="offset points", ha=align, va="top", fontsize=8, color=BOUNDARY_COLOR,
                        bbox=dict(boxstyle="round,pad=0.2", facecolor="black", alpha=0.6, linewidth=0))
    return fig


def comparison_figure(reference: np.ndarray, output: np.ndarray, sample_rate: int,
                      names: tuple[str, str] = ("reference", "output")) -> Figure:
    """Reference (top) over output (bottom), on one time axis and one dB scale (0 dB = the louder's loudest bin)."""
    dbs = [mel_db(x, sample_rate) for x in (reference, output)]
    top_db = max(SILENCE_DB, *(db.max() for db, _ in dbs))
    seconds = max(np.size(x) for x in (reference, output)) / sample_rate
    fig = _new_figure((SIZE[0], 2 * SIZE[1] - 1))
    axes, cax = _panels(fig, 2)
    for ax, (db, seconds_per_frame), name in zip(axes, dbs, names):
        image = _draw(ax, db, seconds_per_frame, sample_rate, top_db, seconds)
        ax.set_title(name, fontsize=10, parse_math=False)
    axes[1].set_xlabel("time (s)")
    fig.colorbar(image, cax=cax, format="%+.0f dB")
    return fig


def to_rgb(fig: Figure) -> np.ndarray:
    """The figure drawn: uint8 (rows, columns, 3)."""
    return np.asarray(_canvas(fig).buffer_rgba())[..., :3].copy()


def to_png(fig: Figure) -> bytes:
    """The figure drawn, as the bytes of a PNG file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)  # Draws the figure once.
    return buffer.getvalue()


def spectrogram_png(audio: np.ndarray, sample_rate: int, prompt_audio: np.ndarray | None = None, *,
                    title: str = "mel spectrogram") -> bytes:
    """`figure` as the bytes of a PNG file."""
    return to_png(figure(audio, sample_rate, prompt_audio, title=title))


def write_spectrogram(path: str, audio: np.ndarray, sample_rate: int, prompt_audio: np.ndarray | None = None, *,
                      title: str | None = None) -> str:
    """`figure` written as a PNG file at `path` (local or gs://); the title defaults to the file's name."""
    title = epath.Path(path).name if title is None else title
    epath.Path(path).write_bytes(spectrogram_png(audio, sample_rate, prompt_audio, title=title))
    return path
