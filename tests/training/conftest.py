"""Fixtures for the training tests: a tiny config, a codes dataset, a reference state."""
import os

import numpy as np
import pytest


def tiny_config(**overrides):
    """configs/tiny.py, shrunk further: depth 1, 16 frames, K 16, Q 3."""
    from soundstorm_jax.configs import tiny
    config = tiny.get_config()
    # configs/tiny.py leaves these to the codes dataset; many tests here build models without one.
    config.model.codebook_size, config.model.num_quantizers = 16, 3
    config.model.conformer.depth = 1
    config.data.max_frames = 16
    config.optimizer.clip_norm = 1e9  # No clipping: Adam's first moment is then 0.1 * grad.
    config.optimizer.warmup_steps = 1
    # LLVM -O0: ~3x faster compiles on this CPU; every run in a test uses the same options.
    config.compiler_options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    for key, value in overrides.items():
        section, name = key.split(".") if "." in key else (None, key)
        (config if section is None else config[section])[name] = value
    return config


def write_npy_codes(root, *, train=24, validation=3, levels=3, codebook_size=16, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("validation", validation)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(n):
            frames = int(rng.integers(10, 40))
            np.save(os.path.join(root, split, f"u{i:03d}.npy"),
                    rng.integers(0, codebook_size, (frames, levels)).astype(np.int16))


@pytest.fixture(scope="session")
def codes_dir(tmp_path_factory):
    """A prepared CodesDataset (train 24, validation 3 utterances of 10-40 frames, 3 levels, K=16)."""
    from soundstorm_jax.data import prepare_codes_dataset
    root = tmp_path_factory.mktemp("codes")
    write_npy_codes(str(root / "npy"))
    prepare_codes_dataset(str(root / "tfds"), npy_dir=str(root / "npy"), codebook_size=16)
    return str(root / "tfds")


def random_batch(seed, batch=8, frames=16, levels=3, codebook_size=16):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, frames), bool)
    mask[1, frames // 2:] = False  # Some padding.
    return {"codes": rng.integers(0, codebook_size, (batch, frames, levels)).astype(np.int32), "mask": mask}
