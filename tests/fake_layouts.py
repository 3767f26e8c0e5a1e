"""Tiny fake copies of the real IQA datasets' layouts, for tests.

`write_fake_layout(key, root, n_images, seed)` writes generated images under the real file and column
names, in the real containers (CSV, XLSX, MATLAB .mat, plain text), and returns the records a builder
should produce from them. Everything expected here is worked out from the dataset's documentation
(shared/spec/datasets.md), not from the builders: the normalisation below is typed in by hand.
"""
from __future__ import annotations

import csv
import os
from typing import Callable

import numpy as np
import scipy.io
from PIL import Image

KEYS = ("koniq10k", "spaq", "livec", "live", "csiq", "tid2013", "kadid10k", "bid", "gfiqa20k",
        "agiqa3k", "aigciqa2023", "uwiqa")

# raw -> normalised, the reference's mapping per dataset, from the spec.
NORM: dict[str, Callable[[float], float]] = {
    "koniq10k": lambda s: s / 100,
    "spaq": lambda s: s / 100,
    "livec": lambda s: (s - 1) / 100,
    "live": lambda s: (s - 1) / 100,
    "csiq": lambda s: s,
    "tid2013": lambda s: s / 9,
    "kadid10k": lambda s: (s - 1) / 5,
    "bid": lambda s: s / 9,
    "gfiqa20k": lambda s: s,
    "agiqa3k": lambda s: s / 5,
    "aigciqa2023": lambda s: s / 100,
    "uwiqa": lambda s: s,
}

# The range the fake raw scores are drawn from (inside each dataset's documented range).
_RAW = {"koniq10k": (1, 100), "spaq": (0, 100), "livec": (1, 100), "live": (1, 100), "csiq": (0, 1),
        "tid2013": (0, 9), "kadid10k": (1, 5), "bid": (0, 5), "gfiqa20k": (0, 1), "agiqa3k": (0, 5),
        "aigciqa2023": (0, 100), "uwiqa": (0, 1)}

_LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
_LIVE_REFS = ("bikes.bmp", "buildings.bmp", "caps.bmp", "carnivaldolls.bmp", "cemetry.bmp",
              "churchandcapitol.bmp", "coinsinfountain.bmp", "dancers.bmp", "flowersonih35.bmp",
              "house.bmp", "lighthouse.bmp", "monarch.bmp", "ocean.bmp", "parrots.bmp")
_CSIQ_REFS = ("1600", "aerial_city", "boston", "bridge", "butter_flower", "cactus", "child_swimming",
              "couple", "elk", "family", "fisher", "foxy", "geckos", "lady_liberty")
_CSIQ_TYPES = ("AWGN", "BLUR", "contrast", "fnoise", "JPEG", "jpeg2000")


def write_fake_layout(key: str, root: str, n_images: int, seed: int,
                      image_shape: tuple[int, int] = (24, 32), ties: int | None = None) -> list[dict]:
  """Writes a fake `key` dataset of `n_images` labelled images (`image_shape` = (H, W)) under root.

  Returns one dict per labelled image, in label-file order: name (relative to root), path (absolute),
  score_raw, score (normalised), unit, label_index (the image's position in the label list, as the
  reference indexes it), official_split (KonIQ-10k's set, else None). Datasets split by reference
  image use max(3, n_images // 3) references, all of them used. `ties`: draw the scores from that
  many distinct values (many tied scores, as KADID-10k and SPAQ have).
  """
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(seed)
  low, high = _RAW[key]
  if ties is None:
    scores = [round(float(s), 4) for s in rng.uniform(low, high, n_images)]
  else:
    values = rng.uniform(low, high, ties).round(4)
    scores = [float(s) for s in rng.choice(values, n_images)]
  n_refs = max(3, n_images // 3)
  writer = _WRITERS[key]
  records = writer(root, rng, scores, n_refs)
  for record in records:
    record["path"] = os.path.join(root, record["name"])
    record["score"] = NORM[key](record["score_raw"])
    record.setdefault("official_split", None)
    _write_image(record["path"], rng, image_shape)
  return records


def _write_image(path: str, rng: np.random.Generator, shape: tuple[int, int]) -> None:
  """A smooth random colour image (so that JPEG keeps it recognisable) plus a little noise."""
  height, width = shape
  coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
  smooth = np.asarray(
      Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR),
      dtype=np.float32)
  image = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


