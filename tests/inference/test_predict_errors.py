"""Every bad input to predict.py: exit code 2, exactly one `error:` line with the fix, no traceback, no model built,
and the outputs of an earlier run untouched. One parametrized test per family of mistakes."""

from __future__ import annotations

import builtins
import errno
import re
import shutil
from pathlib import Path

import pytest
import torch

from nextgpt.cli import predict

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")
EARLIER_RUN = "20250101-000000"


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if anything builds the model (every check must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the input was checked")

    monkeypatch.setattr("nextgpt.checkpoints.build_nextgpt", refuse)


@pytest.fixture()
def out_dir(tmp_path) -> Path:
    """An output folder holding an earlier run, which no failed run may touch."""
    earlier = tmp_path / "outputs" / EARLIER_RUN
    earlier.mkdir(parents=True)
    (earlier / "reply-image-0.png").write_bytes(b"earlier image")
    (earlier / "summary.json").write_text('{"earlier": true}')
    return tmp_path / "outputs"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _expect_one_line_error(argv: list[str], capsys, out_dir: Path, *fragments: str) -> str:
    """Run predict and check the contract; returns the error line."""
    before = _snapshot(out_dir)
    code = predict.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2, captured.err
    assert len(errors) == 1, captured.err
    assert [line for line in lines if not line.startswith("error:") and not LOG_LINE.match(line)] == [], captured.err
    assert captured.out == ""
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert _snapshot(out_dir) == before and sorted(p.name for p in out_dir.iterdir()) == [EARLIER_RUN]
    return errors[0]


def _fill(args: list[str], **paths: Path) -> list[str]:
    return [arg.format(**{k: str(v) for k, v in paths.items()}) for arg in args]


# --- media files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--prompt", "hi", "--image", "{bad}/missing.png"], ["missing.png not found; check the path"]),
        (["--prompt", "hi", "--image", "{bad}/empty.png"], ["is empty (0 bytes); export or download it again"]),
        (["--prompt", "hi", "--image", "{bad}/folder.png"], ["is a folder; pass a image file"]),
        (["--prompt", "hi", "--image", "{bad}/garbage.png"], ["does not decode as image", "re-encode it"]),
        (["--prompt", "hi", "--image", "{bad}/truncated.png"], ["truncated.png does not decode as image"]),
        (["--prompt", "hi", "--image", "{bad}/wav_named.png"], ["wav_named.png does not decode as image"]),
        (["--prompt", "hi", "--image", "{bad}/notes.txt"], ["not a supported image format; convert it"]),
        (["--prompt", "hi", "--video", "{bad}/text_named.mp4"], ["does not decode as video", "re-encode it"]),
        (["--prompt", "hi", "--video", "{bad}/truncated.mp4"], ["truncated.mp4 does not decode as video"]),
        (["--prompt", "hi", "--video", "{bad}/png_named.mp4"], ["png_named.mp4 does not decode as video"]),
        (["--prompt", "hi", "--video", "{bad}/good.png"], ["not a supported video format"]),
        (["--prompt", "hi", "--audio", "{bad}/garbage.wav"], ["garbage.wav does not decode as audio"]),
        (["--prompt", "hi", "--audio", "{bad}/silent0.wav"], ["holds 0 ms of sound", "send a longer recording"]),
        (["--prompt", "hi", "--audio", "{bad}/text_named.mp3"], ["text_named.mp3 does not decode as audio"]),
        (["--prompt", "hi", "--audio", "{bad}/good.png"], ["not a supported audio format"]),
        (
            ["--prompt", "hi", "--image", "{bad}/garbage.png", "--audio", "{bad}/silent0.wav"],
            ["2 bad input files: image file", "garbage.png", "silent0.wav"],
        ),
        (["--image", "{bad}/good.png"], ["belong to a --prompt; add --prompt"]),
        (["--prompt", "<image> vs <image>", "--image", "{bad}/good.png"], ["2 <image> placeholder(s) but 1 image"]),
        (["--prompt", "What is in <video>?"], ["1 <video> placeholder(s) but 0 video file(s)"]),
        (["--prompt", "  "], ["the prompt is empty; type a request"]),
    ],
)
def test_bad_media_input(taught_checkpoint, bad_files, out_dir, no_model, capsys, args, fragments):
    bad = bad_files["good_png"].parent
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--output-dir", str(out_dir), *_fill(args, bad=bad)]
    _expect_one_line_error(argv, capsys, out_dir, *fragments)


