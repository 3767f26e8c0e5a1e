"""Files in and out of `promptiqa-jax score`: prompt files, image discovery, result tables.

Prompt files: JSON, a list of `[image path, score]` pairs (the release's examples), or CSV rows
`path,score` (a header row is allowed). Relative image paths are looked up beside the prompt file
first, then in the working directory.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Iterable, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                    ".pgm", ".jfif")


class PromptFileError(ValueError):
  """A prompt file that cannot be used; the message names the file and entry."""


@dataclasses.dataclass(frozen=True)
class ScoreRow:
  """One output row: the input path and its score, or the error that stopped it."""

  path: str
  score: float | None = None
  error: str | None = None


def read_prompt_file(path: str) -> tuple[list[str], np.ndarray]:
  """Reads and validates a prompt file -> (image paths [P], scores float32 [P]).

  Everything is checked before any compute: at least 2 pairs, finite scores in [0, 1], every
  image file present.
  """
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except OSError as err:
    raise PromptFileError(f"{path}: cannot read prompt file ({err.strerror or err})") from err
  pairs = _parse_json(path, text) if path.lower().endswith(".json") else _parse_csv(path, text)
  if len(pairs) < 2:
    raise PromptFileError(f"{path}: a prompt needs at least 2 image-score pairs, found {len(pairs)}")
  base = os.path.dirname(os.path.abspath(path))
  images, scores = [], []
  for index, (image, raw_score) in enumerate(pairs):
    where = f"{path}: entry {index} ({image!r})"
    try:
      score = float(raw_score)
    except (TypeError, ValueError):
      raise PromptFileError(f"{where}: score {raw_score!r} is not a number") from None
    if not np.isfinite(score) or not 0.0 <= score <= 1.0:
      raise PromptFileError(f"{where}: score {raw_score!r} is not in [0, 1] (normalise scores first)")
    images.append(_resolve(str(image), base, where))
    scores.append(score)
  return images, np.asarray(scores, np.float32)


def _parse_json(path: str, text: str) -> list[tuple[object, object]]:
  try:
    data = json.loads(text)
  except json.JSONDecodeError as err:
    raise PromptFileError(f"{path}: not valid JSON ({err})") from err
  if not isinstance(data, list):
    raise PromptFileError(f"{path}: expected a JSON list of [image path, score] pairs")
  for index, entry in enumerate(data):
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
      raise PromptFileError(f"{path}: entry {index} is {entry!r}, not an [image path, score] pair")
  return [tuple(entry) for entry in data]


def _parse_csv(path: str, text: str) -> list[tuple[object, object]]:
  rows = [row for row in csv.reader(io.StringIO(text)) if row and any(c.strip() for c in row)]
  if rows and rows[0][0].strip().lower() in ("path", "image", "image_path", "name"):
    rows = rows[1:]
  for index, row in enumerate(rows):
    if len(row) != 2:
      raise PromptFileError(f"{path}: row {index + 1} has {len(row)} fields, expected path,score")
  return [(row[0].strip(), row[1].strip()) for row in rows]


def _resolve(image: str, base: str, where: str) -> str:
  candidates = [image] if os.path.isabs(image) else [os.path.join(base, image), image]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise PromptFileError(f"{where}: image file not found (looked in {', '.join(candidates)})")


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


def write_rows(rows: Iterable[ScoreRow], output: str | None, stream: io.TextIOBase) -> None:
  """Writes rows as JSON (`.json` output) or CSV (any other output, or `stream` when None)."""
  rows = list(rows)
  if output and output.lower().endswith(".json"):
    with open(output, "w", encoding="utf-8") as f:
      json.dump([dataclasses.asdict(row) for row in rows], f, indent=1)
      f.write("\n")
    return
  handle = open(output, "w", newline="", encoding="utf-8") if output else stream
  try:
    writer = csv.writer(handle)
    writer.writerow(["path", "score", "error"])
    for row in rows:
      writer.writerow([row.path, "" if row.score is None else f"{row.score:.6f}", row.error or ""])
  finally:
    if output:
      handle.close()
