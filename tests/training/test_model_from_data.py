"""SoundStorm's codebook size, levels, frame rate and semantic tokens come from its codes dataset.

configs/tiny.py leaves them unset: the run fills them from the dataset's metadata and writes them into
WORKDIR/config.json, which is all a resumed run, `generate` and `load_soundstorm` need. A value the config sets
that disagrees with the dataset stops the run before anything compiles, naming both values and the flag.
"""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from conftest import tiny_config, write_npy_codes

from soundstorm_jax import training
from soundstorm_jax.cli.main import main
from soundstorm_jax.data import espeak_corpus, phonemes, prepare_codes_dataset
from soundstorm_jax.training import sharding
from soundstorm_jax.training.config import ConfigError, apply_overrides, load_config
from soundstorm_jax.training.soundstorm_task import SoundStormTask

FAST = {"total_steps": 1, "checkpoint.every_steps": 1, "checkpoint.async_save": False,
        "logging.eval_every_steps": 100, "logging.tensorboard": False, "data.eval_split": ""}
UNSET = {"model.codebook_size": None, "model.num_quantizers": None}  # As configs/tiny.py leaves them.


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Codes datasets: 16 x 3 with no frame rate recorded (.npy codes), 64 x 4 at 2,000 frames/s as
    `soundstorm prepare --codec` records configs/codec_tiny.py's codec, and 16 x 3 at 50 frames/s with the
    embedded corpus's phoneme ids at 25 per second."""
    root = tmp_path_factory.mktemp("model_from_data")
    write_npy_codes(str(root / "npy16x3"), train=8, validation=2, levels=3, codebook_size=16)
    write_npy_codes(str(root / "npy64x4"), train=8, validation=2, levels=4, codebook_size=64, seed=1)
    write_npy_codes(str(root / "npy_semantic"), train=8, validation=2, levels=3, codebook_size=16, seed=2)
    rng = np.random.default_rng(3)
    for path in sorted((root / "npy_semantic").rglob("*.npy")):  # One phoneme id per two frames.
        tokens = -(-len(np.load(path)) // 2)
        np.save(str(path)[:-len(".npy")] + ".semantic.npy",
                rng.integers(0, phonemes.VOCAB_SIZE, tokens).astype(np.int32))
    out = {name: str(root / name) for name in ("codes16x3", "codes64x4", "semantic")}
    prepare_codes_dataset(out["codes16x3"], npy_dir=str(root / "npy16x3"), codebook_size=16)
    prepare_codes_dataset(out["codes64x4"], npy_dir=str(root / "npy64x4"), codebook_size=64,
                          metadata=dict(sample_rate=16000, frame_rate=2000.0, hop_length=8))
    prepare_codes_dataset(out["semantic"], npy_dir=str(root / "npy_semantic"), codebook_size=16,
                          metadata=dict(espeak_corpus.corpus_metadata("tiny", 0, 25.0), sample_rate=16000,
                                        frame_rate=50.0, hop_length=320))
    return out


def train(workdir, data_dir, **overrides):
    config = tiny_config(**{**FAST, **UNSET, "data.dir": data_dir, **overrides})
    return training.train_and_evaluate(config, str(workdir), stream=None)


def saved(workdir):
    return json.loads((workdir / "config.json").read_text())


def fields(config):
    return (config["model"]["codebook_size"], config["model"]["num_quantizers"], config["data"]["frame_rate"],
            config["model"]["num_semantic_token_ids"])


@pytest.fixture(scope="module")
def run64(tmp_path_factory, datasets):
    """One step of the unset config on the 64 x 4 codes."""
    workdir = tmp_path_factory.mktemp("run64")
    assert train(workdir, datasets["codes64x4"]).step == 1
    return workdir


def test_an_unset_config_trains_on_codes_of_either_shape_and_records_them(tmp_path, datasets, run64):
    assert fields(saved(run64)) == (64, 4, 2000.0, 0)  # 0: no semantic tokens, no conditioning.
    assert train(tmp_path, datasets["codes16x3"]).step == 1
    assert fields(saved(tmp_path)) == (16, 3, 50.0, 0)  # No frame rate recorded: the default.
    # The placeholders take command-line values of their type, like any field.
    config = apply_overrides(load_config("tiny"), ["--config.model.codebook_size=64", "--config.data.frame_rate=75"])
    assert (config.model.codebook_size, config.data.frame_rate) == (64, 75.0)


def test_a_value_that_disagrees_with_the_dataset_exits_2_with_one_line(tmp_path, datasets):
    codes = datasets["codes64x4"]
    for flag, message in [
            ("--config.model.num_quantizers=3",
             f"config.model.num_quantizers is 3 but the codes dataset {codes} has 4 levels; "
             f"set --config.model.num_quantizers=4 or leave it unset to take the dataset's"),
            ("--config.model.codebook_size=16",
             f"config.model.codebook_size is 16 but the codes dataset {codes} has codebook size 64; "
             f"set --config.model.codebook_size=64 or leave it unset to take the dataset's"),
            ("--config.data.frame_rate=50",
             f"config.data.frame_rate is 50 but the codes dataset {codes} has frame rate 2000 frames/s; "
             f"set --config.data.frame_rate=2000 or leave it unset to take the dataset's")]:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["--quiet", "train", "--config", "tiny", "--workdir", str(tmp_path / "run"),
                         f"--config.data.dir={codes}", flag])
        errors = [line for line in stderr.getvalue().splitlines() if line.startswith("error: ")]
        assert (code, errors) == (2, [f"error: {message}"]), stderr.getvalue()[-2000:]
        # Refused before the run wrote anything (no config.json, no checkpoint).
        assert not (tmp_path / "run" / "config.json").exists()
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_semantic_vocabulary_and_rate_come_from_the_dataset(tmp_path, datasets):
    codes = datasets["semantic"]
    assert train(tmp_path, codes).step == 1
    config = saved(tmp_path)
    assert fields(config) == (16, 3, 50.0, phonemes.VOCAB_SIZE)
    assert (config["data"]["semantic_rate"], config["model"]["acoustic_per_semantic"]) == (25.0, 2.0)

    def task(**overrides):
        config = tiny_config(**{**UNSET, "data.dir": codes, **overrides})
        return SoundStormTask(config, sharding.make_mesh({"data": -1}))

    with pytest.raises(ConfigError, match=f"^config.data.semantic_rate is 50 but the codes dataset {codes} has "
                                          f"semantic rate 25 tokens/s; set --config.data.semantic_rate=25 or"):
        task(**{"data.semantic_rate": 50.0})
    with pytest.raises(ConfigError, match=r"^config.model.acoustic_per_semantic is 1 but config.data.frame_rate / "
                                          r"config.data.semantic_rate is 50 / 25 = 2 .*"
                                          r"set --config.model.acoustic_per_semantic=2 or leave it unset"):
        task(**{"model.acoustic_per_semantic": 1.0})
    with pytest.raises(ConfigError, match=f"config.model.num_semantic_token_ids is 100 but the codes dataset {codes} "
                                          f"has a semantic vocabulary of {phonemes.VOCAB_SIZE} ids"):
        task(**{"model.num_semantic_token_ids": 100})
    assert task(**{"model.num_semantic_token_ids": 0}).model.net.num_semantic_token_ids is None  # 0: no conditioning.


