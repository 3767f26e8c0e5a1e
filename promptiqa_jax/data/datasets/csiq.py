"""CSIQ (Larson & Chandler, JEI 2010): 866 distorted images of 30 references, DMOS 0-1.

Layout under the dataset root (as the reference reads it):
  csiq_label.txt        lines `<name> <dmos>`, names like 1600.AWGN.1.png (reference 1600.png)
  dst_imgs_all/<name>   the distorted images
  src_imgs/<ref>.png    not read: the builder stores the distorted images only
Score: DMOS as is, lower is better. Split unit: the reference image, named by the first and last
dot-separated parts of the image name (1600.AWGN.1.png -> 1600.png) and numbered by the sorted
reference names; the reference numbers an `os.listdir` of src_imgs/, whose order depends on the file
system.
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("csiq_label.txt",)
IMAGE_DIR = "dst_imgs_all"

FACTS = iqa_base.DatasetFacts(
    title="CSIQ",
    score_type="DMOS",
    lower_better=True,
    raw_range=(0.0, 1.0),
    norm_offset=0.0,
    norm_scale=1.0,
    num_images=866,
    split_unit="reference",
    release_count=30,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (lines '<name> <dmos>') and {IMAGE_DIR}/<name>",
    homepage="https://s2.smu.edu/~eclarson/csiq.html",
    download_url="https://s2.smu.edu/~eclarson/csiq.html",
    license="for research; see the database page",
    citation="Larson, Chandler. Most apparent distortion: full-reference image quality assessment and "
             "the role of strategy. Journal of Electronic Imaging 19(1), 2010.",
)


def reference_of(name: str) -> str:
  """1600.AWGN.1.png -> 1600.png, as the reference pairs distorted and reference images."""
  parts = name.split(".")
  return f"{parts[0]}.{parts[-1]}"


class Builder(iqa_base.IqaBuilder):
  """CSIQ from a manual folder."""
  name = "csiq"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    rows = iqa_base.read_text_rows(root, LABEL_FILES[0], 2, FACTS.title)
    unit_of = {ref: unit for unit, ref in enumerate(sorted({reference_of(n) for _, (n, _) in rows}))}
    entries = []
    for index, (number, (name, dmos)) in enumerate(rows):
      source = f"{LABEL_FILES[0]} line {number}"
      entries.append(iqa_base.Entry(
          name=f"{IMAGE_DIR}/{name}", score_raw=iqa_base.parse_score(dmos, source, FACTS.title),
          unit=unit_of[reference_of(name)], label_index=index, source=source))
    return entries
