"""`promptiqa-jax score` with the prompts users bring: the release's `example.json`, scores on
their own scale (`--score-range`), their own labels (`--labels`), and saved prompts
(`--save-prompt`, `--prompt FILE.npz`, `promptiqa_jax.saved_prompt`). Tiny random model, in
process, at the API fixture's batch size (so the model compiles once in the session).
"""
import contextlib
import csv
import io
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from promptiqa_jax import cli, metrics, saved_prompt
from promptiqa_jax.inference import PromptIQA
from promptiqa_jax.score_range import ScoreRange

ISPP = [("1600.AWGN.1.png", 0.062), ("1600.AWGN.2.png", 0.206), ("1600.BLUR.1.png", 0.043),
        ("1600.BLUR.2.png", 0.750)]


def _image(path: pathlib.Path, seed: int) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, (22, 26, 3), dtype=np.uint8)).save(path)
  return str(path)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> pathlib.Path:
  """The release's layout: example.json at the root, images under ./Examples/ (Example2 reuses
  Example1's prompt images with flipped scores, as the release's does; Example3's prompt names an
  image that is not there)."""
  root = tmp_path_factory.mktemp("release")
  for index, (name, _) in enumerate(ISPP):
    _image(root / "Examples" / "Example1" / "ISPP" / name, index)
  for index, example in enumerate(("Example1", "Example2", "Example3")):
    _image(root / "Examples" / example / "cactus.png", 10 + index)
  ispp = [[f"./Examples/Example1/ISPP/{name}", score] for name, score in ISPP]
  examples = [
      {"Example_id": "Example1", "ISPP": ispp, "Image": ["./Examples/Example1/cactus.png", 0.0538],
       "Remark": "Scores are from CSIQ. The score type is DMOS."},
      {"Example_id": "Example2", "ISPP": [[path, round(1 - score, 3)] for path, score in ispp],
       "Image": ["./Examples/Example2/cactus.png", 0.9508], "Remark": "Scores are reversed."},
      {"Example_id": "Example3", "ISPP": ispp[:2] + [["./Examples/Example3/ISPP/191.bmp", 0.5]],
       "Image": ["./Examples/Example3/cactus.png", 7], "Remark": "From LIVEC - MOS."},
  ]
  (root / "example.json").write_text(json.dumps(examples, indent=4))
  return root


def _run(*argv: str) -> tuple[int, str, str]:
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    code = cli.main(list(argv))
  return code, stdout.getvalue(), stderr.getvalue()


def _rows(text: str) -> list[dict]:
  return list(csv.DictReader(io.StringIO(text)))


def _score(tiny_model, paths, scores, queries) -> np.ndarray:
  return tiny_model.score(queries, tiny_model.encode_prompt(paths, scores))


@pytest.fixture(scope="module")
def example_run(release, tiny_model_dir, tiny_model, tmp_path_factory) -> tuple[int, str, str]:
  """Every example of example.json, run from another working directory."""
  with pytest.MonkeyPatch.context() as patch:
    patch.chdir(tmp_path_factory.mktemp("elsewhere"))
    return _run("score", "--checkpoint", tiny_model_dir, "--prompt",
                str(release / "example.json"), "--batch-size", str(tiny_model.batch_size))


# The release's example.json. -------------------------------------------------------------------

def test_each_example_is_scored_with_its_own_prompt(release, example_run, tiny_model):
  code, stdout, stderr = example_run
  rows = _rows(stdout)
  assert list(rows[0]) == ["example_id", "path", "score", "release_score", "remark", "error"]
  assert [row["example_id"] for row in rows] == ["Example1", "Example2", "Example3"]
  prompt_paths = [str(release / "Examples" / "Example1" / "ISPP" / name) for name, _ in ISPP]
  scores = [score for _, score in ISPP]
  for row, prompt_scores, release_score in ((rows[0], scores, "0.053800"),
                                            (rows[1], [round(1 - s, 3) for s in scores],
                                             "0.950800")):
    assert row["path"] == str(release / "Examples" / row["example_id"] / "cactus.png")
    expected = _score(tiny_model, prompt_paths, prompt_scores, [row["path"]])[0]
    assert row["score"] == f"{expected:.6f}" and row["error"] == ""
    assert row["release_score"] == release_score
  assert rows[0]["remark"] == "Scores are from CSIQ. The score type is DMOS."
  # Flipping the prompt's scores changes the prediction: each example really used its own.
  assert rows[0]["score"] != rows[1]["score"]
  assert code == cli.EXIT_INPUT_FAILED


