"""The real IQA dataset builders, each run on a tiny fake copy of its layout (tests/fake_layouts.py).

Expected values are worked out by hand from the spec (shared/spec/datasets.md) and the reference's
split code (`random.seed(2024); random.shuffle(list(range(n))); first round(0.8 n) train`), its
dataset list (the n it shuffles), the way each of its dataset classes lists a split's images and its
prompt sampling (transcribed below), not taken from the builders. Images are stored at 32x32 (a
builder config for tests) except in the test of the "224" and "full" configs.
"""
from __future__ import annotations

import importlib
import logging
import os
import random
import sys
import types

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import fake_layouts
from promptiqa_jax.data import catalog, datasets, preprocess, prompts, sources
from promptiqa_jax.data.datasets import iqa_base

SIZE = 32
N_IMAGES = 12

# Hand-typed from the spec: score type, lower_better, raw range, split unit.
FACTS = {
    "koniq10k": ("MOS", False, (1, 100), "image"),
    "spaq": ("MOS", False, (0, 100), "image"),
    "livec": ("MOS", False, (1, 100), "image"),
    "live": ("DMOS", True, (1, 100), "reference"),
    "csiq": ("DMOS", True, (0, 1), "reference"),
    "tid2013": ("MOS", False, (0, 9), "reference"),
    "kadid10k": ("MOS", False, (1, 5), "reference"),
    "bid": ("MOS", False, (0, 5), "image"),
    "gfiqa20k": ("MOS", False, (0, 1), "image"),
    "agiqa3k": ("MOS", False, (0, 5), "image"),
    "aigciqa2023": ("MOS", False, (0, 100), "image"),
    "uwiqa": ("MOS", False, (0, 1), "image"),
}
# Under 5,000 images: these get the ten random splits.
SMALL = {"livec", "live", "csiq", "tid2013", "bid", "agiqa3k", "aigciqa2023", "uwiqa"}
# The reference's dataset list (utils/dataset/dataset_info.json): the n its split shuffles.
RELEASE_COUNT = {"koniq10k": 10073, "spaq": 11125, "livec": 1162, "live": 29, "csiq": 30,
                 "tid2013": 25, "kadid10k": 81, "bid": 586, "gfiqa20k": 19998, "agiqa3k": 2982,
                 "aigciqa2023": 2400, "uwiqa": 890}
# How each reference dataset class lists a split's images: "units" loops over the split's index
# list (and, per reference image, over the label file); "rows" loops over the label file, keeping
# the rows whose unit is in the list.
RELEASE_LISTING = {"koniq10k": "units", "spaq": "rows", "livec": "units", "live": "units",
                   "csiq": "units", "tid2013": "units", "kadid10k": "rows", "bid": "units",
                   "gfiqa20k": "units", "agiqa3k": "units", "aigciqa2023": "units", "uwiqa": "rows"}
SYNTHETIC_MODULE = datasets.DATASET_MODULES["synthetic_iqa"]


@pytest.fixture(autouse=True, scope="module")
def _quiet_tfds():
  tfds.disable_progress_bar()


def read_split(builder, split):
  """name -> decoded record of every record in `split`."""
  source = builder.as_data_source(split)
  records = [source[i] for i in range(len(source))]
  return {r["name"].decode(): r for r in records}


def names_in_order(builder, split):
  """The names of `split`'s records in record order."""
  source = builder.as_data_source(split)
  return [source[i]["name"].decode() for i in range(len(source))]


def reference_split(n_units, seed):
  """The reference's toolkit.get_data split, verbatim in spirit: (train, test) index lists."""
  index = list(range(n_units))
  random.seed(seed)
  random.shuffle(index)
  return index[0:int(round(0.8 * len(index)))], index[int(round(0.8 * len(index))):len(index)]


def reference_train_units(n_units, seed):
  return set(reference_split(n_units, seed)[0])


