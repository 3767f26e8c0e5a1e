"""`PromptIQA.from_pretrained` and `--checkpoint hub:...` against a local stand-in for the Hub.

The Hub serves a release-format file of the tiny architecture (`interop/torch_model.py`,
randomised, saved as the release saves); `HF_ENDPOINT` points huggingface_hub at the local server
(`tests/hub_server.py`), and `PROMPTIQA_JAX_CACHE` at a temporary cache. Never the real Hub.
"""
import dataclasses
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from hub_server import FakeHub, ServedFile
from promptiqa_jax import cli, hub
from promptiqa_jax.inference import PromptIQA
from promptiqa_jax.interop.convert import CheckpointMismatchError
from promptiqa_jax.models.config import ModelConfig

torch_model = pytest.importorskip("promptiqa_jax.interop.torch_model")

REPO = "someone/promptiqa-tiny"
FILENAME = "best_model.pth.tar"
TINY = ModelConfig.tiny()


def _release_bytes(tmp_path_factory, seed: int) -> tuple[str, bytes]:
  path = str(tmp_path_factory.mktemp("release") / FILENAME)
  model = torch_model.randomize_(torch_model.TorchPromptIQA(TINY), seed).eval()
  torch_model.save_release_checkpoint(model, path)
  with open(path, "rb") as f:
    return path, f.read()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[str, bytes]:
  """A release-format file of the tiny architecture: (path, content)."""
  return _release_bytes(tmp_path_factory, seed=0)


@pytest.fixture(scope="module")
def reference(release) -> PromptIQA:
  """The same file converted directly, the way `from_torch` does."""
  return PromptIQA.from_torch(release[0], TINY, batch_size=3)


@pytest.fixture
def server(release, monkeypatch):
  with FakeHub() as fake:
    fake.files[(REPO, "main", FILENAME)] = ServedFile(release[1])
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    yield fake


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
  directory = str(tmp_path / "cache")
  monkeypatch.setenv("PROMPTIQA_JAX_CACHE", directory)
  return directory


def _repo_dir(cache: str) -> str:
  return os.path.join(cache, "hub", "models--someone--promptiqa-tiny")


def _converted(cache: str) -> list[str]:
  """Entries of the repository's cache folder other than refs/."""
  if not os.path.isdir(_repo_dir(cache)):
    return []
  return sorted(name for name in os.listdir(_repo_dir(cache)) if name != "refs")


def _pretrained(**kwargs) -> PromptIQA:
  return PromptIQA.from_pretrained(REPO, config=TINY, batch_size=3, **kwargs)


def test_first_use_downloads_verifies_converts_and_caches(server, cache, release, reference):
  model = _pretrained()
  assert model.identity == reference.identity  # the same weights, bit for bit, and config
  assert server.requests["GET"] == 1
  digest = ServedFile(release[1]).sha256
  (converted,) = _converted(cache)  # no download or staging folder left beside it
  assert converted.startswith(digest + "-")
  assert os.path.isfile(os.path.join(_repo_dir(cache), converted, "model_config.json"))
  with open(os.path.join(_repo_dir(cache), "refs", "main", FILENAME)) as f:
    assert f.read() == digest


def test_later_runs_need_neither_torch_nor_a_download(server, cache, reference, monkeypatch):
  _pretrained()
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
  heads = server.requests["HEAD"]
  assert _pretrained().identity == reference.identity
  assert server.requests["GET"] == 1 and server.requests["HEAD"] == heads + 1
  assert _pretrained(local_files_only=True).identity == reference.identity
  assert server.requests["HEAD"] == heads + 1  # local_files_only asks nothing
  # The cached copy serves any compute dtype, given as an option or by the config.
  assert _pretrained(local_files_only=True, dtype="bfloat16").config.dtype == "bfloat16"
  bfloat16 = PromptIQA.from_pretrained(REPO, config=ModelConfig.tiny(dtype="bfloat16"),
                                       local_files_only=True)
  assert bfloat16.config.dtype == "bfloat16" and bfloat16.identity == reference.identity
  server.stop()  # the Hub unreachable: the copy last resolved for `main` is used
  assert _pretrained().identity == reference.identity


def test_offline_without_a_cached_copy_says_how_to_download_by_hand(cache, monkeypatch):
  with FakeHub() as stopped:
    monkeypatch.setenv("HF_ENDPOINT", stopped.endpoint)
  with pytest.raises(hub.ModelNotCachedError) as error:
    _pretrained()
  message = str(error.value)
  assert "the Hub could not be asked" in message
  assert f"{stopped.endpoint}/{REPO}/resolve/main/{FILENAME}" in message
  assert f"hf download {REPO} {FILENAME} --revision main" in message
  assert f"promptiqa-jax convert --torch {FILENAME} --out DIR" in message
  with pytest.raises(hub.ModelNotCachedError, match="local_files_only is set"):
    _pretrained(local_files_only=True)


def test_a_download_that_does_not_match_the_stated_digest_is_refused(server, cache, release):
  server.files[(REPO, "main", FILENAME)] = ServedFile(release[1], stated_sha256="0" * 64)
  with pytest.raises(hub.DigestMismatchError, match=f"is not the Hub's {'0' * 64}"):
    _pretrained()
  assert _converted(cache) == []
  assert not os.path.exists(os.path.join(_repo_dir(cache), "refs"))


