"""Request files (`soundstorm generate MODEL --requests FILE`): bad lines are reported by number and field and
never stop the others, the valid ones are grouped into fewer batches than requests, each gets exactly what it
gets alone, and the report's figures add up. In-process on tests/tiny.py's random engine (no training); the
command line runs `main` with `Engine.load` handing back that engine."""
import json
import os

import numpy as np
import pytest
import soundfile

from soundstorm_jax.data.audio_io import write_wav
from soundstorm_jax.serving import Engine, parse_request
from soundstorm_jax.serving.request_file import read_request_file, report_lines, run_request_file
from test_cli_messages import bad_input, run_main
from tiny import SAMPLE_RATE, tiny_engine

HOP = 8  # tiny_engine's codec: 8 samples per frame.


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


MIXED = [
    '{"name": "first", "frames": 20, "seed": 1}',
    "# a comment, then a blank line",
    "",
    '{"frames": 12, "temprature": 0.5}',                                         # 4: unknown field
    '{"id": "b", "frames": 27, "seed": 2, "prompt_codes": "prompt.npy", "codes": true}',
    '{"name": "first", "frames": 5}',                                            # 6: name taken by line 1
    '{"frames": 30, "top_k": 99}',                                               # 7: refused by the model
    '{"frames": 8,',                                                             # 8: not JSON
    '{"frames": 25, "prompt_audio": "voice16k.wav"}',                            # resampled, with a notice
    '{"frames": 32, "seed": 3}',
    '{"frames": 6, "prompt_codes": "missing.npy"}',                              # 11: no such file
    '{"name": "last", "frames": 30, "seed": 4, "prompt_codes": "prompt.npy"}',   # a 5th: a second batch
]


def test_a_request_file_writes_the_good_lines_and_reports_the_bad_ones(engine, tmp_path, monkeypatch):
    folder = tmp_path / "requests"
    path = write_lines(folder / "mixed.jsonl", MIXED)
    prompt = np.random.default_rng(0).integers(0, 16, (5, 3))
    np.save(folder / "prompt.npy", prompt)
    soundfile.write(folder / "voice16k.wav", 0.3 * np.sin(np.arange(320) / 5), 16000, subtype="FLOAT")
    monkeypatch.chdir(tmp_path)  # The prompts are found next to the request file, not in the working folder.
    calls = []
    report = run_request_file(engine, str(path), str(tmp_path / "out"), progress=lambda *a: calls.append(a))

    assert report["requests"] == {"read": 10, "done": 5, "failed": 5}
    assert [(f["line"], f["field"]) for f in report["failures"]] == [
        (4, "temprature"), (6, "name"), (7, "top_k"), (8, None), (11, "prompt_codes")]
    messages = {f["line"]: f["message"] for f in report["failures"]}
    assert "did you mean 'temperature'" in messages[4] and "line 1" in messages[6]
    assert "invalid JSON" in messages[8] and "missing.npy" in messages[11] and "[1, 16]" in messages[7]
    assert sorted(os.listdir(tmp_path / "out")) == ["b.npy", "b.wav", "first.wav", "last.wav", "line_0009.wav",
                                                    "line_0010.wav", "report.json"]
    assert [r["line"] for r in report["results"]] == [1, 5, 9, 10, 12]
    assert [n for r in report["results"] for n in r["notices"]] == [
        "prompt_audio is at 16000 Hz; resampled to the codec's 8000 Hz"]

    # Grouping: one bucket of 32 frames with one set of options -> batches of at most max_batch=4.
    assert [(b["lines"], b["size"], b["compiled_size"], b["bucket_frames"]) for b in report["batches"]] == [
        ([1, 5, 9, 10], 4, 4, 32), ([12], 1, 1, 32)]
    assert calls == [(0, 5), (4, 5), (5, 5)]

    # The figures add up, and report.json is the report.
    seconds = [len(soundfile.read(tmp_path / "out" / f"{r['name']}.wav")[0]) / SAMPLE_RATE
               for r in report["results"]]
    frames = [20, 27, 25, 32, 30]
    assert [r["frames"] for r in report["results"]] == frames and report["frames"] == sum(frames)
    assert seconds == [r["seconds"] for r in report["results"]] == [f * HOP / SAMPLE_RATE for f in frames]
    assert report["audio_seconds"] == pytest.approx(sum(seconds))
    assert 0 < report["compile_seconds"] < report["wall_seconds"]
    assert report["real_time_factor"] == pytest.approx(report["wall_seconds"] / report["audio_seconds"])
    assert report["audio_seconds_per_second"] * report["real_time_factor"] == pytest.approx(1)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    text = "\n".join(report_lines(report))
    assert "5 of 10 requests done, 5 failed; 2 batches (sizes 4, 1)" in text
    assert "failed: line 4: temprature: unknown field" in text and "note: line 9: prompt_audio" in text

    # Line 5 decoded alone (a batch of one, as line 12's) gives the same codes and the same WAV; its prompt is kept.
    codes = np.load(tmp_path / "out" / "b.npy")
    alone = engine.run([engine.resolve(parse_request(json.loads(MIXED[4]), allow_paths=True),
                                       base_dir=str(folder))])[0]
    np.testing.assert_array_equal(codes, alone.codes)
    np.testing.assert_array_equal(codes[:5], prompt)
    write_wav(tmp_path / "alone.wav", alone.audio, SAMPLE_RATE)
    assert (tmp_path / "alone.wav").read_bytes() == (tmp_path / "out" / "b.wav").read_bytes()


