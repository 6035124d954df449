"""The SoundStream codec through the shared trainer (config.kind = 'codec').

On the 8 emulated devices: a sharded codec step (data parallel, and DP x FSDP)
equals the one-device step; Orbax checkpoints of the codec state are
bit-identical, restore onto another mesh and resume exactly; NaN batches are
skipped; `train.py --config configs/codec_tiny.py` trains, evaluates and
resumes on a small audio dataset the test writes.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import soundfile

from soundstorm_jax import training
from soundstorm_jax.training import config as config_lib, restore, sharding, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SAMPLE_RATE = 16000
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
MESHES = [(1, 1, 1), (2, 4, 1)]  # one device; data parallel x2 times FSDP x4 (the batch is split 8 ways)


def codec_config(**overrides):
    """configs/codec_tiny.py, shrunk further (compiling is what costs here): hop 2, 2 levels x 16 codes, one
    waveform and one STFT discriminator, 512-sample crops, GAN terms on from the first step."""
    import ml_collections
    from soundstorm_jax.configs import codec_tiny
    config = codec_tiny.get_config()
    gen = config.model.generator
    gen.strides, gen.channels, gen.codebook_size, gen.rq_num_quantizers, gen.rq_kmeans_iters = (2,), 4, 16, 2, 2
    config.model.discriminator = ml_collections.ConfigDict(dict(
        num_scales=1, wave_channels=4, wave_max_channels=8, wave_downsample=(4,), stft_resolutions=((64, 16),),
        stft_channels=2, stft_max_channels=4, stft_dilations=(1,), dtype="float32"))
    config.loss.mel_scales = (64,)
    config.loss.adversarial_start_step = 0  # Adversarial and feature-matching terms from step 1.
    config.optimizer.flatten = False  # Per-parameter Adam state, which FSDP splits like the parameters.
    config.data.segment_samples = 512
    config.mesh.fsdp_min_size = 64  # Split the tiny arrays too, so FSDP has something to split.
    config.compiler_options = FAST
    for key, value in overrides.items():
        section, name = key.split(".") if "." in key else (None, key)
        (config if section is None else config[section])[name] = value
    return config


def make_task(shape, config):
    devices = jax.devices()[:int(np.prod(shape))]
    mesh = training.make_mesh(dict(zip(sharding.MESH_AXES, shape)), devices=devices)
    return training.build_task(config, mesh)


def tones(rng, batch, samples):
    """Tones of random pitch plus a noise burst: (batch, samples) float32."""
    t = np.arange(samples) / SAMPLE_RATE
    tone = rng.uniform(0.2, 0.5, (batch, 1)) * np.sin(2 * np.pi * rng.uniform(100, 1500, (batch, 1)) * t)
    start = rng.integers(0, samples // 2, (batch, 1))
    idx = np.arange(samples)[None]
    burst = ((idx >= start) & (idx < start + samples // 4)) * rng.normal(0, 0.2, (batch, samples))
    return np.clip(tone + burst, -1, 1).astype(np.float32)


def adam_moments(opt_state):
    """Per group, the first moment of Adam as one vector (parameter-leaf order, as optax.flatten orders it)."""
    out = {}
    for group, inner in opt_state.inner_states.items():
        adam = [s for s in jax.tree.leaves(inner, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                if isinstance(s, optax.ScaleByAdamState)]
        out[group] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(adam[0].mu)])
    return out


def assert_trees_close(a, b, **tolerance):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


def assert_bit_identical(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def config():
    return codec_config()


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return [{"audio": tones(rng, 8, 512)} for _ in range(2)]


@pytest.fixture(scope="module")
def runs(config, batches):
    """Two real jitted codec steps (k-means init, then EMA + Adam) on each mesh; host copies of the states."""
    out = {}
    for shape in MESHES:
        task = make_task(shape, config)
        state = task.create_state()  # Created sharded, never on one device.
        record = dict(task=task, initial=jax.device_get(state), metrics=[], states=[],
                      param_bytes=max(training.bytes_per_device(state.codec.params).values()),
                      opt_bytes=max(training.bytes_per_device(state.codec.opt_state).values()))
        for batch in batches:
            state, metrics = task.train_step(state, task.device_batch(batch, train=True))
            record["metrics"].append(jax.device_get(metrics))
            record["states"].append(jax.device_get(state))
        record["compiles"] = task.train_step.cache_size()
        out[shape] = record
    return out


def test_sharded_init_gives_the_same_values_on_any_mesh(runs):
    for shape in MESHES[1:]:
        assert_trees_close(runs[shape]["initial"], runs[(1, 1, 1)]["initial"], rtol=0, atol=0)


@pytest.mark.parametrize("shape", MESHES[1:])
def test_sharded_codec_step_equals_the_single_device_step(runs, shape):
    run, ref = runs[shape], runs[(1, 1, 1)]
    for got, want in zip(run["metrics"], ref["metrics"]):
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=2e-4, atol=1e-6, err_msg=key)
    assert float(ref["metrics"][0]["adversarial_loss"]) > 0 and not bool(ref["metrics"][0]["skipped"])
    # Gradients: Adam's first moment after step 1 is (1 - b1) * gradient, the whole gradient tree.
    first_run, first_ref = adam_moments(run["states"][0].codec.opt_state), adam_moments(
        ref["states"][0].codec.opt_state)
    for group in ("generator", "discriminator"):
        np.testing.assert_allclose(first_run[group], first_ref[group], rtol=1e-3, atol=1e-5, err_msg=group)
    # EMA codebooks (k-means over the global batch at step 1, EMA at step 2) and the parameters after two steps.
    assert_trees_close(run["states"][1].codec.vq_stats, ref["states"][1].codec.vq_stats, rtol=1e-3, atol=1e-5)
    assert_trees_close(run["states"][1].codec.params, ref["states"][1].codec.params, rtol=1e-3, atol=1e-5)
    assert run["compiles"] == 1  # One compilation per run.


def test_fsdp_splits_parameters_and_optimizer_state(runs):
    whole, fsdp = runs[(1, 1, 1)], runs[(2, 4, 1)]
    # fsdp=4: seen x3.03 for both; biases and the other arrays below fsdp_min_size stay whole.
    assert whole["param_bytes"] / fsdp["param_bytes"] > 2.5
    assert whole["opt_bytes"] / fsdp["opt_bytes"] > 2.5
    task = fsdp["task"]
    kernels = [s.spec for s in jax.tree.leaves(task.shardings.codec.params["generator"])]
    assert any("fsdp" in tuple(spec) for spec in kernels)


def test_flat_optimizer_state_is_split_when_its_length_divides_the_axis():
    mesh = training.make_mesh({"data": 2, "fsdp": 4})
    assert sharding.fallback_spec((4096,), mesh, 64) == jax.sharding.PartitionSpec("fsdp")
    assert sharding.fallback_spec((4097,), mesh, 64) == jax.sharding.PartitionSpec()  # replicated
    assert sharding.fallback_spec((7, 3, 16), mesh, 64) == jax.sharding.PartitionSpec(None, None, "fsdp")
    assert sharding.fallback_spec((8, 4), mesh, 64) == jax.sharding.PartitionSpec()  # below fsdp_min_size


def test_checkpoint_is_bit_identical_restores_onto_another_mesh_and_resumes(tmp_path, runs, config, batches):
    source, target = runs[(2, 4, 1)], runs[(1, 1, 1)]
    after_one = source["states"][0]
    ckpt = training.Checkpointer(str(tmp_path / "a"), config.model, every_steps=1, keep=2)
    assert ckpt.save(1, jax.device_put(after_one, source["task"].shardings), {"next_index": 8})
    ckpt.close()
    # Onto one device: the same bytes, with the target mesh's shardings.
    restored, data_state, step = training.Checkpointer(str(tmp_path / "a"), config.model, every_steps=1,
                                                       keep=2).restore(target["task"].abstract_state)
    assert step == 1 and data_state == {"next_index": 8}
    assert_bit_identical(jax.device_get(restored), after_one)
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target["task"].shardings)):
        assert leaf.sharding == want

    # Resume on one device from its own step-1 checkpoint: step 2 reproduces the uninterrupted run bit for bit.
    ckpt = training.Checkpointer(str(tmp_path / "b"), config.model, every_steps=1, keep=2)
    ckpt.save(1, jax.device_put(target["states"][0], target["task"].shardings), {})
    ckpt.close()
    task = target["task"]
    resumed, _, _ = training.Checkpointer(str(tmp_path / "b"), config.model, every_steps=1,
                                          keep=2).restore(task.abstract_state)
    resumed, metrics = task.train_step(resumed, task.device_batch(batches[1], train=True))
    assert_bit_identical(jax.device_get(resumed), target["states"][1])
    assert_bit_identical(jax.device_get(metrics), target["metrics"][1])


def test_nonfinite_batch_skips_the_update_and_is_counted(runs, batches):
    run = runs[(1, 1, 1)]
    task, before = run["task"], run["states"][1]
    poisoned = {"audio": np.full_like(batches[0]["audio"], np.nan)}
    poisoned = task.device_batch(poisoned, train=True)
    state, metrics = task.train_step(jax.device_put(before, task.shardings), poisoned)
    metrics, after = jax.device_get(metrics), jax.device_get(state)
    assert bool(metrics["skipped"]) and int(metrics["nonfinite_count"]) == 1
    assert not np.isfinite(metrics["generator_loss"])
    assert_bit_identical((after.codec.params, after.codec.vq_stats, after.codec.opt_state),
                         (before.codec.params, before.codec.vq_stats, before.codec.opt_state))
    assert int(after.step) == int(before.step) + 1 and int(after.nonfinite_count) == 1


def test_config_errors_name_the_cause(tmp_path):
    with pytest.raises(ValueError, match="no tensor-parallel layout"):
        make_task((4, 1, 2), codec_config())
    bad = codec_config()
    bad.model.generator.stride = (2, 2)
    with pytest.raises(ValueError, match=r"unknown config field 'model.generator.stride'; did you mean "
                                         r"'model.generator.strides'\?"):
        make_task((1, 1, 1), bad)
    with pytest.raises(ValueError, match="not divisible by the 8 data-parallel shards"):
        make_task((8, 1, 1), codec_config(**{"data.batch_size": 4}))
    with pytest.raises(ValueError, match="not a known model kind"):
        config_lib.kind_of(codec_config(kind="vocoder"))
    # A workdir of one kind refuses a config of the other.
    from soundstorm_jax.configs import tiny
    training.save_config(str(tmp_path), tiny.get_config())
    with pytest.raises(ValueError, match="holds a 'soundstorm' run but config.kind is 'codec'"):
        training.check_saved_config(str(tmp_path), codec_config())


# ---- train.py end to end -------------------------------------------------------------------------------------

def write_wavs(root, rate, *, train=10, validation=3, seconds=0.25, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("validation", validation)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(n):
            audio = tones(rng, 1, int(seconds * rate))[0] if rate == SAMPLE_RATE else rng.normal(
                0, 0.1, int(seconds * rate)).astype(np.float32)
            soundfile.write(os.path.join(root, split, f"clip{i:02d}.wav"), audio, rate, subtype="PCM_16")


@pytest.fixture(scope="module")
def audio_dataset(tmp_path_factory):
    from soundstorm_jax.data import prepare_audio_folder
    root = tmp_path_factory.mktemp("audio")
    write_wavs(str(root / "wavs"), SAMPLE_RATE)
    prepare_audio_folder(str(root / "wavs"), str(root / "prepared"), sample_rate=SAMPLE_RATE)
    return str(root / "prepared")


def test_audio_dataset_at_another_rate_is_refused(tmp_path):
    from soundstorm_jax.data import prepare_audio_folder
    write_wavs(str(tmp_path / "wavs"), 8000, train=2, validation=1)
    prepare_audio_folder(str(tmp_path / "wavs"), str(tmp_path / "prepared"))  # Keeps the files' 8 kHz.
    task = make_task((1, 1, 1), codec_config(**{"data.dir": str(tmp_path / "prepared")}))
    with pytest.raises(ValueError, match="is at 8000 Hz but the codec expects 16000 Hz"):
        task.open_data()
    task = make_task((1, 1, 1), codec_config(**{"data.dir": str(tmp_path)}))
    with pytest.raises(FileNotFoundError, match="holds no prepared dataset"):
        task.open_data()


def test_without_a_data_dir_the_codec_trains_on_the_embedded_corpus(tmp_path, monkeypatch):
    from soundstorm_jax.data import espeak_is_available
    if not espeak_is_available():
        pytest.skip("eSpeak NG (espeakng-loader) is not installed")
    monkeypatch.setenv("SOUNDSTORM_JAX_CACHE", str(tmp_path))  # A fresh build (seconds), not the user's cache.
    task = make_task((1, 1, 1), codec_config())
    assert task.config.data.dir is None
    builder = task.open_data()
    assert int(builder.info.metadata["sample_rate"]) == SAMPLE_RATE and str(tmp_path) in str(builder.data_dir)
    batch = next(trainer.train_iterator(task, builder))
    assert batch["audio"].shape == (8, 512) and batch["audio"].dtype == np.float32
    assert np.abs(batch["audio"]).max() > 0.01  # Speech, not padding.


ARGS = ["--config.compiler_options.xla_backend_optimization_level=0",
        "--config.compiler_options.xla_llvm_disable_expensive_passes=True",
        "--config.model.generator.strides=(2, 2)", "--config.data.segment_samples=1024",
        "--config.checkpoint.every_steps=2", "--config.logging.every_steps=1", "--config.logging.eval_every_steps=4",
        "--config.loss.adversarial_start_step=2", "--config.loss.mel_scales=(64,)",
        "--config.model.discriminator.num_scales=1", "--config.model.discriminator.stft_dilations=(1,)"]


def train_py(workdir, data_dir, steps, env):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", "codec_tiny",
           "--workdir", str(workdir), f"--config.data.dir={data_dir}", f"--config.total_steps={steps}"] + ARGS
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()]


def checkpoints(workdir):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


@pytest.mark.slow
def test_train_py_trains_the_codec_evaluates_and_resumes(tmp_path, audio_dataset):
    # The suite's compilation cache (tests/conftest.py) lets the second run reuse the first one's programs.
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
                         " --xla_llvm_disable_expensive_passes=true"
                         " --xla_cpu_use_fusion_emitters=false")
    workdir = tmp_path / "run"
    first = train_py(workdir, audio_dataset, 4, env)
    train = [r for r in records(workdir) if "generator_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(np.isfinite(r["mel_loss"]) and r["audio_seconds_per_s"] > 0 and r["nonfinite_count"] == 0
               for r in train)
    assert train[0]["feature_matching_loss"] > 0 and train[0]["generator_loss"] == pytest.approx(
        train[0]["mel_loss"] + train[0]["commit_loss"], rel=1e-5)  # GAN terms start at step 2.
    evals = [r for r in records(workdir) if "eval_mel_loss" in r]
    assert [r["step"] for r in evals] == [4] and evals[0]["eval_examples"] == 3
    assert checkpoints(workdir) == [2, 4]
    assert json.load(open(workdir / "config.json"))["kind"] == "codec"
    assert '"step": 1' in first.stdout

    second = train_py(workdir, audio_dataset, 6, env)
    assert "resumed from step 4" in second.stderr
    train = [r for r in records(workdir) if "generator_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert checkpoints(workdir) == [4, 6]

    codec = restore.load_codec(str(workdir))  # The trained codec, straight from the workdir.
    audio = tones(np.random.default_rng(5), 2, 1000)
    codes = codec.encode(audio, sample_rate=SAMPLE_RATE)
    assert codes.shape == (2, 250, 4) and codec.hop_length == 4
    assert codec.decode(codes, length=1000).shape == (2, 1000)
