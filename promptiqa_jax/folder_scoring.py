"""Scoring many image files: decoding in parallel, overlapped with the devices, rows in input order.

Decoding (Pillow) and resizing (OpenCV) release the GIL, so a thread pool decodes a bounded
distance ahead of the model. The model pads each batch, splits it over all local devices and
keeps one batch in flight while the next one is decoded (`PromptIQA.score_batches`). A file that
cannot be read or decoded becomes its row's error; the others are scored.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Callable, Iterator, Sequence

import numpy as np

from promptiqa_jax.data import preprocess
from promptiqa_jax.inference import Prompt, PromptIQA
from promptiqa_jax.score_io import ScoreRow
from promptiqa_jax.score_range import UNIT


def default_workers() -> int:
  """Decoding threads: one per CPU, at most 8 (beyond that the devices, not decoding, limit)."""
  return min(8, os.cpu_count() or 1)


def decode_in_order(paths: Sequence[str], size: int,
                    max_pixels: int = preprocess.DEFAULT_MAX_PIXELS, workers: int = 0,
                    ahead: int = 64) -> Iterator[tuple[int, np.ndarray | str]]:
  """Yields `(index, image float32 [size, size, 3])` or `(index, error message)` for each path,
  in input order. `workers` threads decode at most `ahead` images ahead of the consumer;
  `workers=0` decodes on the calling thread."""
  def decode(path: str) -> np.ndarray | str:
    try:
      return preprocess.preprocess(preprocess.load_image(path, max_pixels), size)
    except preprocess.ImageError as err:
      return str(err)

  if workers == 0:
    yield from enumerate(map(decode, paths))
    return
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode")
  pending: collections.deque = collections.deque()
  try:
    for index, path in enumerate(paths):
      pending.append((index, pool.submit(decode, path)))
      if len(pending) >= ahead:
        done, future = pending.popleft()
        yield done, future.result()
    while pending:
      done, future = pending.popleft()
      yield done, future.result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def score_files(model: PromptIQA, paths: Sequence[str], prompt: Prompt, *,
                max_pixels: int = preprocess.DEFAULT_MAX_PIXELS, workers: int = 0,
                progress: Callable[[int], object] = lambda count: None) -> list[ScoreRow]:
  """One row per path, in order: its score under `prompt` (and `score_raw` on the prompt's own
  scale when it has one), or why it could not be read. `progress(n)` is called as n more paths
  are done."""
  rows: list[ScoreRow | None] = [None] * len(paths)
  slots: collections.deque[list[int]] = collections.deque()

  def batches() -> Iterator[np.ndarray]:
    images, indices = [], []
    for index, result in decode_in_order(paths, model.config.image_size, max_pixels, workers,
                                         ahead=max(64, 2 * model.batch_size)):
      if isinstance(result, str):
        rows[index] = ScoreRow(paths[index], error=result)
        progress(1)
        continue
      images.append(result)
      indices.append(index)
      if len(images) == model.batch_size:
        slots.append(indices)
        yield np.stack(images)
        images, indices = [], []
    if images:
      slots.append(indices)
      yield np.stack(images)

  for scores in model.score_batches(batches(), prompt):
    indices = slots.popleft()
    raw = prompt.to_raw(scores) if prompt.score_range != UNIT else [None] * len(scores)
    for index, value, value_raw in zip(indices, scores, raw):
      rows[index] = ScoreRow(paths[index], score=float(value),
                             score_raw=None if value_raw is None else float(value_raw))
    progress(len(indices))
  return rows
