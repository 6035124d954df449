"""Test setup shared by every test module.

Eight emulated CPU devices so the sharding tests run on one machine. This must
happen before JAX initialises its backend, which is why it lives here, at the
top of conftest, before anything imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Tests compare against fp32 references; keep matmuls exact on CPU.
jax.config.update("jax_default_matmul_precision", "highest")
