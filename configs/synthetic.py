"""PromptIQA on the synthetic_iqa benchmark: train on its training requirements and on random ones,
evaluate on every requirement (the held-out ones show whether prompts carry a new requirement).

  python -m promptiqa_jax.data.datasets.synthetic_iqa --data-dir ~/tensorflow_datasets  # builds
  python -m promptiqa_jax.train --config configs/synthetic.py --workdir /tmp/promptiqa_synthetic
  python -m promptiqa_jax.train --config configs/synthetic.py:smoke --workdir /tmp/smoke

Every field can be overridden, e.g. --config.data.groups_per_batch=16 --config.data.num_workers=4.
"""
import ml_collections

from promptiqa_jax.data import datasets


def get_data_config(smoke: bool, image_size: int) -> ml_collections.ConfigDict:
  """The `data` section (read by promptiqa_jax.data: train_stream, load_prompt, eval_batches)."""
  table = datasets.requirement_table("synthetic_iqa")
  data = ml_collections.ConfigDict()
  data.data_dir = "~/tensorflow_datasets"
  # Where each host mirrors a gs:// data_dir ("": ~/.cache/promptiqa_jax/datasets).
  data.local_cache_dir = ""
  # Names as datasets.parse_name reads them; "synthetic_iqa:random" draws a requirement per group.
  data.train = table.config_names(table.train()) + ["synthetic_iqa:random"]
  data.train_split = "train"
  data.eval = table.config_names()
  data.eval_split = "validation"  # model selection; report "test" once at the end
  # One weight per train entry (proportions of an epoch's groups; None: equal). ciede2000, the
  # colour-difference requirement, is read least well from the prompt (SRCC 0.36 at equal weights
  # against a ridge ceiling of 0.60 on the same features), so it gets twice the groups. The random
  # family gets four times: reading requirements it has never seen is what held-out ones test
  # (README, "Results on the synthetic benchmark").
  data.weights = [4.0 if name.endswith(":random") else 2.0 if name.endswith(":ciede2000")
                  else 1.0 for name in data.train]
  data.group_size = 5 if smoke else 11  # G: 10 prompts + 1 target, as the reference
  data.groups_per_batch = 2 if smoke else 4  # global; a multiple of the process count
  data.image_size = image_size  # the model's input (the synthetic images are stored at 64)
  data.scale_rate = 0.5
  # The release flips a group's scores with p = 0.1 (configs/paper.py keeps it); here 0.4, so that
  # prompts of either direction are read (README, "Results on the synthetic benchmark").
  data.flip_rate = 0.4
  # The release's image flip (p = 0.5; its "horizontal" flip reverses H), so that the recipe tried
  # here is the one the paper trains. The benchmark's distortions have no orientation and its
  # measures score a flipped pair as the original, so a flip of either axis keeps every label.
  data.flip = "vertical"
  data.seed = 0
  # Decoding the stored 64-pixel PNGs is cheap (hundreds of images/s in the main process), and
  # worker processes would take CPU from the model on a small machine.
  data.num_workers = 0
  data.read_threads = 1  # threads per worker process (in the main process if num_workers = 0)
  data.prompt_size = 4 if smoke else 10  # P = G - 1
  data.prompt_sampling = "interval"  # or "random" (seeded with data.seed)
  data.eval_batch_size = 8 if smoke else 64
  return data


def get_model_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """A small prompt model on frozen ImageNet AlexNet statistics (models/lpips_backbones.py).

  The benchmark stores 64-pixel images; the stream enlarges them to 96 so that AlexNet's stride-4
  first layer keeps more of the fine distortions (noise, JPEG): the README's results section gives
  the measured difference.
  """
  from promptiqa_jax.models.config import ModelConfig

  model = ModelConfig(
      image_size=32 if smoke else 96, backbone="alexnet", freeze_backbone=True,
      backbone_hidden=64 if smoke else 256, prompt_width=16 if smoke else 64, prompt_heads=4,
      pair_depth=1, prompt_fusion_depth=1, query_depth=1 if smoke else 2,
      pair_mlp_hidden=16 if smoke else 64, score_hidden=16 if smoke else 64,
      score_embedding="linear")
  return ml_collections.ConfigDict(model.to_dict())


# Training ablations (the analyses' `ablations`): what each takes away from the recipe. The
# evaluation is the same for all (config.data.prompt_size pairs of each requirement).
ABLATIONS = {
    "no_scaling": "scores never rescaled (data.scale_rate = 0)",
    "no_flipping": "scores never flipped to 1 - s (data.flip_rate = 0)",
    "no_random_family": "no randomly drawn requirements, only the named training ones",
    "group5": "groups of 5 images (4 prompt pairs per query in training) instead of 11",
}


def _ablate(config: ml_collections.ConfigDict, ablation: str) -> None:
  data = config.data
  if ablation == "no_scaling":
    data.scale_rate = 0.0
  elif ablation == "no_flipping":
    data.flip_rate = 0.0
  elif ablation == "no_random_family":
    kept = [i for i, name in enumerate(data.train) if not name.endswith(":random")]
    data.weights = [data.weights[i] for i in kept]
    data.train = [data.train[i] for i in kept]
  elif ablation == "group5":
    data.group_size = 3 if data.group_size == 5 else 5


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """arg: comma-separated, in any order: "smoke" for a seconds-long run on tiny settings (default:
  the built-in default, about 10 minutes on 2 CPU cores, install and benchmark build included),
  and at most one of ABLATIONS (e.g. "no_scaling" or "smoke,group5")."""
  from promptiqa_jax import config_defaults as common

  parts = [p for p in arg.split(",") if p]
  unknown = [p for p in parts if p != "smoke" and p not in ABLATIONS]
  ablations = [p for p in parts if p in ABLATIONS]
  if unknown or len(ablations) > 1:
    raise ValueError(f"Unknown config argument {arg!r}; use '', 'smoke' and at most one of "
                     f"{', '.join(ABLATIONS)}, comma-separated")
  smoke = "smoke" in parts
  config = ml_collections.ConfigDict()
  config.model = get_model_config(smoke)
  config.data = get_data_config(smoke, config.model.image_size)
  config.optim = common.optim_config(lr=1e-3, weight_decay=0.0, epochs=2 if smoke else 8,
                                     warmup_steps=0 if smoke else 20)
  config.train = common.train_config(
      log_every=1 if smoke else 25, checkpoint_every=2 if smoke else 100,
      eval_every=0 if smoke else 250, num_steps=3 if smoke else -1,
      async_checkpointing=not smoke)
  config.mesh = common.mesh_config()
  config.init = common.init_config()
  config.eval = ml_collections.ConfigDict(dict(evaluators="auto", controls_on="heldout",
                                                release_prompt_flips=False))
  for ablation in ablations:
    _ablate(config, ablation)
  return config
