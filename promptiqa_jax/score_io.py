"""Files in and out of `promptiqa-jax score`: prompt files, labels, image discovery, result tables.

Prompt files:
  - pairs: JSON, a list of `[image path, score]` pairs, or CSV rows `path,score` (a header row is
    allowed);
  - the release's `example.json`: a list of examples `{"Example_id", "ISPP": [[path, score], ...],
    "Image": [path, score], "Remark"}`, each a prompt (its image-score pairs, ISPP) and a query
    image with the release's score for it.
Relative image paths are looked up beside the file first, then in the working directory (the
release runs from its root, where `example.json` lives, so both find its `./Examples/...`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Iterable, Sequence

import numpy as np
from etils import epath

from promptiqa_jax.score_range import UNIT, ScoreRange

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                    ".pgm", ".jfif")
COLUMNS = ("path", "score", "error")
_HEADER_NAMES = ("path", "image", "image_path", "name")


class PromptFileError(ValueError):
  """A prompt or labels file that cannot be used; the message names the file and entry."""


@dataclasses.dataclass(frozen=True)
class ScoreRow:
  """One output row: the input path and its score, or the error that stopped it; `score_raw` on
  the prompt's scale, the user's `label`, and for a release example its id, the release file's
  score for the image and its remark."""

  path: str
  score: float | None = None
  error: str | None = None
  score_raw: float | None = None
  label: float | None = None
  example_id: str | None = None
  release_score: float | None = None
  remark: str | None = None


@dataclasses.dataclass(frozen=True)
class Example:
  """One example of the release's `example.json`: its prompt pairs (scores in [0, 1]), the query
  image and the release's score for it; `error` says why its prompt cannot be used."""

  example_id: str
  prompt_paths: list[str]
  prompt_scores: np.ndarray
  image: str
  release_score: float | None
  remark: str
  error: str | None = None


def is_examples_file(path: str) -> bool:
  """Whether `path` is a JSON list of objects (the release's example format)."""
  if not path.lower().endswith(".json"):
    return False
  try:
    data = _load_json(path, "prompt")
  except PromptFileError:
    return False  # Reading it as a pairs file reports the problem.
  return isinstance(data, list) and bool(data) and all(isinstance(e, dict) for e in data)


def read_prompt_file(path: str, score_range: ScoreRange = UNIT) -> tuple[list[str], np.ndarray]:
  """Reads and validates a pairs prompt file -> (image paths [P], scores float32 [P] in [0, 1]).

  Everything is checked before any compute: at least 2 pairs, finite scores in `score_range`,
  every image file present.
  """
  return _validate_pairs(path, _read_pairs(path, "prompt"), score_range, where=path)


def read_examples(path: str, score_range: ScoreRange = UNIT) -> list[Example]:
  """Reads the release's `example.json` -> its examples, in file order. A file of the wrong shape
  is a PromptFileError; a problem with one example's prompt is that example's `error`."""
  examples, seen = [], set()
  for index, entry in enumerate(_load_json(path, "prompt")):
    missing = [key for key in ("Example_id", "ISPP", "Image") if key not in entry]
    if missing:
      raise PromptFileError(f"{path}: example {index} has no {', '.join(missing)} (the release's "
                            "examples are {\"Example_id\", \"ISPP\", \"Image\", \"Remark\"})")
    example_id = str(entry["Example_id"])
    if example_id in seen:
      raise PromptFileError(f"{path}: Example_id {example_id!r} appears twice")
    seen.add(example_id)
    image = entry["Image"]
    if not isinstance(image, (list, tuple)) or len(image) != 2:
      raise PromptFileError(f"{path}: example {example_id}: Image is {image!r}, not [path, score]")
    base = os.path.dirname(os.path.abspath(path))
    release_score = _number(image[1])
    try:
      pairs = _parse_json(f"{path}: example {example_id}: ISPP", entry["ISPP"])
      prompt_paths, prompt_scores = _validate_pairs(
          path, pairs, score_range, where=f"{path}: example {example_id}: ISPP")
      error = None
    except PromptFileError as err:
      prompt_paths, prompt_scores, error = [], np.zeros(0, np.float32), str(err)
    examples.append(Example(example_id, prompt_paths, prompt_scores,
                            _locate(str(image[0]), base), release_score,
                            str(entry.get("Remark", "")), error))
  return examples


def read_labels(path: str) -> dict[str, float]:
  """A labels file (CSV `path,score` or JSON pairs) -> {real path of the image: score}."""
  base = os.path.dirname(os.path.abspath(path))
  labels = {}
  for index, (image, raw) in enumerate(_read_pairs(path, "labels")):
    value = _number(raw)
    if value is None:
      raise PromptFileError(f"{path}: entry {index} ({image!r}): label {raw!r} is not a number")
    labels[os.path.realpath(_locate(str(image), base))] = value
  return labels