def test_an_example_whose_prompt_is_unusable_is_its_error_row(example_run):
  code, stdout, stderr = example_run
  row = _rows(stdout)[2]
  assert row["score"] == "" and row["release_score"] == "7.000000"
  assert "example Example3: ISPP: entry 2 ('./Examples/Example3/ISPP/191.bmp'): image file not " \
         "found" in row["error"]
  assert "1 of 3 inputs failed; the others were scored" in stderr


def test_paths_relative_to_the_working_directory_as_the_release_runs(release, tiny_model_dir,
                                                                    tiny_model, tmp_path,
                                                                    monkeypatch):
  # The file elsewhere, its ./Examples/... paths meaning the working directory (the release's root).
  shutil.copy(release / "example.json", tmp_path / "example.json")
  monkeypatch.chdir(release)
  code, stdout, _ = _run("score", "--checkpoint", tiny_model_dir, "--prompt",
                         str(tmp_path / "example.json"), "--example", "Example1",
                         "--batch-size", str(tiny_model.batch_size), "--quiet")
  assert code == 0
  (row,) = _rows(stdout)
  assert row["example_id"] == "Example1" and row["path"] == "./Examples/Example1/cactus.png"


def test_the_images_given_are_scored_with_the_chosen_example(release, tiny_model_dir, tiny_model,
                                                            example_run):
  queries = [str(release / "Examples" / name / "cactus.png") for name in ("Example3", "Example2")]
  code, stdout, _ = _run("score", "--checkpoint", tiny_model_dir, "--prompt",
                         str(release / "example.json"), "--example", "Example2",
                         "--batch-size", str(tiny_model.batch_size), "--quiet", *queries)
  assert code == 0
  rows = _rows(stdout)
  assert [row["path"] for row in rows] == queries
  assert all(row["example_id"] == "Example2" for row in rows)
  # The Example2 query scores as in the run over the whole file.
  assert rows[1]["score"] == _rows(example_run[1])[1]["score"]


@pytest.mark.parametrize("options,message", [
    (["--example", "Example9"], "--example Example9: {file} has Example1, Example2, Example3"),
    (["{image}"], "{file} holds 3 examples; pick the prompt for the images given with --example"),
    (["--example", "Example3"], "prompt: {file}: example Example3: ISPP: entry 2"),
    (["--save-prompt", "p.npz"], "{file} holds 3 examples; pick one with --example ID"),
])
def test_example_usage_errors_come_before_the_model(release, tmp_path, options, message):
  file = str(release / "example.json")
  image = str(release / "Examples" / "Example1" / "cactus.png")
  options = [option.format(image=image) for option in options]
  code, stdout, stderr = _run("score", "--checkpoint", str(tmp_path / "no_model"),
                              "--prompt", file, *options)
  assert code == cli.EXIT_USAGE and stdout == ""
  assert message.format(file=file) in stderr, stderr


def test_a_file_that_is_not_in_the_release_format_is_refused(tmp_path):
  prompt = tmp_path / "examples.json"
  prompt.write_text(json.dumps([{"Example_id": "a", "Image": ["q.png", 1]}]))
  code, _, stderr = _run("score", "--checkpoint", str(tmp_path / "no_model"), "--prompt",
                         str(prompt))
  assert code == cli.EXIT_USAGE
  assert f"error: prompt: {prompt}: example 0 has no ISPP" in stderr


