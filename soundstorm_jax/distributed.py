"""A multi-process JAX job: whether the environment asks for one, and joining it.

Every command that can run as one process of several (`train`, `prepare`) calls
`maybe_initialize_distributed()` before anything touches devices. Cheap to
import: JAX is imported only when a job is requested.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def requested() -> bool:
    """Whether the environment describes several processes (`soundstorm launch`, TPU VMs, SLURM, ...)."""
    env = os.environ
    return (int(env.get("JAX_NUM_PROCESSES", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in env
            or int(env.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in env
            or "MEGASCALE_COORDINATOR_ADDRESS" in env)


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize(...)` when the environment describes several processes.

    Reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (what
    `soundstorm launch` sets), SOUNDSTORM_HEARTBEAT_TIMEOUT (seconds after
    which a silent process counts as dead and the job stops; JAX's default is
    100) and SOUNDSTORM_INIT_TIMEOUT (seconds to wait for every process to
    join; JAX's default is 300); cluster environments (TPU VMs, SLURM) are detected by JAX itself.
    A plain single-process run skips it. Must run before anything touches
    devices. Returns whether it initialised.
    """
    env = os.environ
    if not requested():
        return False
    import jax
    kwargs = {}
    for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"),
                      ("heartbeat_timeout_seconds", "SOUNDSTORM_HEARTBEAT_TIMEOUT"),
                      ("initialization_timeout", "SOUNDSTORM_INIT_TIMEOUT")):
        if env.get(name):
            try:
                kwargs[key] = int(env[name])
            except ValueError:
                raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:  # E.g. a process id out of range, or an unreachable coordinator.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"jax.distributed.initialize failed ({first}); check JAX_COORDINATOR_ADDRESS="
                         f"{env.get('JAX_COORDINATOR_ADDRESS')!r}, JAX_NUM_PROCESSES={env.get('JAX_NUM_PROCESSES')!r}, "
                         f"JAX_PROCESS_ID={env.get('JAX_PROCESS_ID')!r}") from e
    log.info("process %d of %d; %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def barrier(name: str) -> None:
    """Waits until every process of the job reaches the barrier `name` (nothing to wait for in one process)."""
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


EXIT_MEETING_S = 30.0


def meet_partners_before_exit(timeout_s: float = EXIT_MEETING_S) -> bool:
    """Before a process of a multi-process job leaves on an error: waits, at most `timeout_s`, for the other
    processes at one barrier of the distributed service; when they all come, shuts the job down together as a
    normal exit does; returns whether they all came.

    A check every process makes alike (a mesh the devices do not divide, a bad config value) then fails in every
    process with its own message. Without the wait, the first to leave (process 0 hosts the coordination service)
    could end the service while another is still starting up, and that one would die of a lost connection
    instead. Meeting is not enough either: process 0 could still end the service just after the barrier, while
    another is on its way out, whose client then aborts on the lost connection; JAX's own shutdown (a barrier of
    every client, then the service) lets them all leave cleanly. A process that is not failing never arrives: the
    wait ends at the timeout, and that process stops later, when the coordinator misses this one's heartbeats.
    """
    from jax._src import distributed as jax_distributed  # the client's own barrier: no public API takes a timeout
    client = jax_distributed.global_state.client
    if client is None:
        return False
    try:
        client.wait_at_barrier("soundstorm: leaving after an error", int(timeout_s * 1000))
    except Exception:  # noqa: BLE001 - timed out, or the service is already gone: leave all the same.
        return False
    try:
        jax_distributed.global_state.shutdown()
    except Exception as e:  # noqa: BLE001 - a partner gone after the barrier: leaving is all that is left to do.
        log.warning("leaving without a clean shutdown of the job: %s", e)
    return True