def _write_csv(path: str, header: list[str], rows: list[list]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(header)
    out.writerows(rows)


def _write_xlsx(path: str, header: list[str], rows: list[list]) -> None:
  import openpyxl  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path), exist_ok=True)
  workbook = openpyxl.Workbook()
  sheet = workbook.active
  sheet.append(header)
  for row in rows:
    sheet.append(row)
  workbook.save(path)


def _cells(strings: list[str], shape: tuple[int, int]) -> np.ndarray:
  """A MATLAB cell array of strings for scipy.io.savemat: an object array of strings."""
  cells = np.empty(len(strings), dtype=object)
  cells[:] = strings
  return cells.reshape(shape)


def _koniq10k(root, rng, scores, n_refs):
  del n_refs
  sets = ("training", "training", "training", "validation", "test")
  official = {"training": "train", "validation": "validation", "test": "test"}
  rows, records = [], []
  for i, mos in enumerate(scores):
    name = f"{100000 + 7919 * i}.jpg"
    votes = rng.integers(0, 40, 5)
    rows.append([name, *votes, int(votes.sum()), mos, 0.5, 0.1, sets[i % len(sets)]])
    records.append({"name": f"1024x768/{name}", "score_raw": mos, "unit": i, "label_index": i,
                    "official_split": official[sets[i % len(sets)]]})
  _write_csv(os.path.join(root, "koniq10k_distributions_sets.csv"),
             ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore", "set"],
             rows)
  return records


def _spaq(root, rng, scores, n_refs):
  del rng, n_refs
  names = [f"{i + 1:05d}.jpg" for i in range(len(scores))]
  _write_xlsx(os.path.join(root, "Annotations", "MOS_and_Image_attribute_scores.xlsx"),
              ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"],
              [[n, s, 50, 50, 50, 50, 50] for n, s in zip(names, scores)])
  return [{"name": f"img_resize/{n}", "score_raw": s, "unit": i, "label_index": i}
          for i, (n, s) in enumerate(zip(names, scores))]


def _livec(root, rng, scores, n_refs):
  del n_refs
  # The first 7 entries are the raters' training images: dropped, and not present as files.
  names = [f"t{i + 1}.bmp" for i in range(7)] + [f"{i + 3}.bmp" for i in range(len(scores))]
  mos = list(rng.uniform(1, 100, 7).round(4)) + scores
  os.makedirs(os.path.join(root, "Data"))
  scipy.io.savemat(os.path.join(root, "Data", "AllImages_release.mat"),
                   {"AllImages_release": _cells(names, (len(names), 1))})
  scipy.io.savemat(os.path.join(root, "Data", "AllMOS_release.mat"),
                   {"AllMOS_release": np.asarray(mos, dtype=np.float64)[None, :]})
  # The reference indexes the lists after the drop.
  return [{"name": f"Images/{n}", "score_raw": s, "unit": i, "label_index": i}
          for i, (n, s) in enumerate(zip(names[7:], scores))]


def _live(root, rng, scores, n_refs):
  names = [f"{folder}/img{k}.bmp" for folder, n in _LIVE_FOLDERS for k in range(1, n + 1)]
  kept = sorted(rng.choice(len(names), len(scores), replace=False))
  refs_used = _LIVE_REFS[:n_refs]
  dmos = np.zeros(len(names))
  orgs = np.ones(len(names))
  refnames = [refs_used[i % n_refs] for i in range(len(names))]
  records = []
  for k, (position, score) in enumerate(zip(kept, scores)):
    dmos[position], orgs[position] = score, 0
    refnames[position] = refs_used[k % n_refs]
    records.append({"name": names[position], "score_raw": score,
                    "unit": sorted(refs_used).index(refs_used[k % n_refs]),
                    "label_index": int(position)})
  scipy.io.savemat(os.path.join(root, "dmos_realigned.mat"),
                   {"dmos": dmos[None, :], "orgs": orgs[None, :],
                    "dmos_std": np.ones((1, len(names)))})
  scipy.io.savemat(os.path.join(root, "refnames_all.mat"),
                   {"refnames_all": _cells(refnames, (1, len(names)))})
  return records


def _csiq(root, rng, scores, n_refs):
  del rng
  refs = _CSIQ_REFS[:n_refs]
  lines, records = [], []
  for i, score in enumerate(scores):
    ref = refs[i % n_refs]
    name = f"{ref}.{_CSIQ_TYPES[(i // n_refs) % 6]}.{i // (n_refs * 6) + 1}.png"
    lines.append(f"{name} {score}\n")
    records.append({"name": f"dst_imgs_all/{name}", "score_raw": score,
                    "unit": sorted(f"{r}.png" for r in refs).index(f"{ref}.png"), "label_index": i})
  with open(os.path.join(root, "csiq_label.txt"), "w") as f:
    f.writelines(lines)
  return records


