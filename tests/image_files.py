"""Image and prompt files written by the tests: random pixels (the scores they get are meaningless
but deterministic) and a prompt in the pair-list format `score --prompt` reads."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def random_pngs(folder: str | os.PathLike, count: int, shape: tuple[int, int, int] = (20, 20, 3),
                seed: int = 0, prefix: str = "") -> list[str]:
  """`count` PNGs of random uint8 pixels `shape` [H, W, 3] named PREFIX0.png, PREFIX1.png, ..."""
  rng = np.random.default_rng(seed)
  paths = []
  for index in range(count):
    paths.append(os.path.join(os.fspath(folder), f"{prefix}{index}.png"))
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
  return paths


def pair_prompt(path: str | os.PathLike, images: list[str], scores: list[float]) -> str:
  """A prompt file of [image path, score] pairs; returns its path."""
  with open(path, "w") as f:
    json.dump([[image, score] for image, score in zip(images, scores, strict=True)], f)
  return os.fspath(path)
