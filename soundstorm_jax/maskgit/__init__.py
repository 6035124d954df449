"""The MaskGIT side: schedules, the training mask, the SoundStorm objective."""
from soundstorm_jax.maskgit.masking import TrainingMask, column_levels, draw_training_mask, masked_inputs
from soundstorm_jax.maskgit.schedules import SCHEDULES, cosine_schedule, get_schedule, linear_schedule, masked_count
from soundstorm_jax.maskgit.soundstorm import SoundStorm

__all__ = ["SCHEDULES", "SoundStorm", "TrainingMask", "column_levels", "cosine_schedule", "draw_training_mask",
           "get_schedule", "linear_schedule", "masked_count", "masked_inputs"]
