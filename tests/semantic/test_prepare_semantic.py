"""`soundstorm prepare --semantic`: k-means ids of a speech-encoder layer written beside the codes.

A tiny random-weight HuBERT (the transformers fixture, as a model folder), a k-means of 8 of its layer-1 frames
and an untrained tiny codec at 24 kHz (so every clip is resampled to the encoder's 16 kHz) written as an export;
the command runs in this process (`cli.main.main`).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile

from soundstorm_jax import export
from soundstorm_jax.cli.main import main
from soundstorm_jax.data import audio_io, open_prepared
from soundstorm_jax.semantic import KMeansCodebook, load_kmeans, load_semantic_tokenizer
from soundstorm_jax.training import compile_cache

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "hubert_base_tiny.npz"
CODEC_RATE = 24000  # hop 4: 6000 frames/s; the tiny encoder's 800 tokens/s are 7.5 frames per token
# One training batch of 8 (the tests' 8 devices); three lengths, so batches hold padding but tokenizing each clip
# alone compiles only three programs.
LENGTHS = {"train": [2400, 7000, 4100, 2400, 7000, 4100, 2400, 7000], "validation": [4100, 7000]}


def run(*args) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return code, stdout.getvalue(), stderr.getvalue()


def prepare(*args) -> tuple[dict, str]:
    code, stdout, stderr = run("--json", "prepare", *args)
    assert code == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1]), stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{'hubert': model folder, 'kmeans': 8 centres (layer-1 frames of the fixture), 'codec': export, 'wavs': 8 + 2
    clips of 0.1-0.3 s at 24 kHz}."""
    root = tmp_path_factory.mktemp("semantic_prepare")
    with np.load(FIXTURE) as data:
        transformers_config = json.loads(str(data["config"]))["transformers_config"]
        centres = data["hidden"][1][[0, 0, 0, 1, 1, 2, 2, 0], [3, 20, 41, 5, 30, 2, 19, 70]]
    (root / "hubert").mkdir()
    (root / "hubert" / "config.json").write_text(json.dumps(transformers_config))
    (root / "hubert" / "model.safetensors").write_bytes(FIXTURE.with_suffix(".safetensors").read_bytes())
    KMeansCodebook(centres).save(root / "km.npz")
    rng = np.random.default_rng(0)
    for split, lengths in LENGTHS.items():
        (root / "wavs" / split).mkdir(parents=True)
        for i, samples in enumerate(lengths):
            t = np.arange(samples) / CODEC_RATE
            clip = 0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t) + rng.normal(0, 0.05, samples)
            soundfile.write(root / "wavs" / split / f"clip{i}.wav", clip.astype(np.float32), CODEC_RATE,
                            subtype="PCM_16")
    write_codec_export(root / "codec")
    return {name: str(root / name) for name in ("hubert", "km.npz", "codec", "wavs")}


def write_codec_export(folder: Path) -> None:
    """An untrained configs/codec_tiny.py codec (hop 4, 3 levels x 16 codes) as `soundstorm export` lays one out."""
    from soundstorm_jax.configs import codec_tiny
    from soundstorm_jax.training import config as config_lib, sharding
    from soundstorm_jax.training.codec_task import CodecTask
    config = codec_tiny.get_config()
    generator = config.model.generator
    generator.strides, generator.codebook_size, generator.rq_num_quantizers = (2, 2), 16, 3
    generator.target_sample_hz = CODEC_RATE
    config.data.segment_samples, config.data.batch_size = 512, 1
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.local_devices()[:1])
    model = CodecTask(config, mesh).train_config.codec
    variables = jax.jit(model.init)({"params": jax.random.key(0)}, np.zeros((1, 512), np.float32))
    folder.mkdir()
    config_lib.save_config(str(folder), config)
    export._save_tree(folder, {"params": variables["params"], "vq_stats": variables["vq_stats"]})
    (folder / export.EXPORT_FILE).write_text(json.dumps(dict(format=export.FORMAT, kind="codec", workdir="",
                                                             step=0, ema=False)))


def semantic_args(files, **changes):
    args = {"--audio": files["wavs"], "--codec": files["codec"], "--semantic": files["hubert"], "--layer": 1,
            "--kmeans": files["km.npz"], **changes}
    return [part for flag, value in args.items() if value is not None for part in (flag, value)]


