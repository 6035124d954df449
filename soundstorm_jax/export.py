"""Inference exports: what generation needs from a training run, and nothing else.

    soundstorm export runs/tiny exported/ --codec runs/codec
    model, variables, config, codec = soundstorm_jax.load("exported")

An export is a folder that every command taking a workdir accepts in its place::

    OUT/config.json        the run's config (model fields resolved), as in the workdir
    OUT/export.json        what it was exported from: workdir, step, kind, EMA or raw parameters
    OUT/params/            an Orbax PyTree checkpoint of the inference variables
    OUT/codec/             with --codec: the codec's export, the same three entries

For SoundStorm the variables are ``{'params': EMA parameters (raw when the run
keeps no EMA)}``; for a codec ``{'params': the generator's, 'vq_stats': its
codebooks}``: no optimizer state, no discriminators, no data iterator. Paths go
through etils.epath like the rest of the package (exports to gs:// are not yet
tested against the emulator).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from etils import epath

from soundstorm_jax import paths

EXPORT_FILE = "export.json"
PARAMS_DIR = "params"
CODEC_DIR = "codec"
FORMAT = 1


def is_export(path: str) -> bool:
    """Whether `path` is an export folder (it holds export.json)."""
    return (epath.Path(path) / EXPORT_FILE).exists()


def read_manifest(path: str) -> dict:
    try:
        manifest = json.loads((epath.Path(path) / EXPORT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{os.fspath(path)!r} holds an unreadable {EXPORT_FILE} ({e}); export the run again") from e
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is an export of format {manifest.get('format')!r}; this version "
                         f"reads format {FORMAT}: export the run again")
    return manifest


def folder_bytes(path: str) -> int:
    """Total size of the files under `path` (local or gs://)."""
    return sum((directory / name).stat().length for directory, _, names in paths.walk(path) for name in names)


def _params_dir(folder) -> epath.Path:
    """Orbax wants an absolute path (a gs:// one is)."""
    folder = os.fspath(folder)
    return epath.Path(folder if paths.is_remote(folder) else os.path.abspath(folder)) / PARAMS_DIR


def _save_tree(folder: epath.Path, tree: Any) -> None:
    with ocp.StandardCheckpointer() as saver:
        saver.save(_params_dir(folder), jax.device_get(tree))


def load_variables(path: str, abstract: Any) -> Any:
    """The export's variables restored into `abstract` (ShapeDtypeStructs with shardings: the layout wanted)."""
    with ocp.StandardCheckpointer() as loader:
        return loader.restore(_params_dir(path), abstract)


def export_run(workdir: str, out: str, *, codec: Optional[str] = None, step: Optional[int] = None) -> dict:
    """Writes the export of the run in `workdir` (and of the codec run `codec`) to `out`; returns a report.

    The report holds, per exported run, its step, kind, whether the parameters are the EMA ones, and the
    sizes in bytes of the export and of the training checkpoint it came from.
    """
    from soundstorm_jax.training import config as config_lib, restore

    if epath.Path(out).exists() and any(epath.Path(out).iterdir()):
        raise ValueError(f"export folder {os.fspath(out)!r} is not empty; choose a new folder")
    run = restore.restore_run(workdir, step=step)
    kind = config_lib.kind_of(run.config)
    if kind == "soundstorm":
        variables = {"params": nn.unbox(run.task.eval_params(run.state))}
        ema = run.state.ema_params is not None
    else:
        variables = {"params": run.state.codec.params["generator"], "vq_stats": run.state.codec.vq_stats}
        ema = False
    folder = epath.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    config_lib.save_config(os.fspath(folder), run.config)
    _save_tree(folder, variables)
    checkpoint = epath.Path(workdir) / "checkpoints" / str(run.step)
    manifest = dict(format=FORMAT, kind=kind, workdir=os.fspath(workdir), step=int(run.step), ema=ema,
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    (folder / EXPORT_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    report = dict(manifest, out=os.fspath(out), export_bytes=folder_bytes(os.fspath(folder)),
                  checkpoint_bytes=folder_bytes(os.fspath(checkpoint)) if checkpoint.exists() else None)
    if codec is not None:
        if kind != "soundstorm":
            raise ValueError("--codec goes with a SoundStorm run; this one is a codec run")
        report["codec"] = export_run(codec, os.fspath(folder / CODEC_DIR))
        if report["codec"]["kind"] != "codec":
            raise ValueError(f"{codec!r} holds a {report['codec']['kind']!r} run, not a 'codec' one")
    return report


@dataclasses.dataclass
class Loaded:
    """What `load` returns: unpack as ``model, variables, config, codec = load(path)``."""
    model: Any
    variables: Any
    config: Any
    codec: Any

    def __iter__(self):
        return iter((self.model, self.variables, self.config, self.codec))


def load(path: str, *, mesh=None) -> Loaded:
    """A SoundStorm export (or training workdir) in one call: model, inference variables, config, and the
    codec exported with it (`path/codec`, None when there is none)."""
    from soundstorm_jax.training import restore

    model, variables, config = restore.load_soundstorm(path, mesh=mesh)
    codec_dir = epath.Path(path) / CODEC_DIR
    codec = restore.load_codec(os.fspath(codec_dir), mesh=mesh) if is_export(os.fspath(codec_dir)) else None
    return Loaded(model, variables, config, codec)
