"""Evaluation inputs: a dataset's prompt (P image-score pairs from its training split) and its test
images in fixed-size padded batches.

Interval sampling is the reference's `get_prompt(..., sample_type='fix')`: sort the training pairs
by score (stable, so ties keep record order); take the lowest; then positions k, 2k, ... with
k = (N - 2) // (P - 2) until P - 1 are taken; then the highest. The prompt is therefore in
ascending score order, positions [0, k, 2k, ..., (P - 2) k, N - 1]. (P - 2) k <= N - 2, so the
highest is never taken twice. For P = 2 it is the lowest and the highest (the reference returns
the lowest only). The real datasets' builds store each split in the order the reference lists it
(`iqa_base`), so on datasets with many tied scores (KADID-10k, SPAQ) the ties fall as the
reference's and the prompt holds the reference's images.

Random sampling is the reference's `sample_type='random'` with its shuffle seeded: the records in
record order shuffled by Python's `random.Random(seed).shuffle` (the reference calls `random.seed()`
without a seed, then `random.shuffle`), then the same positions as interval sampling.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from promptiqa_jax.data import pipeline
from promptiqa_jax.data import sources

METHODS = ("interval", "random")


def select_prompt(scores: Sequence[float], size: int, method: str = "interval",
                  seed: int | None = None) -> np.ndarray:
  """Indices `[size]` into `scores` (records in record order) of the prompt's pairs (see the
  module docstring).

  Raises ValueError for an unknown method, size < 2, a missing seed with random sampling, or fewer
  scores than `size`.
  """
  scores = np.asarray(scores, np.float64)
  n = len(scores)
  if method not in METHODS:
    raise ValueError(f"Unknown prompt sampling {method!r}; use one of {METHODS}")
  if size < 1 or n < size:
    raise ValueError(f"Cannot draw a prompt of {size} pairs from {n} records")
  if size < 2:
    raise ValueError(f"Prompt sampling takes the first and the last of the sorted (or shuffled) "
                     f"records: size >= 2, got {size}")
  if method == "random":
    if seed is None:
      raise ValueError("Random prompt sampling needs a seed (the reference's is unseeded)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    order = np.asarray(order, np.int64)
  else:
    order = np.argsort(scores, kind="stable")
  if size == 2:
    return order[[0, n - 1]].astype(np.int64)
  step = (n - 2) // (size - 2)
  positions = np.concatenate([np.arange(size - 1) * step, [n - 1]])
  return order[positions].astype(np.int64)


def _load_images(source: sources.ScoredSource, indices: Sequence[int], size: int) -> np.ndarray:
  images = np.zeros([len(indices), size, size, 3], np.float32)
  for i, (record, index) in enumerate(zip(source.read(indices), indices)):
    images[i] = sources.load_image(source, record, int(index), size)
  return images


def load_prompt(config: Any, dataset_name: str, *, size: int | None = None,
                method: str | None = None, seed: int | None = None,
                split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The prompt of one dataset: (images [P, H, W, 3] float32, scores [P] float32 normalised).

  Defaults from `config` (the data section): size = prompt_size, method = prompt_sampling,
  seed = seed, split = train_split; H = W = image_size. Reads every record of the split once (the
  sort needs all scores).
  """
  source = sources.open_dataset(dataset_name, split or config.train_split, config.data_dir)
  scores = source.all_scores()
  size = int(config.prompt_size if size is None else size)
  try:
    indices = select_prompt(scores, size, method or config.prompt_sampling,
                            int(config.seed) if seed is None else seed)
  except ValueError as err:
    raise ValueError(f"Prompt for dataset {dataset_name!r} (split {source.split!r}): "
                     f"{err}") from err
  return _load_images(source, indices, int(config.image_size)), scores[indices]


@dataclasses.dataclass
class _EvalBatchLoader:
  """Batch b of the split: records [b * B, (b + 1) * B), padded to B (runs in the workers)."""

  source: sources.ScoredSource
  batch_size: int
  image_size: int

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    n, size = self.batch_size, self.image_size
    indices = np.arange(batch * n, min((batch + 1) * n, len(self.source)), dtype=np.int64)
    out = {"image": np.zeros([n, size, size, 3], np.float32), "score": np.zeros([n], np.float32),
           "mask": np.zeros([n], bool), "index": np.full([n], -1, np.int64)}
    if indices.size:
      records = self.source.read(indices)
      for i, (record, index) in enumerate(zip(records, indices)):
        out["image"][i] = sources.load_image(self.source, record, int(index), size)
      out["score"][:indices.size] = self.source.scores(records)
      out["mask"][:indices.size] = True
      out["index"][:indices.size] = indices
    return out


@dataclasses.dataclass
class EvalBatches:
  """A dataset split in fixed-size batches for one process; iterable any number of times.

  Each batch: image [B, H, W, 3] float32, score [B] float32 (normalised), mask [B] bool (False on
  padding), index [B] int64 (record index in the split, -1 on padding). The split's records are
  dealt out by whole batches: global batch b goes to process b % process_count, and every process
  gets the same number of batches (padding batches are fully masked), so all of them step together.
  """

  dataset: str
  split: str
  num_examples: int                    # records in the split (all processes together)
  batch_size: int
  num_batches: int                     # on this process
  _ds: grain.IterDataset = dataclasses.field(repr=False)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return iter(self._ds)


def eval_batches(config: Any, dataset_name: str, split: str | None = None,
                 batch_size: int | None = None, *, process_index: int = 0,
                 process_count: int = 1, num_workers: int | None = None) -> EvalBatches:
  """The test (default config.eval_split) records of one dataset in padded batches of
  `batch_size` (default config.eval_batch_size), without augmentation; see EvalBatches."""
  split = split or config.eval_split
  batch_size = int(config.eval_batch_size if batch_size is None else batch_size)
  if batch_size <= 0:
    raise ValueError(f"eval batch size must be positive, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
  source = sources.open_dataset(dataset_name, split, config.data_dir)
  if source.is_random:
    raise ValueError(f"{dataset_name!r}: a random requirement cannot be evaluated; name one")
  global_batches = -(-len(source) // batch_size)
  local_batches = -(-global_batches // process_count)
  ds = grain.MapDataset.range(process_index, local_batches * process_count, process_count)
  ds = ds.map(_EvalBatchLoader(source, batch_size, int(config.image_size)))
  num_workers = int(config.get("num_workers", 0) if num_workers is None else num_workers)
  ds = pipeline.prefetched(ds, num_workers, int(config.get("read_threads", 1)))
  return EvalBatches(dataset=dataset_name, split=split, num_examples=len(source),
                     batch_size=batch_size, num_batches=local_batches, _ds=ds)