def clips_of(record: dict, split: str) -> dict:
    audio = open_prepared(os.path.join(record["audio_dataset"], "audio_folder", "1.0.0")).as_data_source(split)
    return {audio[i]["id"]: audio_io.int16_to_float(audio[i]["audio"]) for i in range(len(audio))}


def assert_ids_are_each_clip_tokenized_alone(record: dict, tokenizer) -> None:
    codes = open_prepared(os.path.join(record["codes_dataset"], "codes_dataset", "1.0.0"))
    for split, lengths in LENGTHS.items():
        clips, examples = clips_of(record, split), codes.as_data_source(split)
        assert len(examples) == len(lengths)
        for i in range(len(lengths)):
            example = examples[i]
            clip = audio_io.resample(clips[example["id"]], CODEC_RATE, 16000)
            alone = np.asarray(tokenizer.tokenize(clip[None], sample_rate=16000))[0]
            assert len(alone) == tokenizer.num_tokens([len(clip)])[0] > 0
            np.testing.assert_array_equal(example["semantic_ids"], alone)
            assert example["codes"].shape == (-(-len(clips[example["id"]]) // 4), 3)


@pytest.fixture(scope="module")
def prepared(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    record, stderr = prepare(*semantic_args(files), "--out", out)
    return record, stderr


def test_ids_rate_and_vocabulary_are_written_beside_the_codes(files, prepared):
    record, stderr = prepared
    assert "note: the semantic encoder reads 16000 Hz audio: each clip is resampled from 24000 Hz" in stderr
    assert (record["semantic_rate"], record["semantic_vocab_size"], record["acoustic_per_semantic"]) == (800.0, 8, 7.5)
    tokenizer = load_semantic_tokenizer(files["hubert"], files["km.npz"], layer=1)
    assert_ids_are_each_clip_tokenized_alone(record, tokenizer)
    metadata = dict(open_prepared(os.path.join(record["codes_dataset"], "codes_dataset", "1.0.0")).info.metadata)
    assert (metadata["semantic_rate"], metadata["semantic_vocab_size"], metadata["frame_rate"]) == (800.0, 8, 6000.0)
    assert metadata["semantic"] == dict(kind="kmeans", checkpoint=files["hubert"], layer=1, pool=1,
                                        kmeans=files["km.npz"])
    # Other ids (another layer) make the dataset out of date: refused, naming the change and --overwrite.
    code, _, stderr = run("prepare", *semantic_args(files, **{"--layer": 2}), "--out",
                          Path(record["codes_dataset"]).parent)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "out of date: its semantic ids were k-means ids" in errors[0]
    assert "of layer 1 of" in errors[0] and "these are" in errors[0] and "of layer 2 of" in errors[0]
    assert "pass --overwrite" in errors[0]


def test_training_takes_the_vocabulary_and_rate_ratio_from_the_dataset(prepared, tmp_path):
    from soundstorm_jax import training
    from soundstorm_jax.configs import tiny
    record, _ = prepared
    config = tiny.get_config()
    config.data.dir = record["codes_dataset"]
    config.model.conformer.depth = 1
    config.data.max_frames, config.data.batch_size, config.data.eval_split = 30, 8, ""
    config.total_steps, config.checkpoint.every_steps, config.checkpoint.async_save = 2, 2, False
    config.logging.tensorboard = False
    state = training.train_and_evaluate(config, str(tmp_path), stream=None)
    assert state.step == 2
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["num_semantic_token_ids"] == 8
    assert saved["model"]["acoustic_per_semantic"] == 7.5 and saved["data"]["semantic_rate"] == 800.0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 2 and np.all(np.isfinite(losses))


def test_fit_kmeans_is_saved_reloads_and_an_interrupted_run_resumes(files, tmp_path, monkeypatch):
    from soundstorm_jax.semantic import dataset
    args = [*semantic_args(files, **{"--kmeans": None, "--fit-kmeans": 6, "--pool": 2}), "--out", tmp_path,
            "--encode-batch-size", 2]
    make = dataset.make_semantic_fn

    def stops_after_one_batch(tokenizer, sample_rate):
        compute, calls = make(tokenizer, sample_rate), []

        def semantic_ids(audio, lengths):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return compute(audio, lengths)
        return semantic_ids

    monkeypatch.setattr(dataset, "make_semantic_fn", stops_after_one_batch)
    code, _, _ = run("prepare", *args)
    assert code == 130 and (tmp_path / "kmeans.npz").exists() and not list((tmp_path / "codes").glob("*/*/dataset_info.json"))
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "kmeans.npz", *tmp_path.glob("audio/*/*/*"))}
    monkeypatch.setattr(dataset, "make_semantic_fn", make)
    record, _ = prepare(*args)  # Resumes: the audio dataset and the fitted k-means are reused, not rewritten.
    assert {path: path.stat().st_mtime_ns for path in written} == written
    assert (record["semantic_rate"], record["semantic_vocab_size"], record["acoustic_per_semantic"]) == (400.0, 6, 15)
    assert record["kmeans"] == str(tmp_path / "kmeans.npz")
    fitted = json.loads((tmp_path / "kmeans.json").read_text())
    assert fitted["fitted_on"]["num_clusters"] == 6 and fitted["fitted_on"]["pool"] == 2 and fitted["vectors"] > 6
    codebook = load_kmeans(tmp_path / "kmeans.npz")
    assert codebook.centers.shape == (6, 32)
    tokenizer = load_semantic_tokenizer(files["hubert"], tmp_path / "kmeans.npz", layer=1, pool=2)
    assert_ids_are_each_clip_tokenized_alone(record, tokenizer)
    codes = open_prepared(os.path.join(record["codes_dataset"], "codes_dataset", "1.0.0")).as_data_source("train")
    assert len(np.unique(np.concatenate([codes[i]["semantic_ids"] for i in range(len(codes))]))) >= 4
    # The same command once more reuses everything.
    written = {path: path.stat().st_mtime_ns for path in tmp_path.glob("codes/*/*/*")}
    assert prepare(*args)[0] == record
    assert {path: path.stat().st_mtime_ns for path in written} == written


def bad_input(*args) -> str:
    code, stdout, stderr = run(*args)
    assert code == 2, (code, stdout[-2000:], stderr[-3000:])
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_bad_input_exits_2_naming_the_flag_before_compiling(files, tmp_path):
    hubert48 = tmp_path / "hubert48"
    hubert48.mkdir()
    config = json.loads((Path(files["hubert"]) / "config.json").read_text())
    (hubert48 / "config.json").write_text(json.dumps(dict(config, hidden_size=48)))
    (hubert48 / "model.safetensors").write_bytes((Path(files["hubert"]) / "model.safetensors").read_bytes())
    KMeansCodebook(np.zeros((4, 31), np.float32)).save(tmp_path / "km31.npz")
    out = tmp_path / "out"
    cases = [
        (semantic_args(files, **{"--codec": None}), "--semantic needs --codec or --encodec"),
        (semantic_args(files, **{"--fit-kmeans": 4}), "--kmeans and --fit-kmeans exclude each other"),
        (semantic_args(files, **{"--kmeans": None}), "--semantic needs --kmeans FILE"),
        (semantic_args(files, **{"--layer": None}), "--semantic needs --layer N"),
        (semantic_args(files, **{"--layer": 3}), "--layer must be a hidden-state index in [0, 2]"),
        (semantic_args(files, **{"--kmeans": tmp_path / "km31.npz"}), "has centres of dimension 31, but --layer 1 of "
                                                                      "--semantic gives 32-dim features"),
        (semantic_args(files, **{"--kmeans": tmp_path / "nope.npz"}), "--kmeans '" + str(tmp_path / "nope.npz")
         + "' does not exist"),
        (semantic_args(files, **{"--semantic": hubert48}), "does not fit"),
        (semantic_args(files, **{"--semantic": tmp_path / "nope"}), "--semantic '" + str(tmp_path / "nope")
         + "' does not exist"),
        (semantic_args(files, **{"--pool": 0}), "--pool must be a positive"),
        (semantic_args(files, **{"--kmeans": None, "--fit-kmeans": 0}), "--fit-kmeans must be a positive"),
        (["--audio", files["wavs"], "--codec", files["codec"], "--kmeans", files["km.npz"]],
         "--kmeans goes with --semantic"),
    ]
    with compile_cache.watch() as report:
        for args, expected in cases:
            message = bad_input("prepare", *args, "--out", out)
            assert expected in message, (expected, message)
    assert report.compiles == 0 and not out.exists()
    # More centres than the training clips have feature vectors: found once the features are computed.
    message = bad_input("prepare", *semantic_args(files, **{"--kmeans": None, "--fit-kmeans": 100_000}), "--out", out)
    assert message.startswith("error: --fit-kmeans 100000: num_clusters=100000 is more than the")
