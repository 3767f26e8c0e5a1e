"""Images per second of the training stream, beside the reference's loader on the same images.

The reference reads each image file with cv2.imread, resizes it with cv2.resize(INTER_CUBIC),
converts BGR to RGB, scales to [-1, 1], flips, and makes a tensor, one group of G images per item of
a torch.utils.data.DataLoader (batch_size=1, num_workers processes). The stream here reads the same
JPEGs from an ArrayRecord TFDS build and decodes them in grain worker processes (Pillow decode,
OpenCV bicubic resize, normalise, flip, score augmentation).

  python -m promptiqa_jax.bench.input_stream --workers 0,1,2 --num-images 352 --size 1024x768

prints a markdown table (loader, workers, images/s, images/s per worker). Synthetic images at
KonIQ-10k's size (1024x768 JPEG) are written to a temporary folder unless --root is given. The
stream is measured twice: on a build of the JPEG files as they are (the same work as the reference)
and on a build stored at the model's input size as PNG (what the real datasets' default "224"
config holds: the resize is done once at build time, with the same OpenCV call). The bench command
measures the same loaders with `--what input` (`input_measure`).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Callable, NamedTuple, Sequence

import cv2
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from promptiqa_jax.bench.plan import Options
from promptiqa_jax.bench.report import record
from promptiqa_jax.data import datasets, preprocess

BENCH_DATASET = "throughput_images"
ORIGINAL = "original"


def write_images(image_dir: str, num_images: int, width: int, height: int,
                 seed: int = 0, quality: int = 90) -> list[str]:
  """Writes `num_images` photo-like JPEGs (smooth shapes plus fine noise); returns their names."""
  os.makedirs(image_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  names = []
  for i in range(num_images):
    # Coarse colour fields upsampled, plus noise: JPEG sizes like real photographs' (~100-300 kB).
    coarse = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += rng.integers(-12, 13, image.shape, dtype=np.int16)
    name = f"{i:05d}.jpg"
    cv2.imwrite(os.path.join(image_dir, name), np.clip(image, 0, 255).astype(np.uint8),
                [cv2.IMWRITE_JPEG_QUALITY, quality])
    names.append(name)
  return names


class ThroughputImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The JPEGs of one folder as a `train` split with the real IQA datasets' features.

  Config "original" stores the files' bytes as they are; "resized<S>" stores them decoded, resized
  to S x S (OpenCV bicubic) and PNG-encoded, as the real datasets' default "224" builds do.
  """

  name = BENCH_DATASET
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=ORIGINAL)]

  def __init__(self, *, image_dir: str | None = None, **kwargs: Any):
    self._image_dir = image_dir
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> None:
    # Nothing is downloaded; the default looks for a checksums file beside the module.
    return None

  @property
  def _resize(self) -> int | None:
    name = self.builder_config.name
    return None if name == ORIGINAL else int(name[len("resized"):])

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg" if self._resize is None else "png"),
        "name": tfds.features.Text(),
        "score": tfds.features.Scalar(np.float32),
        "score_raw": tfds.features.Scalar(np.float32),
        "unit": tfds.features.Scalar(np.int64),
    }))

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i, name in enumerate(sorted(os.listdir(self._image_dir))):
      with open(os.path.join(self._image_dir, name), "rb") as f:
        data = f.read()
      if self._resize is not None:
        image = preprocess.resize_bicubic(preprocess.decode_image(data, name), self._resize)
        data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
      score = float(rng.uniform(0.05, 0.95))
      yield name, {"image": data, "name": name, "score": score, "score_raw": 100 * score, "unit": i}


def prepare(root: str, num_images: int, width: int, height: int,
            image_size: int) -> tuple[str, str]:
  """Writes the JPEGs and their two TFDS builds (original, resized) under `root`.

  Returns (image_dir, data_dir).
  """
  image_dir, data_dir = os.path.join(root, "images"), os.path.join(root, "tfds")
  if len(os.listdir(image_dir) if os.path.isdir(image_dir) else []) != num_images:
    write_images(image_dir, num_images, width, height)
  for config in (ORIGINAL, f"resized{image_size}"):
    ThroughputImages(image_dir=image_dir, data_dir=data_dir,
                     config=tfds.core.BuilderConfig(name=config) if config != ORIGINAL else None
                     ).download_and_prepare(file_format="array_record")
  datasets.register_builder(ThroughputImages)
  return image_dir, data_dir


def _images_per_second(iterator, warmup: int, batches: int, images_per_batch: int) -> float:
  """Images/s over `batches` batches of `iterator`, after `warmup` batches (one per worker: each
  worker's first batch carries its start-up)."""
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * images_per_batch / (time.perf_counter() - start)


def stream_throughput(data_dir: str, num_workers: int, *, image_size: int, group_size: int,
                      groups_per_batch: int, batches: int, resized: bool = False) -> float:
  """Images/s of train_stream after a warm-up of max(1, num_workers) batches (worker start-up).

  resized: read the build stored at the model's input size (no resize in the stream).
  """
  from promptiqa_jax.data import pipeline  # grain: loaded only when the stream is measured

  name = f"{BENCH_DATASET}/resized{image_size}" if resized else BENCH_DATASET
  config = ml_collections.ConfigDict(dict(
      data_dir=data_dir, train=[name], train_split="train", weights=None,
      group_size=group_size, groups_per_batch=groups_per_batch, image_size=image_size,
      scale_rate=0.5, flip_rate=0.1, flip="vertical", seed=0, num_workers=num_workers,
      read_threads=1))
  iterator = iter(pipeline.train_stream(config))
  try:
    return _images_per_second(iterator, max(1, num_workers), batches,
                              groups_per_batch * group_size)
  finally:
    iterator.close()


