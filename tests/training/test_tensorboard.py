"""TensorBoard event files, read back with TensorBoard's own reader (what `tensorboard --logdir` loads).

One tiny codec run (2 steps, evaluated at step 2) and one tiny SoundStorm run
decoding its samples with that codec: every scalar of metrics.jsonl is in the
events at its step with its value, and each evaluation left audio and
spectrograms (codec reconstructions; SoundStorm generations). Then the
switches (tensorboard=False, tensorboard_samples=0), a samples_codec that is
not there, and a gs:// logdir on the storage emulator (tests/gcs_emulator.py).
"""
import contextlib
import io
import json
import os
import types

import numpy as np
import pytest
from conftest import tiny_config
from test_codec_training import codec_config

from soundstorm_jax import training
from soundstorm_jax.training import tensorboard


def read_events(logdir):
    """TensorBoard's own reader (the `tensorboard` package, a test extra) over `logdir`, every event kept."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    keep_all = {ea.SCALARS: 0, ea.AUDIO: 0, ea.IMAGES: 0}
    return ea.EventAccumulator(str(logdir), size_guidance=keep_all).Reload()


def metric_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_scalars_match_metrics(workdir):
    """Every number of every metrics.jsonl record is a scalar event at the record's step, with its value."""
    events = read_events(os.path.join(workdir, "tensorboard"))
    expected = {}
    for record in metric_records(workdir):
        for tag, value in tensorboard.scalars(record).items():
            expected.setdefault(tag, []).append((record["step"], np.float32(value)))
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        got = [(e.step, np.float32(e.value)) for e in events.Scalars(tag)]
        assert got == points, tag
    return events


@pytest.fixture(scope="module")
def codec_workdir(tmp_path_factory):
    """A 2-step codec run with 3 levels of 16 codes (SoundStorm's tiny config reads those), evaluated at step 2."""
    workdir = str(tmp_path_factory.mktemp("codec_run"))
    config = codec_config(total_steps=2)
    config.model.generator.rq_num_quantizers = 3
    config.optimizer.flatten = True  # One Adam vector per group: the cheapest step to compile.
    config.data.batch_size = 8
    config.logging.every_steps, config.logging.eval_every_steps, config.logging.eval_batches = 1, 2, 1
    config.logging.tensorboard_samples = 2
    training.train_and_evaluate(config, workdir, stream=None)
    return workdir


def test_codec_run_logs_its_metrics_and_reconstructions(codec_workdir):
    events = assert_scalars_match_metrics(codec_workdir)
    tags = events.Tags()
    assert {"train/mel_loss", "train/generator_grad_norm", "train/skipped", "perf/audio_seconds_per_s",
            "eval/mel_loss"} <= set(tags["scalars"])
    for i in range(2):
        for name in ("reconstructed", "original"):
            (audio,) = events.Audio(f"reconstructions/{i}/{name}")
            assert audio.step == 2 and audio.sample_rate == 16000 and audio.length_frames == 512
        (image,) = events.Images(f"reconstructions/{i}/spectrogram")
        assert image.step == 2 and (image.width, image.height) == (800, 500)  # original over reconstructed


def test_soundstorm_run_logs_its_metrics_and_generated_audio(tmp_path, codes_dir, codec_workdir):
    """`soundstorm train ... --config.logging.samples_codec=CODEC_WORKDIR`, the README's command (in this process)."""
    from soundstorm_jax.cli.main import main
    args = ["--json", "train", "--config", "tiny", "--workdir", str(tmp_path), f"--config.data.dir={codes_dir}",
            f"--config.logging.samples_codec={codec_workdir}", "--config.total_steps=2",
            "--config.logging.every_steps=1", "--config.logging.eval_every_steps=2",
            "--config.logging.peak_flops=1e12",  # MFU is logged too.
            "--config.model.conformer.depth=1", "--config.data.max_frames=16",
            "--config.compiler_options.xla_backend_optimization_level=0",
            "--config.compiler_options.xla_llvm_disable_expensive_passes=True"]
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(args) == 0
    assert json.loads(stdout.getvalue().splitlines()[-1])["step"] == 2

    events = assert_scalars_match_metrics(str(tmp_path))
    tags = events.Tags()
    assert {"train/loss", "train/level_accuracy/2", "train/level_loss/0", "train/grad_norm", "train/lr",
            "train/skipped", "perf/step_time", "perf/tokens_per_s", "perf/mfu", "eval/loss"} <= set(tags["scalars"])
    assert sorted(tags["audio"]) == [f"samples/{i}/{name}" for i in range(2) for name in ("generated", "reference")]
    for i in range(2):
        generated, reference = events.Audio(f"samples/{i}/generated"), events.Audio(f"samples/{i}/reference")
        # Hop 2 at 16 kHz: two samples per frame, as many frames as the clip's reference.
        assert generated[0].step == 2 and generated[0].length_frames == reference[0].length_frames > 0
        assert generated[0].length_frames % 2 == 0
        (image,) = events.Images(f"samples/{i}/spectrogram")
        assert image.step == 2 and (image.width, image.height) == (800, 500)  # reference over generated