# Scores on the user's scale, and the user's labels. --------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, list[str]]:
  root = tmp_path_factory.mktemp("images")
  return {"prompt": [_image(root / f"p{i}.png", 20 + i) for i in range(3)],
          "queries": [_image(root / "q" / f"q{i}.png", 30 + i) for i in range(4)]}


def test_a_raw_scale_prompt_scores_as_its_normalised_form(images, tiny_model_dir, tiny_model,
                                                           tmp_path):
  prompt = tmp_path / "mos.csv"
  prompt.write_text("".join(f"{path},{raw}\n" for path, raw in zip(images["prompt"],
                                                                   [1.4, 3.0, 4.6])))
  code, stdout, _ = _run("score", "--checkpoint", tiny_model_dir, "--prompt", str(prompt),
                         "--score-range", "1,5", "--batch-size", str(tiny_model.batch_size),
                         "--quiet", *images["queries"])
  assert code == 0
  rows = _rows(stdout)
  assert list(rows[0]) == ["path", "score", "score_raw", "error"]
  expected = _score(tiny_model, images["prompt"], [0.1, 0.5, 0.9], images["queries"])
  np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=0, atol=6e-7)
  np.testing.assert_allclose([float(r["score_raw"]) for r in rows], 1 + 4 * expected, atol=6e-7)


@pytest.mark.parametrize("content,score_range,message", [
    ("p0.png,1\np1.png,6\n", "1,5", "entry 1 ('p1.png'): score '6' is not in [1, 5] (is "
     "--score-range right?)"),
    ("p0.png,0.5\np1.png,1.5\n", None, "entry 1 ('p1.png'): score '1.5' is not in [0, 1] "
     "(normalise scores first, or pass --score-range LO,HI)"),
])
def test_out_of_range_scores_are_refused_naming_the_entry(images, tmp_path, content, score_range,
                                                          message):
  for index, path in enumerate(images["prompt"][:2]):
    shutil.copy(path, tmp_path / f"p{index}.png")
  prompt = tmp_path / "prompt.csv"
  prompt.write_text(content)
  options = ["--score-range", score_range] if score_range else []
  code, _, stderr = _run("score", "--checkpoint", str(tmp_path / "no_model"), "--prompt",
                         str(prompt), *options, images["queries"][0])
  assert code == cli.EXIT_USAGE
  assert stderr.startswith(f"error: prompt: {prompt}: {message}"), stderr


@pytest.mark.parametrize("value", ["5,1", "1", "a,b", "1,inf"])
def test_bad_score_ranges(images, tmp_path, value):
  code, _, stderr = _run("score", "--checkpoint", str(tmp_path / "no_model"), "--prompt",
                         "prompt.csv", "--score-range", value, images["queries"][0])
  assert code == cli.EXIT_USAGE and stderr.startswith("error: --score-range: ")


def test_the_api_takes_a_score_range(images, tiny_model):
  raw = tiny_model.encode_prompt(images["prompt"], [1.4, 3.0, 4.6], score_range=(1, 5))
  unit = tiny_model.encode_prompt(images["prompt"], [0.1, 0.5, 0.9])
  np.testing.assert_array_equal(raw.fused, unit.fused)
  assert raw.score_range == ScoreRange(1, 5) and raw.names == tuple(images["prompt"])
  np.testing.assert_allclose(raw.to_raw([0.0, 0.25, 1.0]), [1, 2, 5])
  with pytest.raises(ValueError, match=r"prompt entry 2: score 5.5 is not a number in \[1, 5\]"):
    tiny_model.encode_prompt(images["prompt"], [1, 2, 5.5], score_range=(1, 5))