def reference_listing(key, expected, index):
  """The records (label-file order in `expected`) of a split's index list, as the reference's
  dataset class lists them."""
  if RELEASE_LISTING[key] == "units":
    return [r for unit in index for r in expected if r["unit"] == unit]
  return [r for r in expected if r["unit"] in index]


def reference_prompt(samples, n, sample_type, seed=None):
  """The reference's get_prompt on its split's samples: their names, in prompt order."""
  # Its normalised scores are float32 arithmetic on float32 labels.
  combined = [(r["name"], r["score_reference"]) for r in samples]
  if sample_type == "fix":
    combined.sort(key=lambda x: x[1])
  else:
    random.seed(seed)  # the reference's own call is random.seed(), unseeded
    random.shuffle(combined)
  length = len(samples)
  data_len = (length - 2) // (n - 2)
  sample = [combined[0][0]]
  for i in range(data_len, length, data_len):
    sample.append(combined[i][0])
    if len(sample) == n - 1:
      break
  sample.append(combined[-1][0])
  return sample


def units(records):
  return {int(r["unit"]) for r in records.values()}


@pytest.mark.parametrize("key", fake_layouts.KEYS)
def test_builder_reads_fake_layout(key, tmp_path):
  expected = fake_layouts.write_fake_layout(key, str(tmp_path / "manual"), N_IMAGES,
                                            seed=fake_layouts.KEYS.index(key))
  builder = catalog.prepare(key, tmp_path / "data", tmp_path / "manual", config=SIZE)

  split_names = set(builder.info.splits.keys())
  fixed = {"train", "test", "validation", "train_without_validation"}
  random_splits = {f"split{k}_{side}" for k in range(10) for side in ("train", "test")}
  official = {"official_train", "official_validation", "official_test"}
  assert split_names == (fixed | (random_splits if key in SMALL else set())
                         | (official if key == "koniq10k" else set()))
  splits = {name: read_split(builder, name) for name in split_names}

  # Records: every labelled image once across train and test, with its scores, unit and pixels.
  train, test = splits["train"], splits["test"]
  assert not set(train) & set(test)
  by_name = {r["name"]: r for r in expected}
  assert set(train) | set(test) == set(by_name)
  for name, record in {**train, **test}.items():
    want = by_name[name]
    assert record["score_raw"] == pytest.approx(want["score_raw"], rel=1e-6)
    assert record["score"] == pytest.approx(want["score"], rel=1e-5, abs=1e-6)
    assert record["unit"] == want["unit"]
    assert record["label_index"] == want["label_index"]
    assert record["image"].shape == (SIZE, SIZE, 3) and record["image"].dtype == np.uint8
    np.testing.assert_array_equal(
        record["image"], preprocess.resize_bicubic(preprocess.load_image(want["path"]), SIZE))

  # Splits by unit: the reference's 80/20, validation carved from train, no unit on both sides.
  # The fake layouts hold fewer units than the reference's list: the label files' count is shuffled.
  n_units = len({r["unit"] for r in expected})
  assert units(train) == reference_train_units(n_units, 2024)
  assert not units(train) & units(test)
  validation, rest = splits["validation"], splits["train_without_validation"]
  assert units(validation) and units(validation) <= units(train)
  assert set(validation) | set(rest) == set(train) and not units(validation) & units(rest)
  # Each split in the order the reference lists it; subsets of train in train's order.
  order = {name: names_in_order(builder, name) for name in split_names}
  for side, index in zip(("train", "test"), reference_split(n_units, 2024)):
    assert order[side] == [r["name"] for r in reference_listing(key, expected, index)], side
  for subset in ("validation", "train_without_validation"):
    assert order[subset] == [n for n in order["train"] if n in splits[subset]]
  if key in SMALL:
    for k in range(10):
      side_train, side_test = splits[f"split{k}_train"], splits[f"split{k}_test"]
      assert units(side_train) == reference_train_units(n_units, k)
      assert set(side_train) | set(side_test) == set(by_name)
      assert not units(side_train) & units(side_test)
      for side, index in zip(("train", "test"), reference_split(n_units, k)):
        assert order[f"split{k}_{side}"] == [
            r["name"] for r in reference_listing(key, expected, index)], (k, side)
  if key == "koniq10k":
    for side in ("train", "validation", "test"):
      assert order[f"official_{side}"] == [r["name"] for r in expected
                                           if r["official_split"] == side]

  # Metadata, in the module and in the built dataset.
  score_type, lower_better, raw_range, unit = FACTS[key]
  module_facts = importlib.import_module(datasets.DATASET_MODULES[key]).FACTS
  for meta in (builder.info.metadata, tfds.builder_from_directory(builder.data_dir).info.metadata):
    assert meta["score_type"] == score_type == module_facts.score_type
    assert meta["lower_better"] is lower_better is module_facts.lower_better
    assert tuple(meta["raw_range"]) == raw_range == module_facts.raw_range
    assert meta["split_unit"] == unit
    assert meta["release_count"] == RELEASE_COUNT[key] == module_facts.release_count
    assert meta["release_listing"] == RELEASE_LISTING[key] == module_facts.release_listing
    assert (meta["split_count"], meta["split_count_source"]) == (n_units, "label file")
    assert meta["download_url"] and meta["license"]
    assert meta["reference_split_seed"] == 2024
    assert meta["random_split_seeds"] == (list(range(10)) if key in SMALL else [])
    assert meta["skipped_images"] == []