def writer_for(workdir, config):
    """A TensorBoardWriter for `config` without a model or data: what it does before the first evaluation."""
    task = types.SimpleNamespace(config=config, kind="soundstorm", model=types.SimpleNamespace(net=None))
    return tensorboard.TensorBoardWriter(str(workdir), task, None, start_step=0)


def test_tensorboard_false_writes_no_events_and_zero_samples_read_no_codec(tmp_path):
    config = tiny_config()
    config.logging.samples_codec = str(tmp_path / "missing")
    config.logging.tensorboard = False
    board = writer_for(tmp_path / "off", config)
    board.write({"step": 1, "loss": 1.0})
    board.evaluated(None, 1)
    board.close()
    assert not os.path.exists(tmp_path / "off" / "tensorboard")

    config.logging.tensorboard, config.logging.tensorboard_samples = True, 0  # Scalars only: the codec is not read.
    board = writer_for(tmp_path / "scalars", config)
    board.write({"step": 1, "loss": 1.0})
    board.evaluated(None, 1)
    board.close()
    events = read_events(tmp_path / "scalars" / "tensorboard")
    assert [e.value for e in events.Scalars("train/loss")] == [1.0] and not events.Tags()["audio"]


def test_a_missing_samples_codec_is_a_clear_error(tmp_path):
    config = tiny_config()
    config.logging.samples_codec = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="config.logging.samples_codec=.*missing.*no such codec workdir"):
        writer_for(tmp_path, config)


def test_event_files_on_gs_are_written_through_epath(tmp_path, monkeypatch):
    """A gs:// logdir on the storage emulator (tests/gcs_emulator.py): the event file is an object in the bucket,
    readable by TensorBoard, and nothing is written locally."""
    import gcs_emulator
    import gcsfs

    monkeypatch.chdir(tmp_path)
    with gcs_emulator.running_emulator() as variables:
        for key, value in variables.items():
            monkeypatch.setenv(key, value)
        try:
            writer = tensorboard.summary_writer(f"gs://{gcs_emulator.BUCKET}/run/tensorboard")
            writer.add_scalar("train/loss", 1.5, 1)
            writer.add_audio("samples/0/generated", np.zeros(160, np.float32), 1, sample_rate=16000)
            writer.close()
            (name,) = gcs_emulator.blob_names("run/tensorboard/")
            data = gcs_emulator.read_blob(name)
        finally:
            gcsfs.GCSFileSystem.clear_instance_cache()  # Its endpoint came from the variables above.
    assert os.listdir(tmp_path) == []
    local = tmp_path / "downloaded"
    local.mkdir()
    (local / os.path.basename(name)).write_bytes(data)
    events = read_events(local)
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.5)]
    assert events.Audio("samples/0/generated")[0].length_frames == 160


def test_metric_keys_map_to_tags():
    record = {"step": 3, "loss": 1.5, "level_accuracy": [0.5, 0.25], "skipped": False, "tokens_per_s": 10.0,
              "eval_loss": 2.0}
    assert tensorboard.scalars(record) == {"train/loss": 1.5, "train/level_accuracy/0": 0.5,
                                           "train/level_accuracy/1": 0.25, "train/skipped": 0.0,
                                           "perf/tokens_per_s": 10.0, "eval/loss": 2.0}