def test_labels_report_agreement_on_the_users_data(images, tiny_model_dir, tiny_model, tmp_path):
  prompt = tmp_path / "mos.csv"
  prompt.write_text("".join(f"{path},{raw}\n" for path, raw in zip(images["prompt"], [10, 50, 90])))
  # Paths relative to the labels file; one scored image left unlabelled.
  labels_dir = pathlib.Path(images["queries"][0]).parent
  labels = labels_dir / "labels.csv"
  labels.write_text("path,score\nq0.png,20\nq1.png,80\nq2.png,55\n")
  code, stdout, stderr = _run("score", "--checkpoint", tiny_model_dir, "--prompt", str(prompt),
                              "--score-range", "0,100", "--labels", str(labels), "--batch-size",
                              str(tiny_model.batch_size), "--quiet", *images["queries"])
  assert code == 0, stderr
  rows = _rows(stdout)
  assert [row["label"] for row in rows] == ["20.000000", "80.000000", "55.000000", ""]
  predicted = 100 * _score(tiny_model, images["prompt"], [0.1, 0.5, 0.9],
                           images["queries"][:3]).astype(np.float64)
  result = metrics.quality_metrics(predicted, [20, 80, 55])
  values = "  ".join(f"{key.upper()} {result[key]:.4f}" for key in metrics.METRICS)
  assert f"against {labels}: 3 of 4 scored images labelled: {values}" in stderr


def test_labels_that_match_no_image_fail_the_run(images, tiny_model_dir, tiny_model, tmp_path):
  prompt = tmp_path / "prompt.csv"
  prompt.write_text("".join(f"{path},{s}\n" for path, s in zip(images["prompt"], [0.1, 0.5, 0.9])))
  labels = tmp_path / "labels.csv"
  labels.write_text("elsewhere.png,3\n")
  code, _, stderr = _run("score", "--checkpoint", tiny_model_dir, "--prompt", str(prompt),
                         "--labels", str(labels), "--batch-size", str(tiny_model.batch_size),
                         "--quiet", images["queries"][0])
  assert code == cli.EXIT_INPUT_FAILED
  assert f"error: labels: none of the 1 scored images is in {labels}" in stderr


def test_a_label_that_is_not_a_number_is_refused_before_the_model(images, tmp_path):
  prompt = tmp_path / "prompt.csv"
  prompt.write_text("".join(f"{path},{s}\n" for path, s in zip(images["prompt"], [0.1, 0.5, 0.9])))
  labels = tmp_path / "labels.csv"
  labels.write_text("q0.png,good\n")
  code, _, stderr = _run("score", "--checkpoint", str(tmp_path / "no_model"), "--prompt",
                         str(prompt), "--labels", str(labels), images["queries"][0])
  assert code == cli.EXIT_USAGE
  assert stderr.startswith(f"error: labels: {labels}: entry 0 ('q0.png'): label 'good' is not a "
                           "number")


# Saved prompts. --------------------------------------------------------------------------------

def test_a_saved_prompt_loads_as_it_was_encoded(images, tiny_model, tmp_path):
  prompt = tiny_model.encode_prompt(images["prompt"], [10, 50, 90], score_range=(0, 100))
  path = tmp_path / "prompt.npz"
  saved_prompt.save_prompt(path, prompt, tiny_model)
  loaded = saved_prompt.load_prompt(path, tiny_model)
  for field in ("vectors", "fused", "scores"):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(prompt, field))
  assert loaded.names == tuple(images["prompt"]) and loaded.score_range == ScoreRange(0, 100)
  np.testing.assert_array_equal(tiny_model.score(images["queries"], loaded),
                                tiny_model.score(images["queries"], prompt))


def _nudged(variables):
  """The same weights but one, moved to the next float32."""
  leaves, treedef = jax.tree_util.tree_flatten(jax.device_get(variables))
  leaves = [np.array(leaf) for leaf in leaves]
  leaves[0].flat[0] = np.nextafter(leaves[0].flat[0], np.float32(np.inf))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def test_a_saved_prompt_is_refused_by_another_model(images, tiny_model, tmp_path):
  path = tmp_path / "prompt.npz"
  saved_prompt.save_prompt(path, tiny_model.encode_prompt(images["prompt"], [0.1, 0.5, 0.9]),
                           tiny_model)
  other = PromptIQA(_nudged(tiny_model.variables), tiny_model.config)
  with pytest.raises(saved_prompt.SavedPromptError, match="encoded by another model"):
    saved_prompt.load_prompt(path, other)
  bfloat16 = PromptIQA(tiny_model.variables, tiny_model.config, dtype="bfloat16")
  with pytest.raises(saved_prompt.SavedPromptError,
                     match="encoded at dtype float32, this model computes in bfloat16"):
    saved_prompt.load_prompt(path, bfloat16)


