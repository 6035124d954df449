"""Orbax checkpoints: a task's train state, the data iterator's position and the model config.

`workdir/checkpoints/<step>/` holds three items, written together:

    state   the train state (sharded arrays; each host writes its shards)
    data    the grain iterator's state (JSON), so a resumed run reads
            exactly the batches it would have read
    model   the parameter-defining `config.model` fields (JSON), checked
            against the current config before anything is restored

Saves are asynchronous (training continues while the arrays are written)
and atomic: Orbax writes into a temporary directory and renames it when
complete, so a run killed mid-save resumes from the previous complete step.
Restoring targets ShapeDtypeStructs that carry the *current* mesh's
NamedShardings, so a checkpoint written on 8 devices restores onto 4 or 1.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store  # What Orbax's default ArrayHandler is given.

from soundstorm_jax import paths
from soundstorm_jax.training import config as config_lib

log = logging.getLogger(__name__)

# Orbax saves an array that several devices hold in "replica-parallel" slices: each replica writes a part. Every
# slice is a device op compiled for its shape and device, so for small arrays (biases, norms, a tiny model's every
# parameter) the first save of each process compiles hundreds of programs to write a few bytes each (168 programs,
# 1.8 s, for a 3-step codec run on 8 devices; the test suite's CPU time fell by ~9% without them). Arrays whose
# slices would be under this size are written whole by their first replica, as on GPUs, where Orbax turns
# replica-parallel saving off altogether; larger ones keep it.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """The train state's handler: Orbax's standard type handlers, with the replica-parallel size gate above."""
    array_handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
                                                   array_metadata_store=array_metadata_store.Store())
    handlers = [(t, array_handler if t is jax.Array else ocp.type_handlers.get_type_handler(t))
                for t in ocp.type_handlers.supported_types()]
    registry = ocp.type_handlers.create_type_handler_registry(*handlers)
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class Checkpointer:
    """A `ocp.CheckpointManager` over `workdir/checkpoints` (see the module docstring).

    Args:
      workdir: the run's directory.
      model_config: `config.model`; its signature is saved and checked.
      every_steps: save when step % every_steps == 0 (and when forced).
      keep: how many recent checkpoints to keep.
      async_save: write in a background thread.
    """

    def __init__(self, workdir: str, model_config: Mapping[str, Any], *, every_steps: int, keep: int,
                 async_save: bool = True):
        # A gs:// workdir as it is (abspath would turn it into a local './gs:/bucket/...'); Orbax writes it.
        self.directory = os.path.join(workdir if paths.is_remote(workdir) else os.path.abspath(workdir),
                                      "checkpoints")
        self.signature = config_lib.model_signature(model_config)
        self.every_steps = int(every_steps)
        options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), save_interval_steps=int(every_steps),
                                               enable_async_checkpointing=bool(async_save), create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=dict(
            state=_state_handler(), data=ocp.JsonCheckpointHandler(), model=ocp.JsonCheckpointHandler()))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Optional[Mapping[str, Any]], *,
             force: bool = False) -> bool:
        """Starts saving (asynchronously) if `step` is due or `force`; returns whether it did.

        `data_state` is the iterator's `get_state()` after `step` batches. Hosts
        read the same number of batches, so host 0's position stands for all.
        """
        # Our own interval: Orbax would also save the first step it sees.
        if (not force and step % self.every_steps) or step == self.manager.latest_step():
            return False
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                  data=ocp.args.JsonSave(dict(data_state or {})),
                                  model=ocp.args.JsonSave(self.signature))
        return bool(self.manager.save(step, args=args, force=True))

    def check_model(self, step: int) -> None:
        """ValueError naming the fields where checkpoint `step`'s model differs from the config."""
        saved = self.manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
        config_lib.check_model_matches(saved, self.signature, where=f"{self.directory}/{step}")

    def restore(self, abstract_state: Any, step: Optional[int] = None
                ) -> tuple[Any, dict[str, Any], int]:
        """(state, data_state, step) of checkpoint `step` (default: the latest).

        `abstract_state` holds ShapeDtypeStructs with the target NamedShardings
        (a task's `abstract_state`), so any mesh works.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        self.check_model(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract_state,
                                         restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
            data=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["data"] or {}), step

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class SignalFlag:
    """A flag set by signal `signum` while in its `with` block (the previous handler is put back on leaving).

    Signals can only be handled in the main thread; elsewhere, or when `_listens()` says no, nothing is
    installed and the flag stays unset. Subclasses say what a signal means (`_on_signal`).
    """

    signum: signal.Signals

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def _listens(self) -> bool:
        return True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and self._listens():
            self._previous = signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self._on_signal()
        self._event.set()

    def _on_signal(self) -> None:
        """What to say (and do) when the signal arrives."""

    def is_set(self) -> bool:
        return self._event.is_set()


class PreemptionFlag(SignalFlag):
    """Whether to save and stop because the machine is being preempted (SIGTERM), within a `with` block.

    Call `reached(step)` once after every step, on every process. One process
    (`jax.process_count() == 1`): a SIGTERM handler sets a flag, installed for
    the block and then restored. Several processes: JAX's distributed runtime
    catches SIGTERM on whichever host gets it, tells the others through the
    coordination service, and they agree on one step to stop at
    (`multihost_utils.reached_preemption_sync_point`), so every host saves the
    same step with no per-step collective of ours.
    """

    signum = signal.SIGTERM

    def __init__(self):
        super().__init__()
        self._distributed = False
        self._warned = False

    def _listens(self) -> bool:
        self._distributed = jax.process_count() > 1
        return not self._distributed  # (With several processes, our handler would replace JAX's notifier.)

    def _on_signal(self) -> None:
        log.warning("SIGTERM: saving a checkpoint and stopping")

    def reached(self, step: int) -> bool:
        """True at the step every process saves and stops at."""
        if not self._distributed:
            return self.is_set()
        from jax.experimental import multihost_utils
        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:  # jax_enable_preemption_service was turned off.
            if not self._warned:
                log.warning("no coordinated preemption (%s); a SIGTERM stops this run without a final "
                            "checkpoint: it resumes from the last periodic one", e)
                self._warned = True
            return False
        if reached:
            log.warning("process %d: preemption notice: saving step %d and stopping, as every process does",
                        jax.process_index(), step)
        return reached


class InterruptFlag(SignalFlag):
    """Ctrl-C (SIGINT) stops the loop at the next step boundary, within a `with` block.

    Python raises KeyboardInterrupt wherever the main thread happens to be,
    and inside a library call (a checkpoint save, the data iterator) it can be
    caught and lost: the run then goes on. Here the first Ctrl-C only sets a
    flag that the loop checks after each step (it then raises
    KeyboardInterrupt itself: exit 130, in-flight saves completed); a second
    Ctrl-C interrupts at once.
    """

    signum = signal.SIGINT

    def _on_signal(self) -> None:
        log.warning("Ctrl-C: stopping after this step (Ctrl-C again stops at once)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