def test_a_new_file_at_the_revision_is_converted_again(server, cache, reference,
                                                        tmp_path_factory):
  _pretrained()
  path, content = _release_bytes(tmp_path_factory, seed=1)
  server.files[(REPO, "main", FILENAME)] = ServedFile(content, commit="1" * 40)
  updated = _pretrained()
  assert server.requests["GET"] == 2
  assert updated.identity == PromptIQA.from_torch(path, TINY, batch_size=3).identity
  assert updated.identity != reference.identity
  assert len(_converted(cache)) == 2
  server.stop()  # offline, the revision now means the new file
  assert _pretrained().identity == updated.identity


def test_a_file_of_another_architecture_is_refused_and_not_cached(server, cache):
  with pytest.raises(CheckpointMismatchError, match="does not match the model config"):
    PromptIQA.from_pretrained(REPO)  # the paper's architecture, by default
  assert _converted(cache) == []


def test_an_interrupted_conversion_is_never_taken_for_a_finished_one(server, cache, reference,
                                                                     monkeypatch):
  def interrupted(directory, variables, config):
    os.makedirs(directory)
    with open(os.path.join(directory, "model_config.json"), "w") as f:
      json.dump(config.to_dict(), f)  # the config written, the weights never
    raise KeyboardInterrupt

  with monkeypatch.context() as patch:
    patch.setattr(hub.checkpoint, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
      _pretrained()
  assert _converted(cache) == []
  assert _pretrained().identity == reference.identity


def test_revision_and_filename_are_overridable(server, cache, release, reference):
  server.files[(REPO, "v1.0", "weights/model.pth.tar")] = ServedFile(release[1])
  model = PromptIQA.from_pretrained(REPO, revision="v1.0", filename="weights/model.pth.tar",
                                    config=TINY, batch_size=3)
  assert model.identity == reference.identity
  assert os.path.isfile(os.path.join(_repo_dir(cache), "refs", "v1.0", "weights%2Fmodel.pth.tar"))


@pytest.mark.parametrize("text,parsed", [
    ("hub:Zevin2023/PromptIQA", ("Zevin2023/PromptIQA", "main", FILENAME)),
    ("hub:a/b@v2", ("a/b", "v2", FILENAME)),
    ("hub:a/b:sub/file.pth", ("a/b", "main", "sub/file.pth")),
    ("hub:a/b@refs/pr/1:file.pth", ("a/b", "refs/pr/1", "file.pth")),
])
def test_hub_references(text, parsed):
  assert hub.is_hub_reference(text)
  assert dataclasses.astuple(hub.HubFile.parse(text)) == parsed


@pytest.mark.parametrize("text", ["hub:", "hub:noslash", "hub:a/b/c", "hub:a/b@"])
def test_bad_hub_references_say_the_form(text):
  with pytest.raises(ValueError, match=r"expected hub:OWNER/NAME\[@REVISION\]\[:FILENAME\]"):
    hub.HubFile.parse(text)


def test_cache_location(monkeypatch, tmp_path):
  monkeypatch.delenv("PROMPTIQA_JAX_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert hub.cache_root() == str(tmp_path / "xdg" / "promptiqa_jax")
  monkeypatch.setenv("PROMPTIQA_JAX_CACHE", str(tmp_path / "mine"))
  assert hub.cache_root() == str(tmp_path / "mine")
  assert hub.cache_root(tmp_path / "given") == str(tmp_path / "given")


def test_score_with_a_hub_checkpoint(server, cache, reference, tmp_path, capsys):
  config = tmp_path / "tiny.json"
  config.write_text(json.dumps(TINY.to_dict()))
  rng = np.random.default_rng(0)
  paths = [str(tmp_path / f"{index}.png") for index in range(3)]
  for path in paths:
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
  prompt = tmp_path / "prompt.json"
  prompt.write_text(json.dumps([[paths[0], 0.2], [paths[1], 0.8]]))
  argv = ["score", "--checkpoint", f"hub:{REPO}", "--model-config", str(config),
          "--prompt", str(prompt), "--batch-size", "3", "--quiet", paths[2]]
  assert cli.main(argv) == 0
  online = capsys.readouterr().out
  expected = reference.score(paths[2:], reference.encode_prompt(paths[:2], [0.2, 0.8]))
  assert online.splitlines()[1] == f"{paths[2]},{expected[0]:.6f},"
  server.stop()
  assert cli.main(argv + ["--offline"]) == 0
  assert capsys.readouterr().out == online


def test_score_offline_without_a_cached_copy_is_a_one_line_error(cache, tmp_path, capsys):
  image = str(tmp_path / "q.png")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  prompt = tmp_path / "prompt.json"
  prompt.write_text(json.dumps([[image, 0.2], [image, 0.8]]))
  code = cli.main(["score", "--checkpoint", f"hub:{REPO}", "--offline", "--prompt", str(prompt),
                   image])
  err = capsys.readouterr().err
  assert code == cli.EXIT_USAGE
  assert err.startswith(f"error: hub:{REPO}@main:{FILENAME}: no converted copy")
  assert "Download the file by hand" in err
  assert "Traceback" not in err
