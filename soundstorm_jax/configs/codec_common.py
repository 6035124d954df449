"""The fields every codec config has (config.kind = 'codec'), with their defaults.

Sections: model.generator (SoundStream fields; dtype as a string),
model.discriminator (CodecDiscriminator fields), loss (mel and waveform
reconstruction, commitment, adversarial and feature-matching weights; mel scales), optimizer
(one Adam per parameter group), data (a prepared audio dataset, or the
embedded eSpeak corpus when data.dir is unset), mesh, checkpoint, logging.
"""
import ml_collections
from ml_collections.config_dict import placeholder

# The codec's layers carry no logical axis names: the batch is split over these mesh axes, and with
# mesh.shape.fsdp > 1 every array of at least mesh.fsdp_min_size elements is split over 'fsdp' on its
# largest divisible dimension (soundstorm_jax/training/codec_task.py).
CODEC_RULES = (("batch", ("data", "fsdp")),)


def codec_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "codec"
    c.seed = 0
    c.total_steps = 100_000

    c.model = ml_collections.ConfigDict(dict(
        generator=ml_collections.ConfigDict(dict(
            codebook_size=1024, rq_num_quantizers=12, rq_groups=1, strides=(2, 4, 5, 8), channels=32,
            channel_mults=placeholder(tuple), dim=512, target_sample_hz=16000,
            attn_window_size=128, attn_depth=0, attn_heads=8, causal=True,
            rq_decay=0.99, rq_kmeans_init=True, rq_kmeans_iters=10, rq_threshold_ema_dead_code=2.0,
            quantizer_dropout=0.5, quantizer_dropout_min_levels=1, quantizer_dropout_per_example=True,
            dtype="float32")),
        discriminator=ml_collections.ConfigDict(dict(
            num_scales=3, wave_channels=16, wave_max_channels=1024, wave_downsample=(4, 4, 4, 4),
            stft_resolutions=((1024, 256), (2048, 512), (512, 128)), stft_channels=32, stft_max_channels=1024,
            stft_dilations=(1, 2, 4), periods=(), period_channels=32, period_max_channels=1024,
            dtype="float32"))))

    c.loss = ml_collections.ConfigDict(dict(
        mel_scales=(64, 128, 256, 512, 1024, 2048), mel_bins=64, mel_weight=1.0,
        waveform_weight=0.0,  # L1 on the waveform (EnCodec's time-domain term): the one loss that sees phase
        commitment_weight=1.0, adversarial_weight=1.0, feature_matching_weight=3.0, adversarial_start_step=0))

    c.optimizer = ml_collections.ConfigDict(dict(
        generator_lr=2e-4, discriminator_lr=2e-4, b1=0.5, b2=0.9, clip_norm=10.0,
        decay_steps=placeholder(int),  # None: constant rates; N: a cosine down to a tenth over the first N steps
        flatten=True))  # Adam state: one flat vector per group (True) or one array per parameter (False, FSDP)

    c.data = ml_collections.ConfigDict(dict(
        dir=placeholder(str),  # a prepared AudioFolder dataset; unset = the embedded eSpeak corpus below
        corpus="tiny",         # 'tiny' (~4 min of speech, built in seconds) or 'small' (~1 h)
        train_split="train", eval_split="validation",
        batch_size=16, eval_batch_size=placeholder(int),
        segment_samples=16000,  # random crops of this many samples (1 s at 16 kHz)
        num_threads=2, prefetch_buffer_size=4))

    c.mesh = ml_collections.ConfigDict(dict(
        shape=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
        rules=CODEC_RULES, fsdp_min_size=4096))

    c.compiler_options = ml_collections.ConfigDict(dict(
        xla_backend_optimization_level=placeholder(int),
        xla_llvm_disable_expensive_passes=placeholder(bool)))

    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))

    # Metrics go to stdout, workdir/metrics.jsonl and (tensorboard=True) TensorBoard event files in
    # workdir/tensorboard; each evaluation logs tensorboard_samples reconstructed validation clips (0: none).
    c.logging = ml_collections.ConfigDict(dict(
        every_steps=50, eval_every_steps=1000,
        eval_batches=placeholder(int),  # None = the whole validation split
        tensorboard=True, tensorboard_samples=2))

    # JAX's persistent compilation cache (soundstorm_jax/training/compile_cache.py): a restarted run loads its
    # compiled steps. dir '' = workdir/compile_cache; JAX_COMPILATION_CACHE_DIR, when set, is used instead.
    c.compile_cache = ml_collections.ConfigDict(dict(enabled=True, dir="", min_compile_seconds=0.1))
    return c
