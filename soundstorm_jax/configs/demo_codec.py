"""The demo's codec: a small SoundStream at 16 kHz, 50 frames/s, 6 levels x 256 codes (~2.4 kbps).

    soundstorm demo                      # trains it as its second stage
    python train.py --config configs/demo_codec.py --workdir runs/demo_codec

Sized to learn speech-like reconstructions of the embedded eSpeak corpus in a
few CPU minutes: mel reconstruction loss only (no GAN; `soundstorm demo
--minutes` buys more steps), centred (non-causal) convolutions, no quantizer
dropout. The mel loss's long window (2048 samples, 160 bands) resolves a
voice's harmonics, so the codes keep its pitch: with 64 bands on 512-sample
windows every voice came back at a 100 Hz frame-locked buzz (README, "Hear
it"). About 0.3 s per step (4 s of audio) on a 2-core CPU. For a real codec
start from configs/codec_paper.py.
"""
import ml_collections

from soundstorm_jax.configs import codec_tiny


def get_config() -> ml_collections.ConfigDict:
    config = codec_tiny.get_config()
    config.total_steps = 800  # `soundstorm demo` sets this from --minutes

    gen = config.model.generator
    gen.strides, gen.channels, gen.dim = (2, 4, 5, 8), 8, 64  # hop 320: 50 frames/s at 16 kHz
    gen.codebook_size, gen.rq_num_quantizers = 256, 6
    gen.causal = False
    gen.quantizer_dropout = 0.0

    config.loss.mel_scales = (512, 2048)  # 2048-sample windows resolve a voice's harmonics
    config.loss.mel_bins = 160
    config.loss.adversarial_weight = 0.0  # both GAN weights 0: the step leaves the discriminators out
    config.loss.feature_matching_weight = 0.0
    config.loss.adversarial_start_step = 10**9

    config.optimizer.generator_lr = 3e-3
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.99

    config.data.batch_size = 8
    config.data.segment_samples = 8000  # 0.5 s crops: several 2048-sample windows each

    config.checkpoint.every_steps = 200
    config.checkpoint.keep = 1
    config.logging.every_steps = 50
    config.logging.eval_every_steps = 400
    return config
