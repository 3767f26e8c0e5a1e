"""The grain training stream over tiny fake TFDS datasets (tests/fake_iqa.py)."""
import json

import grain
import numpy as np
import pytest
from etils import epath

import fake_iqa
from fake_iqa import data_config
from promptiqa_jax.data import pipeline, preprocess, sources

fake_data_dir = fake_iqa.fake_data_dir  # the session-wide fake build


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _groups(batches):
  """(dataset id, record indices) of every group in `batches`, in stream order."""
  return [(int(d), tuple(int(i) for i in idx))
          for b in batches for d, idx in zip(b["dataset"], b["index"])]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batches_hold_whole_groups_of_one_dataset(fake_data_dir):
  config = data_config(fake_data_dir)
  stream = pipeline.train_stream(config)
  assert stream.datasets == ("fake_iqa_a", "fake_iqa_b")
  assert stream.dataset_groups == (26 // 4, 18 // 4)
  assert stream.steps_per_epoch == (6 + 4) // 2
  batches = _take(iter(stream), stream.steps_per_epoch)
  for key, (shape, dtype) in stream.element_spec.items():
    assert batches[0][key].shape == shape and batches[0][key].dtype == dtype, key

  opened = {name: sources.open_dataset(name, "train", fake_data_dir) for name in stream.datasets}
  for batch in batches:
    for g in range(2):
      source = opened[stream.datasets[batch["dataset"][g]]]
      records = source.read(batch["index"][g])
      # The group's clean scores are its records' scores, so every member is of the named dataset.
      np.testing.assert_array_equal(batch["score_clean"][g], source.scores(records))
      for image, record in zip(batch["image"][g], records):
        expected = preprocess.preprocess(preprocess.decode_image(record["image"]), 12)
        # data_config flips vertically (test_image_flip_axis_and_rate tests the rate).
        assert (np.array_equal(image, expected) or np.array_equal(image, expected[::-1]))
  # A, B scores lie in [0.05, 0.4] and [0.6, 0.95]: no group mixes them.
  clean = np.concatenate([b["score_clean"] for b in batches])
  assert np.all((clean.max(1) <= 0.4) | (clean.min(1) >= 0.6))


def test_epoch_covers_each_dataset_once_and_reshuffles(fake_data_dir):
  stream = pipeline.train_stream(data_config(fake_data_dir))
  batches = _take(iter(stream), 2 * stream.steps_per_epoch)
  epochs = [_groups(batches[:5]), _groups(batches[5:])]
  for groups in epochs:
    for d, size in enumerate(stream.dataset_sizes):
      members = [i for gd, idx in groups if gd == d for i in idx]
      assert len(members) == len(set(members)) == (size // 4) * 4
  assert epochs[0] != epochs[1]


@pytest.mark.parametrize("flip", ["vertical", "horizontal", "none"])
def test_image_flip_axis_and_rate(fake_data_dir, flip):
  """Each image is reversed along H ("vertical", the release's flip) or W ("horizontal") on its own
  with p = 0.5, or never; the score augmentation does not depend on the setting."""
  stream = pipeline.train_stream(data_config(fake_data_dir, flip=flip, groups_per_batch=10))
  batches = _take(iter(stream), 20)  # 200 groups of 4
  opened = {name: sources.open_dataset(name, "train", fake_data_dir) for name in stream.datasets}
  axis = {"vertical": 0, "horizontal": 1, "none": 0}[flip]
  flips = []
  for batch in batches:
    for dataset, indices, images in zip(batch["dataset"], batch["index"], batch["image"]):
      group = []
      for image, record in zip(images, opened[stream.datasets[dataset]].read(indices)):
        expected = preprocess.preprocess(preprocess.decode_image(record["image"]), 12)
        reversed_ = np.flip(expected, axis)
        assert not np.array_equal(reversed_, expected)  # a flip would show
        group.append(not np.array_equal(image, expected))
        if group[-1]:
          np.testing.assert_array_equal(image, reversed_)
      flips.append(group)
  flips = np.array(flips)
  if flip == "none":
    assert not flips.any()
  else:
    # 800 images: 4.5 binomial standard deviations of the rate are 0.08.
    assert abs(flips.mean() - 0.5) <= 4.5 * np.sqrt(0.25 / flips.size)
    # Per image, not per group: most groups of 4 mix flipped and upright images.
    mixed = flips.any(axis=1) & ~flips.all(axis=1)
    assert mixed.mean() > 0.7
  reference = _take(iter(pipeline.train_stream(data_config(fake_data_dir, groups_per_batch=10))), 20)
  for key in ("score", "scale", "flipped", "index"):
    np.testing.assert_array_equal(np.concatenate([b[key] for b in batches]),
                                  np.concatenate([b[key] for b in reference]), err_msg=key)


def test_unknown_flip_is_refused(fake_data_dir):
  with pytest.raises(ValueError, match="config.data.flip must be one of 'vertical', 'horizontal', "
                                       "'none', got 'diagonal'"):
    pipeline.train_stream(data_config(fake_data_dir, flip="diagonal"))


def test_score_augmentation(fake_data_dir):
  stream = pipeline.train_stream(data_config(fake_data_dir, groups_per_batch=10))
  batches = _take(iter(stream), 100)  # 1000 groups
  score = np.concatenate([b["score"] for b in batches])
  clean = np.concatenate([b["score_clean"] for b in batches])
  scale = np.concatenate([b["scale"] for b in batches])
  flipped = np.concatenate([b["flipped"] for b in batches])
  # Binomial standard deviations over 1000 groups: 0.016 and 0.0095.
  assert abs(np.mean(scale != 1) - 0.5) < 0.065
  assert abs(np.mean(flipped) - 0.1) < 0.04
  assert np.all((scale >= clean.max(1)) & (scale <= 1))
  expected = clean / scale[:, None]
  expected = np.where(flipped[:, None], 1 - expected, expected)
  np.testing.assert_allclose(score, expected, atol=1e-6)
  assert score.min() >= 0 and score.max() <= 1


def test_no_augmentation_when_rates_are_zero(fake_data_dir):
  stream = pipeline.train_stream(data_config(fake_data_dir, scale_rate=0.0, flip_rate=0.0))
  for batch in _take(iter(stream), 3):
    np.testing.assert_array_equal(batch["score"], batch["score_clean"])
    assert np.all(batch["scale"] == 1) and not batch["flipped"].any()


def test_restore_mid_epoch_continues_the_stream(fake_data_dir, tmp_path):
  stream = pipeline.train_stream(data_config(fake_data_dir))
  iterator = iter(stream)
  _take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))
  # Batches 3..6 cross the end of the first epoch (5 steps).
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=iterator)
  expected = _take(iterator, 4)

  restored = iter(pipeline.train_stream(data_config(fake_data_dir)))
  restored.set_state(state)
  _assert_same_batches(_take(restored, 4), expected)

  via_orbax_handler = grain.checkpoint.CheckpointHandler().restore(
      epath.Path(tmp_path), item=iter(stream))
  assert via_orbax_handler.step == 3
  _assert_same_batches(_take(via_orbax_handler, 4), expected)


