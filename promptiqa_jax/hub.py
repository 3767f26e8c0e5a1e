"""The authors' checkpoint from the Hugging Face Hub: downloaded, verified, converted once, cached.

    directory = pretrained_model_dir(HubFile.parse("hub:Zevin2023/PromptIQA"))
    PromptIQA.from_checkpoint(directory)          # what PromptIQA.from_pretrained() does

On first use the release file is downloaded with `huggingface_hub` (honouring `HF_ENDPOINT` and
`HF_TOKEN`), its SHA-256 checked against the digest the Hub publishes for it (the ETag of an LFS
file; a git blob hash for small files), converted (this needs torch) and written as a model
directory. Later runs ask the Hub only which file `revision` names now (one HEAD request) and load
the converted copy; offline, or with `local_files_only`, the copy last resolved for that revision
is used without asking. The download itself is deleted once converted.

Cache (`cache_dir`, else `$PROMPTIQA_JAX_CACHE`, else `$XDG_CACHE_HOME/promptiqa_jax`, else
`~/.cache/promptiqa_jax`):
  hub/models--OWNER--NAME/refs/REVISION/FILENAME   the digest REVISION resolved to (quoted names)
  hub/models--OWNER--NAME/DIGEST-CONFIG/           the converted model directory
A model directory appears by a rename of a finished one, so an interrupted conversion is never
taken for a finished one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import urllib.parse

from promptiqa_jax import checkpoint, storage
from promptiqa_jax.models.config import ModelConfig

DEFAULT_REPO = "Zevin2023/PromptIQA"
DEFAULT_FILENAME = "best_model.pth.tar"
DEFAULT_REVISION = "main"
SCHEME = "hub:"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")


class ModelNotCachedError(FileNotFoundError):
  """No converted copy of the file in the cache, and the Hub cannot be asked for it."""


class DigestMismatchError(ValueError):
  """A downloaded file whose content is not the one the Hub's metadata names."""


@dataclasses.dataclass(frozen=True)
class HubFile:
  """A file of a Hub model repository at a revision (branch, tag or commit)."""

  repo_id: str = DEFAULT_REPO
  revision: str = DEFAULT_REVISION
  filename: str = DEFAULT_FILENAME

  @classmethod
  def of(cls, repo_id: str | None, revision: str | None, filename: str | None) -> "HubFile":
    """Defaults for every part left None."""
    return cls(repo_id or DEFAULT_REPO, revision or DEFAULT_REVISION, filename or DEFAULT_FILENAME)

  @classmethod
  def parse(cls, text: str) -> "HubFile":
    """`hub:OWNER/NAME[@REVISION][:FILENAME]`, e.g. `hub:Zevin2023/PromptIQA`."""
    match = re.fullmatch(r"hub:([\w.-]+/[\w.-]+)(?:@([^:]+))?(?::(.+))?", text)
    if not match:
      raise ValueError(f"{text!r}: expected hub:OWNER/NAME[@REVISION][:FILENAME], e.g. "
                       f"{SCHEME}{DEFAULT_REPO}")
    return cls.of(*match.groups())

  def __str__(self) -> str:
    return f"{SCHEME}{self.repo_id}@{self.revision}:{self.filename}"

  def url(self, endpoint: str | None) -> str:
    quoted = urllib.parse.quote(self.revision, safe="")
    return f"{endpoint or 'https://huggingface.co'}/{self.repo_id}/resolve/{quoted}/{self.filename}"


def is_hub_reference(text: str) -> bool:
  return text.startswith(SCHEME)


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
  """`cache_dir`, else the package's cache folder (storage.default_cache_dir), absolute."""
  return os.path.abspath(os.path.expanduser(cache_dir if cache_dir is not None
                                            else storage.default_cache_dir()))


