"""Every `promptiqa-jax` subcommand run as a new user first types it: with only its required
arguments. Each one either does its job or ends with a one-line error that says what is missing,
never a traceback."""
import os

import pytest

import image_files
from promptiqa_jax import cli


@pytest.fixture
def tfds_home(tmp_path, monkeypatch):
  """TFDS's default data folder, pointed at an empty temporary folder (as TFDS reads it)."""
  home = tmp_path / "tensorflow_datasets"
  monkeypatch.setenv("TFDS_DATA_DIR", str(home))
  return home


def test_every_subcommand_is_covered_here():
  parser = cli.build_parser()
  commands = next(a for a in parser._actions if a.dest == "command").choices
  assert set(commands) == {"score", "export", "convert", "prepare", "datasets", "bench"}


def test_datasets_without_data_dir_uses_the_tfds_default(tfds_home, capsys):
  assert cli.main(["datasets"]) == 0
  out = capsys.readouterr().out
  assert f"data_dir: {tfds_home}" in out
  assert "koniq10k | MOS | False" in out and "synthetic_iqa" in out


def test_prepare_without_data_dir_names_the_missing_download(tfds_home, capsys):
  assert cli.main(["prepare", "csiq"]) == cli.EXIT_USAGE
  err = capsys.readouterr().err
  manual = os.path.join(tfds_home, "downloads", "manual")
  assert err.startswith("error: ") and manual in err and "Traceback" not in err


def test_prepare_synthetic_from_a_folder_of_own_photos(tmp_path, capsys):
  """`--manual-dir` adds the folder's photos as contents; `--contents none` leaves out the bundled
  ones (how the README measures the default on contents unlike the benchmark's)."""
  from promptiqa_jax.data.datasets.synthetic_iqa import builder

  folder = tmp_path / "photos"
  folder.mkdir()
  image_files.random_pngs(folder, 4, (40, 48, 3), prefix="p")
  args = ["prepare", "synthetic_iqa", "--data-dir", str(tmp_path / "data"), "--image-size", "16",
          "--manual-dir", str(folder)]
  assert cli.main(args + ["--contents", "lena"]) == cli.EXIT_USAGE
  assert "Unknown contents ['lena']" in capsys.readouterr().err
  assert cli.main(args + ["--contents", "none"]) == 0
  config = builder.make_config(image_size=16, user_image_dir=str(folder), contents=())
  built = builder.Builder(data_dir=str(tmp_path / "data"), config=config)
  names = {str(n) for split in ("train", "validation", "test")
           for n in builder.split_arrays(built, split)["name"]}
  assert {n.split("_crop")[0] for n in names} == {f"user_p{i}" for i in range(4)}, sorted(names)[:4]


def test_convert_with_a_file_of_another_model_lists_the_keys(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  from promptiqa_jax.interop import torch_model
  from promptiqa_jax.models.config import ModelConfig

  path = tmp_path / "best_model.pth.tar"
  reference = torch_model.TorchPromptIQA(ModelConfig.tiny())
  torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
              "prompt_num": 10}, path)
  assert cli.main(["convert", "--torch", str(path), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "does not match the model config" in err and "mis-shaped" in err
  assert not (tmp_path / "out").exists()


def test_score_with_only_its_required_arguments(tiny_model_dir, tmp_path, capsys):
  paths = image_files.random_pngs(tmp_path, 3)
  prompt = image_files.pair_prompt(tmp_path / "prompt.json", paths[:2], [0.2, 0.8])
  assert cli.main(["score", "--checkpoint", tiny_model_dir, "--prompt", prompt, paths[2]]) == 0
  rows = capsys.readouterr().out.strip().splitlines()
  assert rows[0] == "path,score,error" and rows[1].startswith(paths[2] + ",")
  assert 0.0 <= float(rows[1].split(",")[1]) <= 1.0


def test_export_with_only_its_required_arguments(tiny_model_dir, tmp_path, capsys):
  paths = image_files.random_pngs(tmp_path, 2)
  prompt = image_files.pair_prompt(tmp_path / "prompt.json", paths, [0.2, 0.8])
  out = tmp_path / "scorer"
  assert cli.main(["export", "--checkpoint", tiny_model_dir, "--prompt", prompt,
                   "--out", str(out)]) == 0
  assert capsys.readouterr().out == f"wrote {out / 'scorer.jaxexport'}\n"
  assert sorted(os.listdir(out)) == ["scorer.jaxexport", "scorer.json", "weights.npz"]


def test_bench_with_only_a_config(capsys):
  config = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py:smoke")
  assert cli.main(["bench", "--config", config]) == 0
  out = capsys.readouterr().out
  assert "train" in out and "infer" in out and "prompt" in out
