"""The reference recipe: PromptIQA (ViT-B/8, 3 MALs + fusion MAL) on the real IQA datasets.

  promptiqa-jax prepare koniq10k --manual-dir /data/koniq10k --data-dir ~/tensorflow_datasets
  ... (each dataset of config.data.train)
  python -m promptiqa_jax.train --config configs/paper.py --workdir /ckpt/promptiqa \\
      --config.init.pretrained_vit=/weights/B_8-i21k-...-res_224.npz  # AUGREG_VIT_B8_URL's file

Arguments after the colon: "" (the release's six datasets), "all12" (the paper's twelve),
"smoke" (a tiny model, a few steps; the tests run it on fake copies of the datasets).
The reference trains with 4 groups of 11 per step on 4 GPUs, Adam lr 1e-5 with coupled L2 1e-5,
cosine per epoch over 50 epochs, and starts from an ImageNet-21k AugReg ViT-B/8 (timm's
vit_base_patch8_224, config_defaults.AUGREG_VIT_B8_URL; training refuses to start without it unless
init.random_vit is set, as "smoke" does).

Model selection is honest: training reads `train_without_validation`, best_model/ is chosen on
`validation` (10% of the reference's training units, disjoint from those), and the test split is
evaluated once at the end, for both the final and the best model. The release trains on all of
`train` and picks its best epoch on `test`: --config.data.train_split=train
--config.data.eval_split=test does the same.
"""
import ml_collections

from promptiqa_jax import config_defaults as common
from promptiqa_jax.models.config import ModelConfig

RELEASE_DATASETS = ["spaq", "csiq", "livec", "koniq10k", "kadid10k", "live"]
PAPER_DATASETS = RELEASE_DATASETS + ["tid2013", "bid", "gfiqa20k", "agiqa3k", "aigciqa2023", "uwiqa"]


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in ("", "all12", "smoke"):
    raise ValueError(f"Unknown config argument {arg!r}; use '', 'all12' or 'smoke'")
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  model = ModelConfig.tiny() if smoke else ModelConfig.paper()
  config.model = ml_collections.ConfigDict(model.to_dict())

  data = ml_collections.ConfigDict()
  data.data_dir = "~/tensorflow_datasets"
  # Where each host mirrors a gs:// data_dir ("": ~/.cache/promptiqa_jax/datasets).
  data.local_cache_dir = ""
  data.train = (["koniq10k", "live"] if smoke
                else list(PAPER_DATASETS if arg == "all12" else RELEASE_DATASETS))
  # Training and evaluation prompts read the training units that are not held out for selection.
  data.train_split = "train_without_validation"
  data.eval = list(data.train)
  data.eval_split = "validation"  # model selection; the final evaluation reports train.final_split
  data.weights = None
  data.group_size = 3 if smoke else 11
  data.groups_per_batch = 2 if smoke else 4
  data.image_size = model.image_size
  data.scale_rate = 0.5
  data.flip_rate = 0.1
  # The release's image flip: its np.fliplr on [3, H, W] arrays reverses H (upside down), p = 0.5.
  data.flip = "vertical"
  data.seed = 0
  data.num_workers = 0 if smoke else 8
  data.read_threads = 1
  data.prompt_size = 2 if smoke else 10
  data.prompt_sampling = "interval"
  data.eval_batch_size = 4 if smoke else 32
  config.data = data

  config.optim = common.optim_config(epochs=2) if smoke else common.optim_config()
  config.train = (common.train_config(num_steps=3, log_every=1, checkpoint_every=2, eval_every=0,
                                      async_checkpointing=False)
                  if smoke else common.train_config())
  config.mesh = common.mesh_config()
  # The smoke model is a tiny ViT that no pretrained file fits: random weights, on purpose.
  config.init = common.init_config(random_vit=smoke)
  # release_prompt_flips=True: the release's stochastic test prompt (evaluators/release_prompts.py).
  config.eval = ml_collections.ConfigDict(dict(evaluators="auto", release_prompt_flips=False))
  return config
