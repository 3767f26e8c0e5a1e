"""LIVE IQA release 2 (Sheikh et al., TIP 2006): 779 distorted images of 29 references, DMOS.

Layout under the dataset root (databaserelease2, as the reference reads it):
  dmos_realigned.mat   `dmos` (1 x 982) and `orgs` (1 x 982; 1 marks an undistorted copy, excluded)
  refnames_all.mat     `refnames_all`: cell array (1 x 982) of reference names, e.g. bikes.bmp
  jp2k/ jpeg/ wn/ gblur/ fastfading/   img1.bmp ... in each
  refimgs/<reference>.bmp              not read: the builder stores the distorted images only
The 982 entries are ordered jp2k (227), jpeg (233), wn (174), gblur (174), fastfading (174), numbered
img1.bmp ... within each folder.
Score: (DMOS - 1) / 100, lower is better (no flipping, as the reference). Split unit: the reference
image, numbered by the sorted reference names (0 = bikes.bmp, ...); the reference numbers an
`os.listdir` of refimgs/, whose order depends on the file system.
Guessed: the score variable. The reference reads `dmos`; the file as distributed may hold the
realigned scores as `dmos_new` only: `dmos` is read where present, else `dmos_new`. The nominal range
is the reference's [1, 100], but realigned DMOS stray outside it, so scores in [-20, 120] are
accepted (normalised scores can then leave [0, 1] slightly, as in the reference).
"""
from __future__ import annotations

import numpy as np
from etils import epath

from promptiqa_jax.data.datasets import iqa_base

LABEL_FILES = ("dmos_realigned.mat", "refnames_all.mat")
# (folder, number of images) in the order of the 982 entries.
DISTORTIONS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
NUM_ENTRIES = sum(n for _, n in DISTORTIONS)

FACTS = iqa_base.DatasetFacts(
    title="LIVE IQA release 2",
    score_type="DMOS",
    lower_better=True,
    raw_range=(1.0, 100.0),
    norm_offset=1.0,
    norm_scale=100.0,
    num_images=779,
    split_unit="reference",
    release_count=29,
    release_listing="units",
    layout=f"{LABEL_FILES[0]} (dmos, orgs), {LABEL_FILES[1]} (refnames_all) and the folders "
           + ", ".join(f"{folder}/ ({n} images img1.bmp...)" for folder, n in DISTORTIONS),
    homepage="https://live.ece.utexas.edu/research/quality/subjective.htm",
    download_url="https://live.ece.utexas.edu/research/quality/subjective.htm",
    license="for research, by request form; copyright The University of Texas at Austin",
    citation="Sheikh, Sabir, Bovik. A statistical evaluation of recent full reference image quality "
             "assessment algorithms. IEEE TIP 15(11), 2006.",
    accepted_range=(-20.0, 120.0),
)


class Builder(iqa_base.IqaBuilder):
  """LIVE IQA release 2 from a manual folder."""
  name = "live"
  FACTS = FACTS

  @staticmethod
  def read_layout(root: epath.Path) -> list[iqa_base.Entry]:
    scores = iqa_base.load_mat(root, LABEL_FILES[0], ("dmos", "dmos_new", "orgs"), FACTS.title,
                               any_of=True)
    if "orgs" not in scores:
      raise iqa_base.LayoutError(f"{FACTS.title}: {LABEL_FILES[0]} has no variable orgs")
    key = "dmos" if "dmos" in scores else "dmos_new"
    dmos = np.asarray(scores[key], dtype=np.float64).ravel()
    orgs = np.asarray(scores["orgs"]).ravel()
    refs = iqa_base.mat_strings(
        iqa_base.load_mat(root, LABEL_FILES[1], ("refnames_all",), FACTS.title)["refnames_all"])
    for what, values in ((f"{LABEL_FILES[0]} {key}", dmos), (f"{LABEL_FILES[0]} orgs", orgs),
                         (f"{LABEL_FILES[1]} refnames_all", refs)):
      if len(values) != NUM_ENTRIES:
        raise iqa_base.LayoutError(f"{FACTS.title}: {what} has {len(values)} entries, expected "
                                   f"{NUM_ENTRIES} (jp2k, jpeg, wn, gblur, fastfading in order)")
    names = [f"{folder}/img{k}.bmp" for folder, n in DISTORTIONS for k in range(1, n + 1)]
    kept = [i for i in range(NUM_ENTRIES) if orgs[i] != 1]
    unit_of = {ref: unit for unit, ref in enumerate(sorted({refs[i] for i in kept}))}
    return [
        iqa_base.Entry(name=names[i], score_raw=float(dmos[i]), unit=unit_of[refs[i]],
                       label_index=i, source=f"{LABEL_FILES[0]} {key} entry {i + 1}")
        for i in kept
    ]