def test_restore_refuses_another_layout(fake_data_dir):
  state = iter(pipeline.train_stream(data_config(fake_data_dir))).get_state()
  other = iter(pipeline.train_stream(data_config(fake_data_dir, group_size=3)))
  with pytest.raises(ValueError, match="another epoch layout"):
    other.set_state(state)


def test_processes_get_disjoint_groups_covering_the_epoch(fake_data_dir):
  config = data_config(fake_data_dir)
  whole = _groups(_take(iter(pipeline.train_stream(config)), 5))
  parts = []
  for p in range(2):
    stream = pipeline.train_stream(config, process_index=p, process_count=2)
    assert stream.local_groups_per_batch == 1 and stream.steps_per_epoch == 5
    parts.append(_groups(_take(iter(stream), 5)))
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == sorted(whole)
  # Step by step, the processes' groups together are the single-process batch.
  assert [g for pair in zip(parts[0], parts[1]) for g in pair] == whole


def test_reproducible_from_seed(fake_data_dir):
  first = _take(iter(pipeline.train_stream(data_config(fake_data_dir))), 2)
  _assert_same_batches(_take(iter(pipeline.train_stream(data_config(fake_data_dir))), 2), first)
  other = _take(iter(pipeline.train_stream(data_config(fake_data_dir, seed=1))), 2)
  assert _groups(other) != _groups(first)


def test_weights_set_groups_per_epoch(fake_data_dir):
  stream = pipeline.train_stream(data_config(fake_data_dir, weights=[1.0, 4.0]))
  assert stream.dataset_groups == (2, 8)  # 10 groups split 1:4
  groups = _groups(_take(iter(stream), stream.steps_per_epoch))
  assert sum(d == 1 for d, _ in groups) == 8
  # 8 groups of B take two passes over its 4 full groups: no group repeats within a pass.
  b_members = [i for d, idx in groups if d == 1 for i in idx]
  assert len(b_members) == 32 and max(np.bincount(b_members)) == 2


