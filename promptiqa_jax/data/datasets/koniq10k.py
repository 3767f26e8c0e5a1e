"""KonIQ-10k (Hosu et al., TIP 2020): 10,073 in-the-wild photos, MOS 1-100, higher is better.

Layout under the dataset root (as the reference reads it):
  koniq10k_distributions_sets.csv   header row; columns `image_name`, `MOS` and `set`
  1024x768/<image_name>             the images at 1024x768
Score: MOS / 100. Split unit: the image (its row index, 0-based). Official split: the `set` column,
values `training`, `validation`, `test` -> official_train / official_validation / official_test; a
copy of the CSV without the column builds without official splits.
"""
from __future__ import annotations

from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("koniq10k_distributions_sets.csv",)
IMAGE_DIR = "1024x768"
_OFFICIAL = {"training": "train", "validation": "validation", "test": "test"}

FACTS = iqa_base.DatasetFacts(
    title="KonIQ-10k",
    score_type="MOS",
    lower_better=False,
    raw_range=(1.0, 100.0),
    norm_offset=0.0,
    norm_scale=100.0,
    num_images=10073,
    split_unit="image",
    release_count=10073,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (columns image_name, MOS, set) and {IMAGE_DIR}/<image_name>",
    homepage="https://database.mmsp-kn.de/koniq-10k-database.html",
    download_url="https://database.mmsp-kn.de/koniq-10k-database.html",
    license="free for research; images from YFCC100M under their Creative Commons licences; see the "
            "database page",
    citation="Hosu, Lin, Sziranyi, Saupe. KonIQ-10k: An ecologically valid database for deep learning "
             "of blind image quality assessment. IEEE TIP 29, 2020.",
)


class Builder(iqa_base.IqaBuilder):
  """KonIQ-10k from a manual folder."""
  name = "koniq10k"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    rows = iqa_base.read_csv(root, LABEL_FILES[0], ("image_name", "MOS"), FACTS.title)
    entries = []
    for index, row in enumerate(rows):
      source = f"{LABEL_FILES[0]} line {index + 2}"
      official = row.get("set")
      if official is not None and official not in _OFFICIAL:
        raise iqa_base.LayoutError(f"{FACTS.title}: {source}: set {official!r} is none of "
                                   f"{', '.join(_OFFICIAL)}")
      entries.append(iqa_base.Entry(
          name=f"{IMAGE_DIR}/{row['image_name']}",
          score_raw=iqa_base.parse_score(row["MOS"], source, FACTS.title),
          unit=index, label_index=index, source=source,
          official_split=_OFFICIAL.get(official)))
    return entries
