"""Generation: a level-by-level MaskGIT demasking sampler compiled as one XLA program."""
from soundstorm_jax.maskgit.schedules import resolve_steps
from soundstorm_jax.sampler.generate import DEFAULT_FRAME_BUCKET, generate, model_functions
from soundstorm_jax.sampler.loop import Decoder, DecodePlan, DecodeState, SamplingOptions, anneal, decode, \
    decode_pass, pass_schedule
from soundstorm_jax.sampler.tokens import lowest_confidence, sample_tokens, top_k_filter, top_p_filter

__all__ = ["DEFAULT_FRAME_BUCKET", "Decoder", "DecodePlan", "DecodeState", "SamplingOptions", "anneal", "decode",
           "decode_pass", "generate", "lowest_confidence", "model_functions", "pass_schedule", "resolve_steps",
           "sample_tokens", "top_k_filter", "top_p_filter"]
