"""A local Google Cloud Storage for the tests: gcp-storage-emulator on 127.0.0.1, in memory, bucket `test-bucket`.

    with running_emulator() as env:     # the variables every client library needs to reach it
        subprocess.run([...], env={**os.environ, **env})

Each library the package reaches gs:// through has its own endpoint variable:

  STORAGE_EMULATOR_HOST            gcsfs (what etils.epath uses without TensorFlow: config.json, metrics.jsonl,
                                   the datasets' metadata, audio, codes) and google-cloud-storage (the tests' reads)
  CLOUD_STORAGE_EMULATOR_ENDPOINT  ArrayRecord's reader (google-cloud-cpp): the prepared datasets' shards
  TENSORSTORE_GCS_HTTP_URL         tensorstore, which writes and reads Orbax's arrays

GOOGLE_AUTH_TOKEN_FOR_TESTING hands tensorstore a fixed token instead of a credentials search (the emulator checks
none), and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false keeps gcsfs from asking the storage-control API, which the
emulator does not have, for each bucket's type. The `gcs` fixture (tests/test_gcs.py) sets these in the test
process for its module and hands them to the commands it starts.

Running this file starts the emulator (gcp-storage-emulator 2026.7.19) with three gaps filled, where it differs from
Cloud Storage in ways the package's clients trip on:

  - Cloud Storage sends an object's generation with its bytes (the `x-goog-generation` header); tensorstore's OCDBT
    driver reads it back while Orbax writes a checkpoint ("Malformed StorageGeneration" without it). Downloads here
    carry it.
  - Cloud Storage answers a suffix range (`Range: bytes=-N`, the last N bytes) with those bytes; the emulator sends
    the whole object, which ArrayRecord's reader, fetching a shard's footer that way, takes for a corrupt file once
    the shard is larger than the range ("Invalid Riegeli/records file"). Here it gets the last N bytes.
  - Cloud Storage serves connections concurrently; the emulator serves one at a time, so a client that sends a
    request on a second connection while a response is still streaming on its first waits forever (seen once:
    `soundstorm demo --out gs://...` stalled with a 3.7 MB response unread on one connection and a request waiting
    on another). Here each connection has a thread; the handlers still run one at a time (one lock around the
    emulator's storage) and their responses are sent outside it.

The emulator also ignores write preconditions (ifGenerationMatch), so tensorstore's protection against concurrent
writers of one object is not exercised, and it checks no credentials.
"""
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BUCKET = "test-bucket"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(url: str) -> dict:
    """The variables that point every client library at the storage at `url` (http://127.0.0.1:PORT)."""
    return {"STORAGE_EMULATOR_HOST": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def bucket_answers(url: str) -> bool:
    """Whether the emulator at `url` serves the bucket it creates at start (False while it is starting)."""
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2) as response:
            return response.status == 200
    except OSError:  # Not listening yet.
        return False


@contextlib.contextmanager
def running_emulator(timeout_s: float = 30.0):
    """Starts the emulator (in memory, `test-bucket` created), yields `emulator_env` for it, and stops it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Its log goes to a file: it writes a line per request, and a pipe nobody reads would fill and stall it.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "start", "--host=127.0.0.1",
                             f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}", "--quiet"],
                            stdout=log, stderr=log, text=True)
    try:
        deadline = time.time() + timeout_s
        while True:
            if bucket_answers(url):
                break
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise RuntimeError(f"the storage emulator did not start: {log.read()[-2000:]}")
            time.sleep(0.1)
        yield emulator_env(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def client():
    """A google-cloud-storage client of the emulator in STORAGE_EMULATOR_HOST: the tests' own view of the bucket,
    with no caching (gcsfs caches listings)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    return storage.Client(project="test", credentials=AnonymousCredentials())


def blob_names(prefix: str) -> list[str]:
    """Names of the objects in `test-bucket` under `prefix`."""
    return sorted(b.name for b in client().list_blobs(BUCKET, prefix=prefix))


def read_blob(name: str) -> bytes:
    blob = client().bucket(BUCKET).blob(name)
    return blob.download_as_bytes() if blob.exists() else b""


def _serve_like_cloud_storage(args) -> None:
    """gcp-storage-emulator's command line (`args`) with the two gaps of the module docstring filled."""
    import functools
    import http.server
    import re
    import threading

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def like_cloud_storage(download):
        @functools.wraps(download)
        def handler(request, response, storage, *rest, **kwargs):
            bucket, name = request.params["bucket_name"], request.params["object_id"]
            headers = request._request_handler.headers  # What request.get_header reads.
            suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", headers.get("range", ""))
            if suffix:  # The last N bytes, as the explicit range the emulator understands.
                with contextlib.suppress(NotFound):
                    size = int(storage.get_file_obj(bucket, name)["size"])
                    headers.replace_header("range", f"bytes={max(0, size - int(suffix.group(1)))}-")
            download(request, response, storage, *rest, **kwargs)
            if response.status in (200, 206):
                obj = storage.get_file_obj(bucket, name)
                response["x-goog-generation"] = obj["generation"]
                response["x-goog-metageneration"] = obj["metageneration"]
        return handler

    storage_lock = threading.Lock()

    def one_at_a_time(handler):  # Handlers build a response in memory; it is sent after the lock is released.
        @functools.wraps(handler)
        def serialized(*args, **kwargs):
            with storage_lock:
                return handler(*args, **kwargs)
        return serialized

    download = objects.download
    objects.download = like_cloud_storage(download)  # Also what objects.get calls for ?alt=media.
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            handlers[method] = one_at_a_time(objects.download if handler is download else handler)
    objects.insert = one_at_a_time(objects.insert)  # The router's fallback for uploads posted without /upload.
    server.server.HTTPServer = http.server.ThreadingHTTPServer  # A connection per thread (this process only).
    from gcp_storage_emulator.__main__ import main
    main(args)


if __name__ == "__main__":
    _serve_like_cloud_storage(sys.argv[1:])
