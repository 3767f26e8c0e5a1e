"""Device mesh and shardings: groups split over all devices, large parameters optionally sharded.

The mesh has two axes: `data` and `fsdp`. A batch's group axis is split over both (every device
gets whole groups). With `fsdp > 1`, every array of the train state with at least `min_size`
elements is split along its largest dimension divisible by `fsdp` (ZeRO-3 style); XLA gathers it
where it is used. With `fsdp = 1` everything is replicated (plain data parallelism).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Any = None) -> Mesh:
  """A `(data, fsdp)` mesh over `devices` (default: all); `data=-1` takes what `fsdp` leaves."""
  devices = list(devices if devices is not None else jax.devices())
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must divide the device count {len(devices)}")
  if data == -1:
    data = len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(f"mesh data={data} x fsdp={fsdp} != {len(devices)} devices")
  return Mesh(mesh_utils.create_device_mesh((data, fsdp), devices), DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (group) axis split over every device."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_sharding(tree: Any, mesh: Mesh, min_size: int = 2**18) -> Any:
  """Shardings for a pytree of arrays (or ShapeDtypeStructs), by the rule in the module doc."""
  fsdp = mesh.shape["fsdp"]

  def rule(leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
      return replicated(mesh)
    candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % fsdp == 0]
    if not candidates:
      return replicated(mesh)
    spec = [None] * len(shape)
    spec[int(candidates[0])] = "fsdp"
    return NamedSharding(mesh, P(*spec))

  return jax.tree_util.tree_map(rule, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, keys=("image", "score")) -> dict[str, jax.Array]:
  """This process's part of a batch -> global arrays split over the mesh's devices."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k])) for k in keys}
