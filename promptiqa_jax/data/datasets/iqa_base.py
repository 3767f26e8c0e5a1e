"""Shared machinery of the real IQA dataset builders: TFDS, array_record, manual_dir, no TensorFlow.

A dataset module (`koniq10k.py`, `live.py`, ...) only knows its layout: which files to read, how to
turn them into `Entry`s (file name relative to the dataset root, raw score, split unit) and the
dataset's `DatasetFacts` (score type, `lower_better`, raw range, the reference's normalisation,
licence, where to download). Everything else lives here:

- Builder configs: "224" stores every image resized to the model input by the reference resize
  (`preprocess.resize_bicubic`, OpenCV INTER_CUBIC); "full" stores it at full size. `make_config(n)`
  gives any other square size (tests use 32). All store lossless PNG.
- Records: `image` (uint8 `[S, S, 3]`, or `[H, W, 3]` in "full"; upright by the file's EXIF
  orientation, as OpenCV reads it), `name` (Text; reads back as bytes), `score` (float32, normalised
  to [0, 1] by the reference mapping), `score_raw` (float32), `unit` (int64: the reference image's id
  where there is one, else the image's index in the label file), `label_index` (int64: the image's
  position in the dataset's label list, the row the reference indexes).
- Splits, all by split unit so that no unit is in two sides of a split (seeds in the constants below,
  and in the dataset's TFDS metadata):
    train / test: the reference's split: `random.seed(2024); random.shuffle(list(range(n)))`, the
      first round(0.8 n) units train, n being the count of the reference's own dataset list
      (`DatasetFacts.release_count`) where the label files hold that many units, else theirs (the
      metadata's `split_count` and `split_count_source` say which). Units are 0..n-1 in label-file
      order for image-unit datasets, so this reproduces the reference's split exactly; for
      reference-unit datasets the reference indexes an `os.listdir` order (platform dependent), here
      the sorted order (see each module).
    validation / train_without_validation: a seeded round(10%) (at least one) of the train units,
      for model selection, and the rest of train.
    split{k}_train / split{k}_test, k = 0..9: ten random 80/20 splits with seed k, for the datasets
      of under 5,000 images, as the field reports them.
    official_train / official_validation / official_test: where the dataset ships a split.
  Each record is stored once per split it is in, and each split in the order the reference lists it
  (`DatasetFacts.release_listing`): "units", for each unit in the shuffled split list its images in
  label-file order; "rows", the split's images in label-file order. The reference sorts a split by
  score with a stable sort to draw its interval prompt, so score ties fall in this order; subsets of
  `train` keep its order, official splits are in label-file order.
- Bad input: a missing label file or image folder is named with the folder it was looked for in; all
  images listed but absent or undecodable are reported together, by name, before anything is written
  (or, with `skip_bad_images=True`, listed in a warning and in the metadata, and left out of every
  split; the splits are drawn before, so skipping does not move other images between splits); a
  score outside the documented range names the label file, the image and the value.

Images are decoded and resized once, on all cores, into a scratch folder in the data directory, and
every split then copies the encoded bytes: with ten random splits each image is stored ~13 times.
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import csv
import dataclasses
import inspect
import logging
import math
import os
import random
import shutil
import tempfile
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from promptiqa_jax.data import preprocess

# The seed of the reference's 80/20 split (`toolkit.get_data`) as its released training script runs
# it (train.sh: --seed 2024; train.py's default, 570908, is not what was run).
REFERENCE_SEED = 2024
TRAIN_FRACTION = 0.8
# Seed and fraction of the train units held out as `validation`.
VALIDATION_SEED = 1000
VALIDATION_FRACTION = 0.1
# Seeds of `split{k}_*`: split k uses seed k.
RANDOM_SPLIT_SEEDS = tuple(range(10))
# Datasets with fewer images than this get the ten random splits (the field reports those).
RANDOM_SPLITS_BELOW = 5000
# Values of `Entry.official_split` and the split names they give.
OFFICIAL_SPLITS = ("train", "validation", "test")

_log = logging.getLogger(__name__)

# How many names an error message or warning spells out before it just counts.
_NAMES_SHOWN = 20


class LayoutError(ValueError):
  """The manual folder does not hold the dataset as its layout expects; the message says what."""


class BadImagesError(LayoutError):
  """Images listed by the labels are absent or cannot be decoded; `bad` maps each name to why."""

  def __init__(self, message: str, bad: Mapping[str, str]):
    super().__init__(message)
    self.bad = dict(bad)


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
  """What is known about a dataset before reading it; the norm is (raw - norm_offset) / norm_scale."""
  title: str
  score_type: str  # "MOS" or "DMOS"
  lower_better: bool
  raw_range: tuple[float, float]
  norm_offset: float
  norm_scale: float
  num_images: int  # as distributed, after the reference's own drops
  split_unit: str  # "image" or "reference"
  # N of the reference's dataset list: the split units its split shuffles as range(N).
  release_count: int
  # How the reference lists a split's images: "units" (in the shuffled unit order) or "rows" (in
  # label-file order); see the module docstring.
  release_listing: str
  layout: str  # the files under the dataset root, for instructions and errors
  homepage: str
  download_url: str
  license: str
  citation: str
  # Widest raw score accepted, where the real scores leave the nominal `raw_range`; else raw_range.
  accepted_range: tuple[float, float] | None = None

  def normalize(self, raw: float) -> float:
    return (raw - self.norm_offset) / self.norm_scale

  @property
  def norm(self) -> str:
    """The reference's mapping in words, e.g. "(MOS - 1) / 100"."""
    if self.norm_offset == 0 and self.norm_scale == 1:
      return "as is"
    top = self.score_type if self.norm_offset == 0 else f"({self.score_type} - {self.norm_offset:g})"
    return f"{top} / {self.norm_scale:g}"

  @property
  def random_splits(self) -> bool:
    return self.num_images < RANDOM_SPLITS_BELOW

  def metadata(self) -> dict[str, Any]:
    """The facts as JSON-able TFDS metadata."""
    return {
        "title": self.title,
        "score_type": self.score_type,
        "lower_better": self.lower_better,
        "raw_range": list(self.raw_range),
        "norm": self.norm,
        "norm_offset": self.norm_offset,
        "norm_scale": self.norm_scale,
        "num_images": self.num_images,
        "split_unit": self.split_unit,
        "release_count": self.release_count,
        "release_listing": self.release_listing,
        "license": self.license,
        "download_url": self.download_url,
        "reference_split_seed": REFERENCE_SEED,
        "validation_seed": VALIDATION_SEED,
        "random_split_seeds": list(RANDOM_SPLIT_SEEDS) if self.random_splits else [],
    }


