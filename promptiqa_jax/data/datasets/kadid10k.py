"""KADID-10k (Lin et al., QoMEX 2019): 10,125 distorted images of 81 references, MOS 1-5.

Layout under the dataset root (as the reference reads it):
  dmos.csv           header row; columns `dist_img`, `ref_img`, `dmos` (a MOS despite its name), `var`
  images/<dist_img>  the distorted images, named like I01_01_01.png
Score: (MOS - 1) / 5, higher is better. Split unit: the reference image, its number minus one
(I01_... -> 0), exactly as the reference numbers it. The reference lists a split's images in row
order (it keeps the rows whose reference its split list holds), so tied MOS fall in that order.
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("dmos.csv",)
IMAGE_DIR = "images"

FACTS = iqa_base.DatasetFacts(
    title="KADID-10k",
    score_type="MOS",
    lower_better=False,
    raw_range=(1.0, 5.0),
    norm_offset=1.0,
    norm_scale=5.0,
    num_images=10125,
    split_unit="reference",
    release_count=81,
    release_listing="rows",
    layout=f"{LABEL_FILES[0]} (columns dist_img, ref_img, dmos, var) and {IMAGE_DIR}/<dist_img>",
    homepage="https://database.mmsp-kn.de/kadid-10k-database.html",
    download_url="https://database.mmsp-kn.de/kadid-10k-database.html",
    license="free for research; images from Pixabay under the Pixabay licence; see the database page",
    citation="Lin, Hosu, Saupe. KADID-10k: A large-scale artificially distorted IQA database. "
             "QoMEX 2019.",
)


def unit_of(dist_img: str, source: str) -> int:
  """I01_01_01.png -> 0: the reference image's number minus one."""
  head = dist_img.split("_")[0]
  if not (head[:1] == "I" and head[1:].isdigit()):
    raise iqa_base.LayoutError(
        f"{FACTS.title}: {source}: {dist_img!r} is not named like I01_01_01.png")
  return int(head[1:]) - 1


class Builder(iqa_base.IqaBuilder):
  """KADID-10k from a manual folder."""
  name = "kadid10k"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    rows = iqa_base.read_csv(root, LABEL_FILES[0], ("dist_img", "dmos"), FACTS.title)
    entries = []
    for index, row in enumerate(rows):
      source = f"{LABEL_FILES[0]} line {index + 2}"
      entries.append(iqa_base.Entry(
          name=f"{IMAGE_DIR}/{row['dist_img']}",
          score_raw=iqa_base.parse_score(row["dmos"], source, FACTS.title),
          unit=unit_of(row["dist_img"], source), label_index=index, source=source))
    return entries
