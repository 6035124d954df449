"""One generation request: its fields, parsed strictly from JSON, shared by request files and the server.

A request is a JSON object. Every field is optional except that something must
set the length (``frames``, ``seconds``, ``text`` or ``semantic``)::

    {"id": "greeting", "text": "Hello there.", "seed": 3, "temperature": 0.8}

Fields (the README's "Request files" section is the user's copy of this list):

  id               str or int, echoed in the result (request files: also the default output name)
  name             output file stem, letters, digits, ``._-`` (request files; default: the id, else the line)
  text             English text -> timed phoneme ids (models trained on the embedded corpus's phonemes)
  voice            eSpeak voice whose timing ``text`` follows (default ``en-us``)
  semantic         semantic token ids: a list of ints, or a ``.npy`` file (request files only)
  prompt_audio     prompt audio file (request files only): encoded by the codec, resampled with a notice
  prompt_audio_base64  prompt audio file bytes (WAV, FLAC, OGG, MP3), base64
  prompt_codes     prompt codes ``(frames, levels)``: nested lists of ints, or a ``.npy`` file (request files only)
  prompt_text      with ``text`` and a prompt: what the prompt says
  frames, seconds  the output's length (``seconds`` needs a codec); default: the length ``text``/``semantic`` cover
  seed             int (default 0): the request's key is ``split(PRNGKey(seed), 1)[0]``, as ``generate --seed``
  temperature, top_k, top_p, guidance_scale, steps   as the ``generate`` flags
  codes            bool: also return (write) the codes

`parse_request` checks types and ranges that need no model; `engine.Engine`
checks the rest against the model. Both raise `RequestError` naming the field.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Any, Optional, Union

# Fields that name files: allowed in request files (relative to the file's folder), refused over HTTP.
PATH_FIELDS = ("prompt_audio",)
PATH_OR_VALUE_FIELDS = ("semantic", "prompt_codes")
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")


class RequestError(ValueError):
    """A bad request; `field` names the offending field (None: the request as a whole)."""

    def __init__(self, field: Optional[str], message: str):
        super().__init__(message if field is None else f"{field}: {message}")
        self.field = field
        self.detail = message


@dataclasses.dataclass(frozen=True)
class Request:
    """A parsed request; None means "not given" (defaults are applied by the engine)."""
    id: Union[str, int, None] = None
    name: Optional[str] = None
    text: Optional[str] = None
    voice: str = "en-us"
    semantic: Union[tuple, str, None] = None
    prompt_audio: Optional[str] = None
    prompt_audio_base64: Optional[str] = None
    prompt_codes: Union[tuple, str, None] = None
    prompt_text: Optional[str] = None
    frames: Optional[int] = None
    seconds: Optional[float] = None
    seed: int = 0
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    guidance_scale: Optional[float] = None
    steps: Union[int, tuple, None] = None
    codes: bool = False

    @property
    def label(self) -> str:
        """How messages and reports refer to the request."""
        return f"request {self.id!r}" if self.id is not None else "request"


FIELDS = tuple(f.name for f in dataclasses.fields(Request))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(field: str, value, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(field, f"must be a number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise RequestError(field, f"must lie in {interval}, got {value!r}")
    return float(value)


def _positive_int(field: str, value) -> int:
    if not _is_int(value) or value < 1:
        raise RequestError(field, f"must be a positive integer, got {value!r}")
    return int(value)


def _text(field: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(field, f"must be a non-empty string, got {value!r}")
    from soundstorm_jax.data.phonemes import check_speakable
    try:
        check_speakable(value)
    except ValueError as e:
        raise RequestError(field, str(e)) from None
    return value


def _int_rows(field: str, value, ndim: int) -> tuple:
    """A list of ints (ndim 1) or a list of equal-length lists of ints (ndim 2), as nested tuples."""
    def ints(row, where):
        if not isinstance(row, list) or not row or not all(_is_int(v) for v in row):
            raise RequestError(field, f"{where}must be a non-empty list of integers")
        return tuple(row)

    if ndim == 1:
        return ints(value, "")
    if not isinstance(value, list) or not value:
        raise RequestError(field, "must be a non-empty list of frames, each a list of one int per level")
    rows = tuple(ints(row, f"frame {i} ") for i, row in enumerate(value))
    if len({len(r) for r in rows}) != 1:
        raise RequestError(field, "every frame must give the same number of levels")
    return rows


def _path_or_value(field: str, value, ndim: int, allow_paths: bool):
    if isinstance(value, str):
        if not allow_paths:
            raise RequestError(field, "file names are read from request files only; send the values as JSON lists")
        return value
    return _int_rows(field, value, ndim)


def parse_request(obj: Any, *, allow_paths: bool) -> Request:
    """A JSON object -> `Request`; RequestError naming the first bad field (unknown ones included)."""
    if not isinstance(obj, dict):
        raise RequestError(None, f"a request must be a JSON object, got {type(obj).__name__}")
    for key in obj:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"valid fields: {', '.join(FIELDS)}"
            raise RequestError(str(key), f"unknown field; {hint}")
    values = {k: v for k, v in obj.items() if v is not None}
    out = {}
    if "id" in values:
        if not (isinstance(values["id"], str) or _is_int(values["id"])):
            raise RequestError("id", f"must be a string or an integer, got {values['id']!r}")
        out["id"] = values["id"]
    if "name" in values:
        if not isinstance(values["name"], str) or not NAME_PATTERN.fullmatch(values["name"]) \
                or values["name"] in (".", ".."):
            raise RequestError("name", f"must be a file stem of letters, digits, '.', '_', '-', got {values['name']!r}")
        out["name"] = values["name"]
    for field in ("text", "prompt_text"):
        if field in values:
            out[field] = _text(field, values[field])
    if "voice" in values:
        if not isinstance(values["voice"], str) or not values["voice"]:
            raise RequestError("voice", f"must be an eSpeak voice name such as 'en-us', got {values['voice']!r}")
        out["voice"] = values["voice"]
    if "semantic" in values:
        out["semantic"] = _path_or_value("semantic", values["semantic"], 1, allow_paths)
    if "prompt_codes" in values:
        out["prompt_codes"] = _path_or_value("prompt_codes", values["prompt_codes"], 2, allow_paths)
    if "prompt_audio" in values:
        if not allow_paths:
            raise RequestError("prompt_audio", "file names are read from request files only; send the audio's "
                                               "bytes as prompt_audio_base64")
        if not isinstance(values["prompt_audio"], str) or not values["prompt_audio"]:
            raise RequestError("prompt_audio", f"must be an audio file name, got {values['prompt_audio']!r}")
        out["prompt_audio"] = values["prompt_audio"]
    if "prompt_audio_base64" in values:
        if not isinstance(values["prompt_audio_base64"], str) or not values["prompt_audio_base64"]:
            raise RequestError("prompt_audio_base64", "must be a non-empty base64 string of an audio file")
        out["prompt_audio_base64"] = values["prompt_audio_base64"]
    prompts = [f for f in ("prompt_audio", "prompt_audio_base64", "prompt_codes") if f in out]
    if len(prompts) > 1:
        raise RequestError(prompts[1], f"give one prompt: {' or '.join(prompts)}")
    if "text" in out and "semantic" in out:
        raise RequestError("semantic", "give text or semantic, not both")
    if "prompt_text" in out and ("text" not in out or not prompts):
        raise RequestError("prompt_text", "goes with text and a prompt (prompt_audio or prompt_codes)")
    if "frames" in values:
        out["frames"] = _positive_int("frames", values["frames"])
    if "seconds" in values:
        if "frames" in out:
            raise RequestError("seconds", "give frames or seconds, not both")
        out["seconds"] = _number("seconds", values["seconds"], low=0, low_open=True)
    if not any(f in out for f in ("frames", "seconds", "text", "semantic")):
        raise RequestError("frames", "give the length: frames, seconds, text or semantic")
    if "seed" in values:
        if not _is_int(values["seed"]) or not 0 <= values["seed"] < 2 ** 32:
            raise RequestError("seed", f"must be an integer in [0, 2**32), got {values['seed']!r}")
        out["seed"] = values["seed"]
    if "temperature" in values:
        out["temperature"] = _number("temperature", values["temperature"], low=0)
    if "top_k" in values:
        out["top_k"] = _positive_int("top_k", values["top_k"])
    if "top_p" in values:
        out["top_p"] = _number("top_p", values["top_p"], low=0, high=1, low_open=True)
    if "guidance_scale" in values:
        if "text" not in out and "semantic" not in out:
            raise RequestError("guidance_scale", "needs conditioning to guide towards: text or semantic")
        out["guidance_scale"] = _number("guidance_scale", values["guidance_scale"])
    if "steps" in values:
        steps = values["steps"]
        if _is_int(steps) and steps >= 1:
            out["steps"] = int(steps)
        elif isinstance(steps, list) and steps and all(_is_int(s) and s >= 1 for s in steps):
            out["steps"] = tuple(steps)
        else:
            raise RequestError("steps", f"must be a positive int or a list of them (one per level), got {steps!r}")
    if "codes" in values:
        if not isinstance(values["codes"], bool):
            raise RequestError("codes", f"must be true or false, got {values['codes']!r}")
        out["codes"] = values["codes"]
    return Request(**out)