@dataclasses.dataclass(frozen=True)
class Entry:
  """One labelled image as the layout lists it.

  `name` is the image's path relative to the dataset root ("/"-separated); `label_index` its
  position in the dataset's label list as the reference indexes it (0-based); `source` says where
  the score was read ("csiq_label.txt line 12"), for error messages; `official_split` is one of
  OFFICIAL_SPLITS where the dataset ships a split.
  """
  name: str
  score_raw: float
  unit: int
  label_index: int
  source: str
  official_split: str | None = None


class IqaConfig(tfds.core.BuilderConfig):
  """A stored image size: `image_size` pixels square, or None for full size."""

  def __init__(self, *, image_size: int | None, **kwargs):
    super().__init__(**kwargs)
    self.image_size = image_size


FULL = "full"


def make_config(config: str | int | IqaConfig = "224") -> IqaConfig:
  """"224", "full", or any square size as int or digit string (e.g. 32 for tests) -> IqaConfig."""
  if isinstance(config, IqaConfig):
    return config
  if config == FULL:
    return IqaConfig(name=FULL, image_size=None, description="Images at full size (lossless PNG).")
  if isinstance(config, str) and not config.isdigit():
    raise ValueError(f"Unknown builder config {config!r}: use '224', 'full' or a size such as 32")
  size = int(config)
  if size <= 0:
    raise ValueError(f"Image size must be positive, got {size}")
  return IqaConfig(name=str(size), image_size=size,
                   description=f"Images resized to {size}x{size} by the reference's bicubic resize.")


class IqaBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the real IQA builders; a subclass sets `name`, `FACTS` and `read_layout`."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.1.0": "Records carry `label_index`; each split is stored in the reference's listing order "
               "(score ties in interval prompts fall as the reference's); images are stored upright "
               "by their EXIF orientation, as OpenCV reads them; the metadata says which count the "
               "split shuffles (`split_count`, `split_count_source`).",
      "1.0.0": "First release.",
  }
  BUILDER_CONFIGS = [make_config("224"), make_config(FULL)]
  DEFAULT_CONFIG_NAME = "224"
  FACTS: ClassVar[DatasetFacts]

  def __init__(self, *, config: None | str | int | IqaConfig = None,
               skip_bad_images: bool = False, file_format: Any = "array_record", **kwargs):
    """`config` as `make_config` takes it; `skip_bad_images`: leave out, with a warning, images that
    are absent or undecodable instead of failing."""
    if config is not None:
      config = make_config(config)
      # TFDS refuses a second config object under a predefined config's name.
      config = self.builder_configs.get(config.name, config)
    self._skip_bad_images = skip_bad_images
    super().__init__(config=config, file_format=file_format, **kwargs)

  # TFDS 4.9.10 finds a packaged builder's file through `importlib_resources`, which it does not
  # install (so every build failed); the class's own file is the same answer.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  @staticmethod
  @abc.abstractmethod
  def read_layout(root: epath.Path) -> list[Entry]:
    """Reads the label files under the dataset root; LayoutError on anything missing or malformed."""

  @property
  def MANUAL_DOWNLOAD_INSTRUCTIONS(self) -> str:  # pylint: disable=invalid-name
    facts = self.FACTS
    return (f"Download {facts.title} from {facts.download_url} ({facts.license}) and pass its root "
            f"folder as manual_dir. Expected under it: {facts.layout}.")

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    shape = (size, size, 3) if size else (None, None, 3)
    facts = self.FACTS
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"{facts.title}: {facts.num_images} images, {facts.score_type} "
                     f"{facts.raw_range[0]:g}-{facts.raw_range[1]:g} "
                     f"({'lower' if facts.lower_better else 'higher'} is better), normalised as "
                     f"{facts.norm}; split unit: {facts.split_unit}."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=shape, encoding_format="png"),
            "name": tfds.features.Text(),
            "score": tfds.features.Scalar(np.float32),
            "score_raw": tfds.features.Scalar(np.float32),
            "unit": tfds.features.Scalar(np.int64),
            "label_index": tfds.features.Scalar(np.int64),
        }),
        supervised_keys=("image", "score"),
        # Records stay in the order _generate_examples yields them: the reference's listing.
        disable_shuffling=True,
        homepage=facts.homepage,
        citation=facts.citation,
        license=facts.license,
        metadata=tfds.core.MetadataDict(image_size=size, skipped_images=[], **facts.metadata()),
    )

  def _download_and_prepare(self, dl_manager, download_config):
    # Scratch space for the encoded images, on the output's disk (the full-size copies can be large).
    self._scratch = epath.Path(tempfile.mkdtemp(prefix=f"tmp-{self.name}-encoded-",
                                                dir=os.fspath(self.data_dir_root)))
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      shutil.rmtree(self._scratch, ignore_errors=True)

  def _split_generators(self, dl_manager):
    root = self._manual_root(dl_manager)
    entries = self.read_layout(root)
    check_entries(entries, self.FACTS)
    splits = assign_splits(entries, self.FACTS)
    self.info.metadata.update(split_count(entries, self.FACTS))
    missing_folders = _missing_folders(root, entries)
    bad = self._encode_all(root, entries, missing_folders)
    if bad:
      listing = _listing(bad, missing_folders)
      if not self._skip_bad_images:
        raise BadImagesError(
            f"{self.FACTS.title}: {len(bad)} of {len(entries)} images under {root} are absent or "
            f"unreadable:\n{listing}\nRestore them, or pass skip_bad_images=True to build without "
            "them.", bad)
      _log.warning("%s: leaving out %d absent or unreadable images:\n%s", self.FACTS.title,
                   len(bad), listing)
      self.info.metadata["skipped_images"] = sorted(bad)
    return {
        split: self._generate_examples(
            [(entries[i], i) for i in indices if entries[i].name not in bad])
        for split, indices in splits.items()
    }

  def _generate_examples(self, records: Sequence[tuple[Entry, int]]) -> Iterator[tuple[int, dict]]:
    facts = self.FACTS
    # Integer keys in the split's order, which TFDS keeps (disable_shuffling).
    for position, (entry, index) in enumerate(records):
      yield position, {
          "image": (self._scratch / f"{index}.png").read_bytes(),
          "name": entry.name,
          "score": np.float32(facts.normalize(entry.score_raw)),
          "score_raw": np.float32(entry.score_raw),
          "unit": entry.unit,
          "label_index": entry.label_index,
      }

  def _manual_root(self, dl_manager) -> epath.Path:
    try:
      return epath.Path(dl_manager.manual_dir)
    except AssertionError as err:  # TFDS's way of saying the folder is missing or empty.
      missing = str(err).split(". Create it")[0]
      raise LayoutError(f"{self.FACTS.title}: {missing}. Expected under it: {self.FACTS.layout}; "
                        f"download from {self.FACTS.download_url}.") from err

  def _encode_all(self, root: epath.Path, entries: Sequence[Entry],
                  missing_folders: Mapping[str, int]) -> dict[str, str]:
    """Decodes, resizes and PNG-encodes every image into the scratch folder.

    Returns {name: why} of the images that are absent or cannot be decoded.
    """
    size = self.builder_config.image_size

    def encode(item: tuple[int, Entry]) -> str | None:
      index, entry = item
      if os.path.dirname(entry.name) in missing_folders:
        return "its folder is missing"
      path = root / entry.name
      if not path.exists():
        return "file is missing"
      try:
        image = preprocess.load_image(path)
      except preprocess.ImageError as err:
        return str(err).replace(f"{path}: ", "")
      if size:
        image = preprocess.resize_bicubic(image, size)
      ok, png = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))  # OpenCV writes BGR.
      if not ok:
        return "cannot encode as PNG"
      (self._scratch / f"{index}.png").write_bytes(png.tobytes())
      return None

    # OpenCV and Pillow release the GIL while decoding, resizing and encoding.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
      reasons = list(pool.map(encode, enumerate(entries)))
    return {entry.name: why for entry, why in zip(entries, reasons) if why}


