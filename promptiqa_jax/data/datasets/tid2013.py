"""TID2013 (Ponomarenko et al., SPIC 2015): 3,000 distorted images of 25 references, MOS 0-9.

Layout under the dataset root (as the reference reads it):
  mos_with_names.txt            lines `<mos> <name>`, names like i01_01_1.bmp
  distorted_images/<name>       the distorted images
  reference_images/I01.BMP ...  not read: the builder stores the distorted images only
Score: MOS / 9. Split unit: the reference image, its number minus one (i01_... -> 0, as KADID-10k);
the reference numbers an `os.listdir` of reference_images/, whose order depends on the file system.
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("mos_with_names.txt",)
IMAGE_DIR = "distorted_images"

FACTS = iqa_base.DatasetFacts(
    title="TID2013",
    score_type="MOS",
    lower_better=False,
    raw_range=(0.0, 9.0),
    norm_offset=0.0,
    norm_scale=9.0,
    num_images=3000,
    split_unit="reference",
    release_count=25,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (lines '<mos> <name>') and {IMAGE_DIR}/<name>",
    homepage="https://www.ponomarenko.info/tid2013.htm",
    download_url="https://www.ponomarenko.info/tid2013.htm",
    license="for research; see the database page",
    citation="Ponomarenko et al. Image database TID2013: Peculiarities, results and perspectives. "
             "Signal Processing: Image Communication 30, 2015.",
)


def unit_of(name: str, source: str) -> int:
  """i01_01_1.bmp -> 0: the reference image's number minus one."""
  digits = name[1:3]
  if not (name[:1] in "iI" and digits.isdigit() and name[3:4] == "_"):
    raise iqa_base.LayoutError(f"{FACTS.title}: {source}: {name!r} is not named like i01_01_1.bmp")
  return int(digits) - 1


class Builder(iqa_base.IqaBuilder):
  """TID2013 from a manual folder."""
  name = "tid2013"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    entries = []
    rows = iqa_base.read_text_rows(root, LABEL_FILES[0], 2, FACTS.title)
    for index, (number, (mos, name)) in enumerate(rows):
      source = f"{LABEL_FILES[0]} line {number}"
      entries.append(iqa_base.Entry(
          name=f"{IMAGE_DIR}/{name}", score_raw=iqa_base.parse_score(mos, source, FACTS.title),
          unit=unit_of(name, source), label_index=index, source=source))
    return entries
