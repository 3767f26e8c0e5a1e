"""`promptiqa-jax score` end to end on a tiny random model, bad input first.

The CLI runs in-process (`cli.main`), three times over one input set at batch sizes 1, 3 and 16
(each run compiles the model, so the runs are shared by the tests that read them); one subprocess
run of the installed console script proves the entry point. Every prompt error is checked with
`--checkpoint` pointing at a directory that does not exist: the prompt error still comes out, so
the model was never loaded.
"""
import contextlib
import csv
import dataclasses
import io
import json
import os
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

MAX_PIXELS = 1000  # --max-pixels of the runs with bad input: every good image is smaller
PROMPT = [("p0.png", 0.1), ("p1.png", 0.5), ("p2.png", 0.9)]


def _noise(seed: int, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def _save_palette(path: str, seed: int, transparency: bool) -> None:
  image = Image.fromarray(_noise(seed, (20, 26, 3))).quantize(16)
  image.save(path, **({"transparency": 3} if transparency else {}))


# PNG kinds whose decoding must equal OpenCV's: name -> (Pillow mode of the file, writer).
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


def _encoded(array: np.ndarray, extension: str) -> bytes:
  ok, data = cv2.imencode(extension, array)
  assert ok
  return data.tobytes()


def _png_header_only(width: int, height: int) -> bytes:
  """A PNG that declares width x height but holds 16 bytes of pixel data."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(16)))
          + chunk(b"IEND", b""))


@dataclasses.dataclass(frozen=True)
class Case:
  """One input of the runs: its path and, for bad input, a fragment of its error."""

  path: str
  error: str | None = None


@dataclasses.dataclass(frozen=True)
class Layout:
  """The files of the test, the runs' inputs and the rows expected from them, in order."""

  root: str
  prompt_dir: str
  good_inputs: list[str]
  good_cases: list[Case]
  mixed_inputs: list[str]
  mixed_cases: list[Case]

  def case(self, name: str) -> Case:
    return next(c for c in self.mixed_cases if os.path.basename(c.path) == name)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Layout:
  """Prompt images and files, good images of every kind (two nested folders) and bad files."""
  root = str(tmp_path_factory.mktemp("score"))
  prompt_dir = os.path.join(root, "prompt")
  inputs = os.path.join(root, "inputs")
  folder = os.path.join(root, "folder")
  for sub in (prompt_dir, inputs, os.path.join(folder, "sub", "deeper"), os.path.join(root, "more")):
    os.makedirs(sub)
  for index, (name, _) in enumerate(PROMPT):
    Image.fromarray(_noise(100 + index, (20, 24, 3))).save(os.path.join(prompt_dir, name))
  with open(os.path.join(prompt_dir, "prompt.json"), "w") as f:
    json.dump([list(pair) for pair in PROMPT], f)
  with open(os.path.join(prompt_dir, "prompt.csv"), "w") as f:
    f.write("path,score\n" + "".join(f"{name},{score}\n" for name, score in PROMPT))

  def path(*parts: str) -> str:
    return os.path.join(root, *parts)

  PNG_KINDS["rgb"][1](path("inputs", "rgb.png"))
  Image.fromarray(_noise(11, (24, 32, 3))).save(path("inputs", "photo.jpg"), quality=90)
  # The folder: one kind of PNG each, files before sub-folders, sorted, extensions in any case.
  folder_files = ["gray.png", "palette.png", "rgba.png", os.path.join("sub", "gray16.png"),
                  os.path.join("sub", "rgb16.png"), os.path.join("sub", "deeper", "RGBA16.PNG"),
                  os.path.join("sub", "deeper", "bilevel.png"),
                  os.path.join("sub", "deeper", "gray_alpha.png"),
                  os.path.join("sub", "deeper", "palette_alpha.png")]
  for name in folder_files:
    PNG_KINDS[os.path.splitext(os.path.basename(name))[0].lower()][1](path("folder", name))
  with open(path("folder", "readme.txt"), "w") as f:
    f.write("not an image, and not an image extension: left out of the folder's rows\n")

  noise = _noise(12, (30, 30, 3))
  with open(path("inputs", "empty.png"), "wb"):
    pass
  png, jpeg = _encoded(noise, ".png"), _encoded(noise, ".jpg")
  with open(path("inputs", "truncated.png"), "wb") as f:
    f.write(png[:len(png) // 2])
  with open(path("inputs", "truncated.jpg"), "wb") as f:
    f.write(jpeg[:len(jpeg) // 2])
  for text in (path("inputs", "text.png"), path("inputs", "notes.txt"), path("more", "zz_text.jpg"),
               path("prompt", "text.png")):
    with open(text, "w") as f:
      f.write("path,score\nthis is text\n")
  os.symlink(path("inputs", "gone.png"), path("inputs", "dangling.png"))
  os.symlink(path("inputs", "loop.png"), path("inputs", "loop.png"))
  Image.fromarray(_noise(13, (40, 40, 3))).save(path("inputs", "too_big.png"))
  shutil.copy(path("inputs", "too_big.png"), prompt_dir)
  PNG_KINDS["palette"][1](path("more", "a.png"))

  good_files = [path("inputs", "rgb.png")] + [path("folder", n) for n in folder_files]
  good_cases = [Case(p) for p in good_files + [path("inputs", "photo.jpg")]]
  bad = [Case(path("inputs", "empty.png"), "empty file"),
         Case(path("inputs", "truncated.png"), "cannot decode image"),
         Case(path("inputs", "truncated.jpg"), "cannot decode image"),
         Case(path("inputs", "text.png"), "not an image"),
         Case(path("inputs", "notes.txt"), "not an image"),
         Case(path("inputs", "dangling.png"), "cannot read file (No such file or directory)"),
         Case(path("inputs", "loop.png"), "cannot read file (Too many levels of symbolic links)"),
         Case(path("inputs", "too_big.png"), f"exceeds the limit of {MAX_PIXELS}")]
  mixed_cases = ([good_cases[0]] + bad + good_cases[1:-1]
                 + [Case(path("more", "a.png")), Case(path("more", "zz_text.jpg"), "not an image"),
                    good_cases[-1]])
  return Layout(
      root=root, prompt_dir=prompt_dir,
      good_inputs=[path("inputs", "rgb.png"), path("folder"), path("inputs", "photo.jpg")],
      good_cases=good_cases,
      mixed_inputs=([path("inputs", "rgb.png")] + [c.path for c in bad]
                    + [path("folder"), path("more"), path("inputs", "photo.jpg")]),
      mixed_cases=mixed_cases)


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished CLI run: exit status, captured streams and the rows it wrote."""

  code: int
  stdout: str
  stderr: str
  rows: list[dict]


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    code = cli.main(argv)
  return code, stdout.getvalue(), stderr.getvalue()


def _csv_rows(text: str) -> list[dict]:
  reader = csv.DictReader(io.StringIO(text))
  assert reader.fieldnames == ["path", "score", "error"]
  return [{"path": r["path"], "score": float(r["score"]) if r["score"] else None,
           "error": r["error"] or None} for r in reader]


def _score_args(layout: Layout, checkpoint: str, prompt: str, batch_size: int) -> list[str]:
  return ["score", "--checkpoint", checkpoint, "--prompt", os.path.join(layout.prompt_dir, prompt),
          "--batch-size", str(batch_size)]


@pytest.fixture(scope="module")
def good_run(layout, tiny_model_dir) -> Run:
  """Good images only, batch size 1 (never padded), CSV prompt, CSV on stdout, progress bar."""
  code, stdout, stderr = _run_cli(_score_args(layout, tiny_model_dir, "prompt.csv", 1)
                                  + layout.good_inputs)
  return Run(code, stdout, stderr, _csv_rows(stdout))


@pytest.fixture(scope="module")
def json_run(layout, tiny_model_dir, tiny_model) -> Run:
  """Good and bad input, the API fixture's batch size, JSON prompt, JSON output file, --quiet."""
  output = os.path.join(layout.root, "scores.json")
  code, stdout, stderr = _run_cli(
      _score_args(layout, tiny_model_dir, "prompt.json", tiny_model.batch_size)
      + ["--max-pixels", str(MAX_PIXELS), "--output", output, "--quiet"] + layout.mixed_inputs)
  with open(output) as f:
    return Run(code, stdout, stderr, json.load(f))


@pytest.fixture(scope="module")
def csv_run(layout, tiny_model_dir) -> Run:
  """Good and bad input, batch size 16 (all of them in one padded batch), CSV output file."""
  output = os.path.join(layout.root, "scores.csv")
  code, stdout, stderr = _run_cli(_score_args(layout, tiny_model_dir, "prompt.csv", 16)
                                  + ["--max-pixels", str(MAX_PIXELS), "--output", output]
                                  + layout.mixed_inputs)
  with open(output, newline="") as f:
    return Run(code, stdout, stderr, _csv_rows(f.read()))


@pytest.fixture(scope="module", params=["json", "csv"])
def mixed_run(request) -> Run:
  return request.getfixturevalue(f"{request.param}_run")


def _scores(rows: list[dict]) -> dict[str, float]:
  return {row["path"]: row["score"] for row in rows if row["error"] is None}


# ---------------------------------------------------------------------------------------------
# Bad input becomes an error row; everything else is still scored.

BAD_NAMES = ["empty.png", "truncated.png", "truncated.jpg", "text.png", "notes.txt",
             "dangling.png", "loop.png", "too_big.png", "zz_text.jpg"]
GOOD_NAMES = ["rgb.png", "gray.png", "palette.png", "rgba.png", "gray16.png", "rgb16.png",
              "RGBA16.PNG", "bilevel.png", "gray_alpha.png", "palette_alpha.png", "a.png",
              "photo.jpg"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_is_an_error_row_naming_the_file(layout, mixed_run, name):
  case = layout.case(name)
  row = next(r for r in mixed_run.rows if r["path"] == case.path)
  assert row["score"] is None
  assert row["error"].startswith(f"{case.path}: "), row["error"]
  assert case.error in row["error"]
  assert f"error: {row['error']}" in mixed_run.stderr


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_every_other_image_is_scored(layout, mixed_run, name):
  row = next(r for r in mixed_run.rows if r["path"] == layout.case(name).path)
  assert row["error"] is None
  assert 0.0 <= row["score"] <= 1.0


def test_a_failed_input_makes_the_exit_status_non_zero(mixed_run):
  assert mixed_run.code == cli.EXIT_INPUT_FAILED
  assert f"{len(BAD_NAMES)} of {len(mixed_run.rows)} inputs failed" in mixed_run.stderr


def test_all_inputs_scored_exits_zero(good_run):
  assert good_run.code == 0, good_run.stderr
  assert all(row["error"] is None for row in good_run.rows)
  assert "failed" not in good_run.stderr


# ---------------------------------------------------------------------------------------------
# Output: one row per input, in order, as CSV (stdout or .csv) or JSON (.json).

def test_one_row_per_input_in_order(layout, good_run, mixed_run):
  assert [r["path"] for r in good_run.rows] == [c.path for c in layout.good_cases]
  assert [r["path"] for r in mixed_run.rows] == [c.path for c in layout.mixed_cases]
  assert [r["error"] is None for r in mixed_run.rows] == [c.error is None for c in layout.mixed_cases]


def test_csv_on_stdout_when_no_output(good_run):
  assert good_run.stdout.splitlines()[0] == "path,score,error"
  assert len(good_run.stdout.splitlines()) == 1 + len(good_run.rows)


def test_output_file_leaves_stdout_empty(mixed_run):
  assert mixed_run.stdout == ""


def test_json_output_rows(json_run):
  assert all(set(row) == {"path", "score", "error"} for row in json_run.rows)
  assert all(isinstance(row["score"], float) for row in json_run.rows if row["error"] is None)


def test_folders_are_scored_recursively(layout, good_run):
  paths = [r["path"] for r in good_run.rows]
  assert os.path.join(layout.root, "folder", "sub", "deeper", "RGBA16.PNG") in paths
  assert not any(p.endswith("readme.txt") for p in paths)


def test_progress_bar_unless_quiet(layout, good_run, json_run):
  total = len(layout.good_cases)
  assert f"{total}/{total}" in good_run.stderr
  assert "img/s" in good_run.stderr
  assert "img/s" not in json_run.stderr


# ---------------------------------------------------------------------------------------------
# Scores: the same as the API's, and the same whatever the batch size (padding).

def test_scores_equal_the_api(layout, json_run, tiny_model):
  prompt = tiny_model.encode_prompt([os.path.join(layout.prompt_dir, n) for n, _ in PROMPT],
                                    [s for _, s in PROMPT])
  scores = _scores(json_run.rows)
  expected = tiny_model.score(list(scores), prompt)
  np.testing.assert_array_equal(list(scores.values()), expected.astype(np.float64))


def test_batch_size_does_not_change_scores(good_run, json_run, csv_run):
  unpadded = _scores(good_run.rows)
  values = np.array(list(unpadded.values()))
  # Distinct images score differently, so a score given to the wrong row would show.
  assert np.ptp(values) > 1e-3
  for run in (json_run, csv_run):
    padded = _scores(run.rows)
    assert set(unpadded) <= set(padded)
    # CSV keeps 6 decimals.
    np.testing.assert_allclose([padded[p] for p in unpadded], values, rtol=0, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# Conversions and the pixel limit (no model).

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


def test_pixel_limit_is_checked_on_the_header(monkeypatch):
  data = _png_header_only(5000, 5000)
  # Without the limit, decoding is attempted and finds no pixel data.
  with pytest.raises(preprocess.ImageError, match="bomb.png: cannot decode image"):
    preprocess.decode_image(data, "bomb.png", max_pixels=5000 * 5000)

  def no_decoding(self):
    raise AssertionError("decoded an image over the pixel limit")

  monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
  with pytest.raises(preprocess.ImageError,
                     match=r"bomb.png: 5000x5000 = 25000000 pixels exceeds the limit of 1000000"):
    preprocess.decode_image(data, "bomb.png", max_pixels=1_000_000)


# ---------------------------------------------------------------------------------------------
# Prompt errors: refused before the model is loaded (exit 2, the message names the entry).

PROMPT_ERRORS = {
    "one_pair.json": ('[["p0.png", 0.5]]', "at least 2 image-score pairs, found 1"),
    "no_pairs.json": ("[]", "at least 2 image-score pairs, found 0"),
    "one_pair.csv": ("path,score\np0.png,0.5\n", "at least 2 image-score pairs, found 1"),
    "nan.json": ('[["p0.png", 0.1], ["p1.png", NaN]]', "entry 1 ('p1.png'): score nan is not in"),
    "nan.csv": ("p0.png,0.1\np1.png,nan\n", "entry 1 ('p1.png'): score 'nan' is not in"),
    "inf.json": ('[["p0.png", Infinity], ["p1.png", 0.5]]', "entry 0 ('p0.png'): score inf is not in"),
    "minus_inf.csv": ("p0.png,0.1\np2.png,-inf\n", "entry 1 ('p2.png'): score '-inf' is not in"),
    "above_one.json": ('[["p0.png", 0.1], ["p1.png", 1.5]]', "entry 1 ('p1.png'): score 1.5 is not in"),
    "below_zero.csv": ("p0.png,-0.1\np1.png,0.5\n", "entry 0 ('p0.png'): score '-0.1' is not in"),
    "word.csv": ("p0.png,0.1\np1.png,good\n", "entry 1 ('p1.png'): score 'good' is not a number"),
    "null.json": ('[["p0.png", 0.1], ["p1.png", null]]', "entry 1 ('p1.png'): score None is not a number"),
    "missing_image.json": ('[["p0.png", 0.1], ["p9.png", 0.5]]',
                           "entry 1 ('p9.png'): image file not found"),
    "not_a_pair.json": ('[["p0.png", 0.1], ["p1.png"]]', "entry 1 is ['p1.png'], not an [image path"),
    "three_fields.csv": ("p0.png,0.1\np1.png,0.5,x\n", "row 2 has 3 fields"),
    "broken.json": ('[["p0.png", 0.1],', "not valid JSON"),
    "not_a_list.json": ('{"p0.png": 0.1, "p1.png": 0.5}', "expected a JSON list"),
    "text_image.json": ('[["p0.png", 0.1], ["text.png", 0.5]]',
                        "entry 1: {prompt_dir}/text.png: not an image"),
    "too_big_image.json": ('[["too_big.png", 0.1], ["p0.png", 0.5]]',
                           f"entry 0: {{prompt_dir}}/too_big.png: 40x40 = 1600 pixels exceeds the "
                           f"limit of {MAX_PIXELS}"),
}


@pytest.mark.parametrize("name", sorted(PROMPT_ERRORS))
def test_prompt_error_refused_before_loading_the_model(layout, tmp_path, capsys, name):
  content, message = PROMPT_ERRORS[name]
  message = message.format(prompt_dir=layout.prompt_dir)
  prompt = os.path.join(layout.prompt_dir, name)
  with open(prompt, "w") as f:
    f.write(content)
  code = cli.main(["score", "--checkpoint", str(tmp_path / "no_model"), "--prompt", prompt,
                   "--max-pixels", str(MAX_PIXELS), os.path.join(layout.root, "inputs", "rgb.png")])
  out, err = capsys.readouterr()
  assert code == cli.EXIT_USAGE
  assert err.startswith("error: prompt: "), err
  assert prompt in err and message in err, err
  assert "model directory" not in err
  assert out == ""


def test_missing_prompt_file(layout, tmp_path, capsys):
  prompt = str(tmp_path / "absent.json")
  code = cli.main(["score", "--checkpoint", str(tmp_path / "no_model"), "--prompt", prompt,
                   os.path.join(layout.root, "inputs", "rgb.png")])
  assert code == cli.EXIT_USAGE
  assert f"error: prompt: {prompt}: cannot read prompt file" in capsys.readouterr().err


def test_a_good_prompt_gets_as_far_as_loading_the_model(layout, tmp_path, capsys):
  """The control for the prompt tests: with a valid prompt, the missing model is what fails."""
  code = cli.main(["score", "--checkpoint", str(tmp_path / "no_model"),
                   "--prompt", os.path.join(layout.prompt_dir, "prompt.json"),
                   os.path.join(layout.root, "inputs", "rgb.png")])
  assert code == cli.EXIT_USAGE
  assert f"{tmp_path / 'no_model'}: not a promptiqa_jax model directory" in capsys.readouterr().err


def test_no_images_found(layout, tmp_path, capsys):
  empty = tmp_path / "empty_folder"
  empty.mkdir()
  code = cli.main(["score", "--checkpoint", str(tmp_path / "no_model"),
                   "--prompt", os.path.join(layout.prompt_dir, "prompt.json"), str(empty)])
  assert code == cli.EXIT_USAGE
  assert f"error: no images found in {empty}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The installed console script.

def test_console_script(layout, tiny_model_dir, good_run):
  executable = shutil.which("promptiqa-jax")
  assert executable, "promptiqa-jax is not installed (pip install -e .)"
  inputs = [os.path.join(layout.root, "inputs", n) for n in ("rgb.png", "empty.png")]
  result = subprocess.run(
      [executable] + _score_args(layout, tiny_model_dir, "prompt.json", 1) + ["--quiet"] + inputs,
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == cli.EXIT_INPUT_FAILED, result.stderr
  rows = _csv_rows(result.stdout)
  assert [r["path"] for r in rows] == inputs
  assert rows[0]["score"] == good_run.rows[0]["score"]
  assert rows[1]["error"].startswith(f"{inputs[1]}: empty file")
