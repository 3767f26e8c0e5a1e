"""Decoding turns images upright by their EXIF orientation exactly as cv2.imread(IMREAD_COLOR) does,
in scoring (preprocess.load_image), in the dataset builds and in the input benchmark's stream."""
from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from promptiqa_jax.data import preprocess

HEIGHT, WIDTH = 24, 40
# Where each orientation's stored pixels belong, written out from the EXIF 2.3 table: the upright
# image is the stored one mirrored (2), rotated 180 (3), flipped top-bottom (4), transposed (5),
# rotated 90 clockwise (6), anti-transposed (7), rotated 90 counter-clockwise (8).
UPRIGHT = {
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1], 8: lambda a: np.swapaxes(a, 0, 1)[::-1],
}


def photo(seed: int = 0, shape: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
  """A smooth asymmetric colour image (JPEG keeps it recognisable), uint8 RGB [H, W, 3]."""
  coarse = np.random.default_rng(seed).uniform(0, 255, (4, 5, 3)).astype(np.uint8)
  return np.asarray(Image.fromarray(coarse).resize(shape[::-1], Image.BILINEAR))


def exif(orientation: int) -> bytes:
  tags = Image.Exif()
  tags[0x0112] = orientation
  return tags.tobytes()


def opencv_rgb(path) -> np.ndarray:
  """What the release reads: cv2.imread(IMREAD_COLOR), BGR -> RGB."""
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  assert image is not None, path
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def stored_pixels(path) -> np.ndarray:
  """The pixels as stored, without any orientation (Pillow ignores the tag)."""
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_orientation_as_opencv_reads_it(tmp_path, fmt, orientation):
  path = tmp_path / f"o{orientation}.{fmt.lower()}"
  options = {"quality": 90} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
  Image.fromarray(photo()).save(path, fmt, exif=exif(orientation), **options)
  actual = preprocess.load_image(path)
  expected = opencv_rgb(path)
  np.testing.assert_array_equal(actual, expected)
  # And it is the stored image turned as the table says (OpenCV is not just ignoring the tag).
  np.testing.assert_array_equal(actual, UPRIGHT[orientation](stored_pixels(path)))
  assert actual.shape == ((HEIGHT, WIDTH, 3) if orientation <= 4 else (WIDTH, HEIGHT, 3))
  assert actual.flags.c_contiguous


def test_model_input_of_an_oriented_jpeg_is_the_reference_input(tmp_path):
  """The issue's case: a phone JPEG with orientation 6 entered the model rotated (1.91 off)."""
  path = tmp_path / "phone.jpg"
  Image.fromarray(photo(1, (96, 128))).save(path, "JPEG", quality=92, exif=exif(6))
  reference = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (32, 32),
                         interpolation=cv2.INTER_CUBIC)
  reference = (cv2.cvtColor(reference, cv2.COLOR_BGR2RGB).astype(np.float32) / 255 - 0.5) / 0.5
  np.testing.assert_array_equal(preprocess.preprocess(preprocess.load_image(path), 32), reference)


def _png_16bit(path):
  # Low bytes that vary, so that the 8-bit conversion shows too.
  grey = photo()[..., 0].astype(np.uint16) * 256 + np.arange(WIDTH, dtype=np.uint16) * 6
  Image.fromarray(grey).save(path, exif=exif(6))


