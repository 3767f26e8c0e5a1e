"""The datasets as the CLI sees them: build one (`prepare`) and list them all (`list_datasets`).

Builds go to `data_dir` in TFDS's layout, `<data_dir>/<name>/<config>/<version>/`, as array_record
files; read them back with `tfds.data_source(f"{name}/{config}", data_dir=data_dir, split=...)` or
`builder.as_data_source(split)` (no TensorFlow needed).
"""
from __future__ import annotations

import importlib
import os
from typing import Any

import tensorflow_datasets as tfds

from promptiqa_jax.data import datasets

SYNTHETIC = "synthetic_iqa"


def default_data_dir() -> str:
  """The folder TFDS uses when none is given: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def prepare(name: str, data_dir: str | os.PathLike,
            manual_dir: str | os.PathLike | None, config: str | int = "224",
            skip_bad_images: bool = False, **options: Any):
  """Builds dataset `name` into `data_dir` (a no-op if already built) and returns its builder.

  Args:
    name: a key of `datasets.DATASET_MODULES`.
    data_dir: where TFDS datasets live.
    manual_dir: the dataset's root folder as downloaded (the layout in the dataset's module); None
      for `<data_dir>/downloads/manual`. For synthetic_iqa, an optional folder of the user's own
      pristine images.
    config: "224" (images resized to the model input), "full", or a square size such as 32.
    skip_bad_images: leave out, with a warning, images that are absent or undecodable instead of
      failing.
    **options: passed to synthetic_iqa's own `prepare`; no other dataset takes any.

  Raises:
    iqa_base.LayoutError (a ValueError; iqa_base is in promptiqa_jax.data.datasets) naming the
    missing file, the bad images or the bad score.
  """
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
    built = _prepared_configs(os.fspath(data_dir), name, str(cls.VERSION))
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


def _prepared_configs(data_dir: str, name: str, version: str) -> list[str]:
  """Configs of `name` with a finished build (a dataset_info.json) of `version` in data_dir."""
  folder = os.path.join(data_dir, name)
  if os.path.isfile(os.path.join(folder, version, "dataset_info.json")):
    return ["default"]
  if not os.path.isdir(folder):
    return []
  return sorted(config for config in os.listdir(folder)
                if os.path.isfile(os.path.join(folder, config, version, "dataset_info.json")))
