"""The training stream over real-dataset builders (fake copies of their layouts)."""
import ml_collections
import numpy as np

from fake_layouts import write_fake_layout
from promptiqa_jax.data import catalog, train_stream

SIZE = 32


def test_stream_over_two_real_builders_yields_single_dataset_groups(tmp_path):
  data_dir = tmp_path / "data"
  scores = []
  for key, count in (("koniq10k", 24), ("csiq", 24)):
    records = write_fake_layout(key, str(tmp_path / key), count, seed=1)
    scores.append(np.array([r["score"] for r in records], np.float32))
    catalog.prepare(key, data_dir, tmp_path / key, config=SIZE)
  names = [f"koniq10k/{SIZE}", f"csiq/{SIZE}"]
  data = ml_collections.ConfigDict(dict(
      data_dir=str(data_dir), train=names, train_split="train", weights=None, group_size=4,
      groups_per_batch=2, image_size=SIZE, scale_rate=0.5, flip_rate=0.1, flip="vertical", seed=0,
      num_workers=0))
  stream = train_stream(data)
  assert stream.datasets == tuple(names)
  iterator = iter(stream)
  seen = set()
  for _ in range(stream.steps_per_epoch):
    batch = next(iterator)
    assert batch["image"].shape == (2, 4, SIZE, SIZE, 3)
    for group in range(2):
      dataset = int(batch["dataset"][group])
      seen.add(dataset)
      # Every clean score of the group is one of its dataset's normalised scores, none the other's.
      clean = batch["score_clean"][group]
      assert np.all(np.isclose(clean[:, None], scores[dataset][None], atol=1e-6).any(axis=1))
      assert not np.isclose(clean[:, None], scores[1 - dataset][None], atol=1e-6).any()
  iterator.close()
  assert seen == {0, 1}