def _missing_folders(root: epath.Path, entries: Sequence[Entry]) -> dict[str, int]:
  """Image folders (relative to root) that do not exist -> how many listed images they should hold."""
  counts = collections.Counter(os.path.dirname(e.name) for e in entries)
  return {f: n for f, n in counts.items() if f and not (root / f).is_dir()}


def _listing(bad: Mapping[str, str], missing_folders: Mapping[str, int]) -> str:
  """The bad images for a message: whole missing folders once, then up to _NAMES_SHOWN names."""
  lines = [f"  folder {folder}/ is missing ({n} images)"
           for folder, n in sorted(missing_folders.items())]
  names = sorted(n for n in bad if os.path.dirname(n) not in missing_folders)
  lines += [f"  {name}: {bad[name]}" for name in names[:_NAMES_SHOWN]]
  if len(names) > _NAMES_SHOWN:
    lines.append(f"  ... and {len(names) - _NAMES_SHOWN} more")
  return "\n".join(lines)


def check_entries(entries: Sequence[Entry], facts: DatasetFacts) -> None:
  """LayoutError for no entries, repeated names, or a raw score outside the accepted range."""
  if not entries:
    raise LayoutError(f"{facts.title}: the label files list no images")
  seen = set()
  for entry in entries:
    if entry.name in seen:
      raise LayoutError(f"{facts.title}: {entry.source} lists {entry.name} a second time")
    seen.add(entry.name)
  low, high = facts.accepted_range or facts.raw_range
  for entry in entries:
    if not (math.isfinite(entry.score_raw) and low <= entry.score_raw <= high):
      raise LayoutError(
          f"{facts.title}: {entry.source}: score {entry.score_raw!r} of {entry.name} is outside the "
          f"documented range [{low:g}, {high:g}] of the {facts.score_type}; check that the file is "
          "the original one")


