"""What a prepared dataset records it was made from, and how two records differ.

A prepared dataset (audio, corpus or codes) stores a provenance record in its
TFDS metadata under `PROVENANCE`: the files it was made from (relative path
-> [size, modification time]), the settings that decide its content and, for
codes, the codec's identity. `prepare_dataset` (audio_folder.py) compares the
stored record with the one a build would write now: the functions here turn
each difference into a (key, clause) pair, and `StaleDatasetError` carries
them to the caller, which says how to rebuild in its own terms.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Iterable, Mapping, Optional

from etils import epath

from soundstorm_jax import paths

PROVENANCE = "provenance"
"""The metadata key under which a prepared dataset records what it was made from."""


class StaleDatasetError(ValueError):
    """A prepared dataset that was made from other files or settings than the ones asked for now.

    ``dataset_dir`` is the folder asked for (the `data_dir`), ``changes`` what differs (one clause each) and
    ``keys`` which recorded facts differ ("files", "sample_rate", "codec", ...), so a caller can say how to rebuild
    in its own terms (the command line names --overwrite).
    """

    def __init__(self, dataset_dir: str, changes: list[tuple[str, str]]):
        self.dataset_dir = os.fspath(dataset_dir)
        self.keys = [key for key, _ in changes]
        self.changes = [text for _, text in changes]
        super().__init__(f"the dataset prepared in {self.dataset_dir!r} does not match what was asked for: "
                         f"{'; '.join(self.changes)}; pass overwrite=True to remove and rebuild it, or use "
                         f"another data_dir")


def absolute_path(path: str) -> str:
    return os.fspath(path) if paths.is_remote(path) else os.path.abspath(path)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def digest(value: Any) -> str:
    """sha256 of `value`'s canonical JSON: a short stand-in for a long record (e.g. a dataset's provenance)."""
    return hashlib.sha256(json.dumps(jsonable(value), sort_keys=True).encode()).hexdigest()


def _size_and_mtime(path: epath.Path) -> list:
    """[size in bytes, modification time in seconds since the epoch] (microseconds locally)."""
    if paths.is_remote(path):
        st = path.stat()
        return [int(st.length), float(st.mtime)]
    st = os.stat(path)
    return [int(st.st_size), round(st.st_mtime_ns / 1e9, 6)]


def source_files(root: str, select: Callable[[list[str]], Iterable[str]]) -> dict[str, list]:
    """{relative path: [size, modification time]} of the files under `root` that `select(names of one folder)`
    returns, sorted by path: what a prepared dataset records of the folder it was made from."""
    base = epath.Path(root)
    listing = {}
    for directory, _, names in paths.walk(root):
        for name in select(names):
            path = directory / name
            listing[os.fspath(path.relative_to(base)).replace(os.sep, "/")] = _size_and_mtime(path)
    return dict(sorted(listing.items()))


def count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def file_changes(stored: Mapping[str, Any], wanted: Mapping[str, Any], root: str) -> list[tuple[str, str]]:
    """What differs between two `source_files` listings of `root`, as ("files", clause) pairs."""
    removed = sorted(set(stored) - set(wanted))
    added = sorted(set(wanted) - set(stored))
    changed = sorted(k for k in set(stored) & set(wanted) if list(stored[k]) != list(wanted[k]))
    clauses = []
    for names, what in ((removed, "removed from"), (added, "added to"),
                        (changed, "changed (size or modification time) in")):
        if names:
            example = f"({names[0]!r})" if len(names) == 1 else f"(e.g. {names[0]!r})"
            clauses.append(("files", f"{count(len(names), 'source file')} {'was' if len(names) == 1 else 'were'} "
                                     f"{what} {root} since it was made {example}"))
    return clauses


def _value(value: Any) -> str:
    text = "none" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def mapping_changes(key: str, what: str, stored: Optional[Mapping], wanted: Optional[Mapping]) -> list[tuple[str, str]]:
    """One (key, clause) naming the entries of two flat records that differ, e.g. "its split was seed 0, now 1"."""
    stored, wanted = dict(stored or {}), dict(wanted or {})
    names = [n for n in dict.fromkeys([*stored, *wanted]) if stored.get(n) != wanted.get(n)]
    if not names:
        return []
    was = ", ".join(f"{n} {_value(stored.get(n))}" for n in names)
    now = ", ".join(f"{n} {_value(wanted.get(n))}" for n in names)
    return [(key, f"{what} {was}, now {now}")]


def split_changes(stored: Any, wanted: Any) -> list[tuple[str, str]]:
    """A ("split", clause) when two `split_settings` differ."""
    def words(split):
        if split == "folders":
            return "by its train/validation folders"
        split = dict(split or {})
        return f"with validation fraction {split.get('validation_fraction')} and seed {split.get('seed')}"

    if stored == wanted:
        return []
    if isinstance(stored, Mapping) and isinstance(wanted, Mapping):
        names = {"validation_fraction": "validation fraction", "seed": "seed"}
        return mapping_changes("split", "its split was", {names[k]: stored.get(k) for k in names},
                               {names[k]: wanted.get(k) for k in names})
    return [("split", f"it was split {words(stored)}, now {words(wanted)}")]


NO_PROVENANCE = ("provenance", "it records nothing of what it was made from (it was prepared by an older "
                                "version of soundstorm_jax)")
