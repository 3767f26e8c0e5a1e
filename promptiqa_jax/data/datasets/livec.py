"""LIVE In the Wild Image Quality Challenge (Ghadiyaram & Bovik, TIP 2016): 1,162 photos, MOS 1-100.

Layout under the dataset root (ChallengeDB_release, as the reference reads it):
  Data/AllImages_release.mat   `AllImages_release`: cell array (1169 x 1) of image names
  Data/AllMOS_release.mat      `AllMOS_release`: 1 x 1169 MOS
  Images/<name>                the images
The first 7 entries are the training examples shown to raters and are dropped, as the reference does.
Score: (MOS - 1) / 100. Split unit: the image (its index after the drop, 0-based).
"""
from __future__ import annotations

import numpy as np
from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("Data/AllImages_release.mat", "Data/AllMOS_release.mat")
IMAGE_DIR = "Images"
# Entries 0..6 are the raters' training images.
NUM_DROPPED = 7

FACTS = iqa_base.DatasetFacts(
    title="LIVE In the Wild Challenge",
    score_type="MOS",
    lower_better=False,
    raw_range=(1.0, 100.0),
    norm_offset=1.0,
    norm_scale=100.0,
    num_images=1162,
    split_unit="image",
    release_count=1162,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (AllImages_release), {LABEL_FILES[1]} (AllMOS_release) and "
           f"{IMAGE_DIR}/<name>",
    homepage="https://live.ece.utexas.edu/research/ChallengeDB/index.html",
    download_url="https://live.ece.utexas.edu/research/ChallengeDB/index.html",
    license="for research; copyright The University of Texas at Austin; see the download page",
    citation="Ghadiyaram, Bovik. Massive online crowdsourced study of subjective and objective picture "
             "quality. IEEE TIP 25(1), 2016.",
)


class Builder(iqa_base.IqaBuilder):
  """LIVE In the Wild Challenge from a manual folder."""
  name = "livec"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    names = iqa_base.mat_strings(iqa_base.load_mat(
        root, LABEL_FILES[0], ("AllImages_release",), FACTS.title)["AllImages_release"])
    mos = np.asarray(iqa_base.load_mat(root, LABEL_FILES[1], ("AllMOS_release",),
                                       FACTS.title)["AllMOS_release"], dtype=np.float64).ravel()
    if len(names) != len(mos):
      raise iqa_base.LayoutError(f"{FACTS.title}: {LABEL_FILES[0]} lists {len(names)} images but "
                                 f"{LABEL_FILES[1]} holds {len(mos)} scores")
    return [
        iqa_base.Entry(name=f"{IMAGE_DIR}/{name}", score_raw=float(score), unit=index,
                       label_index=index, source=f"{LABEL_FILES[1]} entry {index + NUM_DROPPED + 1}")
        for index, (name, score) in enumerate(zip(names[NUM_DROPPED:], mos[NUM_DROPPED:]))
    ]
