"""AGIQA-3K (Li et al., TCSVT 2023): 2,982 AI-generated images, perceptual-quality MOS 0-5.

Layout under the dataset root (as the reference reads it):
  data.csv        header row; columns `name`, `mos_quality` (also prompt, mos_align, ...; not read)
  img/<name>      the images
Score: quality MOS / 5, higher is better. Split unit: the image (its row index, 0-based).
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("data.csv",)
IMAGE_DIR = "img"

FACTS = iqa_base.DatasetFacts(
    title="AGIQA-3K",
    score_type="MOS",
    lower_better=False,
    raw_range=(0.0, 5.0),
    norm_offset=0.0,
    norm_scale=5.0,
    num_images=2982,
    split_unit="image",
    release_count=2982,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (columns name, mos_quality, ...) and {IMAGE_DIR}/<name>",
    homepage="https://github.com/lcysyzxdxc/AGIQA-3k-Database",
    download_url="https://github.com/lcysyzxdxc/AGIQA-3k-Database",
    license="for research; see the project page",
    citation="Li et al. AGIQA-3K: An open database for AI-generated image quality assessment. "
             "IEEE TCSVT, 2023.",
)


class Builder(iqa_base.IqaBuilder):
  """AGIQA-3K from a manual folder."""
  name = "agiqa3k"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    rows = iqa_base.read_csv(root, LABEL_FILES[0], ("name", "mos_quality"), FACTS.title)
    entries = []
    for index, row in enumerate(rows):
      source = f"{LABEL_FILES[0]} line {index + 2}"
      entries.append(iqa_base.Entry(
          name=f"{IMAGE_DIR}/{row['name']}",
          score_raw=iqa_base.parse_score(row["mos_quality"], source, FACTS.title),
          unit=index, label_index=index, source=source))
    return entries
