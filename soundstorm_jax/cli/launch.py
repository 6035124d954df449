"""`soundstorm launch`: run any command as a multi-process JAX job on this machine (pod code on a laptop).

    soundstorm launch --processes 2 --cpu-devices 4 -- train --config tiny --workdir runs/mp ...

starts `soundstorm train ...` twice, as processes 0 and 1 of one job: each
gets the coordinator's address (127.0.0.1, a free port), the process count
and its id in the environment (`JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), which `training.sharding.
maybe_initialize_distributed` hands to `jax.distributed.initialize`. With
`--cpu-devices N` each process emulates N CPU devices and the processes'
collectives go through gloo, as on a pod's hosts they go over the network.

The launcher forwards SIGTERM (a preemption notice) and Ctrl-C to every
process. When one process dies, JAX's distributed runtime stops the others
once their heartbeats to the coordinator go unanswered (`--heartbeat-timeout`
seconds); the launcher waits that long plus a margin, then kills what is left,
and reports how each process ended. Exit status: 0 when every process exited
0, 2 when one reported bad input, 130 after Ctrl-C, else 1.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

from soundstorm_jax.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, CliError

DESCRIPTION = """Run a soundstorm command as a multi-process JAX job on this machine.

  soundstorm launch --processes 2 --cpu-devices 4 -- train --config tiny --workdir runs/mp \\
      --config.data.dir=CODES

Every process runs `soundstorm COMMAND ...` with the coordinator's address, the process count and its id in
its environment. --cpu-devices N emulates N CPU devices per process (collectives through gloo); without it the
processes use the machine's accelerators (split them with JAX_LOCAL_DEVICE_IDS or CUDA_VISIBLE_DEVICES)."""

# How long past the heartbeat timeout the launcher waits for the survivors of a dead process to stop.
EXIT_MARGIN_S = 30.0


def add_parser(subparsers, parents):
    parser = subparsers.add_parser("launch", parents=parents, help="run a command as a multi-process JAX job here",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, required=True, metavar="N", help="how many processes")
    parser.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                        help="emulate N CPU devices per process (collectives through gloo)")
    parser.add_argument("--port", type=int, default=0,
                        help="the coordinator's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--heartbeat-timeout", type=int, default=20, metavar="SECONDS",
                        help="a process silent this long counts as dead and stops the job (default 20)")
    parser.set_defaults(run=run, accepts_extra=True)
    return parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(index: int, processes: int, port: int, cpu_devices: int | None, heartbeat_s: int) -> dict:
    """The environment of process `index`: the job's layout, and the emulated devices if asked for."""
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(index), SOUNDSTORM_HEARTBEAT_TIMEOUT=str(heartbeat_s))
    if cpu_devices is not None:
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
        env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(cpu_devices),
                   JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", XLA_FLAGS=flags.strip())
    return env


def describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def run(args, out, extra):
    command = extra[1:] if extra[:1] == ["--"] else extra
    if args.processes < 1:
        raise CliError(f"--processes must be at least 1, got {args.processes}")
    if args.cpu_devices is not None and args.cpu_devices < 1:
        raise CliError(f"--cpu-devices must be at least 1, got {args.cpu_devices}")
    if args.heartbeat_timeout < 1:
        raise CliError(f"--heartbeat-timeout must be at least 1 second, got {args.heartbeat_timeout}")
    if not command or command[0] == "launch":
        raise CliError("give the command to run after `--`, e.g. `soundstorm launch --processes 2 -- train "
                       "--config tiny --workdir runs/mp`")
    port = args.port or free_port()
    children = [subprocess.Popen([sys.executable, "-m", "soundstorm_jax", *command],
                                 env=process_env(i, args.processes, port, args.cpu_devices, args.heartbeat_timeout))
                for i in range(args.processes)]
    for i, child in enumerate(children):
        out.info(f"launch: process {i} is pid {child.pid} (coordinator 127.0.0.1:{port})")

    interrupted = False

    def forward(signum, frame):
        nonlocal interrupted
        del frame
        interrupted = interrupted or signum == signal.SIGINT
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = wait_all(children, grace_s=args.heartbeat_timeout + EXIT_MARGIN_S, out=out)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    record = dict(command="launch", processes=args.processes, exit_codes=codes,
                  ended=[describe(c) for c in codes])
    out.result(record, [f"process {i}: {describe(c)}" for i, c in enumerate(codes)])
    if all(c == 0 for c in codes):
        return 0
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if EXIT_BAD_INPUT in codes else EXIT_FAILURE


def wait_all(children: list[subprocess.Popen], *, grace_s: float, out) -> list[int]:
    """Every child's exit code; once one fails, the rest get `grace_s` seconds to stop before being killed."""
    first_failure = None
    while True:
        codes = [child.poll() for child in children]
        if all(c is not None for c in codes):
            return codes
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if failed and first_failure is None:
            first_failure = time.monotonic()
            out.notice(f"process {failed[0]} ended ({describe(codes[failed[0]])}); the others should stop within "
                       f"{grace_s:.0f} s")
        if first_failure is not None and time.monotonic() - first_failure > grace_s:
            for i, child in enumerate(children):
                if child.poll() is None:
                    out.notice(f"process {i} did not stop after {grace_s:.0f} s: killing it")
                    child.kill()
        time.sleep(0.2)
