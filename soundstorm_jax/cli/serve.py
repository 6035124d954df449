"""`soundstorm serve MODEL`: the HTTP server (`soundstorm_jax.serving.server`) around one loaded model.

MODEL is an export (`soundstorm export`) or a training workdir. Every flag is
checked, and the address bound once, before anything is loaded; the server
then warms up (one tiny request) and prints one line with its URL. SIGTERM or
Ctrl-C stop it gracefully: it refuses new requests, decodes those received,
and exits 0.
"""
from __future__ import annotations

import errno
import math
import socket

from soundstorm_jax.cli.common import CliError, require_dir


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "serve", parents=parents, help="serve a model over HTTP, batching concurrent requests",
        description="Serve a SoundStorm export or training workdir over HTTP: POST /v1/generate takes one request "
                    "as JSON (the fields of a request file, file names excepted) and answers with its audio (WAV, "
                    "or JSON with the WAV in base64); requests arriving together are decoded as one batch, each "
                    "getting exactly what it would get alone. Also GET /healthz, /readyz, /v1/model and the web "
                    "page at /. SIGTERM or Ctrl-C: finish the requests received, then exit 0.")
    parser.add_argument("model", metavar="MODEL", help="an export (soundstorm export) or a SoundStorm workdir")
    parser.add_argument("--codec", metavar="WORKDIR", default=None,
                        help="the codec (a codec workdir or export) that turns codes into audio (default: the "
                             "export's own; without one the server answers with codes)")
    parser.add_argument("--step", type=int, metavar="N", default=None,
                        help="checkpoint step of a workdir (default: the latest)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, metavar="PORT", default=8080,
                        help="port to listen on (default 8080; 0: any free one)")
    parser.add_argument("--batch-window-ms", type=float, metavar="MS", default=20.0,
                        help="how long to wait for more requests to batch with the first one (default 20; "
                             "0: no batching, one request at a time)")
    parser.add_argument("--max-batch", type=int, metavar="N", default=16,
                        help="requests decoded together at most (default 16)")
    parser.add_argument("--max-queue", type=int, metavar="N", default=64,
                        help="requests waiting at most; more get 503 with Retry-After (default 64)")
    parser.add_argument("--max-seconds", type=float, metavar="S", default=None,
                        help="longest output a request may ask for, in seconds (needs a codec; default: "
                             "4096 frames)")
    parser.add_argument("--max-body-mb", type=float, metavar="M", default=16.0,
                        help="largest request body in MiB; larger ones get 413 (default 16)")
    parser.add_argument("--timeout", type=float, metavar="S", default=120.0,
                        help="seconds a request may wait to be decoded, from when it is queued; then 504 "
                             "(default 120)")
    parser.add_argument("--mesh", default="data=-1", metavar="AXIS=SIZE,...",
                        help="the device mesh batches are decoded on, as generate --mesh (default data=-1: every "
                             "local device, data parallel)")
    parser.set_defaults(run=run)
    return parser


def _check_flags(args) -> None:
    def number(flag, value, *, low, open_low):
        if value is not None and not (math.isfinite(value) and (value > low if open_low else value >= low)):
            raise CliError(f"{flag} must be a number {'>' if open_low else '>='} {low:g}, got {value:g}")

    number("--batch-window-ms", args.batch_window_ms, low=0, open_low=False)
    number("--max-seconds", args.max_seconds, low=0, open_low=True)
    number("--max-body-mb", args.max_body_mb, low=0, open_low=True)
    number("--timeout", args.timeout, low=0, open_low=True)
    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue)):
        if value < 1:
            raise CliError(f"{flag} must be a positive integer, got {value}")
    if args.step is not None and args.step < 0:
        raise CliError(f"--step must be >= 0, got {args.step}")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must lie in [0, 65535], got {args.port}")


def _check_address(host: str, port: int) -> None:
    """Binds (host, port) once and lets it go, so a taken port is a one-line error before minutes of loading."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CliError(f"--host {host!r} is not an address of this machine: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # As uvicorn binds: TIME_WAIT is no conflict.
        try:
            sock.bind(address)
        except OSError as e:
            hint = "; choose another --port (0: any free one)" if e.errno == errno.EADDRINUSE else ""
            raise CliError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None


def run(args, out, extra):
    del extra
    from soundstorm_jax.cli.generate import parse_mesh
    _check_flags(args)
    mesh_shape = parse_mesh(args.mesh)
    require_dir(args.model, "model")
    if args.codec is not None:
        require_dir(args.codec, "codec")
    _check_address(args.host, args.port)

    import jax

    from soundstorm_jax.serving import Engine
    from soundstorm_jax.serving import server as http
    mesh = None
    if jax.local_device_count() > 1 and any(size != 1 for size in mesh_shape.values()):
        from soundstorm_jax.training import sharding
        try:
            mesh = sharding.make_mesh(mesh_shape, jax.local_devices())
        except ValueError as e:
            raise CliError(f"--mesh {args.mesh!r} does not fit the {jax.local_device_count()} local devices: "
                           f"{str(e).replace('mesh.shape ', 'axis sizes ')}") from e
    out.info(f"loading {args.model} ...")
    engine = Engine.load(args.model, codec=args.codec, step=args.step, mesh=mesh, max_batch=args.max_batch)
    if args.max_seconds is not None:
        if engine.codec is None:
            raise CliError("--max-seconds needs a codec for the frame rate (--codec WORKDIR, or an export with "
                           "its codec)")
        engine.max_frames = max(1, int(args.max_seconds * engine.frame_rate))
    app = http.make_app(engine, batch_window_ms=args.batch_window_ms, max_queue=args.max_queue,
                        max_body_bytes=int(args.max_body_mb * 2 ** 20), request_timeout_s=args.timeout)
    server = http.make_server(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                              access_log=args.verbose)
    out.info("warming up (one tiny request) ...")

    def ready(url: str) -> None:
        described = engine.describe()
        audio = f"{described['sample_rate']} Hz audio" if engine.codec is not None else "codes only (no codec)"
        out.result(dict(command="serve", url=url, model=args.model, **described),
                   [f"serving {args.model} at {url} ({audio}, up to {engine.max_frames} frames per request; "
                    f"Ctrl-C to stop)"])

    http.run(server, on_ready=ready)
    out.info("stopped")
    return 0
