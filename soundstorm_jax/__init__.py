"""soundstorm-jax: SoundStorm (Borsos et al. 2023) in JAX/Flax.

Public names::

    from soundstorm_jax import SoundStorm, ConformerWrapper, Conformer
"""
from soundstorm_jax.maskgit import SoundStorm
from soundstorm_jax.model import Conformer, ConformerBlock, ConformerWrapper

__all__ = ["Conformer", "ConformerBlock", "ConformerWrapper", "SoundStorm"]
__version__ = "0.1.0"
