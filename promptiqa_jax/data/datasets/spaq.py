"""SPAQ (Fang et al., CVPR 2020): 11,125 smartphone photos, MOS 0-100, higher is better.

Layout under the dataset root (as the reference reads it):
  Annotations/MOS_and_Image_attribute_scores.xlsx   header row; column 1 image name, column 2 MOS
  img_resize/<image name>                           a resized copy users make of TestImage/
Score: MOS / 100. Split unit: the image (its data row, 0-based). Rows are read up to the first with an
empty first cell (the reference stops after 11,125). The reference lists a split's images in row order
(it keeps the rows its split list holds), so many tied MOS fall in that order in its prompts.
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("Annotations/MOS_and_Image_attribute_scores.xlsx",)
IMAGE_DIR = "img_resize"

FACTS = iqa_base.DatasetFacts(
    title="SPAQ",
    score_type="MOS",
    lower_better=False,
    raw_range=(0.0, 100.0),
    norm_offset=0.0,
    norm_scale=100.0,
    num_images=11125,
    split_unit="image",
    release_count=11125,
    release_listing="rows",
    layout=f"{LABEL_FILES[0]} (header row; column 1 image name, column 2 MOS) and {IMAGE_DIR}/<name>",
    homepage="https://github.com/h4nwei/SPAQ",
    download_url="https://github.com/h4nwei/SPAQ",
    license="for non-commercial research; see the project page",
    citation="Fang, Zhu, Zeng, Ma, Wang. Perceptual quality assessment of smartphone photography. "
             "CVPR 2020.",
)


class Builder(iqa_base.IqaBuilder):
  """SPAQ from a manual folder (images resized by the user into img_resize/)."""
  name = "spaq"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    rows = iqa_base.read_xlsx(root, LABEL_FILES[0], 2, FACTS.title)
    entries = []
    for index, (number, (image_name, mos)) in enumerate(rows):
      source = f"{LABEL_FILES[0]} row {number}"
      entries.append(iqa_base.Entry(
          name=f"{IMAGE_DIR}/{image_name}",
          score_raw=iqa_base.parse_score(mos, source, FACTS.title), unit=index,
          label_index=index, source=source))
    return entries
