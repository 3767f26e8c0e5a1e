"""GFIQA-20k (Su et al., CVPR 2023): 19,988 face images, MOS 0-1, higher is better.

Layout under the dataset root (as the reference reads it):
  mos.csv              header row; columns `img_name`, `mos`
  image/<img_name>     the images
Score: MOS as is. Split unit: the image (its row index, 0-based).
The reference's dataset list says 19,998 images and its split shuffles range(19998); with fewer rows
it would index past the end of mos.csv. The split shuffles range(19998), the reference's split, where
mos.csv has 19,998 rows, else range(rows) (the metadata's `split_count_source` says which).
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("mos.csv",)
IMAGE_DIR = "image"

FACTS = iqa_base.DatasetFacts(
    title="GFIQA-20k",
    score_type="MOS",
    lower_better=False,
    raw_range=(0.0, 1.0),
    norm_offset=0.0,
    norm_scale=1.0,
    num_images=19988,
    split_unit="image",
    release_count=19998,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (columns img_name, mos) and {IMAGE_DIR}/<img_name>",
    homepage="https://database.mmsp-kn.de/gfiqa-20k-database.html",
    download_url="https://database.mmsp-kn.de/gfiqa-20k-database.html",
    license="for non-commercial research; see the database page",
    citation="Su et al. Going the extra mile in face image quality assessment: A novel database and "
             "model. IEEE TMM, 2023.",
)


class Builder(iqa_base.IqaBuilder):
  """GFIQA-20k from a manual folder."""
  name = "gfiqa20k"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    rows = iqa_base.read_csv(root, LABEL_FILES[0], ("img_name", "mos"), FACTS.title)
    entries = []
    for index, row in enumerate(rows):
      source = f"{LABEL_FILES[0]} line {index + 2}"
      entries.append(iqa_base.Entry(
          name=f"{IMAGE_DIR}/{row['img_name']}",
          score_raw=iqa_base.parse_score(row["mos"], source, FACTS.title), unit=index,
          label_index=index, source=source))
    return entries
