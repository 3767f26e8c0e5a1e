"""UWIQA (SPIC 2021): 890 underwater images, quality score 0-1, higher is better.

Layout under the dataset root (as the reference reads it):
  IQA_Value.xlsx          header row; column 1 image number, column 2 score
  img/<number>.png        the images, named by the 4-digit image number (img/0001.png)
Score: as is. Split unit: the image (its data row, 0-based). The reference lists a split's images in
row order (it keeps the rows its split list holds).
Guessed: where to download; the dataset comes with the paper below, and this project knows of no
official page.
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("IQA_Value.xlsx",)
IMAGE_DIR = "img"

FACTS = iqa_base.DatasetFacts(
    title="UWIQA",
    score_type="MOS",
    lower_better=False,
    raw_range=(0.0, 1.0),
    norm_offset=0.0,
    norm_scale=1.0,
    num_images=890,
    split_unit="image",
    release_count=890,
    release_listing="rows",
    layout=f"{LABEL_FILES[0]} (header row; column 1 image number, column 2 score) and "
           f"{IMAGE_DIR}/<number, 4 digits>.png",
    homepage="",
    download_url="no official page known: ask the authors of the paper in the citation",
    license="for research; terms from the authors",
    citation="A reference-free underwater image quality assessment metric in frequency domain. Signal "
             "Processing: Image Communication, 2021.",
)


def image_name(number, source: str) -> str:
  """3 -> img/0003.png."""
  try:
    return f"{IMAGE_DIR}/{int(number):04d}.png"
  except (TypeError, ValueError):
    raise iqa_base.LayoutError(
        f"{FACTS.title}: {source}: image number {number!r} is not a number") from None


class Builder(iqa_base.IqaBuilder):
  """UWIQA from a manual folder."""
  name = "uwiqa"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    entries = []
    rows = iqa_base.read_xlsx(root, LABEL_FILES[0], 2, FACTS.title)
    for index, (number, (image, score)) in enumerate(rows):
      source = f"{LABEL_FILES[0]} row {number}"
      entries.append(iqa_base.Entry(
          name=image_name(image, source), score_raw=iqa_base.parse_score(score, source, FACTS.title),
          unit=index, label_index=index, source=source))
    return entries