class _ReferenceGroups:
  """The reference's training items: one group of G image files read with OpenCV per item."""

  def __init__(self, paths: Sequence[str], group_size: int, image_size: int):
    self.groups = [paths[i:i + group_size]
                   for i in range(0, len(paths) - group_size + 1, group_size)]
    self.image_size = image_size

  def __len__(self) -> int:
    return len(self.groups)

  def __getitem__(self, index: int) -> Any:
    import torch  # optional: the [torch] extra

    images = []
    for path in self.groups[index]:
      image = cv2.imread(path, cv2.IMREAD_COLOR)
      image = cv2.resize(image, (self.image_size, self.image_size), interpolation=cv2.INTER_CUBIC)
      image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
      image = np.transpose(image.astype(np.float32) / 255, (2, 0, 1))
      image = (image - 0.5) / 0.5
      if np.random.rand() < 0.5:
        image = np.fliplr(image).copy()  # as the reference: on the [3, H, W] array
      images.append(torch.from_numpy(image))
    return torch.stack(images)


def reference_throughput(image_dir: str, num_workers: int, *, image_size: int, group_size: int,
                         groups_per_batch: int, batches: int) -> float:
  """Images/s of the reference's way (torch DataLoader over OpenCV reads), same warm-up and count.

  Batches of groups_per_batch items of one group each, the reference's per-GPU batch times GPUs.
  """
  import torch  # optional: the [torch] extra

  paths = [os.path.join(image_dir, n) for n in sorted(os.listdir(image_dir))]
  loader = torch.utils.data.DataLoader(
      _ReferenceGroups(paths, group_size, image_size), batch_size=groups_per_batch, shuffle=True,
      num_workers=num_workers, drop_last=True)
  needed = max(1, num_workers) + batches
  if len(loader) < needed:
    raise ValueError(f"{len(paths)} images give {len(loader)} batches, fewer than the {needed} "
                     "needed: raise --num-images")
  return _images_per_second(iter(loader), max(1, num_workers), batches,
                            groups_per_batch * group_size)


class Loader(NamedTuple):
  """One loader measured: the record's impl and variant, the table's label, and its images/s."""

  impl: str
  variant: str
  label: str
  rate: Callable[[str, str, int], float]  # (image_dir, data_dir, workers) -> images/s


def loaders(image_size: int, batches: int, group_size: int = 11, groups_per_batch: int = 2,
            reference: bool = True) -> list[Loader]:
  """The stream on the JPEG and the PNG build, and with `reference` the reference's DataLoader;
  batches of `groups_per_batch` groups of `group_size` (default: the reference's per-GPU batch)."""
  shape = dict(image_size=image_size, group_size=group_size, groups_per_batch=groups_per_batch,
               batches=batches)
  found = [
      Loader("jax", "grain_jpeg", "grain stream, JPEG originals",
             lambda image_dir, data_dir, workers: stream_throughput(data_dir, workers, **shape)),
      Loader("jax", f"grain_png{image_size}", f"grain stream, {image_size} PNG build",
             lambda image_dir, data_dir, workers: stream_throughput(
                 data_dir, workers, resized=True, **shape))]
  if reference:
    found.append(Loader(
        "torch", "dataloader_jpeg", "reference: torch DataLoader + cv2, JPEG files",
        lambda image_dir, data_dir, workers: reference_throughput(image_dir, workers, **shape)))
  return found


def input_measure(config: Any, opts: Options, compare_torch: bool) -> list[dict[str, Any]]:
  """Images/s of the training stream (JPEG originals and the stored-at-input-size PNG build) and,
  with `compare_torch`, of the reference's DataLoader, on synthetic photo-like JPEGs."""
  g, n, workers = opts.groups, opts.group_size, opts.input_workers
  size = int(config.data.image_size)
  per_run = opts.input_batches * g * n
  results = []
  with tempfile.TemporaryDirectory() as root:
    # The reference's loader reads each group once: enough files for warm-up and timed batches.
    dirs = prepare(root, (max(1, workers) + opts.input_batches) * g * n, *opts.input_jpeg, size)
    for loader in loaders(size, opts.input_batches, group_size=n, groups_per_batch=g,
                          reference=compare_torch):
      times = [per_run / loader.rate(*dirs, workers) for _ in range(opts.repeats)]
      results.append(record(loader.impl, loader.variant, "input", g, "uint8", per_run, times, None,
                            1.0, workers=workers, jpeg_size="x".join(map(str, opts.input_jpeg))))
  return results


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--root", help="folder for the images and their TFDS builds (default: a "
                      "temporary folder)")
  parser.add_argument("--num-images", type=int, default=352)
  parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the written JPEGs")
  parser.add_argument("--image-size", type=int, default=224, help="the model's input side")
  parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
  parser.add_argument("--batches", type=int, default=8, help="timed batches of 2 groups of 11")
  args = parser.parse_args(argv)
  width, height = (int(v) for v in args.size.lower().split("x"))
  with tempfile.TemporaryDirectory() as scratch:
    image_dir, data_dir = prepare(args.root or scratch, args.num_images, width, height,
                                  args.image_size)
    print(f"{args.num_images} JPEGs {width}x{height} -> {args.image_size}x{args.image_size}, "
          f"{os.cpu_count()} CPUs\n")
    print("| loader | workers | images/s | images/s per worker |\n|---|---|---|---|")
    for workers in (int(w) for w in args.workers.split(",")):
      for loader in loaders(args.image_size, args.batches):
        rate = loader.rate(image_dir, data_dir, workers)
        print(f"| {loader.label} | {workers} | {rate:.1f} | {rate / max(1, workers):.1f} |",
              flush=True)


if __name__ == "__main__":
  main()
