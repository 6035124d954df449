"""The figures behind `prepare --semantic log-mel` (README, "Weight-free semantic ids"): does SoundStorm gain from them?

    python benchmarks/semantic_offline.py [--steps 300] [--seeds 0,1,2] [--out DIR]
                                          [--ids none,log-mel,log-mel-raw,phonemes]

Runs the command the README shows on the embedded tiny corpus with the codec shipped in the package, then trains
the tiny SoundStorm of `tests/semantic/test_prepare_log_mel.py` (its own code, imported) the same steps on the same
batches from each seed, conditioned on

    none         nothing (the acoustic prompt only)
    log-mel      the dataset's ids: k-means (64) of log-mel frames normalised per utterance (the default)
    log-mel-raw  the same without normalising (a k-means fitted on those features)
    phonemes     the corpus's own time-aligned phoneme ids (eSpeak's: the content, exactly)

and prints one JSON object: held-out greedy accuracy per level on the validation split (a voice nothing was
trained on) per seed and its mean over seeds, the unigram baseline, training seconds, and how much content and
voice each kind of ids carries (mutual information with the frame's phoneme and with the speaker, in bits, over
every frame of the corpus).
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(ROOT, "tests", "semantic"), ROOT]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

import test_prepare_log_mel as corpus_test  # noqa: E402
from common import machine  # noqa: E402
from soundstorm_jax.data import audio_io, open_prepared  # noqa: E402
from soundstorm_jax.maskgit.evaluation import unigram_accuracy  # noqa: E402
from soundstorm_jax.semantic import LogMelConfig, LogMelTokenizer, load_kmeans, log_mel_variables  # noqa: E402
from soundstorm_jax.semantic.dataset import fit_dataset_kmeans  # noqa: E402

IDS = ("none", "log-mel", "log-mel-raw", "phonemes")


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in bits of two label sequences of the same length, from their joint counts."""
    a, b = np.unique(a, return_inverse=True)[1], np.unique(b, return_inverse=True)[1]
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    independent = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
    nonzero = p > 0
    return float((p[nonzero] * np.log2(p[nonzero] / independent[nonzero])).sum())


def entropy(a: np.ndarray) -> float:
    _, counts = np.unique(a, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=corpus_test.STEPS)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ids", default=",".join(IDS))
    parser.add_argument("--out", default=None, help="where the datasets go (reused when there; default: a temp dir)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = args.ids.split(",")
    if set(kinds) - set(IDS):
        parser.error(f"--ids: choose among {', '.join(IDS)}")
    out = args.out or tempfile.mkdtemp(prefix="semantic_offline_")
    os.makedirs(out, exist_ok=True)

    started = time.perf_counter()
    record_path = os.path.join(out, "record.json")
    if not os.path.exists(record_path):
        code, stdout, stderr = corpus_test.run(
            "--json", "prepare", "--corpus", "tiny", "--out", os.path.join(out, "data"), "--codec",
            corpus_test.shipped_codec(out), "--semantic", "log-mel", "--fit-kmeans", corpus_test.NUM_CLUSTERS)
        if code:
            sys.exit(stderr[-3000:])
        with open(record_path, "w") as f:
            f.write(stdout.strip().splitlines()[-1])
    prepare_seconds = time.perf_counter() - started
    with open(record_path) as f:
        record = json.load(f)
    codes = open_prepared(os.path.join(record["codes_dataset"], "codes_dataset", "1.0.0"))
    audio = open_prepared(os.path.join(record["audio_dataset"], "audio_folder", "1.0.0"))
    codebook_size = int(dict(codes.info.metadata)["codebook_size"])
    train, held_out = corpus_test.records(codes, "train"), corpus_test.records(codes, "validation")
    clips = {r["id"]: r for split in ("train", "validation") for r in corpus_test.records(audio, split)}
    unigram = unigram_accuracy([e["codes"] for e in train], [e["codes"] for e in held_out],
                               num_quantizers=train[0]["codes"].shape[1], codebook_size=codebook_size,
                               prompt_frames=corpus_test.PROMPT_FRAMES)

    tokenizers = {"log-mel": LogMelTokenizer(load_kmeans(record["kmeans"]))}
    if "log-mel-raw" in kinds:  # The same features without normalising, with a k-means fitted on them.
        raw = LogMelConfig(normalize=False)
        raw_kmeans, _ = fit_dataset_kmeans(raw, log_mel_variables(raw), None, 1, audio, corpus_test.NUM_CLUSTERS)
        tokenizers["log-mel-raw"] = LogMelTokenizer(raw_kmeans, raw)

    def ids_of(kind: str, example: dict) -> np.ndarray:
        clip = clips[example["id"]]
        if kind == "phonemes":
            return np.asarray(clip["semantic_ids"], np.int32)
        return np.asarray(tokenizers[kind].tokenize(audio_io.int16_to_float(clip["audio"])[None]))[0]

    phonemes = np.concatenate([c["semantic_ids"] for c in clips.values()])
    speakers = np.concatenate([[c["speaker"]] * len(c["semantic_ids"]) for c in clips.values()])
    information = dict(phoneme_entropy=entropy(phonemes), speaker_entropy=entropy(speakers), frames=len(phonemes))
    results = {}
    for kind in kinds:
        entry = dict(per_seed={}, train_seconds=[])
        if kind != "none":
            every = np.concatenate([ids_of(kind, dict(id=i))[:len(c["semantic_ids"])] for i, c in clips.items()])
            entry.update(phoneme_bits=mutual_information(every, phonemes),
                         speaker_bits=mutual_information(every, speakers))
        vocab = None
        if kind == "phonemes":
            from soundstorm_jax.data.phonemes import VOCAB_SIZE as vocab
        elif kind != "none":
            vocab = corpus_test.NUM_CLUSTERS
        with_ids = [[dict(e, semantic_ids=ids_of(kind, e)) if kind not in ("none", "log-mel") else e for e in split]
                    for split in (train, held_out)]
        for seed in seeds:
            accuracy, seconds = corpus_test.train_and_score(*with_ids, conditioned=kind != "none",
                                                            codebook_size=codebook_size, steps=args.steps, seed=seed,
                                                            num_semantic_ids=vocab)
            entry["per_seed"][seed] = [round(float(a), 4) for a in accuracy]
            entry["train_seconds"].append(round(seconds, 1))
            print(kind, seed, np.round(accuracy, 3), f"mean {accuracy.mean():.3f}", file=sys.stderr, flush=True)
        mean = np.mean([entry["per_seed"][s] for s in seeds], axis=0)
        entry.update(mean_over_seeds=[round(float(a), 4) for a in mean], mean_over_levels=round(float(mean.mean()), 4))
        results[kind] = entry
    print(json.dumps(dict(machine=machine(), steps=args.steps, seeds=seeds, prompt_frames=corpus_test.PROMPT_FRAMES,
                          prepare_seconds=round(prepare_seconds, 1), unigram=[round(float(u), 4) for u in unigram],
                          unigram_mean=round(float(unigram.mean()), 4), information=information, results=results),
                     indent=1))


if __name__ == "__main__":
    main()
