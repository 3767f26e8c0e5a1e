"""Paths as users give them, local folders or buckets (gs://), and local copies of remote folders.

Every path a user gives goes through `etils.epath`, which reaches gs:// through gcsfs; orbax
(tensorstore) and grain read and write gs:// themselves. TFDS's array_record files cannot: the
array_record C++ writer and reader open local files only (without TensorFlow's filesystems a build
into gs:// fails with "open() failed: No such file or directory; opening gs://...; Failed to create
the file header"). So a dataset folder in a bucket is built in a local staging folder and uploaded
(`upload_tree`), and read from a local mirror on each host (`mirror_tree`).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from typing import Iterator, Sequence

from etils import epath

CACHE_ENV = "PROMPTIQA_JAX_CACHE"


def path(location: str | os.PathLike) -> epath.Path:
  """`location` as an epath.Path: a URL (gs://...) as given, a local path absolute, ~ expanded."""
  text = os.fspath(location)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_remote(location: str | os.PathLike) -> bool:
  """Whether `location` is a URL (gs://, s3://, ...) rather than a local path."""
  return "://" in os.fspath(location)


def write_text(target: epath.Path, text: str) -> None:
  """Writes `target` so that a reader sees the old or the new content, never a part."""
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(target):
    target.write_text(text)  # An object appears whole when its upload completes.
    return
  temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
  temporary.write_text(text)
  os.replace(temporary, target)


def default_cache_dir() -> str:
  """The package's cache folder (the Hub's converted release lives there too): $PROMPTIQA_JAX_CACHE,
  else $XDG_CACHE_HOME/promptiqa_jax, else ~/.cache/promptiqa_jax."""
  if os.environ.get(CACHE_ENV):
    return os.path.expanduser(os.environ[CACHE_ENV])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(base, "promptiqa_jax")


def local_twin(remote: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
  """The local folder standing for `remote`: CACHE/<scheme>/<bucket>/<path>."""
  scheme, rest = os.fspath(remote).split("://", 1)
  return os.path.join(os.path.expanduser(os.fspath(cache_dir or default_cache_dir())), scheme,
                      *[part for part in rest.split("/") if part])


def _files(root: epath.Path) -> dict[str, int]:
  """{relative path: size} of every file under `root`."""
  found = {}
  for entry in root.iterdir():
    if entry.is_dir():
      found.update({f"{entry.name}/{k}": v for k, v in _files(entry).items()})
    else:
      found[entry.name] = entry.stat().length
  return found


def _copy_file(source: epath.Path, target: epath.Path) -> None:
  """Streams `source` to `target`; a local target is written beside and renamed into place, so
  that processes of one host mirroring the same folder never see each other's partial files."""
  target.parent.mkdir(parents=True, exist_ok=True)
  temporary = target if is_remote(target) else target.parent / f".{target.name}.{uuid.uuid4().hex}"
  with source.open("rb") as reader, temporary.open("wb") as writer:
    shutil.copyfileobj(reader, writer, 16 << 20)
  if temporary != target:
    os.replace(temporary, target)


def _sync(source: epath.Path, target: epath.Path, last: Sequence[str]) -> int:
  """Copies the files of `source` that `target` lacks or holds at another size, the names in
  `last` after all others (the marker a reader checks for). Returns the number copied."""
  wanted = _files(source)
  present = _files(target) if target.is_dir() else {}
  stale = sorted((name for name, size in wanted.items() if present.get(name) != size),
                 key=lambda name: (name in last, name))
  for name in stale:
    _copy_file(source / name, target / name)
  return len(stale)


@contextlib.contextmanager
def _host_lock(name: str) -> Iterator[None]:
  """Holds an exclusive lock among this host's processes (a local lock file `name`)."""
  os.makedirs(os.path.dirname(name), exist_ok=True)
  with open(name, "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def mirror_tree(remote: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                last: Sequence[str] = ()) -> str:
  """A local copy of the folder `remote` (see `local_twin`), its files checked by size on every
  call and fetched again where they differ; `last` names files fetched after the others.

  The processes of one host take turns, so that one downloads and the others find the copy whole.
  """
  local = local_twin(remote, cache_dir)
  with _host_lock(local.rstrip("/") + ".lock"):
    _sync(epath.Path(os.fspath(remote)), epath.Path(local), last)
  return local


def upload_tree(local: str | os.PathLike, remote: str | os.PathLike,
                last: Sequence[str] = ()) -> int:
  """Copies the folder `local` to `remote`, skipping files already there at the same size; the
  names in `last` go after all others. Returns the number of files copied."""
  return _sync(epath.Path(os.fspath(local)), epath.Path(os.fspath(remote)), last)



def local_file(location: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
  """`location` itself if it is local, else a local copy of the remote file (see `local_twin`),
  fetched unless a copy of the same size is there."""
  if not is_remote(location):
    return os.path.expanduser(os.fspath(location))
  local = local_twin(location, cache_dir)
  remote = epath.Path(os.fspath(location))
  with _host_lock(local + ".lock"):
    if not os.path.isfile(local) or os.path.getsize(local) != remote.stat().length:
      _copy_file(remote, epath.Path(local))
  return local
