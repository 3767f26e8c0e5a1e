"""synthetic_iqa, the offline benchmark: many assessment requirements over the same images.

  requirements.py   the RequirementTable (what each requirement means) and the random family
  distortions.py    the eight parametric distortions and their levels
  fr_measures.py    full-reference measures (PSNR, SSIM, MS-SSIM, CIEDE2000, GMSD)
  scoring.py        every record scored under every requirement
  pristine.py       the pristine photographs, their split by content, their crops
  builder.py        the TFDS builder (`Builder`, `prepare`, `make_config`)
  analysis.py       the SRCC between requirements (`python -m promptiqa_jax.data.datasets.synthetic_iqa`)
"""
