"""The `promptiqa-jax` console script: score, export, convert, prepare, datasets, bench.

Each subcommand parses its arguments and calls an importable function; the logic lives there.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2


def _score(args: argparse.Namespace) -> int:
  from promptiqa_jax import score_command

  return score_command.score(args)


def _export(args: argparse.Namespace) -> int:
  from promptiqa_jax import score_command

  return score_command.export(args)


def _convert(args: argparse.Namespace) -> int:
  from promptiqa_jax.inference import PromptIQA
  from promptiqa_jax.models.config import ModelConfig

  config = None
  if args.model_config:
    with open(args.model_config) as f:
      config = ModelConfig.from_mapping(json.load(f))
  PromptIQA.from_torch(args.torch, config).save(args.out)
  print(f"wrote {args.out}")
  return 0


def _prepare(args: argparse.Namespace) -> int:
  from promptiqa_jax.data import catalog

  options = {}
  if args.name == "synthetic_iqa":
    if args.image_size is not None:
      options["image_size"] = args.image_size
    if args.contents is not None:
      options["contents"] = [c for c in args.contents.split(",") if c and c != "none"]
  else:
    options["config"] = str(args.image_size) if args.image_size else args.config
    options["skip_bad_images"] = args.skip_bad_images
  data_dir = args.data_dir or catalog.default_data_dir()
  catalog.prepare(args.name, data_dir=data_dir, manual_dir=args.manual_dir, **options)
  print(f"prepared {args.name} in {data_dir}")
  return 0


def _datasets(args: argparse.Namespace) -> int:
  from promptiqa_jax.data import catalog

  data_dir = args.data_dir or catalog.default_data_dir()
  print(f"data_dir: {data_dir}")
  rows = catalog.list_datasets(data_dir)
  columns = ["name", "score_type", "lower_better", "raw_range", "images", "prepared"]
  print(" | ".join(columns))
  for row in rows:
    print(" | ".join(str(row.get(c, "")) for c in columns))
  return 0


def _bench(args: argparse.Namespace) -> int:
  from promptiqa_jax.bench import command

  return command.main(args)


def _positive_int(text: str) -> int:
  """argparse type: an integer of at least 1."""
  error = argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  try:
    value = int(text)
  except ValueError:
    raise error from None
  if value < 1:
    raise error
  return value


def _non_negative_int(text: str) -> int:
  """argparse type: an integer of at least 0."""
  error = argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
  try:
    value = int(text)
  except ValueError:
    raise error from None
  if value < 0:
    raise error
  return value


def _model_options() -> argparse.ArgumentParser:
  """Options shared by score and export: which model, computing how."""
  options = argparse.ArgumentParser(add_help=False)
  options.add_argument("--checkpoint", required=True,
                       help="model directory (convert or training), or "
                       "hub:OWNER/NAME[@REVISION][:FILENAME], e.g. hub:Zevin2023/PromptIQA (the "
                       "release, downloaded and converted once, then cached)")
  options.add_argument("--model-config", help="hub: JSON of the file's ModelConfig fields "
                       "(default: the paper's)")
  options.add_argument("--offline", action="store_true",
                       help="hub: use the cached converted model without asking the Hub")
  options.add_argument("--dtype", choices=["float32", "bfloat16"],
                       help="compute dtype (default: the model's, float32)")
  return options


def _prompt_options() -> argparse.ArgumentParser:
  """Options shared by score and export: the prompt."""
  options = argparse.ArgumentParser(add_help=False)
  options.add_argument("--prompt", required=True, help="JSON [[path, score], ...], CSV "
                       "path,score, the release's example.json, or a saved prompt (.npz)")
  options.add_argument("--example", metavar="ID",
                       help="example.json: the example (Example_id) whose prompt to use")
  options.add_argument("--score-range", metavar="LO,HI",
                       help="the prompt's scores are on this scale (e.g. 1,5 or 0,100); scores "
                       "are also written back on it (score_raw)")
  options.add_argument("--max-pixels", type=_positive_int, default=16384 * 16384,
                       help="refuse larger images (decompression bombs)")
  return options


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="promptiqa-jax", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)

  model_options, prompt_options = _model_options(), _prompt_options()
  score = commands.add_parser("score", parents=[model_options, prompt_options],
                              help="score images with a prompt of image-score pairs")
  score.add_argument("inputs", nargs="*", metavar="IMAGE_OR_FOLDER",
                     help="images and folders (scored recursively); none with the release's "
                     "example.json scores each example's own image")
  score.add_argument("--output", help="results file, .csv or .json (default: CSV on stdout)")
  score.add_argument("--labels", help="CSV path,score of your own scores for the images (on the "
                     "prompt's scale): prints SRCC, PLCC, KRCC and RMSE against them")
  score.add_argument("--save-prompt", metavar="FILE.npz",
                     help="save the encoded prompt (then --prompt FILE.npz skips encoding)")
  score.add_argument("--batch-size", type=_positive_int, default=16,
                     help="images per step, split over all local devices")
  score.add_argument("--workers", type=_non_negative_int, default=None,
                     help="image decoding threads (default: one per CPU, at most 8; 0: none)")
  score.add_argument("--quiet", action="store_true", help="no progress bar")
  score.set_defaults(run=_score)

  export = commands.add_parser("export", parents=[model_options, prompt_options],
                               help="write a jax.export scorer with the prompt baked in, for "
                               "programs without this package")
  export.add_argument("--out", required=True, help="output directory (new)")
  export.add_argument("--platforms", help="comma-separated, e.g. cpu,cuda (default: this "
                      "machine's backend)")
  export.set_defaults(run=_export, batch_size=1)

  convert = commands.add_parser("convert", help="release checkpoint (.pth.tar) -> model directory")
  convert.add_argument("--torch", required=True, help="the release's best_model.pth.tar")
  convert.add_argument("--out", required=True, help="output model directory (new)")
  convert.add_argument("--model-config", help="JSON of ModelConfig fields (default: the paper's)")
  convert.set_defaults(run=_convert)

  prepare = commands.add_parser("prepare", help="build a dataset's TFDS files")
  prepare.add_argument("name")
  prepare.add_argument("--data-dir", help="where TFDS datasets live, a folder or gs://BUCKET/PATH "
                       "(built locally, then uploaded; default: $TFDS_DATA_DIR or "
                       "~/tensorflow_datasets, as TFDS)")
  prepare.add_argument("--manual-dir", help="the dataset as downloaded (real datasets); for "
                       "synthetic_iqa, a folder of your own photos added as contents")
  prepare.add_argument("--contents", help="synthetic_iqa: the bundled contents to use, "
                       "comma-separated ('none': only --manual-dir's photos; default all)")
  prepare.add_argument("--image-size", type=int,
                       help="stored square image size (overrides --config for real datasets)")
  prepare.add_argument("--config", default="224", choices=["224", "full"],
                       help="real datasets: images resized to 224 (default) or at full size")
  prepare.add_argument("--skip-bad-images", action="store_true",
                       help="real datasets: leave out absent/unreadable images, with a warning")
  prepare.set_defaults(run=_prepare)

  datasets = commands.add_parser("datasets", help="list datasets and whether they are prepared")
  datasets.add_argument("--data-dir", help="where TFDS datasets live, a folder or gs://BUCKET/PATH "
                        "(default: $TFDS_DATA_DIR or ~/tensorflow_datasets, as TFDS)")
  datasets.set_defaults(run=_datasets)

  bench = commands.add_parser("bench", help="throughput: training step, scoring, prompt encoding, "
                              "input stream; optionally beside the PyTorch implementation")
  bench.add_argument("--config", required=True, help="experiment config file[:arg], e.g. "
                     "configs/paper.py or configs/paper.py:smoke")
  bench.add_argument("--what", default="train,infer,prompt",
                     help="comma-separated: train, infer, prompt, input, profile")
  bench.add_argument("--compare", choices=["torch"], help="also measure the PyTorch implementation")
  bench.add_argument("--torch-variants", help="comma-separated: eager, compile, autocast, "
                     "compile_autocast (default: eager,compile, or the autocast pair for bfloat16)")
  bench.add_argument("--torch-flush-denormal", action="store_true",
                     help="PyTorch on CPU: flush denormals to zero, as XLA does (variants get +ftz)")
  bench.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                     help="compute dtype (parameters stay float32)")
  bench.add_argument("--remat", action="store_true", help="rematerialise ViT blocks and MALs")
  bench.add_argument("--attention", choices=["xla", "cudnn"], default="xla",
                     help="image-branch attention kernel (cudnn: GPUs, with --dtype bfloat16)")
  bench.add_argument("--groups", type=int, help="train: groups per step (default: the config's)")
  bench.add_argument("--group-size", type=int,
                     help="train: images per group (default: the config's)")
  bench.add_argument("--batch-sizes", help="infer: comma-separated batch sizes (default: 1 and the "
                     "config's eval batch size)")
  bench.add_argument("--warmup", type=int, default=2,
                     help="untimed calls first (torch.compile compiles in the first)")
  bench.add_argument("--repeats", type=int, default=5, help="timed calls; the median is reported")
  bench.add_argument("--threads", type=int, help="pin to this many CPUs (XLA and torch threads)")
  bench.add_argument("--input-workers", type=int,
                     help="input: worker processes (default: the config's, at most the CPU count)")
  bench.add_argument("--quick", action="store_true", help="fewest runs: 1 warm-up, 1 timed, small "
                     "batches and images, XLA at optimisation level 0, PyTorch eager only (a "
                     "smoke test of the harness)")
  bench.add_argument("--json", help="write the report (results, ratios, device, versions) here")
  bench.set_defaults(run=_bench)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.run(args)
  except (FileNotFoundError, FileExistsError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USAGE
  except ModuleNotFoundError as err:
    # The core install scores and converts; data, training and benchmarks need the [train] extra.
    hint = "" if "pip install" in str(err) else (
        " (data preparation, training and benchmarks need pip install 'promptiqa-jax[train]')")
    print(f"error: {err}{hint}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
  sys.exit(main())