def pretrained_model_dir(file: HubFile, config: ModelConfig | None = None, *,
                         cache_dir: str | os.PathLike | None = None,
                         local_files_only: bool = False) -> str:
  """The converted model directory of `file` under `config` (default: the paper's architecture),
  downloading and converting it when the cache lacks it. Raises ModelNotCachedError (offline and
  not cached: the message says how to download by hand), DigestMismatchError, and
  CheckpointMismatchError when the file does not fit `config`."""
  # The cached copy is stored at float32 compute; PromptIQA's `dtype` chooses it at load time.
  config = dataclasses.replace(config or ModelConfig.paper(), dtype="float32")
  repo_dir = os.path.join(cache_root(cache_dir), "hub",
                          "models--" + file.repo_id.replace("/", "--"))
  ref = os.path.join(repo_dir, "refs", urllib.parse.quote(file.revision, safe=""),
                     urllib.parse.quote(file.filename, safe=""))
  endpoint = os.environ.get("HF_ENDPOINT")
  unreachable: Exception | None = None
  if not local_files_only:
    try:
      digest, size = _published_digest(file, endpoint)
    # Offline mode, no route to the endpoint, an HTTP error: each huggingface_hub release raises
    # its own transport's types, so any failure to ask falls back to the cache.
    except Exception as err:
      unreachable = err
    else:
      if not digest or not (_SHA256.fullmatch(digest) or _GIT_SHA1.fullmatch(digest)):
        raise DigestMismatchError(f"{file}: the Hub's ETag {digest!r} is neither a SHA-256 nor "
                                  "a git blob hash, so a download cannot be verified")
      directory = os.path.join(repo_dir, f"{digest}-{_config_key(config)}")
      if not os.path.isdir(directory):
        _download_and_convert(file, digest, size, config, directory, endpoint)
      _write_atomically(ref, digest)
      return directory
  digest = _read(ref)
  directory = os.path.join(repo_dir, f"{digest}-{_config_key(config)}") if digest else None
  if directory and os.path.isdir(directory):
    return directory
  why = f"the Hub could not be asked ({unreachable})" if unreachable else "local_files_only is set"
  raise ModelNotCachedError(
      f"{file}: no converted copy in {repo_dir} for this model config, and {why}. Download the "
      f"file by hand ({file.url(endpoint)}, or `hf download {file.repo_id} {file.filename} "
      f"--revision {file.revision}`), convert it with `promptiqa-jax convert --torch "
      f"{os.path.basename(file.filename)} --out DIR` and score with `--checkpoint DIR` "
      "(PromptIQA.from_checkpoint(DIR))")


def _published_digest(file: HubFile, endpoint: str | None) -> tuple[str | None, int | None]:
  """(digest, size in bytes) that the Hub states for the file at its revision now."""
  import huggingface_hub  # Heavy; only Hub downloads need it.

  url = huggingface_hub.hf_hub_url(file.repo_id, file.filename, revision=file.revision,
                                   endpoint=endpoint)
  metadata = huggingface_hub.get_hf_file_metadata(url, endpoint=endpoint)
  return metadata.etag, metadata.size


def _download_and_convert(file: HubFile, digest: str, size: int | None, config: ModelConfig,
                          directory: str, endpoint: str | None) -> None:
  """Downloads `file`, checks it against `digest` and `size`, and writes the converted model to
  `directory` by renaming a finished one into place."""
  import huggingface_hub  # Heavy; only Hub downloads need it.

  from promptiqa_jax.interop import convert

  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=parent, prefix=".download-") as scratch:
    path = huggingface_hub.hf_hub_download(
        file.repo_id, file.filename, revision=file.revision, endpoint=endpoint,
        cache_dir=os.path.join(scratch, "hf"))
    _verify(path, file, digest, size)
    state, _ = convert.load_torch_checkpoint(path)
    staging = os.path.join(scratch, "model")
    checkpoint.save_model(staging, convert.torch_to_flax(state, config), config)
    try:
      os.rename(staging, directory)
    except OSError:
      # Another process finished the same conversion first; its copy is as good as ours.
      if not os.path.isdir(directory):
        raise


def _verify(path: str, file: HubFile, digest: str, size: int | None) -> None:
  actual_size = os.path.getsize(path)
  if size is not None and actual_size != size:
    raise DigestMismatchError(f"{file}: downloaded {actual_size} bytes, the Hub states {size}; "
                              "try again")
  if _SHA256.fullmatch(digest):
    hasher = hashlib.sha256()
  else:  # A git blob hash: SHA-1 of a header and the content.
    hasher = hashlib.sha1(f"blob {actual_size}\0".encode())
  with open(path, "rb") as f:
    while chunk := f.read(1 << 24):
      hasher.update(chunk)
  if hasher.hexdigest() != digest:
    raise DigestMismatchError(f"{file}: the download's digest {hasher.hexdigest()} is not the "
                              f"Hub's {digest}; it was discarded, try again")


def _config_key(config: ModelConfig) -> str:
  text = json.dumps(config.to_dict(), sort_keys=True)
  return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _read(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip() or None
  except OSError:
    return None


def _write_atomically(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False) as f:
    f.write(text)
  os.replace(f.name, path)