def test_unreadable_media_file(taught_checkpoint, bad_files, out_dir, no_model, capsys, monkeypatch):
    secret = bad_files["good_wav"]
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):  # as root, chmod 000 still reads: simulate the OS's answer
        if str(file) == str(secret):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--output-dir", str(out_dir), "--prompt", "hi"]
    _expect_one_line_error([*argv, "--audio", str(secret)], capsys, out_dir, "(permission denied); make it readable")


# --- request files (JSON conversation, JSONL batch) -------------------------------------------------------------
BATCH_CASES = [
    ('{"prompt": "a"}\n{"prompt": \n', ["requests.jsonl:2 is not valid JSON", "one request object per line"]),
    ("", ["requests.jsonl is empty; write one request per line"]),
    ('["a", "b"]\n', ["requests.jsonl:1 must be a JSON object, got list"]),
    ('{"promt": "a"}\n', ["unknown key(s) ['promt']; did you mean 'prompt'?"]),
    ('{"prompt": 3}\n', ["'prompt' must be a string, got int"]),
    ('{"prompt": "a", "messages": []}\n', ["needs exactly one of 'messages'"]),
    ('{"id": "q1"}\n', ["needs exactly one of 'messages'"]),
    ('{"prompt": "a", "image": 5}\n', ["'image' must be a path or a list of paths", 'write e.g. "image"']),
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', ["request ids ['a'] repeat; give every request"]),
    ('{"id": "' + "x" * 300 + '", "prompt": "a"}\n', ["300 characters long, over the limit of 64"]),
    ('{"id": "../evil", "prompt": "a"}\n', ["'id' '../evil' cannot name output files"]),
    ('{"id": null, "prompt": "a"}\n', ["'id' must be a string"]),
    ('{"prompt": "a", "image": "nowhere.png"}\n', ["nowhere.png not found; check the path"]),
    ('{"prompt": "<image> <image>", "image": "good.png"}\n', ["2 <image> placeholder(s) but 1 image file(s)"]),
    ('{"prompt": ""}\n', ["the prompt is empty"]),
    ('{"messages": [{"role": "assistant", "text": "hi"}]}\n', ["message 0 must have role 'user'"]),
    ('{"messages": [{"role": "user", "text": "a"}, {"role": "user", "text": "b"}]}\n', ["must have role 'assistant'"]),
    ('{"prompt": "a", "id": "q1"}\n{"prompt": 1}\n{"nope": 1}\n', ["2 bad lines in", ":2:", ":3 has unknown key"]),
]


@pytest.mark.parametrize(("content", "fragments"), BATCH_CASES)
def test_bad_batch_file(taught_checkpoint, bad_files, out_dir, no_model, capsys, content, fragments):
    batch = bad_files["good_png"].parent / "requests.jsonl"  # next to good.png: relative paths resolve there
    batch.write_text(content)
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--output-dir", str(out_dir), "--batch", str(batch)]
    _expect_one_line_error(argv, capsys, out_dir, *fragments)


CONVERSATION_CASES = [
    ("{", [], ["chat.json is not valid JSON", "write a list of messages"]),
    ("3", [], ["chat.json holds a JSON int; write a list of messages"]),
    ('{"id": "x"}', [], ['chat.json has no "messages" list']),
    ('[{"role": "bot", "text": "a"}]', [], ["'role' must be 'user' or 'assistant', got 'bot'"]),
    ('[{"role": "user", "text": 5}]', [], ["'text' must be a string, got int"]),
    ('[{"role": "user", "prompt": "a"}]', [], ["unknown key(s) ['prompt']"]),
    ('[{"role": "user", "text": "a"}, {"role": "assistant", "text": "b"}]', [], ["add the user's next message"]),
    ('[{"role": "user", "text": "a"}]', ["--prompt", "b"], ["message 1 must have role 'assistant'"]),
    ("[]", [], ["the conversation is empty"]),
    ('[{"role": "user", "text": "a", "image": ["gone.png"]}]', [], ["gone.png not found"]),
]


@pytest.mark.parametrize(("content", "extra", "fragments"), CONVERSATION_CASES)
def test_bad_conversation_file(taught_checkpoint, tmp_path, out_dir, no_model, capsys, content, extra, fragments):
    chat = tmp_path / "chat.json"
    chat.write_text(content)
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--output-dir", str(out_dir), "--conversation", str(chat)]
    _expect_one_line_error([*argv, *extra], capsys, out_dir, *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--batch", "{tmp}/requests.jsonl", "--prompt", "hi"], ["--batch takes its requests from the file"]),
        ([], ["nothing to answer; pass --prompt"]),
        (["--batch", "{tmp}/none.jsonl"], ["batch file not found"]),
        (["--batch", "{tmp}"], ["is a folder; pass the file itself"]),
        (["--conversation", "{tmp}/none.json"], ["conversation file not found"]),
        (["--batch", "{tmp}/binary.jsonl"], ["is not UTF-8 text"]),
    ],
)
def test_bad_request_source(taught_checkpoint, tmp_path, out_dir, no_model, capsys, args, fragments):
    (tmp_path / "requests.jsonl").write_text('{"prompt": "a"}\n')
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x01")
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--output-dir", str(out_dir), *_fill(args, tmp=tmp_path)]
    _expect_one_line_error(argv, capsys, out_dir, *fragments)


