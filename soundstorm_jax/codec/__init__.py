"""SoundStream codec in Flax Linen: EMA residual VQ, SEANet encoder/decoder, discriminators, training step;
EnCodec 24 kHz with an importer for the PyTorch ``encodec`` package's weights.

Every codec implements ``Codec`` (``interface``). Codes are ``(b, frames, groups * levels)`` int32,
group-major (column ``g * Q + q``).
"""
from soundstorm_jax.codec.discriminators import (CodecDiscriminator, MultiPeriodDiscriminator,
                                                 MultiResolutionSTFTDiscriminator, MultiScaleDiscriminator,
                                                 PeriodDiscriminator, STFTDiscriminator, WaveDiscriminator)
from soundstorm_jax.codec.encodec import EnCodec, EnCodecCodec
from soundstorm_jax.codec.encodec_import import import_encodec_state_dict, load_encodec
from soundstorm_jax.codec.host_codec import HostCodec
from soundstorm_jax.codec.interface import Codec
from soundstorm_jax.codec.local_attention import LocalTransformer, local_attention
from soundstorm_jax.codec.losses import (feature_matching_loss, hinge_discriminator_loss, hinge_generator_loss,
                                         multiscale_mel_loss)
from soundstorm_jax.codec.residual_vq import GroupedResidualVQ, QuantizerOutput, ResidualVQ, draw_num_levels
from soundstorm_jax.codec.soundstream import SoundStream, SoundStreamCodec, SoundStreamOutput
from soundstorm_jax.codec.spectral import mel_filterbank, mel_spectrogram, stft
from soundstorm_jax.codec.train_step import (CodecTrainConfig, CodecTrainState, codec_eval_step, codec_from_state,
                                             codec_losses, codec_optimizer, codec_train_step, init_codec_train_state)
from soundstorm_jax.codec.vector_quantizer import VectorQuantizer, kmeans, kmeans_plus_plus

__all__ = [
    "Codec", "CodecDiscriminator", "CodecTrainConfig", "CodecTrainState", "EnCodec", "EnCodecCodec",
    "GroupedResidualVQ", "HostCodec", "LocalTransformer", "MultiPeriodDiscriminator",
    "MultiResolutionSTFTDiscriminator", "MultiScaleDiscriminator", "PeriodDiscriminator", "QuantizerOutput",
    "ResidualVQ", "STFTDiscriminator", "SoundStream", "SoundStreamCodec", "SoundStreamOutput",
    "VectorQuantizer", "WaveDiscriminator", "codec_eval_step", "codec_from_state", "codec_losses", "codec_optimizer",
    "codec_train_step", "draw_num_levels", "feature_matching_loss", "hinge_discriminator_loss", "hinge_generator_loss",
    "import_encodec_state_dict", "init_codec_train_state", "kmeans", "kmeans_plus_plus", "load_encodec",
    "local_attention", "mel_filterbank", "mel_spectrogram", "multiscale_mel_loss", "stft",
]