def _tid2013(root, rng, scores, n_refs):
  del rng
  lines, records = [], []
  for i, score in enumerate(scores):
    ref = i % n_refs + 1
    name = f"i{ref:02d}_{(i // n_refs) % 24 + 1:02d}_{i // (n_refs * 24) + 1}.bmp"
    lines.append(f"{score} {name}\n")
    records.append({"name": f"distorted_images/{name}", "score_raw": score, "unit": ref - 1,
                    "label_index": i})
  with open(os.path.join(root, "mos_with_names.txt"), "w") as f:
    f.writelines(lines)
  return records


def _kadid10k(root, rng, scores, n_refs):
  del rng
  rows, records = [], []
  for i, score in enumerate(scores):
    ref = i % n_refs + 1
    name = f"I{ref:02d}_{(i // n_refs) % 25 + 1:02d}_{i // (n_refs * 25) + 1:02d}.png"
    rows.append([name, f"I{ref:02d}.png", score, 0.5])
    records.append({"name": f"images/{name}", "score_raw": score, "unit": ref - 1,
                    "label_index": i})
  _write_csv(os.path.join(root, "dmos.csv"), ["dist_img", "ref_img", "dmos", "var"], rows)
  return records


def _bid(root, rng, scores, n_refs):
  del rng, n_refs
  _write_xlsx(os.path.join(root, "DatabaseGrades.xlsx"), ["Image", "Average Score"],
              [[i + 1, s] for i, s in enumerate(scores)])
  return [{"name": f"DatabaseImage{i + 1:04d}.JPG", "score_raw": s, "unit": i, "label_index": i}
          for i, s in enumerate(scores)]


def _gfiqa20k(root, rng, scores, n_refs):
  del rng, n_refs
  names = [f"{i:05d}.png" for i in range(len(scores))]
  _write_csv(os.path.join(root, "mos.csv"), ["img_name", "mos"],
             [[n, s] for n, s in zip(names, scores)])
  return [{"name": f"image/{n}", "score_raw": s, "unit": i, "label_index": i}
          for i, (n, s) in enumerate(zip(names, scores))]


def _agiqa3k(root, rng, scores, n_refs):
  del n_refs
  names = [f"AttnGAN_normal_{i:03d}.jpg" for i in range(len(scores))]
  align = rng.uniform(0, 5, len(scores)).round(4)
  _write_csv(os.path.join(root, "data.csv"),
             ["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align",
              "std_align"],
             [[n, "a cat, on a mat", "", "", "", s, 0.5, a, 0.5]
              for n, s, a in zip(names, scores, align)])
  return [{"name": f"img/{n}", "score_raw": s, "unit": i, "label_index": i}
          for i, (n, s) in enumerate(zip(names, scores))]


def _aigciqa2023(root, rng, scores, n_refs):
  del rng, n_refs
  os.makedirs(os.path.join(root, "DATA", "MOS"))
  scipy.io.savemat(os.path.join(root, "DATA", "MOS", "mosz1.mat"),
                   {"MOSz": np.asarray(scores, dtype=np.float64)[:, None]})
  return [{"name": f"Image/allimg/{i}.png", "score_raw": s, "unit": i, "label_index": i}
          for i, s in enumerate(scores)]


def _uwiqa(root, rng, scores, n_refs):
  del rng, n_refs
  _write_xlsx(os.path.join(root, "IQA_Value.xlsx"), ["image", "value"],
              [[i + 1, s] for i, s in enumerate(scores)])
  return [{"name": f"img/{i + 1:04d}.png", "score_raw": s, "unit": i, "label_index": i}
          for i, s in enumerate(scores)]


_WRITERS: dict[str, Callable[..., list[dict]]] = {
    "koniq10k": _koniq10k, "spaq": _spaq, "livec": _livec, "live": _live, "csiq": _csiq,
    "tid2013": _tid2013, "kadid10k": _kadid10k, "bid": _bid, "gfiqa20k": _gfiqa20k,
    "agiqa3k": _agiqa3k, "aigciqa2023": _aigciqa2023, "uwiqa": _uwiqa,
}
