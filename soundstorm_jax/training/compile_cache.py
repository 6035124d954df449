"""The run's persistent compilation cache: a restarted run loads its compiled steps instead of compiling them.

    config.compile_cache.enabled = True              # the default
    config.compile_cache.dir = ""                    # '' = WORKDIR/compile_cache; any folder (gs:// too)
    config.compile_cache.min_compile_seconds = 0.1   # programs that compile faster are not written

A resumed, preempted or crashed-and-restarted run compiles the same train and
evaluation steps again: minutes per restart on a pod. `configure` points JAX's
persistent cache (`jax_compilation_cache_dir`) at the run's folder before
anything compiles, so the second process finds them there. JAX keys an entry
by the program, its shardings, the compile options, XLA_FLAGS and the
jax/jaxlib versions, so a hit is the executable a compile would have made.

JAX's own setting wins: when `JAX_COMPILATION_CACHE_DIR` (or
`jax.config.update('jax_compilation_cache_dir', ...)`) is set before the run,
that cache is used as it is configured (its threshold included) and the
config's section is not read.

`watch()` counts what JAX reports while a call compiles (persistent-cache
hits, entries written, compile seconds); the trainer wraps the first train
step in it and logs whether the step came from the cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Iterator, Optional

import jax
from etils import epath
from jax.experimental.compilation_cache import compilation_cache

from soundstorm_jax.training import config as config_lib

log = logging.getLogger(__name__)

CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_WRITE_EVENT = "/jax/compilation_cache/cache_misses"  # Recorded when a compiled program is written.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # A compile, or a load from the cache.

# The folder this module pointed JAX at (None: it has not, or it has turned its own cache off again). A dir JAX
# holds that is not this one was set by the user, and is left alone.
_configured_dir: Optional[str] = None


def configure(config: Any, workdir: str) -> Optional[str]:
    """Points JAX's persistent compilation cache at the run's folder; returns the folder in use (None: none).

    Call before the run compiles anything: JAX opens its cache at the first compile that uses it.
    """
    global _configured_dir
    current = jax.config.jax_compilation_cache_dir or None
    if current is not None and current != _configured_dir:
        log.info("compilation cache: %s (JAX's own setting)", current)
        return current
    settings = config_lib.read_section(config, "compile_cache")
    wanted = None
    if settings.get("enabled", True):
        wanted = str(settings.get("dir") or epath.Path(workdir) / "compile_cache")
    if wanted != current:
        if current is not None:
            compilation_cache.reset_cache()  # JAX opens one cache per process; an earlier run here opened ours.
        jax.config.update("jax_compilation_cache_dir", wanted)
        _configured_dir = wanted
    if wanted is not None:
        # JAX's default (1 s) would leave a small model's train step uncached on a fast machine.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(settings.get("min_compile_seconds", 0.1)))
        log.info("compilation cache: %s", wanted)
    return wanted


@dataclasses.dataclass
class CompileReport:
    """What JAX reported while a call ran: persistent-cache hits, programs compiled and written to the cache, the
    programs compiled or loaded, and the seconds spent doing it."""
    cache_hits: int = 0
    cache_writes: int = 0
    seconds: float = 0.0
    compiles: int = 0

    def describe(self, what: str) -> str:
        """One log line, e.g. 'train step: loaded from the compilation cache in 0.2 s'."""
        if self.cache_hits:
            return f"{what}: loaded from the compilation cache in {self.seconds:.1f} s"
        written = " (written to the compilation cache)" if self.cache_writes else ""
        return f"{what}: compiled in {self.seconds:.1f} s{written}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def watch() -> Iterator[CompileReport]:
    """A `CompileReport` of what compiles while the block runs (jax.monitoring events; any thread)."""
    report = CompileReport()

    def on_event(event: str, **kwargs) -> None:
        if event == CACHE_HIT_EVENT:
            report.cache_hits += 1
        elif event == CACHE_WRITE_EVENT:
            report.cache_writes += 1

    def on_duration(event: str, seconds: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            report.seconds += seconds
            report.compiles += 1

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        yield report
    finally:
        jax.monitoring.unregister_event_listener(on_event)
        jax.monitoring.unregister_event_duration_listener(on_duration)


__all__ = ["CompileReport", "configure", "watch"]
