"""The network: rotary Conformer and the codec-token wrapper around it."""
from soundstorm_jax.model.conformer import Attention, Conformer, ConformerBlock, ConvModule, FeedForward
from soundstorm_jax.model.hyper_connections import HyperConnection
from soundstorm_jax.model.wrapper import ConformerWrapper, resample_in_time

__all__ = ["Attention", "Conformer", "ConformerBlock", "ConformerWrapper", "ConvModule", "FeedForward",
           "HyperConnection", "resample_in_time"]