def test_requirement_names(fake_data_dir):
  config = data_config(fake_data_dir, train=["fake_multi:bright", "fake_multi:random"],
                       group_size=5, groups_per_batch=4)
  stream = pipeline.train_stream(config)
  source = sources.open_dataset("fake_multi:bright", "train", fake_data_dir)
  trainable = [i for i, r in enumerate(fake_iqa.REQUIREMENTS) if not r.heldout]
  for batch in _take(iter(stream), 2):
    for d, idx, clean in zip(batch["dataset"], batch["index"], batch["score_clean"]):
      records = source.read(idx)
      table = fake_iqa.requirement_scores(np.stack([r["levels"] for r in records]))
      if stream.datasets[d] == "fake_multi:bright":
        np.testing.assert_array_equal(clean, [r["scores"][1] for r in records])
      else:  # One requirement drawn for the whole group.
        assert any(np.allclose(clean, table[:, j]) for j in trainable)


def test_bad_names_and_folders(fake_data_dir, tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset 'no_such_set'"):
    pipeline.train_stream(data_config(fake_data_dir, train=["no_such_set"]))
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    pipeline.train_stream(data_config(missing))
  with pytest.raises(FileNotFoundError, match="'fake_iqa_a'.*not built"):
    pipeline.train_stream(data_config(str(tmp_path)))
  with pytest.raises(ValueError, match="no split 'training'"):
    pipeline.train_stream(data_config(fake_data_dir, train_split="training"))
  with pytest.raises(ValueError, match="Unknown requirement 'sharpness'"):
    pipeline.train_stream(data_config(fake_data_dir, train=["fake_multi:sharpness"]))


def test_too_few_records_for_a_group(fake_data_dir):
  with pytest.raises(ValueError, match="'fake_iqa_small' has 3 records"):
    pipeline.train_stream(data_config(fake_data_dir, train=["fake_iqa_a", "fake_iqa_small"]))


def test_decode_error_names_record_and_dataset(fake_data_dir):
  config = data_config(fake_data_dir, train=["fake_iqa_corrupt"], group_size=8, groups_per_batch=1)
  with pytest.raises(preprocess.ImageError,
                     match="fake_iqa_corrupt_train_5.png.*'fake_iqa_corrupt'"):
    next(iter(pipeline.train_stream(config)))


def test_worker_processes_give_the_same_stream(fake_data_dir):
  expected = _take(iter(pipeline.train_stream(data_config(fake_data_dir))), 4)
  iterator = iter(pipeline.train_stream(data_config(fake_data_dir, num_workers=2)))
  try:
    _assert_same_batches(_take(iterator, 4), expected)
    # The state counts groups, whatever the number of workers.
    assert iterator.get_state()["next_group"] == 8
  finally:
    iterator.close()


@pytest.fixture(scope="module")
def synthetic_build(tmp_path_factory):
  """A tiny synthetic_iqa build (6 contents: 4 train, 1 validation, 1 test; 5 records each)."""
  from promptiqa_jax.data.datasets.synthetic_iqa import builder as synthetic_iqa
  data_dir = str(tmp_path_factory.mktemp("synthetic"))
  builder = synthetic_iqa.prepare(
      data_dir, image_size=16, crops_per_content=1, distorted_per_crop=5,
      contents=["astronaut", "camera", "chelsea", "coffee", "coins", "brick"])
  return data_dir, f"synthetic_iqa/{builder.builder_config.name}"


def test_synthetic_iqa_with_the_recipe_config(synthetic_build):
  import importlib.util
  import os
  from promptiqa_jax.data import datasets, prompts

  path = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py")
  spec = importlib.util.spec_from_file_location("synthetic_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke").data
  assert config.train[-1] == "synthetic_iqa:random"
  table = datasets.requirement_table("synthetic_iqa")
  assert len(config.eval) == len(table.requirements)

  data_dir, name = synthetic_build
  # The recipe's names, pointed at the tiny build's config.
  config.data_dir = data_dir
  config.train = [n.replace("synthetic_iqa", name) for n in config.train]
  config.eval = [n.replace("synthetic_iqa", name) for n in config.eval]
  stream = pipeline.train_stream(config)
  assert stream.dataset_sizes == (20,) * len(config.train)
  source = sources.open_dataset(config.train[0], "train", data_dir)
  column = table.index(config.train[0].split(":")[1])
  for batch in _take(iter(stream), 4):
    assert batch["image"].shape == (2, 5, 32, 32, 3)
    assert np.all((batch["score"] >= 0) & (batch["score"] <= 1))
    for d, idx, clean in zip(batch["dataset"], batch["index"], batch["score_clean"]):
      if d == 0:
        np.testing.assert_array_equal(clean, [r["scores"][column] for r in source.read(idx)])

  images, scores = prompts.load_prompt(config, config.eval[3])
  assert images.shape == (4, 32, 32, 3) and np.all(np.diff(scores) >= 0)
  batches = list(prompts.eval_batches(config, config.eval[3], "test"))
  assert sum(int(b["mask"].sum()) for b in batches) == 5