KINDS = {
    "grey.jpg": lambda p: Image.fromarray(photo()[..., 1]).save(p, exif=exif(8)),
    "rgba.png": lambda p: Image.fromarray(np.dstack([photo(), photo(2)[..., :1]])).save(
        p, exif=exif(5)),
    "palette.png": lambda p: Image.fromarray(photo()).convert("P").save(p, exif=exif(7)),
    "grey16.png": _png_16bit,
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_other_pixel_formats_turn_too(tmp_path, name):
  path = tmp_path / name
  KINDS[name](str(path))
  actual = preprocess.load_image(path)
  assert actual.shape == (WIDTH, HEIGHT, 3)
  np.testing.assert_array_equal(actual, opencv_rgb(path))


def test_orientation_outside_the_exif_block_is_ignored_as_opencv_does(tmp_path):
  # In XMP only: Pillow's getexif() reports it; OpenCV keeps the image as stored.
  xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-'
         b'rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
         b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
  path = tmp_path / "xmp.jpg"
  Image.fromarray(photo()).save(path, "JPEG", xmp=xmp)
  with Image.open(path) as image:
    assert image.getexif().get(0x0112) == 6
  actual = preprocess.load_image(path)
  assert actual.shape == (HEIGHT, WIDTH, 3)
  np.testing.assert_array_equal(actual, opencv_rgb(path))


def test_damaged_exif_block_keeps_the_image_as_stored(tmp_path):
  buffer = io.BytesIO()
  Image.fromarray(photo()).save(buffer, "JPEG")
  payload = b"Exif\x00\x00not a TIFF header"
  app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
  data = buffer.getvalue()
  path = tmp_path / "damaged.jpg"
  path.write_bytes(data[:2] + app1 + data[2:])
  np.testing.assert_array_equal(preprocess.load_image(path), opencv_rgb(path))


def test_pixel_limit_and_verification_still_hold(tmp_path):
  buffer = io.BytesIO()
  Image.fromarray(photo()).save(buffer, "JPEG", exif=exif(6))
  data = buffer.getvalue()
  # The limit counts pixels, the same before and after turning upright.
  assert preprocess.decode_image(data, max_pixels=HEIGHT * WIDTH).shape == (WIDTH, HEIGHT, 3)
  with pytest.raises(preprocess.ImageError, match=f"^x.jpg: {WIDTH}x{HEIGHT} = {WIDTH * HEIGHT} "
                                                  "pixels exceeds the limit"):
    preprocess.decode_image(data, "x.jpg", max_pixels=HEIGHT * WIDTH - 1)
  with pytest.raises(preprocess.ImageError, match="^cut.jpg: cannot decode image"):
    preprocess.decode_image(data[:len(data) // 2], "cut.jpg")


def test_input_benchmark_stream_reads_oriented_jpegs_as_its_reference_loader(tmp_path):
  """The benchmark's "original" build keeps the JPEG bytes; the stream decodes them upright, as the
  reference loader's cv2.imread does (flips off, so the images compare directly)."""
  import ml_collections

  from promptiqa_jax.bench import input_stream
  from promptiqa_jax.data import datasets, pipeline, sources

  image_dir, data_dir = tmp_path / "images", tmp_path / "tfds"
  image_dir.mkdir()
  for orientation in range(1, 9):
    Image.fromarray(photo(orientation, (48, 64))).save(image_dir / f"{orientation:05d}.jpg", "JPEG",
                                                       quality=90, exif=exif(orientation))
  input_stream.ThroughputImages(image_dir=str(image_dir), data_dir=str(data_dir)
                                ).download_and_prepare(file_format="array_record")
  datasets.register_builder(input_stream.ThroughputImages)
  config = ml_collections.ConfigDict(dict(
      data_dir=str(data_dir), train=[input_stream.BENCH_DATASET], train_split="train",
      weights=None, group_size=8, groups_per_batch=1, image_size=32, scale_rate=0.0,
      flip_rate=0.0, flip="none", seed=0, num_workers=0))
  iterator = iter(pipeline.train_stream(config))
  batch = next(iterator)
  iterator.close()
  records = sources.open_dataset(input_stream.BENCH_DATASET, "train", str(data_dir)).read(
      batch["index"][0])
  assert len(records) == 8
  for image, record in zip(batch["image"][0], records):
    path = image_dir / sources.record_name(record)
    reference = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), (32, 32),
                           interpolation=cv2.INTER_CUBIC)
    reference = (cv2.cvtColor(reference, cv2.COLOR_BGR2RGB).astype(np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_array_equal(image, reference, err_msg=str(path))