def test_224_and_full_configs(tmp_path):
  expected = fake_layouts.write_fake_layout("csiq", str(tmp_path / "manual"), 9, seed=3)
  by_name = {r["name"]: r for r in expected}
  for config, shape in (("224", (224, 224, 3)), ("full", (24, 32, 3))):
    builder = catalog.prepare("csiq", tmp_path / "data", tmp_path / "manual", config=config)
    # Read back the way the training stream will: by name, from the data directory alone.
    source = tfds.data_source(f"csiq/{config}", data_dir=str(tmp_path / "data"), split="test")
    assert len(source) == builder.info.splits["test"].num_examples
    for record in read_split(builder, "train").values():
      original = preprocess.load_image(by_name[record["name"].decode()]["path"])
      assert record["image"].shape == shape
      want = original if config == "full" else preprocess.resize_bicubic(original, 224)
      np.testing.assert_array_equal(record["image"], want)
  built = {row["name"]: row for row in catalog.list_datasets(tmp_path / "data")}
  assert built["csiq"]["prepared"] and built["csiq"]["prepared_configs"] == ["224", "full"]


@pytest.mark.parametrize("key", fake_layouts.KEYS)
def test_prompts_on_tied_scores_pick_the_references_images(key, tmp_path):
  """30 images with 4 distinct scores: interval and random prompts from the train split hold the
  images the reference's get_prompt picks from its own listing of the split."""
  expected = fake_layouts.write_fake_layout(key, str(tmp_path / "manual"), 30, seed=7, ties=4)
  for record in expected:
    record["score_reference"] = fake_layouts.NORM[key](np.float32(record["score_raw"]))
  catalog.prepare(key, tmp_path / "data", tmp_path / "manual", config=SIZE)
  source = sources.open_dataset(f"{key}/{SIZE}", "train", str(tmp_path / "data"))
  scores = source.all_scores()
  assert len(set(scores.tolist())) <= 4 < len(scores)
  n_units = len({r["unit"] for r in expected})
  samples = reference_listing(key, expected, reference_split(n_units, 2024)[0])

  def names(indices):
    return [sources.record_name(r) for r in source.read(indices)]

  interval = names(prompts.select_prompt(scores, 6, "interval"))
  assert interval == reference_prompt(samples, 6, "fix")
  # Ties decide the picks here: the same rule over the split listed backwards picks others.
  assert reference_prompt(samples[::-1], 6, "fix") != interval
  for seed in (0, 7):
    picked = names(prompts.select_prompt(scores, 6, "random", seed=seed))
    assert picked == reference_prompt(samples, 6, "random", seed)


