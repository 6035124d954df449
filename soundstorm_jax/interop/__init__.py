"""Interoperability with the PyTorch reference, soundstorm-pytorch 0.6.1 (no torch needed except to read .pt files)."""
from soundstorm_jax.interop.pytorch import (
    config_from_reference,
    export_state_dict,
    from_reference,
    import_state_dict,
    load_reference_checkpoint,
)

__all__ = ["config_from_reference", "export_state_dict", "from_reference", "import_state_dict",
           "load_reference_checkpoint"]
