"""The reference recipe: PromptIQA (ViT-B/8, 3 MALs + fusion MAL) on the real IQA datasets.

  promptiqa-jax prepare koniq10k --manual-dir /data/koniq10k --data-dir ~/tensorflow_datasets
  ... (each dataset of config.data.train)
  python -m promptiqa_jax.train --config configs/paper.py --workdir /ckpt/promptiqa \\
      --config.init.pretrained_vit=/weights/ViT-B_8_augreg.npz

Arguments after the colon: "" (the release's six datasets), "all12" (the paper's twelve),
"smoke" (a tiny model, a few steps; the tests run it on fake copies of the datasets).
The reference trains with 4 groups of 11 per step on 4 GPUs, Adam lr 1e-5 with coupled L2 1e-5,
cosine per epoch over 50 epochs, and starts from an ImageNet-21k AugReg ViT-B/8.
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
  data.train_split = "train"
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
  config.init = common.init_config()
  config.eval = ml_collections.ConfigDict(dict(evaluators="auto"))
  return config
