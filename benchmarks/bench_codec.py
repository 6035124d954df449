"""Codec speed: encode and decode, in seconds of audio per second of wall time.

    python benchmarks/bench_codec.py [--codecs soundstream,encodec] [--seconds 10] [--batch 1] [--repeats 5]

Prints one JSON object: the machine, then per codec the median wall time of a
jitted `encode` (audio -> codes) and `decode` (codes -> audio) after a warm-up
call (compilation excluded, reported separately), and the speed as seconds of
audio per second (`x_realtime`; above 1 is faster than real time). Weights are
random: the speed of a convolutional codec does not depend on their values.

Codecs (`--codecs`, comma-separated; `--list` prints those this checkout has):
  soundstream  SoundStream 16 kHz, strides (2, 4, 5, 8) -> 50 Hz, 12 x 1024 codes (the package's defaults,
               configs/codec_paper.py)
  encodec      EnCodec 24 kHz -> 75 Hz at --encodec-bandwidth kbps (6.0: 8 levels of 1024), the PyTorch
               `encodec` package's architecture
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # benchmarks/common.py and the repository
from common import machine, median_seconds  # noqa: E402
from soundstorm_jax import codec as codec_lib  # noqa: E402


def soundstream(args):
    model = codec_lib.SoundStream()
    audio = jnp.zeros((1, model.hop_length * 4), jnp.float32)
    variables = jax.jit(lambda key: model.init({"params": key}, audio))(jax.random.key(0))
    return codec_lib.SoundStreamCodec(model, variables)


def encodec(args):
    model = codec_lib.EnCodec(bandwidth=args.encodec_bandwidth)
    audio = jnp.zeros((1, model.hop_length * 4), jnp.float32)
    variables = jax.jit(lambda key: model.init(key, audio))(jax.random.key(0))
    return codec_lib.EnCodecCodec(model, variables)


CODECS = {"soundstream": (soundstream, "SoundStream"), "encodec": (encodec, "EnCodec")}


def available() -> list[str]:
    """The codecs `soundstorm_jax.codec` exposes in this checkout."""
    return [name for name, (_, attr) in CODECS.items() if hasattr(codec_lib, attr)]


def test_audio(batch: int, samples: int) -> np.ndarray:
    """Speech-like test signal: a few harmonics with vibrato plus a little noise, in [-1, 1]."""
    rng = np.random.default_rng(0)
    t = np.arange(samples) / 16000.0
    f0 = 140.0 * (1 + 0.05 * np.sin(2 * np.pi * 4 * t))
    phase = 2 * np.pi * np.cumsum(f0) / 16000.0
    tone = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6))
    audio = tone[None] + 0.01 * rng.standard_normal((batch, samples))
    return np.clip(audio, -1, 1).astype(np.float32)


def bench(name, codec, args) -> dict:
    rate = int(codec.sample_rate)
    samples = int(round(args.seconds * rate))
    audio = test_audio(args.batch, samples)
    audio_seconds = args.batch * samples / rate

    start = time.perf_counter()
    codes = codec.encode(audio, sample_rate=rate).block_until_ready()
    encode_compile = time.perf_counter() - start
    start = time.perf_counter()
    codec.decode(codes, length=samples).block_until_ready()
    decode_compile = time.perf_counter() - start

    enc, enc_times = median_seconds(lambda: codec.encode(audio, sample_rate=rate).block_until_ready(),
                                    warmup=args.warmup, repeats=args.repeats)
    dec, dec_times = median_seconds(lambda: codec.decode(codes, length=samples).block_until_ready(),
                                    warmup=args.warmup, repeats=args.repeats)
    return {
        "codec": name, "sample_rate": rate, "hop_length": int(codec.hop_length),
        "frame_rate": float(codec.frame_rate), "levels": int(codes.shape[-1]),
        "codebook_size": int(codec.codebook_size), "batch": args.batch, "seconds_per_example": args.seconds,
        "codes_shape": list(codes.shape),
        "encode": {"median_s": enc, "x_realtime": audio_seconds / enc, "times_s": enc_times,
                   "first_call_s": encode_compile},
        "decode": {"median_s": dec, "x_realtime": audio_seconds / dec, "times_s": dec_times,
                   "first_call_s": decode_compile},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codecs", default=",".join(available()),
                        help=f"comma-separated, of {list(CODECS)}; default: all this checkout has ({available()})")
    parser.add_argument("--list", action="store_true", help="print the available codecs and exit")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per example")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encodec-bandwidth", type=float, default=6.0)
    args = parser.parse_args()
    if args.list:
        print(json.dumps({"available": available(), "known": list(CODECS)}))
        return
    names = [n.strip() for n in args.codecs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CODECS]
    missing = [n for n in names if n in CODECS and n not in available()]
    if unknown or missing:
        parser.error(f"unknown codec(s) {unknown}, not in this checkout {missing}; available: {available()}")
    results = [bench(name, CODECS[name][0](args), args) for name in names]
    print(json.dumps({"benchmark": "codec encode/decode speed", "machine": machine(),
                      "devices": jax.device_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
