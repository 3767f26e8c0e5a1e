"""AIGCIQA2023 (Wang et al., CICAI 2023): 2,400 AI-generated images, quality MOS 0-100 (z-scores).

Layout under the dataset root (as the reference reads it):
  DATA/MOS/mosz1.mat      `MOSz`: 2400 x 1 quality scores
  Image/allimg/<i>.png    image i, i = 0 ... 2399
Score: MOS / 100, higher is better. Split unit: the image (its index).
Assumed, as the reference: entry i of MOSz (0-based) scores Image/allimg/<i>.png.
"""
from __future__ import annotations

import numpy as np
from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("DATA/MOS/mosz1.mat",)
IMAGE_DIR = "Image/allimg"

FACTS = iqa_base.DatasetFacts(
    title="AIGCIQA2023",
    score_type="MOS",
    lower_better=False,
    raw_range=(0.0, 100.0),
    norm_offset=0.0,
    norm_scale=100.0,
    num_images=2400,
    split_unit="image",
    release_count=2400,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (MOSz) and {IMAGE_DIR}/<index>.png",
    homepage="https://github.com/wangjiarui153/AIGCIQA2023",
    download_url="https://github.com/wangjiarui153/AIGCIQA2023",
    license="for research; see the project page",
    citation="Wang et al. AIGCIQA2023: A large-scale image quality assessment database for AI "
             "generated images. CICAI 2023.",
)


class Builder(iqa_base.IqaBuilder):
  """AIGCIQA2023 from a manual folder."""
  name = "aigciqa2023"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    mos = iqa_base.load_mat(root, LABEL_FILES[0], ("MOSz",), FACTS.title)["MOSz"]
    return [
        iqa_base.Entry(name=f"{IMAGE_DIR}/{index}.png", score_raw=float(score), unit=index,
                       label_index=index, source=f"{LABEL_FILES[0]} MOSz entry {index + 1}")
        for index, score in enumerate(np.asarray(mos, dtype=np.float64).ravel())
    ]
