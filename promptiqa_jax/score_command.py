"""The `promptiqa-jax score` and `export` commands.

  promptiqa-jax score --checkpoint hub:Zevin2023/PromptIQA --prompt prompt.json photos/
  promptiqa-jax score --checkpoint hub:Zevin2023/PromptIQA --prompt example.json    # the release's
  promptiqa-jax score --checkpoint DIR --prompt mos.csv --score-range 1,5 --labels mine.csv photos/
  promptiqa-jax score --checkpoint DIR --prompt prompt.json --save-prompt prompt.npz
  promptiqa-jax export --checkpoint DIR --prompt prompt.npz --out scorer/

Everything about the prompt (and the labels) is checked before the model is loaded. A prompt is
a pairs file, the release's `example.json` (each example's query image scored with its own
prompt, or the images given scored with `--example ID`'s), or a saved prompt (`.npz`). Every input
image gets one row; an image that cannot be read is an error row and the exit status is 1.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Callable, Iterator

import numpy as np
import tqdm

from promptiqa_jax import folder_scoring, hub, metrics, saved_prompt, score_io
from promptiqa_jax.cli import EXIT_INPUT_FAILED, EXIT_USAGE
from promptiqa_jax.data import preprocess
from promptiqa_jax.inference import Prompt, PromptIQA
from promptiqa_jax.models.config import ModelConfig
from promptiqa_jax.score_range import UNIT, ScoreRange


class UsageError(ValueError):
  """Arguments or input files that cannot be used; nothing was computed."""


@dataclasses.dataclass(frozen=True)
class Pairs:
  """A prompt read and decoded, ready to encode: paths, uint8 images, scores in [0, 1] and the
  range they were given on."""

  paths: list[str]
  images: list[np.ndarray]
  scores: np.ndarray
  score_range: ScoreRange = UNIT


@dataclasses.dataclass(frozen=True)
class Job:
  """Queries to score with one prompt: `pairs` to encode, or a `saved` prompt file, or the
  `error` that makes the prompt unusable; `example` when it comes from the release's file."""

  queries: list[str]
  pairs: Pairs | None = None
  saved: str | None = None
  error: str | None = None
  example: score_io.Example | None = None


def score(args: argparse.Namespace) -> int:
  """`promptiqa-jax score`: rows to `--output` (or stdout), errors and the summary to stderr."""
  try:
    jobs = _checked_jobs(args, queries=True, single=bool(args.save_prompt))
    labels = score_io.read_labels(args.labels) if args.labels else None
  except score_io.PromptFileError as err:
    print(f"error: labels: {err}", file=sys.stderr)
    return EXIT_USAGE
  except UsageError as err:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USAGE
  model = _load_model(args)
  rows = []
  with _progress(sum(len(job.queries) for job in jobs), args.quiet) as progress:
    for job in jobs:
      rows.extend(_score_job(model, job, args, progress))
  if labels is not None:
    rows = [dataclasses.replace(row, label=labels.get(os.path.realpath(row.path))) for row in rows]
  score_io.write_rows(rows, args.output, sys.stdout, _columns(args, jobs, rows))
  failed = [row for row in rows if row.error]
  for row in failed:
    print(f"error: {row.error}", file=sys.stderr)
  if failed:
    print(f"{len(failed)} of {len(rows)} inputs failed; the others were scored", file=sys.stderr)
  if labels is not None and not _report_agreement(rows, args.labels):
    return EXIT_INPUT_FAILED
  return EXIT_INPUT_FAILED if failed else 0


def export(args: argparse.Namespace) -> int:
  """`promptiqa-jax export`: the model with one prompt as a `jax.export` scorer in `--out`."""
  from promptiqa_jax import export as export_lib  # jax.export and its serializer: export only

  try:
    if os.path.exists(os.path.join(args.out, export_lib.FUNCTION_FILE)):
      raise UsageError(f"{args.out} already holds a scorer; choose another directory")
    jobs = _checked_jobs(args, queries=False, single=True)
  except UsageError as err:
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USAGE
  model = _load_model(args)
  platforms = args.platforms.split(",") if args.platforms else None
  path = export_lib.export_scorer(model, _prompt(model, jobs[0]), args.out, platforms)
  print(f"wrote {path}")
  return 0


