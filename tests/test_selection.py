"""Honest model selection, for every config in configs/: the split that picks best_model/
(`data.eval_split`) and the split reported at the end (`train.final_split`) share no image and no
split unit (for reference-based datasets: no reference image, so no distortion of a picture the
model trained on) with the training split (`data.train_split`), and the prompts the evaluators
draw come from the training split only.

Checked on the real splits: configs/paper.py on tiny fake copies of all twelve real datasets
(tests/fake_layouts.py, built by their builders) and configs/synthetic.py on the tiny synthetic_iqa
build; the evaluation runs with a model that records every image it is given.
"""
from __future__ import annotations

import hashlib

import ml_collections
import numpy as np
import pytest

import fake_layouts
import smoke_config
from promptiqa_jax import evaluators
from promptiqa_jax.data import catalog, datasets, sources
from promptiqa_jax.data.datasets.synthetic_iqa import builder as synthetic_builder

SIZE = 32
# Enough images that every dataset's train_without_validation holds a 10-pair prompt (the
# reference-based ones get 36 // 3 = 12 references, 9 of them in train_without_validation).
N_IMAGES = 36
CONFIGS = ([("paper", arg) for arg in ("", "all12", "smoke")]
           + [("synthetic", ",".join(parts)) for parts in
              [[], ["smoke"]] + [[a] for a in smoke_config.ABLATIONS]
              + [["smoke", a] for a in smoke_config.ABLATIONS]])


@pytest.fixture(scope="module")
def paper_data_dir(tmp_path_factory) -> str:
  """A data_dir with every real dataset built (at SIZE px) from a fake copy of its layout."""
  root = tmp_path_factory.mktemp("paper_data")
  for seed, key in enumerate(fake_layouts.KEYS):
    fake_layouts.write_fake_layout(key, str(root / "manual" / key), N_IMAGES, seed=seed)
    catalog.prepare(key, root / "data", root / "manual" / key, config=SIZE)
  return str(root / "data")


def config_on_fake_data(recipe: str, arg: str, paper_data_dir: str,
                        synthetic_data_dir: str) -> ml_collections.ConfigDict:
  """configs/<recipe>.py:<arg> reading the fake builds: only data_dir, the dataset names (their
  builds) and the worker count (processes are not the point here) change."""
  config = smoke_config.recipe(recipe).get_config(arg)
  data = config.data
  if recipe == "paper":
    data.data_dir = paper_data_dir
    rename = lambda name: f"{name}/{SIZE}"
  else:
    data.data_dir = synthetic_data_dir
    build = "synthetic_iqa/" + synthetic_builder.make_config(**smoke_config.BUILD).name
    rename = lambda name: name.replace("synthetic_iqa", build, 1)
  data.train = [rename(n) for n in data.train]
  data.eval = [rename(n) for n in data.eval]
  data.num_workers = 0
  return config


def unit_of(record: dict) -> int:
  """The split unit: the reference image (or the image itself) of a real dataset, the pristine
  content of synthetic_iqa."""
  return int(record["unit"] if "unit" in record else record["content_id"])


def split_records(config: ml_collections.ConfigDict, name: str, split: str) -> list[dict]:
  source = sources.open_dataset(name, split, config.data.data_dir)
  return source.read(range(len(source)))