def split_units(units: Sequence[int], seed: int, fraction: float) -> tuple[list[int], list[int]]:
  """The reference's split: shuffle the sorted units with `seed`, the first round(fraction n) first.

  Both sides keep the shuffled order (the reference lists its split's images in it).
  """
  order = sorted(units)
  random.Random(seed).shuffle(order)
  cut = int(round(fraction * len(order)))
  return order[:cut], order[cut:]


def split_count(entries: Sequence[Entry], facts: DatasetFacts) -> dict[str, Any]:
  """The metadata saying which count n the train/test split shuffled as range(n).

  The reference's own count where the label files hold that many units (then the splits are its
  splits), else theirs: with fewer, the reference would index past the end of the label file.
  """
  count = len({e.unit for e in entries})
  if count == facts.release_count:
    return {"split_count": count, "split_count_source": "release"}
  _log.warning("%s: the label files hold %d split units, the reference's dataset list %d: the "
               "splits shuffle range(%d) and differ from the reference's", facts.title, count,
               facts.release_count, count)
  return {"split_count": count, "split_count_source": "label file"}


def release_order(entries: Sequence[Entry], units: Sequence[int],
                  facts: DatasetFacts) -> list[int]:
  """Indices into `entries` of the units `units` (a split's list, in its order), in the order the
  reference lists them (`facts.release_listing`; see the module docstring)."""
  rank = {unit: position for position, unit in enumerate(units)}
  members = [i for i, e in enumerate(entries) if e.unit in rank]
  if facts.release_listing == "units":
    return sorted(members, key=lambda i: (rank[entries[i].unit], entries[i].label_index))
  return sorted(members, key=lambda i: entries[i].label_index)


def assign_splits(entries: Sequence[Entry], facts: DatasetFacts) -> dict[str, list[int]]:
  """Split name -> indices into `entries`, each split in the reference's listing order; see the
  module docstring for the splits and seeds."""
  units = sorted({e.unit for e in entries})
  if len(units) < 3:
    raise LayoutError(f"{facts.title}: {len(units)} split units; at least 3 are needed for a "
                      "train, validation and test side")

  def listed(chosen: Sequence[int]) -> list[int]:
    return release_order(entries, chosen, facts)

  train, test = split_units(units, REFERENCE_SEED, TRAIN_FRACTION)
  validation = sorted(train)
  random.Random(VALIDATION_SEED).shuffle(validation)
  validation = set(validation[:max(1, int(round(VALIDATION_FRACTION * len(train))))])
  splits = {
      "train": listed(train),
      "test": listed(test),
      "validation": listed([u for u in train if u in validation]),
      "train_without_validation": listed([u for u in train if u not in validation]),
  }
  if facts.random_splits:
    for k in RANDOM_SPLIT_SEEDS:
      split_train, split_test = split_units(units, k, TRAIN_FRACTION)
      splits[f"split{k}_train"] = listed(split_train)
      splits[f"split{k}_test"] = listed(split_test)
  for official in OFFICIAL_SPLITS:
    chosen = [i for i, e in enumerate(entries) if e.official_split == official]
    if chosen:
      splits[f"official_{official}"] = chosen
  return splits


# Readers of the label files' containers, shared by the dataset modules. Each names the file (and the
# folder it looked in) when it is missing or malformed.


