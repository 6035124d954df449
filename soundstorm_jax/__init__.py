"""soundstorm-jax: SoundStorm (Borsos et al. 2023) in JAX/Flax.

Public names::

    from soundstorm_jax import SoundStorm, ConformerWrapper, Conformer
    model, variables, config, codec = soundstorm_jax.load("exported")   # an export or a training workdir
"""
from soundstorm_jax.maskgit import SoundStorm
from soundstorm_jax.model import Conformer, ConformerBlock, ConformerWrapper



def load(path: str, *, mesh=None):
    """A SoundStorm export (`soundstorm export`) or training workdir: ``model, variables, config, codec``
    (the codec exported with it, else None); see `soundstorm_jax.export.load`."""
    from soundstorm_jax import export  # Orbax is imported only when a run is loaded.
    return export.load(path, mesh=mesh)


__all__ = ["Conformer", "ConformerBlock", "ConformerWrapper", "SoundStorm", "load"]
__version__ = "0.1.0"
