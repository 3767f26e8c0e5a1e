"""Prompt selection and the evaluation batches."""
import random

import numpy as np
import pytest

import fake_iqa
from fake_iqa import data_config
from promptiqa_jax.data import preprocess, prompts, sources

fake_data_dir = fake_iqa.fake_data_dir  # the session-wide fake build


def _reference_interval(scores, n, sample_type="fix", seed=None):
  """The reference's get_prompt loop, on (index, score) pairs; its random shuffle seeded."""
  combined = list(enumerate(scores))
  if sample_type == "fix":
    combined.sort(key=lambda x: x[1])
  else:
    random.seed(seed)
    random.shuffle(combined)
  length = len(scores)
  step = (length - 2) // (n - 2)
  picked = [combined[0][0]]
  for i in range(step, length, step):
    picked.append(combined[i][0])
    if len(picked) == n - 1:
      break
  picked.append(combined[-1][0])
  return picked


def test_interval_sampling_on_a_known_list():
  # Scores 0..22 in a scrambled order: sorted position p holds the score p.
  scores = np.random.default_rng(0).permutation(23).astype(np.float32)
  picked = prompts.select_prompt(scores, 10, "interval")
  # k = (23 - 2) // (10 - 2) = 2: the lowest, every 2nd up to 9 pairs, then the highest.
  np.testing.assert_array_equal(scores[picked], [0, 2, 4, 6, 8, 10, 12, 14, 16, 22])
  np.testing.assert_array_equal(picked, _reference_interval(scores, 10))
  # k = 98 // 8 = 12.
  scores = np.arange(100, dtype=np.float32)[::-1]
  np.testing.assert_array_equal(scores[prompts.select_prompt(scores, 10, "interval")],
                                [0, 12, 24, 36, 48, 60, 72, 84, 96, 99])


@pytest.mark.parametrize("n,size", [(10, 10), (11, 10), (57, 10), (5, 3), (1000, 7)])
def test_interval_sampling_matches_the_reference_loop(n, size):
  scores = np.random.default_rng(n).integers(0, 20, n).astype(np.float32)  # with ties
  picked = prompts.select_prompt(scores, size, "interval")
  assert len(set(picked.tolist())) == size
  np.testing.assert_array_equal(picked, _reference_interval(scores.tolist(), size))


def test_interval_of_two_is_lowest_and_highest():
  np.testing.assert_array_equal(prompts.select_prompt([0.5, 0.1, 0.9, 0.3], 2, "interval"), [1, 2])


@pytest.mark.parametrize("n,size,seed", [(50, 10, 3), (11, 10, 0), (23, 4, 9)])
def test_random_sampling_is_the_references_rule_seeded(n, size, seed):
  scores = np.random.default_rng(n).uniform(size=n)
  np.testing.assert_array_equal(prompts.select_prompt(scores, size, "random", seed=seed),
                                _reference_interval(scores.tolist(), size, "random", seed))


def test_random_sampling_is_seeded():
  first = prompts.select_prompt(np.arange(50), 10, "random", seed=3)
  assert len(set(first.tolist())) == 10 and first.max() < 50
  np.testing.assert_array_equal(prompts.select_prompt(np.arange(50), 10, "random", seed=3), first)
  assert not np.array_equal(prompts.select_prompt(np.arange(50), 10, "random", seed=4), first)


def test_selection_errors():
  with pytest.raises(ValueError, match="prompt of 10 pairs from 9 records"):
    prompts.select_prompt(np.arange(9), 10, "interval")
  with pytest.raises(ValueError, match="Unknown prompt sampling 'fixed'"):
    prompts.select_prompt(np.arange(20), 10, "fixed")
  with pytest.raises(ValueError, match="needs a seed"):
    prompts.select_prompt(np.arange(20), 10, "random")
  for method in prompts.METHODS:
    with pytest.raises(ValueError, match="size >= 2, got 1"):
      prompts.select_prompt(np.arange(20), 1, method, seed=0)


def test_load_prompt(fake_data_dir):
  config = data_config(fake_data_dir)
  images, scores = prompts.load_prompt(config, "fake_iqa_a")
  assert images.shape == (5, 12, 12, 3) and images.dtype == np.float32
  train = sources.open_dataset("fake_iqa_a", "train", fake_data_dir).all_scores()
  expected = prompts.select_prompt(train, 5, "interval")
  np.testing.assert_array_equal(scores, train[expected])
  assert scores[0] == train.min() and scores[-1] == train.max()
  assert np.all(np.diff(scores) > 0)

  requirement, _ = prompts.load_prompt(config, "fake_multi:sharp", size=3, method="random", seed=1)
  assert requirement.shape == (3, 12, 12, 3)
  with pytest.raises(ValueError, match="'fake_iqa_small'.*prompt of 5 pairs from 3 records"):
    prompts.load_prompt(config, "fake_iqa_small")


def test_eval_batches_are_padded_and_masked(fake_data_dir):
  config = data_config(fake_data_dir)
  batches = prompts.eval_batches(config, "fake_iqa_a")
  assert (len(batches), batches.num_examples) == (3, 7)
  out = list(batches)
  assert len(out) == 3
  for batch in out:
    assert batch["image"].shape == (3, 12, 12, 3) and batch["score"].shape == (3,)
  np.testing.assert_array_equal(out[2]["mask"], [True, False, False])
  np.testing.assert_array_equal(out[2]["index"], [6, -1, -1])
  assert not out[2]["image"][1:].any()

  source = sources.open_dataset("fake_iqa_a", "test", fake_data_dir)
  index = np.concatenate([b["index"] for b in out])
  score = np.concatenate([b["score"] for b in out])
  np.testing.assert_array_equal(index[:7], np.arange(7))
  np.testing.assert_array_equal(score[:7], source.all_scores())
  record = source.read([4])[0]
  np.testing.assert_array_equal(
      out[1]["image"][1], preprocess.preprocess(preprocess.decode_image(record["image"]), 12))
  # Iterable again, with the same batches.
  np.testing.assert_array_equal(next(iter(batches))["image"], out[0]["image"])


def test_eval_batches_across_processes(fake_data_dir):
  config = data_config(fake_data_dir, eval_batch_size=2)
  parts = [list(prompts.eval_batches(config, "fake_iqa_a", process_index=p, process_count=3))
           for p in range(3)]
  assert [len(p) for p in parts] == [2, 2, 2]  # 4 real batches, padded to 6
  index = np.concatenate([b["index"][b["mask"]] for p in parts for b in p])
  np.testing.assert_array_equal(np.sort(index), np.arange(7))
  assert not parts[1][1]["mask"].any() and not parts[2][1]["mask"].any()


def test_eval_splits_and_requirements(fake_data_dir):
  config = data_config(fake_data_dir)
  validation = prompts.eval_batches(config, "fake_iqa_a", "validation", 8)
  assert (len(validation), validation.num_examples) == (1, 5)
  multi = list(prompts.eval_batches(config, "fake_multi:combo", batch_size=6))
  source = sources.open_dataset("fake_multi:combo", "test", fake_data_dir)
  np.testing.assert_array_equal(multi[0]["score"],
                                [r["scores"][2] for r in source.read(range(6))])
  with pytest.raises(ValueError, match="random requirement"):
    prompts.eval_batches(config, "fake_multi:random")
  with pytest.raises(ValueError, match="no split 'dev'"):
    prompts.eval_batches(config, "fake_iqa_a", "dev")