def _checked_jobs(args: argparse.Namespace, queries: bool, single: bool) -> list[Job]:
  """`_jobs`, every error a UsageError (prompt errors say so)."""
  try:
    score_range = ScoreRange.parse(args.score_range) if args.score_range else UNIT
  except ValueError as err:
    raise UsageError(f"--score-range: {err}") from None
  try:
    return _jobs(args, score_range, queries, single)
  except score_io.PromptFileError as err:
    raise UsageError(f"prompt: {err}") from None


def _jobs(args: argparse.Namespace, score_range: ScoreRange, queries: bool, single: bool
          ) -> list[Job]:
  """What to score with which prompt, every prompt checked and decoded (no model yet).
  `queries`: images are scored (not only a prompt made); `single`: exactly one prompt wanted."""
  inputs = score_io.find_images(args.inputs) if queries else []
  if queries and args.inputs and not inputs:
    raise UsageError(f"no images found in {', '.join(args.inputs)}")
  if args.prompt.lower().endswith(".npz"):
    if args.score_range:
      raise UsageError("--score-range: a saved prompt keeps the scale it was encoded with")
    if not os.path.isfile(args.prompt):
      raise score_io.PromptFileError(f"{args.prompt}: cannot read prompt file (no such file)")
    jobs = [Job(inputs, saved=args.prompt)]
  elif score_io.is_examples_file(args.prompt):
    jobs = _example_jobs(args, score_range, inputs)
  else:
    paths, scores = score_io.read_prompt_file(args.prompt, score_range)
    jobs = [Job(inputs, pairs=_decode(paths, scores, score_range, args.prompt, args.max_pixels))]
  if single and len(jobs) != 1:
    raise UsageError(f"{args.prompt} holds {len(jobs)} examples; pick one with --example ID")
  if queries and not inputs and not args.save_prompt and jobs[0].example is None:
    raise UsageError("no images to score (give images or folders, or --save-prompt FILE)")
  return jobs


def _example_jobs(args: argparse.Namespace, score_range: ScoreRange, inputs: list[str]
                  ) -> list[Job]:
  examples = score_io.read_examples(args.prompt, score_range)
  if args.example is not None:
    chosen = [e for e in examples if e.example_id == args.example]
    if not chosen:
      raise UsageError(f"--example {args.example}: {args.prompt} has "
                       f"{', '.join(e.example_id for e in examples)}")
    examples = chosen
  if inputs and len(examples) != 1:
    raise UsageError(f"{args.prompt} holds {len(examples)} examples; pick the prompt for the "
                     "images given with --example ID")
  jobs = []
  for example in examples:
    try:
      if example.error:
        raise score_io.PromptFileError(example.error)
      pairs = _decode(example.prompt_paths, example.prompt_scores, score_range,
                      f"{args.prompt}: example {example.example_id}: ISPP", args.max_pixels)
      jobs.append(Job(inputs or [example.image], pairs=pairs, example=example))
    except score_io.PromptFileError as err:
      # Scoring every example, one unusable prompt is that example's error row.
      if len(examples) == 1:
        raise
      jobs.append(Job([example.image], error=str(err), example=example))
  return jobs


def _decode(paths: list[str], scores: np.ndarray, score_range: ScoreRange, where: str,
            max_pixels: int) -> Pairs:
  images = []
  for index, path in enumerate(paths):
    try:
      images.append(preprocess.load_image(path, max_pixels))
    except preprocess.ImageError as err:
      raise score_io.PromptFileError(f"{where}: entry {index}: {err}") from None
  return Pairs(paths, images, scores, score_range)


