"""The training stream: groups of G images of one dataset, score augmentation, per-process sharding.

An epoch is laid out the reference's way: each dataset's training records are shuffled and cut into
groups of G (the last partial group of a dataset is left out of that epoch; the next reshuffle puts
other records there), the groups of all datasets are pooled, optionally re-weighted, and shuffled.
The epoch is cut to a whole number of global batches (`steps_per_epoch * groups_per_batch` groups),
so that epochs start on a step and every process gets the same number of groups; the few groups
left over change every epoch. Epochs repeat without end, each with its own shuffles.

The stream is a pure function of the global group index q (epoch q // groups_per_epoch): the group's
records, the image flips and the score augmentation all come from generators seeded by
(seed, epoch, position), so the output does not depend on the number of worker processes or of
data-parallel processes, and the iterator state is just the number of groups consumed. Process p of
P takes the global groups q = step * groups_per_batch + p + k * P, k < groups_per_batch / P.

Batches (g = groups_per_batch // process_count groups of G on each process):

  image        [g, G, H, W, 3] float32 in [-1, 1]
  score        [g, G] float32, the augmented scores (targets and prompt scores of the group)
  score_clean  [g, G] float32, normalised scores before augmentation
  scale        [g] float32, the c the group's scores were divided by (1 when not scaled)
  flipped      [g] bool, whether s -> 1 - s was applied (after scaling)
  dataset      [g] int32, index into TrainStream.datasets
  index        [g, G] int64, the records' indices in their dataset's training split
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import threading
from typing import Any, Sequence

import grain
import numpy as np

from promptiqa_jax.data import sources

# First words of the seed sequences, so that the generators of different purposes never coincide.
_TAG_RECORDS, _TAG_POOL, _TAG_GROUP = 0, 1, 2

# config.data.flip -> the image axis ([H, W, 3]) a flip reverses. The release's "horizontal" flip
# is np.fliplr on a [3, H, W] array, which reverses H: its models saw upside-down images, never
# mirrored ones, so "vertical" is its augmentation.
FLIP_AXES = {"vertical": 0, "horizontal": 1, "none": None}


def _ensure_absl_flags_parsed() -> None:
  # grain's worker processes read its absl flags in the parent; outside an absl.app.run program
  # nothing has parsed them, which makes every worker fail.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _init_worker(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  import cv2
  # One worker per core is the intended layout; OpenCV's own thread pool would oversubscribe it.
  cv2.setNumThreads(1)


def prefetched(ds: grain.MapDataset, num_workers: int, read_threads: int) -> grain.IterDataset:
  """`ds` read by `read_threads` threads in each of `num_workers` processes (0: this process).

  Elements are whole batches, and each worker computes whole elements, so the output is the same
  for any number of workers.
  """
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=read_threads))
  if num_workers > 0:
    _ensure_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                        worker_init_fn=_init_worker)
  return ds


def groups_per_dataset(sizes: Sequence[int], group_size: int,
                       weights: Sequence[float] | None = None) -> list[int]:
  """Groups each dataset contributes to one epoch.

  Without weights, all of its full groups (size // group_size). With weights, the epoch keeps the
  same total and dataset d gets round(total * w_d / sum(w)) groups, at least one: fewer than its
  full groups subsamples it, more repeats it through further reshuffles of its records.
  """
  full = [size // group_size for size in sizes]
  if weights is None:
    return full
  total = sum(full)
  weights = np.asarray(weights, np.float64)
  return [max(1, int(round(total * w / weights.sum()))) for w in weights]


class _GroupPlan(grain.MapDataset):
  """Infinite random-access dataset of group descriptions; element q is global group q.

  Each element: {"dataset": int, "index": int64 [G] record indices, "epoch": int, "position": int}.
  """

  def __init__(self, sizes: Sequence[int], group_size: int, groups: Sequence[int],
               groups_per_epoch: int, seed: int):
    super().__init__()
    self._sizes = tuple(int(s) for s in sizes)
    self._group_size = group_size
    self._groups = tuple(int(n) for n in groups)
    self._groups_per_epoch = groups_per_epoch
    self._seed = seed
    self._lock = threading.Lock()
    self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_lock"], state["_epochs"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
    self._epochs = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"_GroupPlan(sizes={self._sizes}, group_size={self._group_size}, groups={self._groups})"

  def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset ids [E] int32, record indices [E, G] int64) of an epoch's groups in stream order."""
    with self._lock:
      if epoch not in self._epochs:
        # Consecutive reads touch one or two epochs; keep those only.
        for old in [e for e in self._epochs if e < epoch - 1]:
          del self._epochs[old]
        self._epochs[epoch] = self._layout(epoch)
      return self._epochs[epoch]

  def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    g = self._group_size
    ids, members = [], []
    for d, (size, wanted) in enumerate(zip(self._sizes, self._groups)):
      full = size // g
      passes = []
      for k in range(-(-wanted // full)):
        rng = np.random.default_rng([self._seed, _TAG_RECORDS, epoch, d, k])
        passes.append(rng.permutation(size)[:full * g].reshape(full, g))
      members.append(np.concatenate(passes)[:wanted])
      ids.append(np.full([wanted], d, np.int32))
    ids, members = np.concatenate(ids), np.concatenate(members).astype(np.int64)
    order = np.random.default_rng([self._seed, _TAG_POOL, epoch]).permutation(len(ids))
    order = order[:self._groups_per_epoch]
    return ids[order], members[order]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(int(index), self._groups_per_epoch)
    ids, members = self.epoch(epoch)
    return {"dataset": int(ids[position]), "index": members[position], "epoch": epoch,
            "position": position}


@dataclasses.dataclass
class _GroupLoader:
  """Reads, preprocesses and augments one group (runs in the worker processes)."""

  sources: Sequence[sources.ScoredSource]
  image_size: int
  flip: str
  scale_rate: float
  flip_rate: float
  seed: int

  def __call__(self, plan: dict[str, Any]) -> dict[str, Any]:
    source = self.sources[plan["dataset"]]
    indices = plan["index"]
    rng = np.random.default_rng([self.seed, _TAG_GROUP, plan["epoch"], plan["position"]])
    records = source.read(indices)
    clean = source.scores(records, rng)
    bad = np.flatnonzero(~((clean >= 0) & (clean <= 1)))
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"Dataset {source.name!r}: record {sources.record_name(records[i])!r} "
                       f"(index {int(indices[i])}) has score {float(clean[i])} outside [0, 1]; "
                       "score augmentation needs normalised scores (check the builder's "
                       "normalisation)")

    size = self.image_size
    images = np.empty([len(records), size, size, 3], np.float32)
    # Each image is flipped on its own with p = 0.5, as the release's per-image transform does; the
    # draws are made whatever config.data.flip says, so the score augmentation below is the same.
    flipped_images = rng.random(len(records)) < 0.5
    axis = FLIP_AXES[self.flip]
    for i, (record, index) in enumerate(zip(records, indices)):
      image = sources.load_image(source, record, int(index), size)
      images[i] = np.flip(image, axis) if (axis is not None and flipped_images[i]) else image

    # The reference's order: scale by c ~ U[max, 1] first, then flip s -> 1 - s.
    score, scale = clean, np.float32(1.0)
    if rng.random() < self.scale_rate:
      c = np.float32(rng.uniform(float(clean.max()), 1.0))
      if c > 0:  # c is 0 only when every score is 0, which scaling leaves as it is
        score, scale = clean / c, c
    flipped = bool(rng.random() < self.flip_rate)
    if flipped:
      score = np.float32(1.0) - score
    return {"image": images, "score": score.astype(np.float32), "score_clean": clean,
            "scale": scale, "flipped": np.bool_(flipped), "dataset": np.int32(plan["dataset"]),
            "index": np.asarray(indices, np.int64)}


class TrainIterator(grain.DatasetIterator):
  """The training stream's iterator on one process; checkpointable with get_state/set_state.

  State: {"next_group": global groups consumed, "layout": fingerprint of the epoch layout}. It is
  the same on every process at a given step and does not depend on num_workers or process_count,
  so a run may resume with other values of either. Save it with orbax through grain's handler
  (`grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`), or as JSON.
  """

  def __init__(self, stream: "TrainStream"):
    super().__init__()
    self._stream = stream
    self._next_group = 0

  @functools.cached_property
  def _iterator(self) -> grain.DatasetIterator:
    stream = self._stream
    ds = stream._groups[self._next_group + stream.process_index::stream.process_count]
    ds = ds.batch(stream.local_groups_per_batch, drop_remainder=True)
    return iter(prefetched(ds, stream.num_workers, stream.read_threads))

  def start_prefetch(self) -> None:
    """Starts the workers now (grain's checkpoint handler calls this after a restore)."""
    self._iterator.start_prefetch()

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._next_group += self._stream.groups_per_batch
    return batch

  @property
  def step(self) -> int:
    """Batches consumed so far (the same on every process)."""
    return self._next_group // self._stream.groups_per_batch

  def get_state(self) -> dict[str, Any]:
    return {"next_group": self._next_group, "layout": self._stream.layout}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("layout") != self._stream.layout:
      raise ValueError(
          f"Data iterator state was saved for another epoch layout ({state.get('layout')!r}, now "
          f"{self._stream.layout!r}): config.data train, train_split, group_size, weights or seed, "
          "or a dataset's size, differ from the run that saved it")
    self._close_iterator()
    self._next_group = int(state["next_group"])

  def _close_iterator(self) -> None:
    if "_iterator" in self.__dict__:
      self.__dict__.pop("_iterator").close()

  def close(self) -> None:
    self._close_iterator()
    super().close()


@dataclasses.dataclass
class TrainStream:
  """The training stream of one process; `iter(stream)` starts a TrainIterator at step 0."""

  datasets: tuple[str, ...]            # names by the batches' "dataset" ids
  dataset_sizes: tuple[int, ...]       # training records per dataset
  dataset_groups: tuple[int, ...]      # groups per epoch per dataset (before the cut to batches)
  group_size: int
  groups_per_batch: int                # global
  local_groups_per_batch: int          # on this process
  steps_per_epoch: int
  image_size: int
  process_index: int
  process_count: int
  layout: str                          # fingerprint of the epoch layout, checked on restore
  _groups: grain.MapDataset = dataclasses.field(repr=False)
  num_workers: int = 0
  read_threads: int = 1

  @property
  def groups_per_epoch(self) -> int:
    """Global groups per epoch (a whole number of batches)."""
    return self.steps_per_epoch * self.groups_per_batch

  @property
  def element_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each batch entry on this process, without reading data."""
    g, n, s = self.local_groups_per_batch, self.group_size, self.image_size
    f32 = np.dtype(np.float32)
    return {"image": ((g, n, s, s, 3), f32), "score": ((g, n), f32), "score_clean": ((g, n), f32),
            "scale": ((g,), f32), "flipped": ((g,), np.dtype(np.bool_)),
            "dataset": ((g,), np.dtype(np.int32)), "index": ((g, n), np.dtype(np.int64))}

  def __iter__(self) -> TrainIterator:
    return TrainIterator(self)


def _check_rate(name: str, value: float) -> float:
  if not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"config.data.{name} must be in [0, 1], got {value}")
  return float(value)


def train_stream(config: Any, process_index: int = 0, process_count: int = 1) -> TrainStream:
  """The training stream described by `config` (the `data` section of an experiment config).

  Reads config fields data_dir, train, train_split, weights, group_size, groups_per_batch (global),
  image_size, scale_rate, flip_rate, flip ("vertical", "horizontal" or "none": the image flip with
  p = 0.5, see FLIP_AXES), seed, num_workers and read_threads (optional, default 1: threads per
  worker process, or in this process when num_workers is 0).
  """
  names = list(config.train)
  if not names:
    raise ValueError("config.data.train is empty: name at least one training dataset")
  group_size = int(config.group_size)
  if group_size < 2:
    raise ValueError(f"config.data.group_size must be at least 2 (one prompt and one target), "
                     f"got {group_size}")
  groups_per_batch = int(config.groups_per_batch)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
  if groups_per_batch <= 0 or groups_per_batch % process_count:
    raise ValueError(f"config.data.groups_per_batch ({groups_per_batch}) must be a positive "
                     f"multiple of the process count ({process_count})")
  seed = int(config.seed)
  if seed < 0:
    raise ValueError(f"config.data.seed must be non-negative, got {seed}")
  weights = config.get("weights")
  if weights is not None:
    weights = [float(w) for w in weights]
    if len(weights) != len(names) or min(weights) <= 0:
      raise ValueError(f"config.data.weights must be None or one positive weight per training "
                       f"dataset ({len(names)}: {names}), got {weights}")
  flip = str(config.flip)
  if flip not in FLIP_AXES:
    raise ValueError(f"config.data.flip must be one of {', '.join(map(repr, FLIP_AXES))}, got "
                     f"{flip!r}")
  num_workers = int(config.get("num_workers", 0))
  read_threads = int(config.get("read_threads", 1))
  if num_workers < 0 or read_threads < 0:
    raise ValueError(f"config.data.num_workers ({num_workers}) and read_threads ({read_threads}) "
                     "must be non-negative")

  opened: dict[tuple[Any, ...], Any] = {}
  scored = []
  for name in names:
    source = sources.open_dataset(name, config.train_split, config.data_dir,
                                  records_cache=opened)
    if len(source) < group_size:
      raise ValueError(f"Dataset {name!r} has {len(source)} records in split "
                       f"{config.train_split!r}, fewer than one group of group_size={group_size}")
    scored.append(source)
  sizes = [len(s) for s in scored]
  groups = groups_per_dataset(sizes, group_size, weights)
  steps_per_epoch = sum(groups) // groups_per_batch
  if steps_per_epoch == 0:
    raise ValueError(f"One epoch holds {sum(groups)} groups of {group_size} "
                     f"({dict(zip(names, groups))}), fewer than one batch of "
                     f"groups_per_batch={groups_per_batch}")
  layout = hashlib.sha256(json.dumps(
      [names, config.train_split, sizes, group_size, groups, groups_per_batch, seed]).encode()
  ).hexdigest()[:16]

  plan = _GroupPlan(sizes, group_size, groups, steps_per_epoch * groups_per_batch, seed)
  loader = _GroupLoader(scored, int(config.image_size), flip,
                        _check_rate("scale_rate", config.scale_rate),
                        _check_rate("flip_rate", config.flip_rate), seed)
  return TrainStream(
      datasets=tuple(names), dataset_sizes=tuple(sizes), dataset_groups=tuple(groups),
      group_size=group_size, groups_per_batch=groups_per_batch,
      local_groups_per_batch=groups_per_batch // process_count, steps_per_epoch=steps_per_epoch,
      image_size=int(config.image_size), process_index=process_index, process_count=process_count,
      layout=layout, _groups=plan.map(loader), num_workers=num_workers, read_threads=read_threads)
