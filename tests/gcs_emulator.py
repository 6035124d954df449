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

One gap of the emulator (gcp-storage-emulator 2026.7.19) is filled here: real Cloud Storage sends an object's
generation with its bytes (the `x-goog-generation` header), which tensorstore's OCDBT driver reads back while
Orbax writes a checkpoint ("Malformed StorageGeneration" without it). Running this file starts the emulator with
that header added to every download; nothing else about it changes. The emulator also ignores write
preconditions (ifGenerationMatch), so tensorstore's protection against concurrent writers is not exercised.
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
            try:  # Ready once the bucket it creates at start answers.
                with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
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


def _serve_with_generation_headers(args) -> None:
    """gcp-storage-emulator's command line (`args`), its downloads carrying `x-goog-generation` as Cloud Storage's
    do (see the module docstring)."""
    from gcp_storage_emulator.handlers import objects

    download = objects.download

    def download_with_generation(request, response, storage, *rest, **kwargs):
        download(request, response, storage, *rest, **kwargs)
        if response.status in (200, 206):
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]

    objects.download = download_with_generation  # Before the server module builds its routes from it.
    from gcp_storage_emulator.__main__ import main
    main(args)


if __name__ == "__main__":
    _serve_with_generation_headers(sys.argv[1:])