def test_split_shuffles_the_references_count_where_the_labels_hold_it(caplog):
  """GFIQA-20k: the reference's list says 19,998. A label file of 19,998 rows gives its exact
  split (train: its shuffled index list, in order); the 19,988 the dataset's documentation counts
  give a split of range(19988), said so in the metadata and a warning."""
  from promptiqa_jax.data.datasets import gfiqa20k

  def entries(n):
    return [iqa_base.Entry(name=f"image/{i:05d}.png", score_raw=0.5, unit=i, label_index=i,
                           source=f"mos.csv line {i + 2}") for i in range(n)]

  release = entries(19998)
  assert iqa_base.split_count(release, gfiqa20k.FACTS) == {"split_count": 19998,
                                                           "split_count_source": "release"}
  train, test = reference_split(19998, 2024)
  splits = iqa_base.assign_splits(release, gfiqa20k.FACTS)
  assert splits["train"] == train and splits["test"] == test
  with caplog.at_level(logging.WARNING):
    assert iqa_base.split_count(entries(19988), gfiqa20k.FACTS) == {
        "split_count": 19988, "split_count_source": "label file"}
  assert "19988 split units, the reference's dataset list 19998" in caplog.text
  assert iqa_base.assign_splits(entries(19988), gfiqa20k.FACTS)["train"] == reference_split(
      19988, 2024)[0]