def require_file(root: epath.Path, relpath: str, title: str) -> epath.Path:
  """root / relpath, or LayoutError naming the expected file, the folder and what the folder holds."""
  path = root / relpath
  if path.is_file():
    return path
  folder = path.parent
  if folder.is_dir():
    held = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(held[:_NAMES_SHOWN]) + (", ..." if len(held) > _NAMES_SHOWN else "")
    found = f"it holds: {shown}" if held else "it is empty"
  else:
    found = "that folder does not exist"
  raise LayoutError(f"{title}: expected the file {relpath} in {root}, but {path} is missing "
                    f"({found}). Pass the dataset's root folder as manual_dir.")


def parse_score(value: Any, source: str, title: str) -> float:
  """float(value), or LayoutError naming `source`."""
  try:
    return float(value)
  except (TypeError, ValueError):
    raise LayoutError(f"{title}: {source}: {value!r} is not a number") from None


def read_csv(root: epath.Path, relpath: str, columns: Sequence[str],
             title: str) -> list[dict[str, str]]:
  """Rows of a CSV with a header row, as dicts; LayoutError naming any missing column."""
  path = require_file(root, relpath, title)
  with open(os.fspath(path), "r", newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
      raise LayoutError(f"{title}: {path} has no column {', '.join(missing)} (its columns: "
                        f"{', '.join(header) or 'none'})")
    return list(reader)


def read_xlsx(root: epath.Path, relpath: str, num_columns: int,
              title: str) -> list[tuple[int, tuple]]:
  """(row number, first `num_columns` cells) of the active sheet's rows after the header row.

  Reading stops at the first row whose first cell is empty, as the sheets end.
  """
  import openpyxl  # pylint: disable=g-import-not-at-top  # only these builders need it

  path = require_file(root, relpath, title)
  try:
    workbook = openpyxl.load_workbook(os.fspath(path), read_only=True, data_only=True)
  except Exception as err:  # openpyxl raises many types for a damaged file
    raise LayoutError(f"{title}: cannot read {path} as an Excel workbook ({err})") from err
  try:
    rows = []
    for number, row in enumerate(workbook.active.iter_rows(min_row=2, max_col=num_columns,
                                                           values_only=True), start=2):
      if row[0] is None:
        break
      rows.append((number, tuple(row)))
    return rows
  finally:
    workbook.close()


def read_text_rows(root: epath.Path, relpath: str, num_fields: int,
                   title: str) -> list[tuple[int, list[str]]]:
  """(line number, whitespace-separated fields) of a text file's non-blank lines."""
  path = require_file(root, relpath, title)
  rows = []
  with open(os.fspath(path), "r") as f:
    for number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) != num_fields:
        raise LayoutError(f"{title}: {path} line {number}: expected {num_fields} fields, got "
                          f"{line.strip()!r}")
      rows.append((number, fields))
  return rows


def load_mat(root: epath.Path, relpath: str, keys: Sequence[str], title: str,
             any_of: bool = False) -> dict[str, np.ndarray]:
  """Variables of a MATLAB .mat file; LayoutError naming missing ones (with any_of, all missing)."""
  import scipy.io  # pylint: disable=g-import-not-at-top  # only these builders need it

  path = require_file(root, relpath, title)
  try:
    data = scipy.io.loadmat(os.fspath(path))
  except Exception as err:  # scipy raises many types for a damaged file
    raise LayoutError(f"{title}: cannot read {path} as a MATLAB file ({err})") from err
  missing = [k for k in keys if k not in data]
  if missing and (not any_of or len(missing) == len(keys)):
    held = sorted(k for k in data if not k.startswith("__"))
    wanted = (" or " if any_of else ", ").join(missing)
    raise LayoutError(f"{title}: {path} has no variable {wanted} (it holds: "
                      f"{', '.join(held) or 'nothing'})")
  return data


def mat_strings(cells: np.ndarray) -> list[str]:
  """The strings of a MATLAB cell array of strings (loadmat's object array of 1-element arrays)."""
  out = []
  for cell in np.asarray(cells, dtype=object).ravel():
    while isinstance(cell, np.ndarray):
      cell = cell.ravel()[0] if cell.size else ""
    out.append(str(cell))
  return out
