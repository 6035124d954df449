"""Local paths and Google Cloud Storage (`gs://bucket/...`) through one library: `etils.epath`.

Every file the package reads or writes goes through `epath.Path` (what Orbax
and TFDS use too): a local path behaves as it does with `os` and `open`, and
`gs://bucket/run` reaches Cloud Storage through gcsfs (or TensorFlow's GCS
filesystem when TensorFlow is installed). What epath leaves to its callers
lives here:

  is_remote        'gs://...' (any URL scheme) or a local path
  check_reachable  a remote path's bucket answers within a bounded time, else `StorageError` naming the path
                   (at once when nothing listens at the storage endpoint)
  readable         a local path as is, a remote file's bytes in memory (for NumPy, soundfile and torch readers)
  walk             `os.walk` over a local or a remote folder
  upload_tree      a local folder (e.g. a dataset TFDS prepared locally) copied to a remote one

Credentials are Application Default Credentials (`gcloud auth
application-default login`, or a Cloud TPU VM's service account). A local
emulator is reached through three variables, one per client library:
STORAGE_EMULATOR_HOST (gcsfs: config.json, metrics, datasets' metadata, audio
and codes), CLOUD_STORAGE_EMULATOR_ENDPOINT (ArrayRecord's reader of the
prepared datasets) and TENSORSTORE_GCS_HTTP_URL (Orbax's arrays).
"""
from __future__ import annotations

import io
import os
import re
import socket
import threading
import urllib.parse
from typing import Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike]

# One small request answers in well under a second from a TPU VM; unreachable storage would otherwise keep
# gcsfs retrying with backoff for 35-50 s before it gives up.
REACH_TIMEOUT_S = 15.0
GCS_ENDPOINT = "https://storage.googleapis.com"

_reachable_buckets: set[str] = set()  # Probed once per process.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class StorageError(ValueError):
    """A remote path whose storage cannot be reached or does not exist; the message names the path."""


def is_remote(path: PathLike) -> bool:
    """Whether `path` is a URL (gs://bucket/...) rather than a local path."""
    return _URL.match(os.fspath(path)) is not None


def bucket_of(path: PathLike) -> str:
    """'gs://bucket/a/b' -> 'gs://bucket'."""
    scheme, rest = os.fspath(path).split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _storage_hint() -> str:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        return f"is the storage emulator at STORAGE_EMULATOR_HOST={emulator} running?"
    return ("check the network and the credentials (`gcloud auth application-default login`, or the VM's "
            "service account)")


def _endpoint_refuses(timeout_s: float) -> str | None:
    """'host:port (reason)' when a TCP connection to the Cloud Storage endpoint (the emulator's when
    STORAGE_EMULATOR_HOST is set) fails at once; None when it connects, or merely takes its time (the probe's
    timeout then bounds the wait)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    proxies = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    if not emulator and any(os.environ.get(name) for name in proxies):
        return None  # Cloud Storage through a proxy: a direct connection proves nothing; the probe decides.
    url = emulator or GCS_ENDPOINT
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except socket.timeout:
        return None
    except OSError as e:  # Connection refused, no route, unknown host.
        return f"{host}:{port} ({e.strerror or type(e).__name__})"
    return None


def check_reachable(path: PathLike, what: str, *, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """For a remote `path`: its bucket exists and answers within `timeout_s`; else `StorageError`.

    `what` names where the path came from (e.g. 'workdir', 'config.data.dir'). Local paths pass untouched:
    their own checks (exists, is a folder) come later, where they always did.
    """
    if not is_remote(path):
        return
    bucket = bucket_of(path)
    if bucket in _reachable_buckets:
        return
    where = f"{what} {os.fspath(path)!r}"
    if bucket.startswith("gs://"):
        refused = _endpoint_refuses(min(timeout_s, 5.0))
        if refused:  # Nothing listens there (or the name does not resolve): gcsfs would retry it for 35 s.
            raise StorageError(f"{where}: cannot connect to {refused}; {_storage_hint()}")
    outcome = {}

    def probe():
        try:
            outcome["exists"] = epath.Path(bucket).exists()
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable"; reported below.
            outcome["error"] = e

    # A daemon thread: when storage never answers, the process can still exit with the error.
    thread = threading.Thread(target=probe, name=f"probe {bucket}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise StorageError(f"{where}: no answer from {bucket} within {timeout_s:g} s; {_storage_hint()}")
    if "error" in outcome:
        error = outcome["error"]
        reason = (str(error).strip().splitlines() or [""])[0]
        raise StorageError(f"{where}: cannot reach {bucket} ({type(error).__name__}: {reason}); "
                           f"{_storage_hint()}") from error
    if not outcome["exists"]:
        raise StorageError(f"{where}: bucket {bucket} does not exist (or these credentials cannot see it)")
    _reachable_buckets.add(bucket)


def readable(path: PathLike) -> Union[str, io.BytesIO]:
    """What a reader that takes a file name or a file object (np.load, soundfile.read, torch.load) should get:
    a local path itself, so it reads as it always did; a remote file's bytes, downloaded in one request."""
    if is_remote(path):
        return io.BytesIO(epath.Path(path).read_bytes())
    return os.fspath(path)


def walk(root: PathLike) -> Iterator[tuple[epath.Path, list[str], list[str]]]:
    """(folder, subfolder names, file names) for every folder under `root`, top down, like `os.walk`."""
    root = epath.Path(root)
    scheme = os.fspath(root).split("://", 1)[0] + "://" if is_remote(root) else ""
    for folder, folders, files in root.walk():
        folder = os.fspath(folder)
        # fsspec's walk yields remote folders without their scheme ('bucket/a', not 'gs://bucket/a').
        if scheme and not folder.startswith(scheme):
            folder = scheme + folder
        yield epath.Path(folder), folders, files


def upload_tree(source: PathLike, target: PathLike) -> None:
    """Copies the local folder `source` and everything in it to `target` (a local or remote folder)."""
    source, target = os.fspath(source), epath.Path(target)
    for folder, _, files in os.walk(source):
        relative = os.path.relpath(folder, source)
        destination = target if relative == os.curdir else target / relative
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            epath.Path(folder, name).copy(destination / name, overwrite=True)


__all__ = ["REACH_TIMEOUT_S", "StorageError", "bucket_of", "check_reachable", "is_remote", "readable",
           "upload_tree", "walk"]


def read_npz_state_dict(path: PathLike) -> dict:
    """A checkpoint saved as ``.npz`` (local or gs://) -> {name: array}. Names prefixed ``param/`` (the form the
    fixture tools write, beside inputs and outputs) keep only those, unprefixed; otherwise every array."""
    import numpy as np
    with np.load(readable(path), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if any(k.startswith("param/") for k in arrays):
        arrays = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    return arrays

