"""Configs: packaged names and files, overrides, the strict reader, config.json; the command line's exit codes."""
import json
import re
import subprocess
import sys

import pytest

from soundstorm_jax import __version__
from soundstorm_jax.cli.main import main
from soundstorm_jax.training import config as config_lib
from soundstorm_jax.training.config import ConfigError, apply_overrides, check_config, load_config

PACKAGED = ("base", "codec_paper", "codec_tiny", "demo", "demo_codec", "paper", "tiny")


def test_every_packaged_config_loads_by_name_and_passes_the_strict_reader():
    assert config_lib.packaged_configs() == list(PACKAGED)
    for name in PACKAGED:
        config = load_config(name)
        check_config(config)
        assert config_lib.kind_of(config) == ("codec" if "codec" in name else "soundstorm")


def test_a_config_file_and_the_repository_path_of_a_packaged_one(tmp_path, monkeypatch):
    path = tmp_path / "mine.py"
    path.write_text("from soundstorm_jax.configs import tiny\n\n"
                    "def get_config():\n    config = tiny.get_config()\n    config.total_steps = 7\n    return config\n")
    assert load_config(str(path)).total_steps == 7
    monkeypatch.chdir(tmp_path)  # No configs/ folder here: the packaged config of that name.
    assert load_config("configs/paper.py").model.conformer.depth == 12
    with pytest.raises(ConfigError, match="neither a packaged config .*tiny.* nor a file"):
        load_config("tinyy")
    (tmp_path / "broken.py").write_text("def get_config():\n    return {}\n")
    with pytest.raises(ConfigError, match="must return an ml_collections.ConfigDict"):
        load_config(str(tmp_path / "broken.py"))


def test_overrides_parse_by_the_field_type_and_add_fields_the_schema_allows():
    config = apply_overrides(load_config("tiny"), [
        "--config.optimizer.lr=1e-3", "--config.data.dir=/data/codes", "--config.optimizer.ema_decay=0.99",
        "--config.checkpoint.async_save=false", "--config.objective.steps=(4, 2, 1)",
        "--config.model.conformer.num_residual_streams=4", "--config.mesh.shape.fsdp=2"])
    check_config(config)
    assert config.optimizer.lr == 1e-3 and config.data.dir == "/data/codes" and config.optimizer.ema_decay == 0.99
    assert config.checkpoint.async_save is False and config.objective.steps == (4, 2, 1)
    assert config.model.conformer.num_residual_streams == 4 and config.mesh.shape.fsdp == 2
    assert load_config("tiny").optimizer.lr != 1e-3  # A copy: the loaded config is unchanged.


@pytest.mark.parametrize("override,message", [
    ("--config.optimizer.lrr=1", "unknown config field 'optimizer.lrr'; did you mean 'optimizer.lr'?"),
    ("--config.model.conformer.headz=2", "did you mean 'model.conformer.heads'?"),
    ("--config.total_steps=abc", "--config.total_steps=abc: expected an int"),
    ("--config.data.batch_size=1.5", "expected an int"),
    ("--config.checkpoint.async_save=maybe", "expected a boolean"),
    ("--config.loss.mel_bins=3", "unknown config field 'loss'"),  # A codec section in a SoundStorm config.
    ("--config.optimizer.lr", "must look like --config.section.field=value"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(load_config("tiny"), [override])


def test_unknown_keys_anywhere_are_refused_with_the_closest_valid_key():
    config = load_config("codec_tiny")
    config.model.generator.stride = (2, 2)
    with pytest.raises(ConfigError, match="'model.generator.stride'; did you mean 'model.generator.strides'"):
        check_config(config)
    config = load_config("tiny")
    config.data.max_frame = 3  # A misspelled data key is no longer silently dropped.
    with pytest.raises(ConfigError, match="did you mean 'data.max_frames'"):
        check_config(config)
    config = load_config("tiny")
    config.kind = "vocoder"
    with pytest.raises(ConfigError, match="not a known model kind"):
        check_config(config)


def test_a_malformed_config_json_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is not a readable JSON config"):
        config_lib.read_saved_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dict(load_config("tiny").to_dict(), extra=1)))
    with pytest.raises(ConfigError, match="unknown config field 'extra'"):
        config_lib.read_saved_config(str(tmp_path))


def command(*args):
    return subprocess.run([sys.executable, "-m", "soundstorm_jax", *args], capture_output=True, text=True,
                          timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def test_the_command_line_exits_2_with_one_line_before_jax_starts(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{")
    for args, message in [
            (["--config.optimizer.lrr=1"], "error: unknown config field 'optimizer.lrr'; did you mean 'optimizer.lr'?"),
            (["--config.total_steps=abc"], "error: --config.total_steps=abc: expected an int"),
            (["--workdir", str(tmp_path / "bad")], "config.json is not a readable JSON config")]:
        workdir = [] if "--workdir" in args else ["--workdir", str(tmp_path / "run")]
        result = command("train", "--config", "tiny", *workdir, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    result = command("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"soundstorm {__version__}"


def test_ctrl_c_exits_130(monkeypatch, capsys):
    from soundstorm_jax.cli import codec_io

    def interrupted(args, out, extra):
        raise KeyboardInterrupt

    monkeypatch.setattr(codec_io, "run_decode", interrupted)
    assert main(["decode", "x.npy", "--codec", "runs/codec"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"
