"""The dataset registry: TFDS builders by the names users know (pyiqa's keys), and the requirement
tables of multi-requirement datasets, resolved in this one place.

Each builder module named in DATASET_MODULES defines one `tfds.core.GeneratorBasedBuilder`
subclass, exported as `Builder`, whose TFDS name is the key; it is imported only when the builder is
asked for. A multi-requirement dataset (see `promptiqa_jax.data.requirements`) also names the
module holding its `RequirementTable` in REQUIREMENT_TABLES, which configs and evaluators read
without importing TFDS; its builder declares the same table as `Builder.REQUIREMENTS`.

Config dataset names: "dataset[/builder_config][:requirement]" (`parse_name`).
"""
from __future__ import annotations

import importlib
from typing import Any

from promptiqa_jax.data.requirements import RANDOM_REQUIREMENT, Requirement, RequirementTable

DATASET_MODULES = {
    "synthetic_iqa": "promptiqa_jax.data.datasets.synthetic_iqa.builder",
    "koniq10k": "promptiqa_jax.data.datasets.koniq10k",
    "spaq": "promptiqa_jax.data.datasets.spaq",
    "livec": "promptiqa_jax.data.datasets.livec",
    "live": "promptiqa_jax.data.datasets.live",
    "csiq": "promptiqa_jax.data.datasets.csiq",
    "tid2013": "promptiqa_jax.data.datasets.tid2013",
    "kadid10k": "promptiqa_jax.data.datasets.kadid10k",
    "bid": "promptiqa_jax.data.datasets.bid",
    "gfiqa20k": "promptiqa_jax.data.datasets.gfiqa20k",
    "agiqa3k": "promptiqa_jax.data.datasets.agiqa3k",
    "aigciqa2023": "promptiqa_jax.data.datasets.aigciqa2023",
    "uwiqa": "promptiqa_jax.data.datasets.uwiqa",
}
# Multi-requirement datasets: the module whose `TABLE` is the dataset's RequirementTable.
REQUIREMENT_TABLES = {
    "synthetic_iqa": "promptiqa_jax.data.datasets.synthetic_iqa.requirements",
}

# Builders registered at run time (tests, users' own datasets), by name.
_EXTRA_BUILDERS: dict[str, Any] = {}


def register_builder(builder_cls: Any, name: str | None = None) -> None:
  """Makes a TFDS builder class resolvable by `name` (default: its TFDS name), as the registry's.

  A multi-requirement builder declares its RequirementTable as the class attribute REQUIREMENTS.
  """
  _EXTRA_BUILDERS[name or builder_cls.name] = builder_cls


def known_names() -> list[str]:
  return sorted(set(DATASET_MODULES) | set(_EXTRA_BUILDERS))


def builder_class(name: str) -> Any:
  """The builder class for a dataset key; ValueError naming the known keys otherwise."""
  if name in _EXTRA_BUILDERS:
    return _EXTRA_BUILDERS[name]
  if name not in DATASET_MODULES:
    raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(known_names())}")
  return importlib.import_module(DATASET_MODULES[name]).Builder


def parse_name(name: str) -> tuple[str, str | None, str | None]:
  """Splits "dataset[/builder_config][:requirement]" into its three parts (None where absent).

  "koniq10k" -> ("koniq10k", None, None); "synthetic_iqa:psnr" -> ("synthetic_iqa", None, "psnr");
  "synthetic_iqa/size32_crops6_per24_seed0:psnr" names a non-default build config.
  """
  dataset, sep, requirement = name.partition(":")
  builder, slash, builder_config = dataset.partition("/")
  if not builder or (sep and not requirement) or (slash and not builder_config):
    raise ValueError(f"Malformed dataset name {name!r}: expected 'dataset', 'dataset:requirement' "
                     "or 'dataset/config:requirement'")
  return builder, builder_config or None, requirement or None


def requirement_table(builder_name: str) -> RequirementTable | None:
  """The RequirementTable of a multi-requirement dataset, None for a plain one (no TFDS import
  for the registry's own datasets); ValueError for an unknown dataset."""
  if builder_name in _EXTRA_BUILDERS:
    return getattr(_EXTRA_BUILDERS[builder_name], "REQUIREMENTS", None)
  if builder_name in REQUIREMENT_TABLES:
    return importlib.import_module(REQUIREMENT_TABLES[builder_name]).TABLE
  if builder_name not in DATASET_MODULES:
    raise ValueError(f"Unknown dataset {builder_name!r}; known datasets: {', '.join(known_names())}")
  return None


def requirement_of(name: str) -> Requirement | None:
  """The Requirement a config dataset name selects ("synthetic_iqa:psnr"); None for a plain
  dataset name and for "<dataset>:random". ValueError for a requirement the dataset lacks."""
  builder, _, requirement = parse_name(name)
  if requirement is None or requirement == RANDOM_REQUIREMENT:
    if requirement is not None:
      checked_table(builder, name)
    return None
  return checked_table(builder, name).get(requirement)


def checked_table(builder_name: str, name: str) -> RequirementTable:
  """The table of `builder_name`, which config name `name` needs; ValueError if it has none."""
  table = requirement_table(builder_name)
  if table is None:
    raise ValueError(f"{name!r}: dataset {builder_name!r} has no assessment requirements; use the "
                     "plain name")
  return table
