"""BID, the Blurred Image Database (Ciancio et al., TIP 2011): 586 photos, MOS 0-5.

Layout under the dataset root (ImageDatabase, as the reference reads it):
  DatabaseGrades.xlsx         header row; column 1 image number, column 2 MOS
  DatabaseImage0001.JPG ...   the images, beside the workbook, named by the 4-digit image number
Score: MOS / 9, as the reference does (on a 0-5 scale the normalised scores stay in [0, 0.56]).
Split unit: the image (its data row, 0-based). Rows are read up to the first with an empty first cell
(the reference stops after 586).
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("DatabaseGrades.xlsx",)

FACTS = iqa_base.DatasetFacts(
    title="BID",
    score_type="MOS",
    lower_better=False,
    raw_range=(0.0, 5.0),
    norm_offset=0.0,
    norm_scale=9.0,
    num_images=586,
    split_unit="image",
    release_count=586,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (header row; column 1 image number, column 2 MOS) and "
           "DatabaseImage<number, 4 digits>.JPG beside it",
    homepage="http://www02.smt.ufrj.br/~eduardo/ImageDatabase.htm",
    download_url="http://www02.smt.ufrj.br/~eduardo/ImageDatabase.htm",
    license="for research; see the database page",
    citation="Ciancio et al. No-reference blur assessment of digital pictures based on multifeature "
             "classifiers. IEEE TIP 20(1), 2011.",
)


def image_name(number, source: str) -> str:
  """3 -> DatabaseImage0003.JPG."""
  try:
    return "DatabaseImage%04d.JPG" % int(number)
  except (TypeError, ValueError):
    raise iqa_base.LayoutError(
        f"{FACTS.title}: {source}: image number {number!r} is not a number") from None


class Builder(iqa_base.IqaBuilder):
  """BID from a manual folder."""
  name = "bid"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    entries = []
    rows = iqa_base.read_xlsx(root, LABEL_FILES[0], 2, FACTS.title)
    for index, (number, (image, mos)) in enumerate(rows):
      source = f"{LABEL_FILES[0]} row {number}"
      entries.append(iqa_base.Entry(
          name=image_name(image, source), score_raw=iqa_base.parse_score(mos, source, FACTS.title),
          unit=index, label_index=index, source=source))
    return entries