def test_a_resumed_run_keeps_its_model_and_restores_without_the_dataset(tmp_path, datasets, run64):
    workdir = tmp_path / "run"
    shutil.copytree(run64, workdir)
    before = saved(workdir)
    summary = train(workdir, datasets["codes64x4"], total_steps=2)  # The config's fields unset again.
    after = saved(workdir)
    assert summary.step == 2 and (after["model"], after["data"]) == (before["model"], before["data"])

    # The run's own model against other codes: refused, config.json untouched.
    with pytest.raises(ConfigError, match=r"^config.model.codebook_size is 64 in the run being resumed \(.*"
                                          r"config.json\) but the codes dataset .*codes16x3 has codebook size 16; "
                                          r"resume it on the codes it was trained on"):
        train(workdir, datasets["codes16x3"], total_steps=3)
    assert saved(workdir) == after

    # Restoring reads config.json, never the dataset.
    config = saved(workdir)
    config["data"]["dir"] = str(tmp_path / "gone")
    (workdir / "config.json").write_text(json.dumps(config))
    model, _, restored = training.load_soundstorm(str(workdir))
    assert (model.net.codebook_size, model.net.num_quantizers, model.net.num_semantic_token_ids) == (64, 4, None)
    assert restored.data.frame_rate == 2000.0
