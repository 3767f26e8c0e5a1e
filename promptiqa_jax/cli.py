"""The `promptiqa-jax` console script: score, convert, prepare, datasets, bench.

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
  import numpy as np
  from tqdm import tqdm

  from promptiqa_jax import score_io
  from promptiqa_jax.data import preprocess
  from promptiqa_jax.inference import PromptIQA

  # Everything about the prompt is checked before the model is loaded or anything computed.
  try:
    prompt_paths, prompt_scores = score_io.read_prompt_file(args.prompt)
  except score_io.PromptFileError as err:
    print(f"error: prompt: {err}", file=sys.stderr)
    return EXIT_USAGE
  prompt_images = []
  for index, path in enumerate(prompt_paths):
    try:
      prompt_images.append(preprocess.load_image(path, args.max_pixels))
    except preprocess.ImageError as err:
      print(f"error: prompt: {args.prompt}: entry {index}: {err}", file=sys.stderr)
      return EXIT_USAGE
  paths = score_io.find_images(args.inputs)
  if not paths:
    print(f"error: no images found in {', '.join(args.inputs)}", file=sys.stderr)
    return EXIT_USAGE

  model = PromptIQA.from_checkpoint(args.checkpoint, batch_size=args.batch_size)
  size = model.config.image_size
  prompt = model.encode_prompt(np.stack([preprocess.preprocess(i, size) for i in prompt_images]),
                               prompt_scores)
  rows: list[score_io.ScoreRow] = []
  with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=args.quiet) as progress:
    for start in range(0, len(paths), args.batch_size):
      chunk = paths[start:start + args.batch_size]
      inputs, slots = [], []
      for path in chunk:
        try:
          inputs.append(preprocess.preprocess(preprocess.load_image(path, args.max_pixels), size))
          slots.append(len(rows))
          rows.append(score_io.ScoreRow(path))
        except preprocess.ImageError as err:
          rows.append(score_io.ScoreRow(path, error=str(err)))
      if inputs:
        for slot, value in zip(slots, model.score(np.stack(inputs), prompt)):
          rows[slot] = score_io.ScoreRow(rows[slot].path, score=float(value))
      progress.update(len(chunk))
  score_io.write_rows(rows, args.output, sys.stdout)
  failed = [row for row in rows if row.error]
  for row in failed:
    print(f"error: {row.error}", file=sys.stderr)
  if failed:
    print(f"{len(failed)} of {len(rows)} inputs failed; the others were scored", file=sys.stderr)
  return EXIT_INPUT_FAILED if failed else 0


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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="promptiqa-jax", description=__doc__)
  commands = parser.add_subparsers(dest="command", required=True)

  score = commands.add_parser("score", help="score images with a prompt of image-score pairs")
  score.add_argument("--checkpoint", required=True, help="model directory (convert or training)")
  score.add_argument("--prompt", required=True, help="JSON [[path, score], ...] or CSV path,score")
  score.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
  score.add_argument("--output", help="results file, .csv or .json (default: CSV on stdout)")
  score.add_argument("--batch-size", type=_positive_int, default=16)
  score.add_argument("--max-pixels", type=_positive_int, default=16384 * 16384,
                     help="refuse larger images (decompression bombs)")
  score.add_argument("--quiet", action="store_true", help="no progress bar")
  score.set_defaults(run=_score)

  convert = commands.add_parser("convert", help="release checkpoint (.pth.tar) -> model directory")
  convert.add_argument("--torch", required=True, help="the release's best_model.pth.tar")
  convert.add_argument("--out", required=True, help="output model directory (new)")
  convert.add_argument("--model-config", help="JSON of ModelConfig fields (default: the paper's)")
  convert.set_defaults(run=_convert)

  prepare = commands.add_parser("prepare", help="build a dataset's TFDS files")
  prepare.add_argument("name")
  prepare.add_argument("--data-dir", help="where TFDS datasets live (default: $TFDS_DATA_DIR or "
                       "~/tensorflow_datasets, as TFDS)")
  prepare.add_argument("--manual-dir", help="the dataset as downloaded (real datasets)")
  prepare.add_argument("--image-size", type=int,
                       help="stored square image size (overrides --config for real datasets)")
  prepare.add_argument("--config", default="224", choices=["224", "full"],
                       help="real datasets: images resized to 224 (default) or at full size")
  prepare.add_argument("--skip-bad-images", action="store_true",
                       help="real datasets: leave out absent/unreadable images, with a warning")
  prepare.set_defaults(run=_prepare)

  datasets = commands.add_parser("datasets", help="list datasets and whether they are prepared")
  datasets.add_argument("--data-dir", help="where TFDS datasets live (default: $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets, as TFDS)")
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
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
  sys.exit(main())
