"""SoundStream as SoundStorm uses it: 16 kHz, strides (2, 4, 5, 8) -> hop 320 -> 50 Hz, 12 levels x 1024 codes
(6 kbps), multi-scale waveform + multi-resolution STFT discriminators, hinge + feature-matching losses.

    python train.py --config configs/codec_paper.py --workdir gs://bucket/codec --config.data.dir=gs://bucket/audio

data.dir: an audio dataset prepared at 16 kHz (soundstorm_jax.data.prepare_audio_folder(AUDIO_DIR, DIR,
sample_rate=16000)); unset, the run uses the embedded eSpeak 'small' corpus (a smoke test, not a codec).
Sized for accelerators. Sharding is a change of mesh.shape:
    config.mesh.shape = dict(data=-1, fsdp=1, tensor=1)                          # data parallel (default)
    config.mesh.shape = dict(data=-1, fsdp=8, tensor=1); optimizer.flatten=False  # DP x FSDP (ZeRO-3)
"""
import ml_collections

from soundstorm_jax.configs import codec_common


def get_config() -> ml_collections.ConfigDict:
    config = codec_common.codec_base_config()
    config.total_steps = 300_000
    gen = config.model.generator
    gen.codebook_size, gen.rq_num_quantizers, gen.rq_groups = 1024, 12, 1
    gen.strides, gen.channels, gen.dim, gen.target_sample_hz = (2, 4, 5, 8), 32, 512, 16000
    gen.causal = True  # streamable, as SoundStream
    gen.quantizer_dropout = 0.5  # one model serves 1..12 levels (1.0 is the SoundStream paper's always-on)
    # Default discriminators (3 waveform scales; STFT at 1024/256, 2048/512, 512/128) and mel scales 64..2048.
    config.optimizer.generator_lr = 3e-4
    config.optimizer.discriminator_lr = 3e-4
    config.data.corpus = "small"
    config.data.batch_size = 64
    config.data.segment_samples = 16000  # 1 s crops
    config.checkpoint.every_steps = 5000
    config.logging.every_steps = 100
    config.logging.eval_every_steps = 5000
    config.logging.eval_batches = 50
    return config
