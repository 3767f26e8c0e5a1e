"""Dataset names in configs -> TFDS records and their scores.

A config names a dataset in one of three ways (`datasets.parse_name`):

  "koniq10k"                 a real IQA dataset; the score is the record's `score` (normalised).
  "synthetic_iqa:<name>"     one assessment requirement of a multi-requirement dataset; the score is
                             its column of `record["scores"]` (see `promptiqa_jax.data.requirements`).
  "synthetic_iqa:random"     (training only) per group, one requirement drawn from the dataset's
                             random family.

A builder config other than the default goes after a slash: "synthetic_iqa/<config>:psnr".
Builders and requirement tables come from the dataset registry (`promptiqa_jax.data.datasets`);
the records are read from the built folder (`tfds.builder_from_directory(...).as_data_source`:
ArrayRecord random access, no TensorFlow) with the image left encoded, so that decoding runs in the
input pipeline's worker processes.

`data_dir` may be a bucket (gs://). array_record reads local files only (promptiqa_jax.storage), so
each dataset version folder a run needs is mirrored to a local cache first (`mirror_datasets`;
`open_split` does it for one folder when handed a bucket), its files checked by size.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np

from promptiqa_jax import storage
from promptiqa_jax.data import datasets as registry
from promptiqa_jax.data import preprocess
from promptiqa_jax.data.requirements import RANDOM_REQUIREMENT, RequirementTable


# The file TFDS writes last into a build, and that the mirror and the upload copy last: a folder
# holding it holds a whole build.
INFO_FILE = "dataset_info.json"


def _check_data_dir(data_dir: str) -> str:
  if not data_dir:
    raise ValueError("config.data.data_dir is empty: set it to the folder the TFDS datasets were "
                     "built into (tfds build --data_dir=...)")
  folder = storage.path(str(data_dir))
  if not folder.is_dir():
    raise FileNotFoundError(f"data_dir {os.fspath(folder)!r} does not exist: set "
                            "config.data.data_dir to the folder the TFDS datasets were built into "
                            "(tfds build --data_dir=...)")
  return os.fspath(folder)


def prepared_dir(builder_name: str, data_dir: str, builder_config: str | None = None) -> str:
  """The folder holding the built version of a dataset: data_dir/name[/config]/version.

  The version is the builder code's; FileNotFoundError naming the folder if it is not built there.
  A gs:// data_dir gives a gs:// folder.
  """
  cls = registry.builder_class(builder_name)
  data_dir = _check_data_dir(data_dir)
  if builder_config is None and getattr(cls, "BUILDER_CONFIGS", None):
    builder_config = (getattr(cls, "DEFAULT_BUILDER_CONFIG_NAME", None)
                      or cls.BUILDER_CONFIGS[0].name)
  path = "/".join([data_dir, builder_name, *([builder_config] if builder_config else []),
                   str(cls.VERSION)])
  if not storage.path(path).joinpath(INFO_FILE).is_file():
    raise FileNotFoundError(
        f"Dataset {builder_name!r} (version {cls.VERSION}"
        f"{', config ' + repr(builder_config) if builder_config else ''}) is not built under "
        f"{data_dir!r} (no {path}/{INFO_FILE}); build it first with "
        f"--data_dir={data_dir} and the array_record file format")
  return path


def default_cache_dir() -> str:
  """Where the datasets of a bucket data_dir are mirrored when config.data.local_cache_dir is
  empty."""
  return os.path.join(storage.default_cache_dir(), "datasets")


def mirror_datasets(names: Iterable[str], data_dir: str, cache_dir: str | None = None) -> str:
  """A local data_dir holding the built folder of every config dataset name in `names`, copied
  from the bucket `data_dir` into `cache_dir` (default `default_cache_dir()`); `data_dir` itself
  when it is local."""
  if not storage.is_remote(str(data_dir)):
    return str(data_dir)
  cache_dir = cache_dir or default_cache_dir()
  for builder_name, builder_config in sorted({registry.parse_name(n)[:2] for n in names},
                                             key=str):
    folder = prepared_dir(builder_name, data_dir, builder_config)
    print(f"mirroring {folder} to {storage.local_twin(folder, cache_dir)}", flush=True)
    storage.mirror_tree(folder, cache_dir, last=(INFO_FILE,))
  return storage.local_twin(data_dir, cache_dir)


def local_data_config(data: ml_collections.ConfigDict,
                      names: Iterable[str]) -> ml_collections.ConfigDict:
  """`data` (a config's data section) reading the datasets `names` from local files: a copy with
  data_dir set to their mirror (`mirror_datasets`, into data.local_cache_dir) for a bucket, else
  `data` itself."""
  if not storage.is_remote(str(data.data_dir)):
    return data
  local = data.copy_and_resolve_references()
  local.data_dir = mirror_datasets(names, str(data.data_dir), data.get("local_cache_dir") or None)
  return local


def open_split(builder_name: str, split: str, data_dir: str,
               builder_config: str | None = None) -> Sequence[dict[str, Any]]:
  """Random-access records of a built dataset split, with `image` left as encoded bytes.

  Reads the prepared folder (`prepared_dir`) without running builder code. Raises ValueError
  (unknown dataset or split) or FileNotFoundError (missing data_dir, dataset not built there), each
  naming the dataset and the folder.
  """
  import tensorflow_datasets as tfds  # Heavy; only needed once a dataset is opened.

  folder = prepared_dir(builder_name, data_dir, builder_config)
  if storage.is_remote(folder):
    folder = storage.mirror_tree(folder, default_cache_dir(), last=(INFO_FILE,))
  builder = tfds.builder_from_directory(folder)
  splits = builder.info.splits
  if split.split("[")[0] not in splits:
    raise ValueError(f"Dataset {builder_name!r} has no split {split!r}; its splits: "
                     f"{', '.join(sorted(splits))}")
  return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})


def record_name(record: dict[str, Any]) -> str:
  """The record's `name` feature as str (the data source returns Text features as bytes)."""
  name = record.get("name", "?")
  return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


@dataclasses.dataclass
class ScoredSource:
  """The records of one config dataset name on one split, and the way its scores are read.

  Picklable (the data source reopens its files in a worker process): it travels into grain workers.
  """

  name: str
  split: str
  records: Sequence[dict[str, Any]]
  # The dataset's requirement table and the requirement the name picks (RANDOM_REQUIREMENT for
  # "<dataset>:random"); both None for a plain dataset.
  table: RequirementTable | None = None
  requirement: str | None = None

  def __len__(self) -> int:
    return len(self.records)

  @property
  def is_random(self) -> bool:
    return self.requirement == RANDOM_REQUIREMENT

  def read(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    """The records at `indices` (ints into the split), image bytes undecoded."""
    indices = [int(i) for i in indices]
    if hasattr(self.records, "__getitems__"):
      return list(self.records.__getitems__(indices))
    return [self.records[i] for i in indices]

  def scores(self, records: Sequence[dict[str, Any]],
             rng: np.random.Generator | None = None) -> np.ndarray:
    """Normalised scores `[len(records)]` float32 of records read together (a group).

    For "<dataset>:random" the requirement is drawn with `rng`, once for all the records.
    """
    if self.table is None:
      return np.asarray([r["score"] for r in records], dtype=np.float32)
    if not self.is_random:
      return self.table.scores(records, self.requirement)
    if rng is None:
      raise ValueError(f"{self.name}: a random requirement needs an rng (training streams only)")
    return self.table.random_scores(records, rng)

  def all_scores(self, chunk: int = 256) -> np.ndarray:
    """The normalised scores `[N]` of the whole split, in record order (reads every record once)."""
    if self.is_random:
      raise ValueError(f"{self.name}: a random requirement has no fixed scores; name a "
                       f"requirement (e.g. '{self.name.split(':')[0]}:<requirement>') for "
                       "evaluation and prompts")
    out = [self.scores(self.read(range(start, min(start + chunk, len(self)))))
           for start in range(0, len(self), chunk)]
    return np.concatenate(out) if out else np.zeros([0], np.float32)


def open_dataset(name: str, split: str, data_dir: str,
                 records_cache: dict[tuple[Any, ...], Any] | None = None) -> ScoredSource:
  """Resolves a config dataset name on `split` under `data_dir` (see the module docstring).

  `records_cache` shares one opened split between names of one dataset ("synthetic_iqa:a",
  "synthetic_iqa:b"), so that it is opened, and pickled into workers, once.
  """
  builder_name, builder_config, requirement = registry.parse_name(name)
  table = None
  if requirement is not None:
    table = registry.checked_table(builder_name, name)
    if requirement != RANDOM_REQUIREMENT:
      table.index(requirement)  # ValueError naming the dataset's requirements
  key = (builder_name, builder_config, split)
  if records_cache is None:
    records = open_split(builder_name, split, data_dir, builder_config)
  else:
    if key not in records_cache:
      records_cache[key] = open_split(builder_name, split, data_dir, builder_config)
    records = records_cache[key]
  return ScoredSource(name=name, split=split, records=records, table=table, requirement=requirement)


def load_image(source: ScoredSource, record: dict[str, Any], index: int, size: int) -> np.ndarray:
  """Decodes, resizes (OpenCV bicubic) and normalises a record's image -> float32 `[size, size, 3]`.

  Raises preprocess.ImageError naming the record, its index, the dataset and the split.
  """
  where = (f"record {record_name(record)!r} (index {index}) of dataset {source.name!r}, "
           f"split {source.split!r}")
  image = preprocess.decode_image(record["image"], source=where)
  return preprocess.normalize(preprocess.resize_bicubic(image, size))