def test_builds_store_images_upright_by_their_exif_orientation(tmp_path):
  """A phone-style JPEG with orientation 6 is stored as OpenCV reads it (rotated upright)."""
  manual = tmp_path / "manual"
  expected = fake_layouts.write_fake_layout("koniq10k", str(manual), 6, seed=4)
  rotated = expected[2]
  pixels = np.asarray(Image.open(rotated["path"]).convert("RGB").resize((40, 24)))
  orientation = Image.Exif()
  orientation[0x0112] = 6
  Image.fromarray(pixels).save(rotated["path"], "JPEG", quality=90, exif=orientation.tobytes())
  for config, size in (("full", None), (SIZE, SIZE)):
    builder = catalog.prepare("koniq10k", tmp_path / "data", manual, config=config)
    records = {**read_split(builder, "train"), **read_split(builder, "test")}
    upright = cv2.cvtColor(cv2.imread(rotated["path"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert upright.shape == (40, 24, 3)
    want = upright if size is None else preprocess.resize_bicubic(upright, size)
    np.testing.assert_array_equal(records[rotated["name"]]["image"], want)


def _label_files():
  for key in fake_layouts.KEYS:
    for label in importlib.import_module(datasets.DATASET_MODULES[key]).LABEL_FILES:
      yield key, label


@pytest.mark.parametrize("key,label", list(_label_files()))
def test_missing_label_file_is_named_with_its_folder(key, label, tmp_path):
  manual = tmp_path / "manual"
  fake_layouts.write_fake_layout(key, str(manual), 6, seed=0)
  os.remove(manual / label)
  with pytest.raises(iqa_base.LayoutError) as err:
    catalog.prepare(key, tmp_path / "data", manual, config=SIZE)
  assert f"expected the file {label} in {manual}" in str(err.value)


def test_missing_or_empty_manual_dir_says_what_to_put_there(tmp_path):
  (tmp_path / "empty").mkdir()
  for manual in (tmp_path / "absent", tmp_path / "empty"):
    with pytest.raises(iqa_base.LayoutError, match="koniq10k_distributions_sets.csv"):
      catalog.prepare("koniq10k", tmp_path / "data", manual, config=SIZE)


def test_missing_image_folder_is_named(tmp_path):
  manual = tmp_path / "manual"
  fake_layouts.write_fake_layout("kadid10k", str(manual), 6, seed=0)
  for name in os.listdir(manual / "images"):
    os.remove(manual / "images" / name)
  os.rmdir(manual / "images")
  with pytest.raises(iqa_base.BadImagesError, match="folder images/ is missing"):
    catalog.prepare("kadid10k", tmp_path / "data", manual, config=SIZE)


def test_absent_and_unreadable_images_fail_or_are_skipped(tmp_path, caplog):
  manual = tmp_path / "manual"
  expected = fake_layouts.write_fake_layout("tid2013", str(manual), N_IMAGES, seed=5)
  absent, garbage, truncated = expected[1], expected[4], expected[7]
  os.remove(absent["path"])
  with open(garbage["path"], "wb") as f:
    f.write(b"not an image at all")
  with open(truncated["path"], "rb") as f:
    head = f.read()[:100]
  with open(truncated["path"], "wb") as f:
    f.write(head)
  bad = {absent["name"], garbage["name"], truncated["name"]}

  with pytest.raises(iqa_base.BadImagesError) as err:
    catalog.prepare("tid2013", tmp_path / "data", manual, config=SIZE)
  assert set(err.value.bad) == bad
  assert err.value.bad[absent["name"]] == "file is missing"
  for name in bad:
    assert name in str(err.value)
  assert "skip_bad_images=True" in str(err.value)

  with caplog.at_level(logging.WARNING):
    builder = catalog.prepare("tid2013", tmp_path / "data", manual, config=SIZE,
                              skip_bad_images=True)
  assert all(name in caplog.text for name in bad)
  assert builder.info.metadata["skipped_images"] == sorted(bad)
  train, test = read_split(builder, "train"), read_split(builder, "test")
  assert set(train) | set(test) == {r["name"] for r in expected} - bad
  # The split is drawn before skipping: the other images keep their side.
  n_units = len({r["unit"] for r in expected})
  assert units(train) <= reference_train_units(n_units, 2024)
  assert not units(test) & reference_train_units(n_units, 2024)


@pytest.mark.parametrize("key,value", [("koniq10k", 150.0), ("tid2013", -1.5), ("uwiqa", 1.5),
                                       ("aigciqa2023", 250.0), ("livec", 0.5)])
def test_score_out_of_range_names_file_image_and_value(key, value, tmp_path):
  manual = tmp_path / "manual"
  expected = fake_layouts.write_fake_layout(key, str(manual), 6, seed=1)
  bad = expected[2]
  label = importlib.import_module(datasets.DATASET_MODULES[key]).LABEL_FILES[-1]
  _rewrite_score(manual / label, bad["score_raw"], value)
  with pytest.raises(iqa_base.LayoutError) as err:
    catalog.prepare(key, tmp_path / "data", manual, config=SIZE)
  message = str(err.value)
  assert label in message and bad["name"] in message and repr(value) in message
  assert "outside the documented range" in message


def test_live_reads_realigned_dmos_new_beyond_the_nominal_range(tmp_path):
  import scipy.io  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  expected = fake_layouts.write_fake_layout("live", str(manual), 9, seed=2)
  path = str(manual / "dmos_realigned.mat")
  data = scipy.io.loadmat(path)
  dmos = data["dmos"]
  dmos[np.isclose(dmos, expected[0]["score_raw"])] = 110.5
  # The realigned file as some copies hold it: `dmos_new` only.
  scipy.io.savemat(path, {"dmos_new": dmos, "orgs": data["orgs"]})
  builder = catalog.prepare("live", tmp_path / "data", manual, config=SIZE)
  records = {**read_split(builder, "train"), **read_split(builder, "test")}
  assert records[expected[0]["name"]]["score"] == pytest.approx((110.5 - 1) / 100)
  assert len(records) == 9


def _rewrite_score(path, old, new):
  """Replaces the score `old` by `new` in a label file of any of the containers."""
  path = str(path)
  if path.endswith(".mat"):
    import scipy.io  # pylint: disable=g-import-not-at-top
    data = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    for value in data.values():
      if value.dtype.kind == "f":
        value[np.isclose(value, old)] = new
    scipy.io.savemat(path, data)
  elif path.endswith(".xlsx"):
    import openpyxl  # pylint: disable=g-import-not-at-top
    workbook = openpyxl.load_workbook(path)
    for row in workbook.active.iter_rows():
      for cell in row:
        if cell.value == old:
          cell.value = new
    workbook.save(path)
  else:
    with open(path) as f:
      text = f.read()
    assert str(old) in text
    with open(path, "w") as f:
      f.write(text.replace(str(old), str(new)))


def test_missing_column_is_named(tmp_path):
  manual = tmp_path / "manual"
  fake_layouts.write_fake_layout("agiqa3k", str(manual), 6, seed=0)
  path = manual / "data.csv"
  path.write_text(path.read_text().replace("mos_quality", "quality", 1))
  with pytest.raises(iqa_base.LayoutError, match=r"data.csv has no column mos_quality"):
    catalog.prepare("agiqa3k", tmp_path / "data", manual, config=SIZE)


def test_unknown_config_is_refused(tmp_path):
  with pytest.raises(ValueError, match="Unknown builder config 'small'"):
    catalog.prepare("csiq", tmp_path / "data", tmp_path, config="small")


@pytest.fixture
def synthetic_stub(monkeypatch):
  """Stands in for synthetic_iqa (written separately): records how catalog calls it."""
  calls = []
  stub = types.ModuleType(SYNTHETIC_MODULE)
  stub.prepare = lambda data_dir, manual_dir=None, **options: calls.append(
      (data_dir, manual_dir, options))
  stub.Builder = type("Builder", (), {"VERSION": tfds.core.Version("1.0.0")})
  monkeypatch.setitem(sys.modules, SYNTHETIC_MODULE, stub)
  return calls


def test_prepare_synthetic_goes_to_its_own_prepare(synthetic_stub, tmp_path):
  catalog.prepare("synthetic_iqa", tmp_path, None, num_images=8)
  assert synthetic_stub == [(tmp_path, None, {"num_images": 8})]
  with pytest.raises(TypeError, match="takes no options"):
    catalog.prepare("csiq", tmp_path, tmp_path, num_images=8)


def test_list_datasets_covers_every_key(synthetic_stub, tmp_path):
  del synthetic_stub
  fake_layouts.write_fake_layout("bid", str(tmp_path / "manual"), 6, seed=0)
  before = catalog.list_datasets(tmp_path / "data")
  catalog.prepare("bid", tmp_path / "data", tmp_path / "manual", config=SIZE)
  after = {row["name"]: row for row in catalog.list_datasets(tmp_path / "data")}

  assert [row["name"] for row in before] == list(datasets.DATASET_MODULES)
  assert not any(row["prepared"] for row in before)
  assert after["bid"]["prepared"] and after["bid"]["prepared_configs"] == [str(SIZE)]
  images = {"koniq10k": 10073, "spaq": 11125, "livec": 1162, "live": 779, "csiq": 866,
            "tid2013": 3000, "kadid10k": 10125, "bid": 586, "gfiqa20k": 19988, "agiqa3k": 2982,
            "aigciqa2023": 2400, "uwiqa": 890}
  for key, (score_type, lower_better, raw_range, unit) in FACTS.items():
    row = after[key]
    assert (row["score_type"], row["lower_better"], row["raw_range"], row["split_unit"]) == (
        score_type, lower_better, raw_range, unit)
    assert row["images"] == images[key]
    assert row["download_url"]
    assert row["prepared"] == (key == "bid")
  assert after["synthetic_iqa"]["prepared"] is False and after["synthetic_iqa"]["score_type"] is None