@pytest.mark.parametrize("content,message", [
    (b"not a zip", "cannot read a saved prompt"),
    ("other_keys", r"not a saved prompt \(no dtype, format, fused"),
    ("array", "a single array, not a saved prompt"),
])
def test_files_that_are_not_saved_prompts(tiny_model, tmp_path, content, message):
  path = tmp_path / "prompt.npz"
  if content == "other_keys":
    np.savez(path, x=np.zeros(3))
  elif content == "array":
    with open(path, "wb") as f:
      np.save(f, np.zeros(3))
  else:
    path.write_bytes(content)
  with pytest.raises(saved_prompt.SavedPromptError, match=message):
    saved_prompt.load_prompt(path, tiny_model)


def test_save_prompt_then_score_with_it_without_its_images(images, tiny_model_dir, tiny_model,
                                                          tmp_path):
  prompt_images = [shutil.copy(path, tmp_path) for path in images["prompt"]]
  prompt = tmp_path / "prompt.json"
  prompt.write_text(json.dumps([[path, raw] for path, raw in zip(prompt_images, [1.4, 3, 4.6])]))
  saved = str(tmp_path / "prompt.npz")
  batch = str(tiny_model.batch_size)
  code, stdout, stderr = _run("score", "--checkpoint", tiny_model_dir, "--prompt", str(prompt),
                              "--score-range", "1,5", "--save-prompt", saved, "--batch-size",
                              batch, "--quiet")
  assert code == 0 and stdout == "path,score,score_raw,error\r\n"
  assert f"saved the encoded prompt to {saved}" in stderr
  for path in prompt_images:
    os.remove(path)
  code, stdout, _ = _run("score", "--checkpoint", tiny_model_dir, "--prompt", saved,
                         "--batch-size", batch, "--quiet", *images["queries"])
  assert code == 0
  rows = _rows(stdout)
  expected = _score(tiny_model, images["prompt"], [0.1, 0.5, 0.9], images["queries"])
  assert [row["score"] for row in rows] == [f"{value:.6f}" for value in expected]
  # The saved prompt kept its scale: predictions come back on 1-5 too.
  assert [row["score_raw"] for row in rows] == [f"{1 + 4 * value:.6f}" for value in expected]


def test_a_saved_prompt_keeps_its_own_scale(tmp_path):
  code, _, stderr = _run("score", "--checkpoint", str(tmp_path / "no_model"), "--prompt",
                         str(tmp_path / "prompt.npz"), "--score-range", "1,5", "q.png")
  assert code == cli.EXIT_USAGE
  assert "--score-range: a saved prompt keeps the scale it was encoded with" in stderr


def test_bfloat16_from_the_command_line(images, tiny_model_dir, tiny_model, tmp_path):
  prompt = tmp_path / "prompt.csv"
  prompt.write_text("".join(f"{path},{s}\n" for path, s in zip(images["prompt"], [0.1, 0.5, 0.9])))
  code, stdout, _ = _run("score", "--checkpoint", tiny_model_dir, "--prompt", str(prompt),
                         "--dtype", "bfloat16", "--batch-size", str(tiny_model.batch_size),
                         "--quiet", *images["queries"])
  assert code == 0
  model = PromptIQA.from_checkpoint(tiny_model_dir, batch_size=tiny_model.batch_size,
                                    dtype="bfloat16")
  expected = _score(model, images["prompt"], [0.1, 0.5, 0.9], images["queries"])
  assert [row["score"] for row in _rows(stdout)] == [f"{value:.6f}" for value in expected]
