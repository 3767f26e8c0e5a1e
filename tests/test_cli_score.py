"""`promptiqa-jax score` end to end on the tiny random model, bad input first.

The CLI runs in-process (`cli.main`) three times, at batch sizes 1, 3 and 16; each run compiles the
model, so the runs are module fixtures that many tests read. Prompt errors are checked with
`--checkpoint` naming a directory that does not exist: the prompt error still comes out, so the
model was never loaded. One subprocess run of the installed console script proves the entry point.
"""
import contextlib
import csv
import dataclasses
import io
import json
import os
import pathlib
import shutil
import struct
import subprocess
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from promptiqa_jax import cli
from promptiqa_jax.data import preprocess

MAX_PIXELS = 1000  # --max-pixels of the runs with bad input; every good image is smaller
PROMPT = [("p0.png", 0.1), ("p1.png", 0.5), ("p2.png", 0.9)]


def _noise(seed: int, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def _save_palette(path: str, seed: int, transparency: bool) -> None:
  image = Image.fromarray(_noise(seed, (20, 26, 3))).quantize(16)
  image.save(path, **({"transparency": 3} if transparency else {}))


# PNGs whose decoding must equal OpenCV's: kind -> (Pillow's mode for the file, writer).
PNG_KINDS = {
    "rgb": ("RGB", lambda p: Image.fromarray(_noise(1, (24, 30, 3))).save(p)),
    "gray": ("L", lambda p: Image.fromarray(_noise(2, (30, 24))).save(p)),
    "gray_alpha": ("LA", lambda p: Image.fromarray(_noise(3, (22, 28, 2)), "LA").save(p)),
    "rgba": ("RGBA", lambda p: Image.fromarray(_noise(4, (28, 22, 4))).save(p)),
    "palette": ("P", lambda p: _save_palette(p, 5, transparency=False)),
    "palette_alpha": ("P", lambda p: _save_palette(p, 6, transparency=True)),
    "bilevel": ("1", lambda p: Image.fromarray(_noise(7, (25, 25)) > 127).save(p)),
    "gray16": ("I;16", lambda p: Image.fromarray(_noise(8, (24, 26), np.uint16)).save(p)),
    "rgb16": ("RGB", lambda p: cv2.imwrite(p, _noise(9, (26, 24, 3), np.uint16))),
    "rgba16": ("RGBA", lambda p: cv2.imwrite(p, _noise(10, (20, 30, 4), np.uint16))),
}


def _first_half(extension: str) -> bytes:
  ok, data = cv2.imencode(extension, _noise(12, (30, 30, 3)))
  assert ok
  return data.tobytes()[:len(data) // 2]


def _text(path: str) -> None:
  pathlib.Path(path).write_text("path,score\nthis is text, not an image\n")


# Every file of the test, relative to its root directory -> writer.
FILES = {
    "inputs/rgb.png": PNG_KINDS["rgb"][1],
    "inputs/photo.jpg": lambda p: Image.fromarray(_noise(11, (24, 32, 3))).save(p, quality=90),
    "folder/gray.png": PNG_KINDS["gray"][1],
    "folder/palette.png": PNG_KINDS["palette"][1],
    "folder/rgba.png": PNG_KINDS["rgba"][1],
    "folder/readme.txt": _text,
    "folder/sub/gray16.png": PNG_KINDS["gray16"][1],
    "folder/sub/rgb16.png": PNG_KINDS["rgb16"][1],
    "folder/sub/deeper/RGBA16.PNG": PNG_KINDS["rgba16"][1],
    "folder/sub/deeper/bilevel.png": PNG_KINDS["bilevel"][1],
    "folder/sub/deeper/gray_alpha.png": PNG_KINDS["gray_alpha"][1],
    "folder/sub/deeper/palette_alpha.png": PNG_KINDS["palette_alpha"][1],
    "more/a.png": PNG_KINDS["palette"][1],
    "more/zz_text.jpg": _text,
    "inputs/empty.png": lambda p: pathlib.Path(p).write_bytes(b""),
    "inputs/truncated.png": lambda p: pathlib.Path(p).write_bytes(_first_half(".png")),
    "inputs/truncated.jpg": lambda p: pathlib.Path(p).write_bytes(_first_half(".jpg")),
    "inputs/text.png": _text,
    "inputs/notes.txt": _text,
    "inputs/dangling.png": lambda p: os.symlink(os.path.join(os.path.dirname(p), "gone.png"), p),
    "inputs/loop.png": lambda p: os.symlink(p, p),
    "inputs/too_big.png": lambda p: Image.fromarray(_noise(13, (40, 40, 3))).save(p),
    "prompt/text.png": _text,
    "prompt/too_big.png": lambda p: Image.fromarray(_noise(13, (40, 40, 3))).save(p),
    **{f"prompt/{name}": (lambda p, s=index: Image.fromarray(_noise(100 + s, (20, 24, 3))).save(p))
       for index, (name, _) in enumerate(PROMPT)},
    "prompt/prompt.json": lambda p: pathlib.Path(p).write_text(json.dumps(PROMPT)),
    "prompt/prompt.csv": lambda p: pathlib.Path(p).write_text(
        "path,score\n" + "".join(f"{name},{score}\n" for name, score in PROMPT)),
}

# Bad input -> a fragment of its error. All but the last are named on the command line.
BAD = {
    "inputs/empty.png": "empty file",
    "inputs/truncated.png": "cannot decode image",
    "inputs/truncated.jpg": "cannot decode image",
    "inputs/text.png": "not an image",
    "inputs/notes.txt": "not an image",
    "inputs/dangling.png": "cannot read file (No such file or directory)",
    "inputs/loop.png": "cannot read file (Too many levels of symbolic links)",
    "inputs/too_big.png": f"40x40 = 1600 pixels exceeds the limit of {MAX_PIXELS}",
    "more/zz_text.jpg": "not an image",
}
# A folder's rows: its image files, sorted, then its sub-folders' (readme.txt has no row).
FOLDER_ROWS = ["folder/gray.png", "folder/palette.png", "folder/rgba.png", "folder/sub/gray16.png",
               "folder/sub/rgb16.png", "folder/sub/deeper/RGBA16.PNG",
               "folder/sub/deeper/bilevel.png", "folder/sub/deeper/gray_alpha.png",
               "folder/sub/deeper/palette_alpha.png"]
GOOD_ARGS = ["inputs/rgb.png", "folder", "inputs/photo.jpg"]
GOOD_ROWS = ["inputs/rgb.png"] + FOLDER_ROWS + ["inputs/photo.jpg"]
MIXED_ARGS = ["inputs/rgb.png"] + list(BAD)[:-1] + ["folder", "more", "inputs/photo.jpg"]
MIXED_ROWS = (["inputs/rgb.png"] + list(BAD)[:-1] + FOLDER_ROWS
              + ["more/a.png", "more/zz_text.jpg", "inputs/photo.jpg"])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
  """A directory with every file of `FILES`."""
  directory = tmp_path_factory.mktemp("score")
  for relative, write in FILES.items():
    (directory / relative).parent.mkdir(parents=True, exist_ok=True)
    write(str(directory / relative))
  return str(directory)


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished CLI run: exit status, captured streams and the rows it wrote."""

  code: int
  stdout: str
  stderr: str
  rows: list[dict]


def _run_cli(root: str, checkpoint: str, prompt: str, batch_size: int, inputs: list[str],
             *options: str) -> tuple[int, str, str]:
  argv = ["score", "--checkpoint", checkpoint, "--prompt", os.path.join(root, "prompt", prompt),
          "--batch-size", str(batch_size), *options]
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    code = cli.main(argv + [os.path.join(root, path) for path in inputs])
  return code, stdout.getvalue(), stderr.getvalue()


def _csv_rows(text: str) -> list[dict]:
  reader = csv.DictReader(io.StringIO(text))
  assert reader.fieldnames == ["path", "score", "error"]
  return [{"path": r["path"], "score": float(r["score"]) if r["score"] else None,
           "error": r["error"] or None} for r in reader]


@pytest.fixture(scope="module")
def good_run(root, tiny_model_dir) -> Run:
  """Good images only; batch size 1 (never padded), CSV prompt, CSV on stdout, progress bar."""
  code, stdout, stderr = _run_cli(root, tiny_model_dir, "prompt.csv", 1, GOOD_ARGS)
  return Run(code, stdout, stderr, _csv_rows(stdout))


@pytest.fixture(scope="module")
def json_run(root, tiny_model_dir, tiny_model) -> Run:
  """Good and bad input; the API fixture's batch size, JSON prompt, JSON output file, --quiet."""
  output = os.path.join(root, "scores.json")
  code, stdout, stderr = _run_cli(root, tiny_model_dir, "prompt.json", tiny_model.batch_size,
                                  MIXED_ARGS, "--max-pixels", str(MAX_PIXELS), "--output", output,
                                  "--quiet")
  with open(output) as f:
    return Run(code, stdout, stderr, json.load(f))


@pytest.fixture(scope="module")
def csv_run(root, tiny_model_dir) -> Run:
  """Good and bad input; batch size 16 (every batch padded), CSV prompt, CSV output file."""
  output = os.path.join(root, "scores.csv")
  code, stdout, stderr = _run_cli(root, tiny_model_dir, "prompt.csv", 16, MIXED_ARGS,
                                  "--max-pixels", str(MAX_PIXELS), "--output", output)
  with open(output, newline="") as f:
    return Run(code, stdout, stderr, _csv_rows(f.read()))


@pytest.fixture(scope="module", params=["json_run", "csv_run"])
def mixed_run(request) -> Run:
  """Each run over good and bad input."""
  return request.getfixturevalue(request.param)


def _row(root: str, run: Run, relative: str) -> dict:
  return next(row for row in run.rows if row["path"] == os.path.join(root, relative))


def _scores(run: Run) -> dict[str, float]:
  return {row["path"]: row["score"] for row in run.rows if row["error"] is None}


# Bad input becomes an error row; everything else is still scored. -----------------------------

@pytest.mark.parametrize("relative", list(BAD))
def test_bad_input_is_an_error_row_naming_the_file(root, mixed_run, relative):
  row = _row(root, mixed_run, relative)
  assert row["score"] is None
  assert row["error"].startswith(f"{os.path.join(root, relative)}: "), row["error"]
  assert BAD[relative] in row["error"]
  assert f"error: {row['error']}\n" in mixed_run.stderr


@pytest.mark.parametrize("relative", [r for r in MIXED_ROWS if r not in BAD])
def test_every_other_image_is_scored(root, mixed_run, relative):
  row = _row(root, mixed_run, relative)
  assert row["error"] is None
  assert 0.0 <= row["score"] <= 1.0


def test_a_failed_input_makes_the_exit_status_non_zero(mixed_run):
  assert mixed_run.code == cli.EXIT_INPUT_FAILED
  summary = f"{len(BAD)} of {len(MIXED_ROWS)} inputs failed; the others were scored"
  assert summary in mixed_run.stderr


def test_all_inputs_scored_exits_zero(good_run):
  assert good_run.code == 0, good_run.stderr
  assert all(row["error"] is None for row in good_run.rows)
  assert "error" not in good_run.stderr


# Output: one row per input, in order, as CSV (stdout or .csv) or JSON (.json). -----------------

def test_one_row_per_input_in_order_folders_recursively(root, good_run, mixed_run):
  assert [row["path"] for row in good_run.rows] == [os.path.join(root, r) for r in GOOD_ROWS]
  assert [row["path"] for row in mixed_run.rows] == [os.path.join(root, r) for r in MIXED_ROWS]


def test_csv_on_stdout_without_output(good_run):
  lines = good_run.stdout.splitlines()
  assert lines[0] == "path,score,error"
  assert len(lines) == 1 + len(GOOD_ROWS)


def test_output_file_leaves_stdout_empty(mixed_run):
  assert mixed_run.stdout == ""


def test_json_output_rows(json_run):
  assert all(set(row) == {"path", "score", "error"} for row in json_run.rows)
  assert all(isinstance(row["score"], float) for row in json_run.rows if row["error"] is None)


def test_progress_bar_unless_quiet(good_run, json_run):
  assert f"{len(GOOD_ROWS)}/{len(GOOD_ROWS)}" in good_run.stderr
  assert "img/s" in good_run.stderr
  assert "img/s" not in json_run.stderr


# Scores: the API's, whatever the batch size (padding). -----------------------------------------

def test_scores_equal_the_api(root, json_run, tiny_model):
  encoded = tiny_model.encode_prompt([os.path.join(root, "prompt", name) for name, _ in PROMPT],
                                     [score for _, score in PROMPT])
  scores = _scores(json_run)
  np.testing.assert_array_equal(list(scores.values()),
                                tiny_model.score(list(scores), encoded).astype(np.float64))


def test_batch_size_does_not_change_scores(good_run, json_run, csv_run):
  unpadded = _scores(good_run)
  values = list(unpadded.values())
  # Distinct images score differently, so a score given to the wrong row would show.
  assert np.ptp(values) > 1e-3
  for run in (json_run, csv_run):
    padded = _scores(run)
    # 2e-6: CSV keeps 6 decimals.
    np.testing.assert_allclose([padded[path] for path in unpadded], values, rtol=0, atol=2e-6)


# Conversions and the pixel limit (no model). ---------------------------------------------------

@pytest.mark.parametrize("kind", sorted(PNG_KINDS))
def test_png_conversion_equals_opencv(tmp_path, kind):
  mode, write = PNG_KINDS[kind]
  path = str(tmp_path / f"{kind}.png")
  write(path)
  with Image.open(path) as image:
    assert image.mode == mode  # the file really is of this kind
  expected = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
  actual = preprocess.load_image(path)
  assert actual.dtype == np.uint8
  np.testing.assert_array_equal(actual, expected)


def _png_header(width: int, height: int) -> bytes:
  """A PNG that declares width x height RGB pixels but holds 16 bytes of pixel data."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(16)))
          + chunk(b"IEND", b""))


def test_pixel_limit_is_checked_on_the_header(monkeypatch):
  data = _png_header(5000, 5000)
  # Under the limit, decoding is attempted and finds no pixel data.
  with pytest.raises(preprocess.ImageError, match="^bomb.png: cannot decode image"):
    preprocess.decode_image(data, "bomb.png", max_pixels=5000 * 5000)

  def no_decoding(self):
    raise AssertionError("decoded an image over the pixel limit")

  monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
  with pytest.raises(preprocess.ImageError,
                     match="^bomb.png: 5000x5000 = 25000000 pixels exceeds the limit of 1000000"):
    preprocess.decode_image(data, "bomb.png", max_pixels=1_000_000)


# Prompt errors: refused before the model is loaded (exit 2, the message names the entry). ------

PROMPT_ERRORS = {
    "one_pair.json": ('[["p0.png", 0.5]]', "at least 2 image-score pairs, found 1"),
    "no_pairs.json": ("[]", "at least 2 image-score pairs, found 0"),
    "one_pair.csv": ("path,score\np0.png,0.5\n", "at least 2 image-score pairs, found 1"),
    "nan.json": ('[["p0.png", 0.1], ["p1.png", NaN]]', "entry 1 ('p1.png'): score nan is not in"),
    "nan.csv": ("p0.png,0.1\np1.png,nan\n", "entry 1 ('p1.png'): score 'nan' is not in"),
    "inf.json": ('[["p0.png", Infinity], ["p1.png", 0.5]]',
                 "entry 0 ('p0.png'): score inf is not in"),
    "minus_inf.csv": ("p0.png,0.1\np2.png,-inf\n", "entry 1 ('p2.png'): score '-inf' is not in"),
    "above_one.json": ('[["p0.png", 0.1], ["p1.png", 1.5]]',
                       "entry 1 ('p1.png'): score 1.5 is not in [0, 1]"),
    "below_zero.csv": ("p0.png,-0.1\np1.png,0.5\n", "entry 0 ('p0.png'): score '-0.1' is not in"),
    "word.csv": ("p0.png,0.1\np1.png,good\n", "entry 1 ('p1.png'): score 'good' is not a number"),
    "null.json": ('[["p0.png", 0.1], ["p1.png", null]]',
                  "entry 1 ('p1.png'): score None is not a number"),
    "missing_image.json": ('[["p0.png", 0.1], ["p9.png", 0.5]]',
                           "entry 1 ('p9.png'): image file not found"),
    "not_a_pair.json": ('[["p0.png", 0.1], ["p1.png"]]',
                        "entry 1 is ['p1.png'], not an [image path, score] pair"),
    "three_fields.csv": ("p0.png,0.1\np1.png,0.5,x\n", "row 2 has 3 fields"),
    "broken.json": ('[["p0.png", 0.1],', "not valid JSON"),
    "not_a_list.json": ('{"p0.png": 0.1, "p1.png": 0.5}', "expected a JSON list"),
    "text_image.json": ('[["p0.png", 0.1], ["text.png", 0.5]]',
                        "entry 1: {prompt_dir}/text.png: not an image"),
    "too_big_image.json": ('[["too_big.png", 0.1], ["p0.png", 0.5]]',
                           "entry 0: {prompt_dir}/too_big.png: 40x40 = 1600 pixels exceeds the "
                           "limit of {max_pixels}"),
}


@pytest.mark.parametrize("name", sorted(PROMPT_ERRORS))
def test_prompt_error_refused_before_loading_the_model(root, tmp_path, capsys, name):
  content, message = PROMPT_ERRORS[name]
  prompt_dir = os.path.join(root, "prompt")
  message = message.format(prompt_dir=prompt_dir, max_pixels=MAX_PIXELS)
  prompt = os.path.join(prompt_dir, name)
  pathlib.Path(prompt).write_text(content)
  code = cli.main(["score", "--checkpoint", str(tmp_path / "no_model"), "--prompt", prompt,
                   "--max-pixels", str(MAX_PIXELS), os.path.join(root, "inputs", "rgb.png")])
  out, err = capsys.readouterr()
  assert code == cli.EXIT_USAGE
  assert err.startswith(f"error: prompt: {prompt}: "), err
  assert message in err, err
  assert "model directory" not in err
  assert out == ""


def test_missing_prompt_file(root, tmp_path, capsys):
  prompt = str(tmp_path / "absent.json")
  code = cli.main(["score", "--checkpoint", str(tmp_path / "no_model"), "--prompt", prompt,
                   os.path.join(root, "inputs", "rgb.png")])
  assert code == cli.EXIT_USAGE
  assert capsys.readouterr().err.startswith(f"error: prompt: {prompt}: cannot read prompt file")


def test_a_good_prompt_gets_as_far_as_loading_the_model(root, tmp_path, capsys):
  """The control of the prompt tests: with a good prompt, the missing model is what fails."""
  code = cli.main(["score", "--checkpoint", str(tmp_path / "no_model"),
                   "--prompt", os.path.join(root, "prompt", "prompt.json"),
                   os.path.join(root, "inputs", "rgb.png")])
  assert code == cli.EXIT_USAGE
  assert f"{tmp_path / 'no_model'}: not a promptiqa_jax model directory" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--batch-size", "0"), ("--batch-size", "-1"),
                                          ("--batch-size", "two"), ("--max-pixels", "0")])
def test_counts_must_be_positive(root, tmp_path, capsys, option, value):
  # --batch-size -1 used to score nothing and exit 0; 0 failed after loading the model.
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["score", "--checkpoint", str(tmp_path / "no_model"),
              "--prompt", os.path.join(root, "prompt", "prompt.json"), option, value,
              os.path.join(root, "inputs", "rgb.png")])
  assert exit_info.value.code == cli.EXIT_USAGE
  assert f"argument {option}: expected a positive integer, got '{value}'" in capsys.readouterr().err


def test_no_images_found(root, tmp_path, capsys):
  empty = tmp_path / "empty_folder"
  empty.mkdir()
  code = cli.main(["score", "--checkpoint", str(tmp_path / "no_model"),
                   "--prompt", os.path.join(root, "prompt", "prompt.json"), str(empty)])
  assert code == cli.EXIT_USAGE
  assert f"error: no images found in {empty}" in capsys.readouterr().err


# The installed console script. -----------------------------------------------------------------

def test_console_script(root, tmp_path):
  """The installed entry point, on a prompt error (a scoring run would compile the model again)."""
  executable = shutil.which("promptiqa-jax")
  assert executable, "promptiqa-jax is not installed (pip install -e .)"
  prompt = str(tmp_path / "nan.csv")
  shutil.copy(os.path.join(root, "prompt", "p0.png"), tmp_path)
  pathlib.Path(prompt).write_text("p0.png,0.1\np0.png,nan\n")
  result = subprocess.run(
      [executable, "score", "--checkpoint", str(tmp_path / "no_model"), "--prompt", prompt,
       os.path.join(root, "inputs", "rgb.png")],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == cli.EXIT_USAGE
  assert result.stdout == ""
  assert result.stderr == (f"error: prompt: {prompt}: entry 1 ('p0.png'): score 'nan' is not in "
                           "[0, 1] (normalise scores first, or pass --score-range LO,HI)\n")
