"""A tiny SoundStream codec: ~0.35 s per step (1 s of audio) on a 2-core CPU. Used by the tests and smoke runs.

    python train.py --config configs/codec_tiny.py --workdir runs/codec_tiny [--config.data.dir=AUDIO_DATASET]

Without data.dir it trains on the embedded eSpeak corpus (built in seconds,
no download). AUDIO_DATASET is a folder prepared with
soundstorm_jax.data.prepare_audio_folder(AUDIO_DIR, AUDIO_DATASET, sample_rate=16000).

Sharding (a change of mesh.shape):
    data parallel (default)    --config.mesh.shape.data=-1
    FSDP over all devices      --config.mesh.shape.data=1 --config.mesh.shape.fsdp=-1 --config.optimizer.flatten=False
    DP x FSDP                  --config.mesh.shape.data=2 --config.mesh.shape.fsdp=-1 --config.optimizer.flatten=False
"""
import ml_collections

from soundstorm_jax.configs import codec_common


def get_config() -> ml_collections.ConfigDict:
    config = codec_common.codec_base_config()
    config.total_steps = 200

    gen = config.model.generator
    gen.codebook_size, gen.rq_num_quantizers = 64, 4
    gen.strides, gen.channels, gen.dim = (2, 4), 8, 16  # hop 8: 2 kHz frames at 16 kHz
    gen.rq_kmeans_iters = 4

    config.model.discriminator = ml_collections.ConfigDict(dict(
        num_scales=2, wave_channels=4, wave_max_channels=32, wave_downsample=(4, 4),
        stft_resolutions=((128, 32),), stft_channels=4, stft_max_channels=16, stft_dilations=(1, 2, 4),
        dtype="float32"))

    config.loss.mel_scales = (64, 256)
    config.loss.mel_bins = 32
    config.loss.adversarial_start_step = 50  # reconstruction first, then the GAN terms
    config.loss.adversarial_weight = 0.1
    config.loss.feature_matching_weight = 0.3

    config.optimizer.generator_lr = 3e-3
    config.optimizer.discriminator_lr = 1e-3

    config.data.batch_size = 8
    config.data.segment_samples = 2048
    config.data.num_threads = 1
    config.data.prefetch_buffer_size = 2

    config.checkpoint.every_steps = 50
    config.checkpoint.keep = 2
    config.logging.every_steps = 10
    config.logging.eval_every_steps = 100
    config.logging.eval_batches = 2
    return config
