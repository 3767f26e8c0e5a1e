"""The final evaluation of a training run: both exported models on the final split, labelled.

A run exports WORKDIR/model (its last step) and, when it evaluates every `train.eval_every` steps,
WORKDIR/best_model: the step whose evaluation on `config.data.eval_split` scored best by
`config.train.best_metric`, recorded in WORKDIR/eval/selection.json (`Selection`).
`promptiqa-jax score --checkpoint WORKDIR` and `PromptIQA.from_checkpoint(WORKDIR)` load best_model
when there is one (checkpoint.resolve_model_dir). The final evaluation scores each exported model
on `config.train.final_split` (WORKDIR/eval/final_model.json and best_model.json with their plots,
as `evaluate` writes them) and gathers both in WORKDIR/eval/final.json:

  (top level)  the result of the model that `score --checkpoint WORKDIR` loads, as `evaluate`
               returns it, so that readers of "summary" and "datasets" read that model
  "model"      which model the top level is: "best_model" or "final_model"
  "models"     {"final_model": ..., "best_model": ...} (best_model when exported), each with
               "directory" (under WORKDIR), "step", "selection" (best_model: {"split", "metric",
               "value"}; final_model: None) and its result's own sections ("datasets", "summary",
               the prompt controls, ...); the prompts are the top level's, shared by both
"""
from __future__ import annotations

import json
import os
from typing import Any

from promptiqa_jax import checkpoint
from promptiqa_jax import storage
from promptiqa_jax.evaluators import report

FINAL_MODEL = "final_model"
BEST_MODEL = "best_model"
# Label -> the exported model's directory under WORKDIR.
DIRECTORIES = {FINAL_MODEL: "model", BEST_MODEL: "best_model"}
SELECTION_FILE = "selection.json"
# Keys of an evaluation result that do not depend on the model (one config evaluates both).
_SHARED = ("split", "prompt", "prompts", "evaluators", "metric_notes")


class Selection:
  """The history of best_model/ in one run: each step whose evaluation on `split` beat every
  earlier one by `metric`, with its value (WORKDIR/eval/selection.json).

  A resumed run keeps the records up to the step it resumes from, so the best value survives a
  restart and a stale file from an earlier run in the same workdir is not taken for this run's.
  """

  def __init__(self, workdir: str | os.PathLike, split: str, metric: str, start_step: int):
    self.path = storage.path(workdir) / report.EVAL_DIR / SELECTION_FILE
    self.split, self.metric = split, metric
    self.history: list[dict[str, Any]] = []
    if self.path.is_file():
      written = json.loads(self.path.read_text())
      if (written.get("split"), written.get("metric")) == (split, metric):
        self.history = [r for r in written["history"] if int(r["step"]) <= start_step]

  @property
  def best(self) -> dict[str, Any] | None:
    """{"step", "value"} of the current best_model, None before the first evaluation."""
    return self.history[-1] if self.history else None

  def improves(self, value: float) -> bool:
    return self.best is None or value > self.best["value"]

  def record(self, step: int, value: float, write: bool) -> None:
    """Notes that best_model/ now holds `step`'s model (after exporting it); every process keeps
    the history, the one that exported (`write`) writes the file."""
    self.history.append({"step": int(step), "value": float(value)})
    if write:
      storage.write_text(self.path, json.dumps(
          {"split": self.split, "metric": self.metric, "history": self.history}, indent=2))

  def describe(self) -> dict[str, Any] | None:
    """The best model's "selection" entry in final.json."""
    if self.best is None:
      return None
    return {"split": self.split, "metric": self.metric, "value": self.best["value"]}


def loaded_label(workdir: str | os.PathLike) -> str:
  """The label of the model `promptiqa-jax score --checkpoint WORKDIR` loads."""
  resolved = checkpoint.resolve_model_dir(workdir)
  return BEST_MODEL if resolved == storage.path(workdir) / DIRECTORIES[BEST_MODEL] else FINAL_MODEL


def combine(results: dict[str, dict[str, Any]], loaded: str,
            selection: dict[str, Any] | None) -> dict[str, Any]:
  """final.json (module docstring) from each label's `evaluate` result; `selection` is the best
  model's (`Selection.describe`)."""
  combined = dict(results[loaded])
  combined["model"] = loaded
  combined["models"] = {
      label: {"directory": DIRECTORIES[label], "step": result.get("step"),
              "selection": selection if label == BEST_MODEL else None,
              **{k: v for k, v in result.items() if k not in _SHARED and k != "step"}}
      for label, result in results.items()}
  return combined


def describe(final: dict[str, Any], label: str) -> str:
  """One line naming a model of final.json: its directory, step, how it was chosen, and whether
  `score --checkpoint WORKDIR` loads it."""
  entry = final["models"][label]
  line = f"{label}: WORKDIR/{entry['directory']}"
  selection = entry.get("selection")
  if label == FINAL_MODEL:
    line += f", the last step ({entry['step']})"
  elif selection:
    line += (f", step {entry['step']}, the best {selection['split']} {selection['metric']} "
             f"({selection['value']:.4f})")
  else:
    line += ", not selected by this run (left from an earlier one)"
  if label == final["model"]:
    line += "; `promptiqa-jax score --checkpoint WORKDIR` loads this one"
  return line


def format_table(final: dict[str, Any]) -> str:
  """final.json as text: each model's table under the line that names it."""
  blocks = []
  for label in final["models"]:
    result = {**final, **final["models"][label], "model": label}
    blocks.append("== " + describe(final, label) + "\n" + report.format_table(result))
  return "\n\n".join(blocks)