# --- output folder ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--output-dir", "{out}/{run}/summary.json"], ["is a file; pass a folder path"]),
        (["--output-dir", "{out}/{run}/summary.json/sub"], ["cannot create output folder", "Not a directory"]),
        (["--output-dir", "{out}", "--run-name", "{run}"], ["already exists; choose another run name"]),
        (["--output-dir", "{out}", "--run-name", "../up"], ["run name '../up' cannot name output files"]),
    ],
)
def test_bad_output_folder(taught_checkpoint, out_dir, no_model, capsys, args, fragments):
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--prompt", "hi", *_fill(args, out=out_dir, run=EARLIER_RUN)]
    _expect_one_line_error(argv, capsys, out_dir, *fragments)


def test_unwritable_output_folder(taught_checkpoint, out_dir, no_model, capsys, monkeypatch):
    def refuse(self, data):  # as root, chmod cannot make a folder unwritable: simulate the OS's answer
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refuse)
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--prompt", "hi", "--output-dir", str(out_dir)]
    _expect_one_line_error(argv, capsys, out_dir, "cannot write in output folder", "make it writable")


# --- numeric flags ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--temperature", "-1"], "--temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
        (["--temperature", "inf"], "--temperature must be a finite number >= 0 (0 = greedy), got inf"),
        (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
        (["--max-new-tokens", "-5"], "--max-new-tokens must be an integer >= 1, got -5"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**63), got -1"),
        (["--num-inference-steps", "0"], "--num-inference-steps must be an integer >= 1, got 0"),
        (["--guidance-scale", "-1"], "--guidance-scale must be a finite number >= 0"),
        (["--guidance-scale", "nan"], "--guidance-scale must be a finite number >= 0"),
        (["--height", "30"], "--height must be a positive multiple of 8"),
        (["--height", "0"], "--height must be a positive multiple of 8"),
        (["--width", "36"], "--width must be a positive multiple of 8"),
        (["--num-frames", "0"], "--num-frames must be an integer >= 1, got 0"),
        (["--audio-seconds", "0"], "--audio-seconds must be a finite number > 0, got 0.0"),
        (["--audio-seconds", "-1"], "--audio-seconds must be a finite number > 0, got -1.0"),
        (["--audio-seconds", "nan"], "--audio-seconds must be a finite number > 0, got nan"),
        (["--audio-seconds", "inf"], "--audio-seconds must be a finite number > 0, got inf"),
        (["--fps", "0"], "--fps must be an integer from 1 to 240, got 0"),
        (["--fps", "x"], "argument --fps: invalid int value: 'x'; see"),
        (["--temperature", "warm"], "argument --temperature: invalid float value: 'warm'"),
        (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_number_or_flag(taught_checkpoint, out_dir, no_model, capsys, args, fragment):
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--prompt", "hi", "--output-dir", str(out_dir), *args]
    _expect_one_line_error(argv, capsys, out_dir, fragment)


# --- device -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "gpus", "fragment"),
    [
        ("gpu", 0, "device 'gpu' is not a torch device; use cpu, cuda or cuda:N"),
        ("", 0, "device '' is not a torch device"),
        ("cuda", 0, "asked for a GPU, but PyTorch sees none"),
        ("cuda:7", 1, "this machine has 1 GPU(s), cuda:0 to cuda:0"),
        ("meta", 0, "device 'meta' is not supported for inference"),
    ],
)
def test_bad_device(taught_checkpoint, out_dir, no_model, capsys, monkeypatch, device, gpus, fragment):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)  # the same answer on any test machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--prompt", "hi", "--output-dir", str(out_dir)]
    _expect_one_line_error([*argv, "--device", device], capsys, out_dir, fragment)


