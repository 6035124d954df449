"""Semantic tokenization speed beside the codec's: seconds of audio tokenized per second of wall time.

    python benchmarks/bench_semantic.py [--encoder hubert_base] [--layer 9] [--clusters 500] [--seconds 10]
                                        [--batch 1] [--repeats 3]

Prints one JSON object: the machine, then the median wall time of a jitted
`SemanticTokenizer.tokenize` (16 kHz audio -> k-means ids of one layer, layers above it not computed)
and, on the same audio, of the default SoundStream's `encode` (audio -> codes, configs/codec_paper.py's
architecture), each after a warm-up call (the first call, compilation included, reported separately), as
seconds of audio per second (`x_realtime`) and their ratio. Weights and centres are random: the speed of
these networks does not depend on their values. A `soundstorm prepare --semantic` run pays both per file.
"""
import argparse
import json
import os
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # benchmarks/common.py, bench_codec.py and the repository
from bench_codec import soundstream, test_audio  # noqa: E402
from common import machine, median_seconds  # noqa: E402
from soundstorm_jax import semantic  # noqa: E402


def tokenizer(args) -> semantic.SemanticTokenizer:
    config = semantic.PRESETS[args.encoder]()
    variables = jax.jit(lambda key: semantic.init_speech_encoder(config, key))(jax.random.key(0))
    centers = np.random.default_rng(0).standard_normal((args.clusters, config.hidden_size)).astype(np.float32)
    return semantic.SemanticTokenizer(config, variables, semantic.KMeansCodebook(centers), args.layer)


def timed(name: str, call, audio_seconds: float, args) -> dict:
    start = time.perf_counter()
    out = call().block_until_ready()
    first = time.perf_counter() - start
    median, times = median_seconds(lambda: call().block_until_ready(), warmup=args.warmup, repeats=args.repeats)
    return {"what": name, "output_shape": list(out.shape), "median_s": median, "x_realtime": audio_seconds / median,
            "times_s": times, "first_call_s": first}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="hubert_base", choices=sorted(semantic.PRESETS))
    parser.add_argument("--layer", type=int, default=9, help="hidden-state index (HubertWithKmeans' output_layer)")
    parser.add_argument("--clusters", type=int, default=500, help="k-means centres")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per example")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    samples = int(round(args.seconds * 16000))
    audio = test_audio(args.batch, samples)
    audio_seconds = args.batch * args.seconds
    semantic_tokenizer, codec = tokenizer(args), soundstream(args)
    results = [timed(f"{args.encoder} layer {args.layer} + k-means {args.clusters}",
                     lambda: semantic_tokenizer.tokenize(audio, sample_rate=16000), audio_seconds, args),
               timed("SoundStream encode (configs/codec_paper.py)",
                     lambda: codec.encode(audio, sample_rate=16000), audio_seconds, args)]
    print(json.dumps({"benchmark": "semantic tokenization speed beside the codec", "machine": machine(),
                      "devices": jax.device_count(), "batch": args.batch, "seconds_per_example": args.seconds,
                      "results": results,
                      "tokenizer_over_codec_time": results[0]["median_s"] / results[1]["median_s"]}, indent=2))


if __name__ == "__main__":
    main()