def test_without_a_codec_only_codes_are_written(engine, tmp_path):
    no_codec = Engine(engine.model, engine.variables, config=engine.config, max_batch=4, max_frames=200)
    path = write_lines(tmp_path / "r.jsonl", ['{"frames": 20, "seed": 1}', '{"seconds": 0.1}'])
    report = run_request_file(no_codec, str(path), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["line_0001.npy", "report.json"]
    alone = engine.run([engine.resolve(parse_request({"frames": 20, "seed": 1}, allow_paths=False))])[0]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "line_0001.npy"), alone.codes)
    assert [(f["line"], f["field"]) for f in report["failures"]] == [(2, "seconds")]
    assert report["audio_seconds"] is None and report["real_time_factor"] is None and report["frames"] == 20
    assert "for 20 frames (no codec: codes only)" in "\n".join(report_lines(report))


def test_lines_refused_while_reading(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\xef\xbb\xbf{\"frames\": 4}\n"       # A BOM before line 1 is not part of the request.
                     b"{\"frames\": 4, \xff}\n"
                     b"{\"frames\": 4, \"frames\": 5}\n"
                     b"[{\"frames\": 4}]\n"
                     b"{\"id\": \"a b\", \"frames\": 4}\n"
                     b"{\"id\": 3, \"frames\": 4}\r\n"
                     b"{\"name\": \"3\", \"frames\": 4}\n"
                     b"{\"name\": \"line_0001\", \"frames\": 4}\n")
    requests = read_request_file(str(path))
    assert [(line.number, line.name) for line in requests.lines] == [(1, "line_0001"), (6, "3")]
    assert [(f.number, f.field) for f in requests.failures] == [(2, None), (3, "frames"), (4, None), (5, "id"),
                                                                 (7, "name"), (8, "name")]
    assert requests.read == 8 and requests.base_dir == str(tmp_path)
    assert "not UTF-8" in requests.failures[0].message and "given twice" in requests.failures[1].message
    assert "give the request a \"name\"" in requests.failures[3].message


def test_the_command_line(engine, tmp_path, monkeypatch):
    loads = []

    def load(path, **options):  # The engine above, with --batch-size as its max_batch.
        loads.append((path, options))
        return Engine(engine.model, engine.variables, config=engine.config, codec=engine.codec,
                      max_batch=options["max_batch"], max_frames=200)

    monkeypatch.setattr(Engine, "load", load)
    path = write_lines(tmp_path / "r.jsonl", ['{"frames": 12, "seed": 1}', '{"frames": 12, "colour": 1}',
                                              '{"frames": 12, "seed": 2}', '{"frames": 12, "seed": 3}'])
    code, stdout, stderr = run_main("--json", "generate", "model", "--requests", path, "--batch-size", 2,
                                    "--out", tmp_path / "out")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["command"] == "generate" and loads[0][0] == "model" and loads[0][1]["max_batch"] == 2
    assert [b["size"] for b in report["batches"]] == [2, 1]
    assert report["failures"] == [{"line": 2, "field": "colour", "message": report["failures"][0]["message"]}]

    # Every line bad: the report still, then exit 1 saying so.
    bad = write_lines(tmp_path / "bad.jsonl", ['{"frames": 0}', "nope"])
    code, stdout, stderr = run_main("generate", "model", "--requests", bad, "--out", tmp_path / "bad")
    assert code == 1 and "failed: line 1: frames:" in stdout and "failed: line 2:" in stdout
    assert "error: every request" in stderr and (tmp_path / "bad" / "report.json").exists()

    # Refused before the model is loaded: a flag a request carries, a missing or empty file.
    loads.clear()
    message = bad_input("generate", "model", "--requests", path, "--seed", 0, "--out", tmp_path / "x")
    assert "--requests and --seed do not go together" in message and '"seed"' in message
    assert "--requests and --spectrogram" in bad_input("generate", "model", "--requests", path, "--spectrogram")
    message = bad_input("generate", "model", "--requests", tmp_path / "none.jsonl", "--out", tmp_path / "x")
    assert "request file" in message and "does not exist" in message
    empty = write_lines(tmp_path / "empty.jsonl", ["# nothing", ""])
    assert "holds no requests" in bad_input("generate", "model", "--requests", empty, "--out", tmp_path / "x")
    assert not loads and not (tmp_path / "x").exists()