def _load_model(args: argparse.Namespace) -> PromptIQA:
  options = {"batch_size": args.batch_size, "dtype": args.dtype}
  if hub.is_hub_reference(args.checkpoint):
    config = None
    if args.model_config:
      config = ModelConfig.from_mapping(_read_json(args.model_config))
    file = hub.HubFile.parse(args.checkpoint)
    return PromptIQA.from_pretrained(file.repo_id, filename=file.filename, revision=file.revision,
                                     config=config, local_files_only=args.offline, **options)
  return PromptIQA.from_checkpoint(args.checkpoint, **options)


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _prompt(model: PromptIQA, job: Job) -> Prompt:
  if job.saved:
    return saved_prompt.load_prompt(job.saved, model)
  size = model.config.image_size
  images = np.stack([preprocess.preprocess(image, size) for image in job.pairs.images])
  # The scores were mapped to [0, 1] when read; the prompt keeps the range to map predictions back.
  prompt = model.encode_prompt(images, job.pairs.scores, names=job.pairs.paths)
  return dataclasses.replace(prompt, score_range=job.pairs.score_range)


def _score_job(model: PromptIQA, job: Job, args: argparse.Namespace,
               progress: Callable[[int], object]) -> list[score_io.ScoreRow]:
  example = {}
  if job.example is not None:
    example = {"example_id": job.example.example_id, "remark": job.example.remark,
               "release_score": job.example.release_score}
  if job.error:
    progress(len(job.queries))
    return [score_io.ScoreRow(path, error=job.error, **example) for path in job.queries]
  prompt = _prompt(model, job)
  if args.save_prompt:
    saved_prompt.save_prompt(args.save_prompt, prompt, model)
    print(f"saved the encoded prompt to {args.save_prompt}", file=sys.stderr)
  workers = folder_scoring.default_workers() if args.workers is None else args.workers
  rows = folder_scoring.score_files(model, job.queries, prompt, max_pixels=args.max_pixels,
                                    workers=workers, progress=progress)
  return [dataclasses.replace(row, **example) for row in rows]


@contextlib.contextmanager
def _progress(total: int, quiet: bool) -> Iterator[Callable[[int], object]]:
  """A progress bar on stderr (none when `quiet`); yields its `update(n)`."""
  with tqdm.tqdm(total=total, unit="img", file=sys.stderr, disable=quiet) as bar:
    yield bar.update


def _columns(args: argparse.Namespace, jobs: list[Job], rows: list[score_io.ScoreRow]
             ) -> list[str]:
  examples = any(job.example is not None for job in jobs)
  columns = (["example_id"] if examples else []) + ["path", "score"]
  columns += ["release_score"] if examples else []
  # A saved prompt may carry a range of its own.
  raw = args.score_range or any(row.score_raw is not None for row in rows)
  columns += ["score_raw"] if raw else []
  columns += ["label"] if args.labels else []
  return columns + (["remark"] if examples else []) + ["error"]


def _report_agreement(rows: list[score_io.ScoreRow], labels_path: str) -> bool:
  """Prints SRCC, PLCC, KRCC and RMSE of the scored rows against their labels (on the labels'
  scale); False when no scored image has a label."""
  scored = [row for row in rows if row.score is not None]
  labelled = [row for row in scored if row.label is not None]
  if not labelled:
    print(f"error: labels: none of the {len(scored)} scored images is in {labels_path} (paths "
          "are matched after resolving them like prompt paths)", file=sys.stderr)
    return False
  # Predictions on the labels' scale: the prompt's range, which the labels share.
  predicted = [row.score_raw if row.score_raw is not None else row.score for row in labelled]
  result = metrics.quality_metrics(predicted, [row.label for row in labelled])
  values = "  ".join(f"{key.upper()} {result[key]:.4f}" for key in metrics.METRICS)
  note = f" ({result['note']})" if "note" in result else ""
  print(f"against {labels_path}: {len(labelled)} of {len(scored)} scored images labelled: "
        f"{values} (RMSE in the labels' units){note}", file=sys.stderr)
  return True
