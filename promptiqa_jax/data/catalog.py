"""The datasets as the CLI sees them: build one (`prepare`) and list them all (`list_datasets`).

Builds go to `data_dir` in TFDS's layout, `<data_dir>/<name>/<config>/<version>/`, as array_record
files; read them back with `tfds.data_source(f"{name}/{config}", data_dir=data_dir, split=...)` or
`builder.as_data_source(split)` (no TensorFlow needed). A bucket data_dir (gs://) is built in a
local staging folder, the mirror a later run on this host reads (`sources.mirror_datasets`), and
uploaded with its dataset_info.json last, so that no reader takes a half-uploaded build for a
whole one (array_record cannot write to a bucket; see promptiqa_jax.storage).
"""
from __future__ import annotations

import importlib
import os
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from promptiqa_jax import storage
from promptiqa_jax.data import datasets, sources

SYNTHETIC = "synthetic_iqa"


def default_data_dir() -> str:
  """The folder TFDS uses when none is given: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def prepare(name: str, data_dir: str | os.PathLike,
            manual_dir: str | os.PathLike | None, config: str | int = "224",
            skip_bad_images: bool = False, cache_dir: str | os.PathLike | None = None,
            **options: Any):
  """Builds dataset `name` into `data_dir` (a no-op if already built) and returns its builder.

  Args:
    name: a key of `datasets.DATASET_MODULES`.
    data_dir: where TFDS datasets live, a folder or a bucket (gs://...).
    manual_dir: the dataset's root folder as downloaded (the layout in the dataset's module); None
      for `<data_dir>/downloads/manual`. For synthetic_iqa, an optional folder of the user's own
      pristine images.
    config: "224" (images resized to the model input), "full", or a square size such as 32.
    skip_bad_images: leave out, with a warning, images that are absent or undecodable instead of
      failing.
    cache_dir: for a bucket data_dir, where the local staging copy goes (default
      `sources.default_cache_dir()`).
    **options: passed to synthetic_iqa's own `prepare`; no other dataset takes any.

  Raises:
    iqa_base.LayoutError (a ValueError; iqa_base is in promptiqa_jax.data.datasets) naming the
    missing file, the bad images or the bad score.
  """
  if not storage.is_remote(data_dir):
    return _build(name, data_dir, manual_dir, config, skip_bad_images, **options)
  staging = storage.local_twin(data_dir, cache_dir or sources.default_cache_dir())
  print(f"building {name} in the local staging folder {staging}", flush=True)
  builder = _build(name, staging, manual_dir, config, skip_bad_images, **options)
  relative = os.path.relpath(os.fspath(builder.data_dir), staging)
  target = f"{os.fspath(data_dir).rstrip('/')}/{relative}"
  copied = storage.upload_tree(builder.data_dir, target, last=(sources.INFO_FILE,))
  print(f"uploaded {copied} files to {target}", flush=True)
  return builder


def _build(name: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None,
           config: str | int, skip_bad_images: bool, **options: Any):
  """`prepare` into a local `data_dir`."""
  if name == SYNTHETIC:
    return importlib.import_module(datasets.DATASET_MODULES[SYNTHETIC]).prepare(
        data_dir, manual_dir, **options)
  if options:
    raise TypeError(f"{name} takes no options {sorted(options)}; only {SYNTHETIC} does")
  builder = datasets.builder_class(name)(data_dir=os.fspath(data_dir), config=config,
                                         skip_bad_images=skip_bad_images)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir) if manual_dir is not None else None))
  return builder


def list_datasets(data_dir: str | os.PathLike) -> list[dict[str, Any]]:
  """One dict per dataset key: what it is, and which configs are built in `data_dir`.

  Keys: name, title, score_type ("MOS"/"DMOS"), lower_better, raw_range (lo, hi), norm, images
  (as distributed), split_unit, download_url, license, prepared (bool), prepared_configs (names;
  "default" for a builder without configs). Fields a builder does not declare (a `FACTS`
  `iqa_base.DatasetFacts` attribute) are None.
  """
  rows = []
  for name in datasets.DATASET_MODULES:
    cls = datasets.builder_class(name)
    facts = getattr(cls, "FACTS", None)
    built = _prepared_configs(storage.path(data_dir), name, str(cls.VERSION))
    rows.append({
        "name": name,
        "title": facts.title if facts else None,
        "score_type": facts.score_type if facts else None,
        "lower_better": facts.lower_better if facts else None,
        "raw_range": facts.raw_range if facts else None,
        "norm": facts.norm if facts else None,
        "images": facts.num_images if facts else None,
        "split_unit": facts.split_unit if facts else None,
        "download_url": facts.download_url if facts else None,
        "license": facts.license if facts else None,
        "prepared": bool(built),
        "prepared_configs": built,
    })
  return rows


def _prepared_configs(data_dir: epath.Path, name: str, version: str) -> list[str]:
  """Configs of `name` with a finished build (a dataset_info.json) of `version` in data_dir."""
  folder = data_dir / name
  if (folder / version / sources.INFO_FILE).is_file():
    return ["default"]
  if not folder.is_dir():
    return []
  return sorted(config.name for config in folder.iterdir()
                if (config / version / sources.INFO_FILE).is_file())