def image_key(image: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


class RecordingModel:
  """A FeatureModel that notes every image it featurises (by its bytes' digest); its features are
  the image's mean and its top-minus-bottom mean, so a flipped image gets other features."""

  def __init__(self):
    self.seen: set[str] = set()

  def image_features(self, images):
    images = np.asarray(images, np.float32)
    self.seen.update(image_key(image) for image in images)
    half = images.shape[1] // 2
    return np.stack([images.mean((1, 2, 3)),
                     images[:, :half].mean((1, 2, 3)) - images[:, half:].mean((1, 2, 3))], -1)

  def encode_prompt_features(self, features, scores):
    return np.asarray(features, np.float64).mean(0) + np.mean(scores)

  def score_features(self, features, prompt):
    return np.asarray(features, np.float64) @ prompt


def sides(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The role of each split a run reads -> its name."""
  return {"training": str(config.data.train_split), "selection": str(config.data.eval_split),
          "final": str(config.train.final_split)}


def overlaps(config: ml_collections.ConfigDict) -> dict[tuple[str, str, str], list]:
  """(dataset, side, side) -> the image names and split units two sides share, for every dataset
  the run trains or evaluates on; empty lists where they share none."""
  found = {}
  names = {datasets.parse_name(n)[:2]: n for n in list(config.data.train) + list(config.data.eval)}
  for name in names.values():
    records = {role: split_records(config, name, split) for role, split in sides(config).items()}
    for first, second in (("training", "selection"), ("training", "final"),
                          ("selection", "final")):
      shared_names = ({r["name"] for r in records[first]} & {r["name"] for r in records[second]})
      shared_units = ({unit_of(r) for r in records[first]}
                      & {unit_of(r) for r in records[second]})
      found[(name, first, second)] = sorted(shared_names) + sorted(shared_units)
  return found


def prompt_leaks(config: ml_collections.ConfigDict, role: str) -> list[str]:
  """Evaluates `config` on its `role` split with a RecordingModel; returns what any prompt took
  from outside the training split: images (by record) the model saw that are in neither the
  evaluated nor the training split, and prompt records whose unit is in the evaluated split."""
  split = sides(config)[role]
  model = RecordingModel()
  result = evaluators.evaluate(model, config.data, config.eval, split=split, plots=False)
  size = int(config.data.image_size)
  leaks = []
  known = {image_key(np.zeros([size, size, 3], np.float32))}  # evaluation batches' padding
  for name in config.data.eval:
    evaluated = split_records(config, name, split)
    training = split_records(config, name, config.data.train_split)
    for side, records, flips in ((split, evaluated, ()),
                                 (config.data.train_split, training, (0, 1))):
      source = sources.open_dataset(name, side, config.data.data_dir)
      for index, record in enumerate(records):
        image = sources.load_image(source, record, index, size)
        # A training image may be seen flipped (config.eval.release_prompt_flips).
        known.update(image_key(variant)
                     for variant in [image] + [np.flip(image, axis) for axis in flips])
    evaluated_units = {unit_of(r) for r in evaluated}
    for index in result["prompts"][name]["indices"]:
      if unit_of(training[int(index)]) in evaluated_units:
        leaks.append(f"{name}: prompt record {training[int(index)]['name']!r}")
  leaks += [f"an image from outside {split} and {config.data.train_split}"
            for key in model.seen if key not in known]
  return leaks


@pytest.mark.parametrize("recipe, arg", CONFIGS)
def test_selection_and_final_splits_are_apart_from_training(recipe, arg, paper_data_dir,
                                                            smoke_data_dir):
  config = config_on_fake_data(recipe, arg, paper_data_dir, smoke_data_dir)
  found = overlaps(config)
  assert {datasets.parse_name(n)[:2] for n, _, _ in found} == {
      datasets.parse_name(n)[:2] for n in list(config.data.train) + list(config.data.eval)}
  assert {k: v for k, v in found.items() if v} == {}
  for role in ("selection", "final"):
    assert prompt_leaks(config, role) == [], role


def test_prompts_with_release_flips_stay_on_the_training_side(paper_data_dir, smoke_data_dir):
  config = config_on_fake_data("paper", "smoke", paper_data_dir, smoke_data_dir)
  config.eval.release_prompt_flips = True
  for role in ("selection", "final"):
    assert prompt_leaks(config, role) == [], role


def test_the_checks_find_the_release_s_leaks(paper_data_dir, smoke_data_dir):
  """The checks can fail: training on all of `train` while selecting on `validation` shares every
  validation image; drawing prompts from the evaluated split puts its images into prompts."""
  config = config_on_fake_data("paper", "smoke", paper_data_dir, smoke_data_dir)
  config.data.train_split = "train"
  leaked = {key for key, shared in overlaps(config).items() if shared}
  assert leaked == {(n, "training", "selection") for n in config.data.train}
  config = config_on_fake_data("paper", "smoke", paper_data_dir, smoke_data_dir)
  config.data.train_split = config.train.final_split
  assert prompt_leaks(config, "final")