def _read_text(path: str, kind: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except OSError as err:
    raise PromptFileError(f"{path}: cannot read {kind} file ({err.strerror or err})") from err


def _load_json(path: str, kind: str) -> object:
  try:
    return json.loads(_read_text(path, kind))
  except json.JSONDecodeError as err:
    raise PromptFileError(f"{path}: not valid JSON ({err})") from err


def _read_pairs(path: str, kind: str) -> list[tuple[object, object]]:
  """A JSON list of pairs or CSV rows `path,score` (by the extension)."""
  if path.lower().endswith(".json"):
    return _parse_json(path, _load_json(path, kind))
  return _parse_csv(path, _read_text(path, kind))


def _number(value: object) -> float | None:
  """A finite float, or None for anything else (text, null, NaN, inf)."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if np.isfinite(number) else None


def _validate_pairs(path: str, pairs: list[tuple[object, object]], score_range: ScoreRange,
                    where: str) -> tuple[list[str], np.ndarray]:
  if len(pairs) < 2:
    raise PromptFileError(f"{where}: a prompt needs at least 2 image-score pairs, found "
                          f"{len(pairs)}")
  base = os.path.dirname(os.path.abspath(path))
  hint = ("normalise scores first, or pass --score-range LO,HI" if score_range == UNIT
          else "is --score-range right?")
  images, scores = [], []
  for index, (image, raw_score) in enumerate(pairs):
    entry = f"{where}: entry {index} ({image!r})"
    try:
      score = float(raw_score)
    except (TypeError, ValueError):
      raise PromptFileError(f"{entry}: score {raw_score!r} is not a number") from None
    if not score_range.contains(score):
      raise PromptFileError(f"{entry}: score {raw_score!r} is not in {score_range} ({hint})")
    images.append(_resolve(str(image), base, entry))
    scores.append(score)
  return images, score_range.normalise(scores).astype(np.float32)


def _parse_json(where: str, data: object) -> list[tuple[object, object]]:
  if not isinstance(data, list):
    raise PromptFileError(f"{where}: expected a JSON list of [image path, score] pairs")
  for index, entry in enumerate(data):
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
      raise PromptFileError(f"{where}: entry {index} is {entry!r}, not an [image path, score] pair")
  return [tuple(entry) for entry in data]


def _parse_csv(path: str, text: str) -> list[tuple[object, object]]:
  rows = [row for row in csv.reader(io.StringIO(text)) if row and any(c.strip() for c in row)]
  if rows and rows[0][0].strip().lower() in _HEADER_NAMES:
    rows = rows[1:]
  for index, row in enumerate(rows):
    if len(row) != 2:
      raise PromptFileError(f"{path}: row {index + 1} has {len(row)} fields, expected path,score")
  return [(row[0].strip(), row[1].strip()) for row in rows]


def _candidates(image: str, base: str) -> list[str]:
  return [image] if os.path.isabs(image) else [os.path.normpath(os.path.join(base, image)), image]


def _resolve(image: str, base: str, where: str) -> str:
  candidates = _candidates(image, base)
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise PromptFileError(f"{where}: image file not found (looked in {', '.join(candidates)})")


def _locate(image: str, base: str) -> str:
  """The first candidate that exists, else the first one (reading it reports the error)."""
  candidates = _candidates(image, base)
  return next((c for c in candidates if os.path.isfile(c)), candidates[0])


def find_images(inputs: Sequence[str]) -> list[str]:
  """Expands folders recursively (image extensions only, sorted); files are kept as given,
  whatever their extension, so a bad file becomes an error row rather than vanishing."""
  found = []
  for item in inputs:
    if os.path.isdir(item):
      for root, dirs, files in os.walk(item):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files)
                     if name.lower().endswith(IMAGE_EXTENSIONS))
    else:
      found.append(item)
  return found


def write_rows(rows: Iterable[ScoreRow], output: str | None, stream: io.TextIOBase,
               columns: Sequence[str] = COLUMNS) -> None:
  """Writes rows' `columns` as JSON (`.json` output) or CSV (any other output, or `stream` when
  None); scores with 6 decimals in CSV."""
  rows = [{column: getattr(row, column) for column in columns} for row in rows]
  # Through epath, so that the output may be in a bucket (gs://), written whole.
  if output and output.lower().endswith(".json"):
    epath.Path(output).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return
  handle = io.StringIO(newline="") if output else stream
  writer = csv.writer(handle)
  writer.writerow(columns)
  for row in rows:
    writer.writerow(["" if value is None else f"{value:.6f}" if isinstance(value, float)
                     else value for value in row.values()])
  if output:
    epath.Path(output).write_text(handle.getvalue(), encoding="utf-8")