# --- config overrides -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("model.foo=1", ["override 'model.foo=1': unknown config key", "fix it or drop it"]),
        ("generation.temperature=abc", ["override 'generation.temperature=abc'", "must be a number"]),
        ("generation.temperature", ["must look like key.sub=value"]),
        ("generation.top_p=2", ["generation.top_p must be in (0, 1], got 2.0"]),
        ("generation.temperature=nan", ["generation.temperature must be a finite number >= 0"]),
        ("model.decoders.image.height=30", ["height must be a positive multiple of 8"]),
        ("model.output_projectors.image.num_queries=3", ["does not match the config", "num_queries is 77"]),
        ("model.decoders.video.pipeline_path=/nowhere", ["missing component(s)", "model.decoders.video.pipeline_path"]),
        ("model.llm.model_path=/nowhere", ["model.llm.model_path = /nowhere (no HF model folder there)"]),
        (
            "model.decoders.image.pipeline_path={video}",
            ["holds a TextToVideoSDPipeline, not a StableDiffusionPipeline"],
        ),
    ],
)
def test_bad_override(taught_checkpoint, out_dir, no_model, capsys, override, fragments):
    from nextgpt.config import load_config

    video = load_config(taught_checkpoint / "config.yaml").model.decoders.video.pipeline_path
    argv = ["--checkpoint-dir", str(taught_checkpoint), "--prompt", "hi", "--output-dir", str(out_dir)]
    _expect_one_line_error([*argv, override.format(video=video)], capsys, out_dir, *fragments)


# --- checkpoint folders -----------------------------------------------------------------------------------------
def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage(kind: str, folder: Path) -> Path:
    """Apply one kind of damage to a copy of a checkpoint folder; returns the folder to pass."""
    weights = folder / "trainable.safetensors"
    if kind == "missing":
        return folder / "nowhere"
    if kind == "a file":
        return weights
    if kind == "empty folder":
        (folder / "empty").mkdir()
        return folder / "empty"
    if kind == "run folder":
        run = folder.parent / "run"
        shutil.copytree(folder, run / "final")
        return run
    if kind == "no weights":
        weights.unlink()
    elif kind == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif kind == "flipped weights byte":
        _flip_byte(weights, weights.stat().st_size - 10)
    elif kind == "flipped header byte":
        _flip_byte(weights, 12)
    elif kind == "garbage config":
        (folder / "config.yaml").write_text("model: [unclosed\n")
    elif kind == "missing lora file":
        (folder / "lora" / "adapter_model.safetensors").unlink()
    elif kind == "garbage manifest":
        (folder / "manifest.json").write_text("not json")
    return folder


@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        ("missing", ["checkpoint folder", "does not exist; check --checkpoint-dir"]),
        ("a file", ["is a file; pass the folder that holds config.yaml"]),
        ("empty folder", ["is not a checkpoint folder (no config.yaml)"]),
        ("run folder", ["is not a checkpoint folder", "did you mean", "final?"]),
        ("no weights", ["has no trainable.safetensors", "use another checkpoint"]),
        ("truncated weights", ["trainable.safetensors is", "truncated or overwritten", "restore it from a copy"]),
        ("flipped weights byte", ["is corrupt: trainable.safetensors (checksum differs)", "restore it from a copy"]),
        ("flipped header byte", ["trainable.safetensors", "restore it from a copy"]),
        ("garbage config", ["config.yaml is not a valid config", "restore the checkpoint's config.yaml"]),
        ("missing lora file", ["lora/adapter_model.safetensors (missing)", "restore it from a copy"]),
        ("garbage manifest", ["manifest.json is unreadable"]),
    ],
)
def test_bad_checkpoint(taught_checkpoint, tmp_path, out_dir, no_model, capsys, kind, fragments):
    folder = _damage(kind, Path(shutil.copytree(taught_checkpoint, tmp_path / "ckpt" / "final")))
    argv = ["--checkpoint-dir", str(folder), "--prompt", "hi", "--output-dir", str(out_dir)]
    _expect_one_line_error(argv, capsys, out_dir, *fragments)


@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        ("truncated llm weights", ["model.safetensors is", "truncated or overwritten"]),
        ("flipped llm byte", ["is corrupt: llm/model.safetensors (checksum differs)"]),
        ("llm folder gone", ["model.llm.model_path =", "(no HF model folder there)"]),
    ],
)
def test_bad_merged_folder(merged_checkpoint, tmp_path, out_dir, no_model, capsys, kind, fragments):
    folder = Path(shutil.copytree(merged_checkpoint, tmp_path / "merged"))
    llm_weights = folder / "llm" / "model.safetensors"
    if kind == "truncated llm weights":
        llm_weights.write_bytes(llm_weights.read_bytes()[:-64])
    elif kind == "flipped llm byte":
        _flip_byte(llm_weights, llm_weights.stat().st_size - 10)
    else:
        shutil.rmtree(folder / "llm")
    argv = ["--checkpoint-dir", str(folder), "--prompt", "hi", "--output-dir", str(out_dir)]
    _expect_one_line_error(argv, capsys, out_dir, *fragments)
