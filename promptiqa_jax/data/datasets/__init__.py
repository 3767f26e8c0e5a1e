"""The TFDS builders this project ships, by the names users know (pyiqa's keys).

Each module named here defines one `tfds.core.GeneratorBasedBuilder` subclass, exported as
`Builder`, whose TFDS name is the key. Modules are imported only when a dataset is asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

DATASET_MODULES = {
    "synthetic_iqa": "promptiqa_jax.data.datasets.synthetic_iqa",
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


def builder_class(name: str) -> Any:
  """The builder class for a dataset key; ValueError naming the known keys otherwise."""
  if name not in DATASET_MODULES:
    raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASET_MODULES))}")
  return importlib.import_module(DATASET_MODULES[name]).Builder
