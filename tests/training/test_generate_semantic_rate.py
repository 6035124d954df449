"""`soundstorm generate --text` on a model whose semantic tokens come at half the frame rate (paper-like 2:1).

A tiny SoundStorm conditioned on phoneme ids at 25 Hz over 50 Hz frames is trained for one step, then the
command line (its `main`, in this process) generates from text, with and without an acoustic prompt: every
semantic token must cover two frames, and the prompt's frames get ceil(P / 2) tokens of their own.
"""
import json
import os

import numpy as np
import pytest
from conftest import tiny_config

from soundstorm_jax.cli.main import main
from soundstorm_jax.data import espeak_is_available, phonemes, phonemize, prepare_codes_dataset

TEXT = "Hello world."
RATIO = 2

pytestmark = pytest.mark.skipif(not espeak_is_available(), reason="eSpeak NG (espeakng-loader) is not installed")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A one-step SoundStorm run on codes (50 Hz, 3 x 16) with phoneme ids at 25 Hz."""
    from soundstorm_jax import training

    root = tmp_path_factory.mktemp("semantic_rate")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("validation", 2)):
        folder = root / "npy" / split
        folder.mkdir(parents=True)
        for i in range(count):
            frames = int(rng.integers(12, 24))
            np.save(folder / f"u{i}.npy", rng.integers(0, 16, (frames, 3)).astype(np.int16))
            tokens = -(-frames // RATIO)
            np.save(folder / f"u{i}.semantic.npy", rng.integers(1, phonemes.VOCAB_SIZE, tokens).astype(np.int32))
    prepare_codes_dataset(str(root / "codes"), npy_dir=str(root / "npy"), codebook_size=16)
    config = tiny_config(**{
        "total_steps": 1, "data.dir": str(root / "codes"), "data.frame_rate": 50.0, "data.semantic_rate": 25.0,
        "model.num_semantic_token_ids": phonemes.VOCAB_SIZE, "model.acoustic_per_semantic": float(RATIO),
        "checkpoint.every_steps": 1, "checkpoint.async_save": False})
    training.train_and_evaluate(config, str(root / "run"), stream=None)
    return str(root / "run")


def generate(capsys, *args):
    capsys.readouterr()
    assert main(["--json", "generate", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_text_tokens_cover_two_frames_each(workdir, tmp_path, capsys):
    tokens = len(phonemize(TEXT, frame_rate=25.0).frame_ids)
    record = generate(capsys, workdir, "--text", TEXT, "--steps", "1", "--out", tmp_path)
    assert record["shapes"] == [[RATIO * tokens, 3]]


def test_a_prompt_gets_its_own_tokens_at_the_semantic_rate(workdir, tmp_path, capsys):
    tokens = len(phonemize(TEXT, frame_rate=25.0).frame_ids)
    prompt = np.random.default_rng(1).integers(0, 16, (5, 3)).astype(np.int16)  # 5 frames -> 3 tokens
    np.save(tmp_path / "prompt.npy", prompt)
    record = generate(capsys, workdir, "--text", TEXT, "--prompt-codes", tmp_path / "prompt.npy",
                      "--prompt-text", "Hi.", "--steps", "1", "--out", tmp_path / "out")
    assert record["shapes"] == [[RATIO * (3 + tokens), 3]]
    sample = np.load(os.path.join(tmp_path, "out", "sample_000.npy"))
    np.testing.assert_array_equal(sample[:5], prompt)
