"""`python -m promptiqa_jax.data.datasets.synthetic_iqa`: see analysis.py."""
from promptiqa_jax.data.datasets.synthetic_iqa import analysis

analysis.main()
