"""Tests of the synthetic_iqa builder on tiny builds (16 px, 5 contents, 2 crops, 8 versions each)."""
import numpy as np
import pytest
from PIL import Image

from promptiqa_jax.data import preprocess
from promptiqa_jax.data import datasets
from promptiqa_jax.data.datasets.synthetic_iqa import analysis
from promptiqa_jax.data.datasets.synthetic_iqa import builder as siqa
from promptiqa_jax.data.datasets.synthetic_iqa import distortions
from promptiqa_jax.data.datasets.synthetic_iqa import fr_measures
from promptiqa_jax.data.datasets.synthetic_iqa import pristine
from promptiqa_jax.data.datasets.synthetic_iqa import procedural
from promptiqa_jax.data.datasets.synthetic_iqa import requirements
from promptiqa_jax.data.datasets.synthetic_iqa import rules
from promptiqa_jax.data.datasets.synthetic_iqa.distortions import DISTORTIONS

# Small source images (fast to load): 2 colour, 3 grey, so every split gets content.
CONTENTS = ("chelsea", "coffee", "coins", "page", "text")
OPTIONS = dict(image_size=16, crops_per_content=2, distorted_per_crop=8, seed=3, contents=CONTENTS)
RECORDS_PER_CONTENT = 2 * 8
SPLITS = ("train", "validation", "test")


def _read_all(builder):
  out = {}
  for split in SPLITS:
    source = builder.as_data_source(split)
    out[split] = [source[i] for i in range(len(source))]
  return out


@pytest.fixture(scope="module")
def build(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("siqa"))
  builder = siqa.prepare(data_dir, **OPTIONS)
  return data_dir, builder, _read_all(builder)


def test_registry_resolves_the_builders_table():
  table = datasets.requirement_table("synthetic_iqa")
  assert table is siqa.Builder.REQUIREMENTS and table.names == tuple(
      r.name for r in requirements.REQUIREMENTS)
  assert datasets.requirement_of("synthetic_iqa:ms_ssim") == table.get("ms_ssim")
  assert datasets.requirement_of("synthetic_iqa/size16_crops1:psnr").name == "psnr"
  assert datasets.requirement_of("synthetic_iqa:random") is None
  assert datasets.requirement_of("koniq10k") is None and datasets.requirement_table("koniq10k") is None
  with pytest.raises(ValueError, match="Unknown requirement 'nope'"):
    datasets.requirement_of("synthetic_iqa:nope")
  with pytest.raises(ValueError, match="'koniq10k:psnr': dataset 'koniq10k' has no assessment"):
    datasets.requirement_of("koniq10k:psnr")
  with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
    datasets.requirement_table("nope")


def test_metadata():
  assert len(DISTORTIONS) >= 6 and len(set(DISTORTIONS)) == len(DISTORTIONS)
  names = [r.name for r in requirements.REQUIREMENTS]
  assert len(names) >= 8 and len(set(names)) == len(names)
  assert all(requirements.TABLE.index(n) == i for i, n in enumerate(names))
  with pytest.raises(ValueError, match="Unknown requirement 'nope'"):
    requirements.TABLE.index("nope")
  heldout = requirements.TABLE.heldout()
  assert len(heldout) >= 3
  in_family = [r for r in heldout if not r.out_of_family]
  out_of_family = [r for r in heldout if r.out_of_family]
  assert {r.kind for r in in_family} == {"full_reference", "weighted"}
  assert len(out_of_family) >= 3 and not {r.kind for r in out_of_family} & {"weighted"}
  assert set(heldout).isdisjoint(requirements.TABLE.train())
  assert len(heldout) + len(requirements.TABLE.train()) == len(requirements.REQUIREMENTS)
  assert any(r.lower_better for r in requirements.REQUIREMENTS)
  assert all(r.kind == "full_reference" or r.name in rules.RULES
             for r in requirements.REQUIREMENTS)


def test_splits_sizes_and_disjoint_contents(build):
  _, builder, records = build
  ids = {split: {int(r["content_id"]) for r in records[split]} for split in SPLITS}
  assert all(ids.values())
  assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"]
              or ids["validation"] & ids["test"])
  expected = {pristine.PRISTINE.index(s) for s in pristine.PRISTINE if s.name in CONTENTS}
  assert set().union(*ids.values()) == expected
  for split in SPLITS:
    assert len(records[split]) == len(ids[split]) * RECORDS_PER_CONTENT
  assert builder.builder_config.name == siqa.make_config(**OPTIONS).name


def test_records_are_consistent(build):
  _, _, records = build
  names_by_id = {i: s.name for i, s in enumerate(pristine.PRISTINE)}
  darken, brighten = DISTORTIONS.index("darken"), DISTORTIONS.index("brighten")
  desaturate = DISTORTIONS.index("desaturate")
  all_names = []
  for split in SPLITS:
    for r in records[split]:
      image, levels, name = r["image"], r["levels"], r["name"].decode()
      assert image.shape == (16, 16, 3) and image.dtype == np.uint8
      assert levels.shape == (len(DISTORTIONS),) and levels.dtype == np.int32
      assert 1 <= np.count_nonzero(levels) <= 3 and levels.min() >= 0 and levels.max() <= 5
      assert not (levels[darken] and levels[brighten])
      content = names_by_id[int(r["content_id"])]
      if content in ("coins", "page", "text"):
        assert levels[desaturate] == 0
      # The name spells content and levels: "<content>_crop<k>_<index>_<type><level>...".
      assert name.startswith(content + "_crop")
      tokens = name[len(content) + 1:].split("_")[2:]
      assert tokens == [f"{t}{l}" for t, l in zip(DISTORTIONS, levels) if l]
      for requirement, score, raw in zip(requirements.REQUIREMENTS, r["scores"], r["scores_raw"]):
        assert 0.0 <= score <= 1.0
        assert score == pytest.approx(float(requirement.normalise(np.array([raw]))[0]), abs=1e-6)
      all_names.append(name)
  assert len(set(all_names)) == len(all_names)


def test_stored_images_match_generation(build):
  _, builder, records = build
  config = builder.builder_config
  content = next(c for c in pristine.load_contents(config.contents, config.user_image_dir)
                 if c.name == "page")
  expected = {r["name"]: r for r in siqa.generate_content(content, config)}
  stored = [r for split in SPLITS for r in records[split] if r["name"].decode() in expected]
  assert len(stored) == RECORDS_PER_CONTENT
  for r in stored:
    want = expected[r["name"].decode()]
    # PNG is lossless, so the stored pixels (RGB order included) are the generated ones.
    np.testing.assert_array_equal(r["image"], want["image"])
    np.testing.assert_array_equal(r["scores"], want["scores"])


def test_few_ties_per_requirement(build):
  _, _, records = build
  for split in SPLITS:
    scores = np.stack([r["scores"] for r in records[split]])
    for requirement, column in zip(requirements.REQUIREMENTS, scores.T):
      _, counts = np.unique(column, return_counts=True)
      tied = counts[counts > 1].sum() / len(column)
      assert tied < 0.2, (split, requirement.name, tied)


def test_same_seed_same_records_other_seed_differs(build, tmp_path):
  _, _, records = build
  again = _read_all(siqa.prepare(str(tmp_path / "a"), **OPTIONS))
  for split in SPLITS:
    assert len(again[split]) == len(records[split])
    for a, b in zip(records[split], again[split]):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  other = siqa.prepare(str(tmp_path / "b"), **dict(OPTIONS, seed=4))
  first = other.as_data_source("train")[0]
  assert not any(np.array_equal(first["image"], r["image"]) for r in records["train"])


def test_builder_options_and_configs(tmp_path):
  by_kwargs = siqa.Builder(data_dir=str(tmp_path), **OPTIONS)
  assert by_kwargs.builder_config.name == siqa.make_config(**OPTIONS).name
  assert siqa.Builder(data_dir=str(tmp_path)).builder_config is siqa.DEFAULT_CONFIG
  by_config = siqa.Builder(data_dir=str(tmp_path), config=siqa.make_config())
  assert by_config.builder_config is siqa.DEFAULT_CONFIG
  with pytest.raises(ValueError, match="not both"):
    siqa.Builder(data_dir=str(tmp_path), config=siqa.make_config(), seed=2)
  with pytest.raises(ValueError, match="Unknown contents"):
    siqa.make_config(contents=["lena"])
  with pytest.raises(ValueError, match="at least 3 pristine contents"):
    siqa.prepare(str(tmp_path), image_size=16, contents=["coins", "page"])


def test_requirement_correlations(build):
  data_dir, _, _ = build
  names, matrix = analysis.requirement_correlations(data_dir, "train", **OPTIONS)
  assert names == tuple(r.name for r in requirements.REQUIREMENTS)
  assert matrix.shape == (len(names), len(names))
  np.testing.assert_allclose(matrix, matrix.T)
  np.testing.assert_allclose(np.diag(matrix), 1.0)
  table = analysis.correlation_table(names, matrix)
  assert table.count("\n") == len(names) + 1 and "| psnr |" in table


def _write_image(path, seed):
  """A random 40x48 RGB image in the format the file name's extension says."""
  image = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
  Image.fromarray(image).save(path)


@pytest.mark.parametrize("bad_name,content", [("bad.png", b"\x89PNG\r\n\x1a\n not really"),
                                               ("empty.jpg", b"")])
def test_bad_user_image_is_named(tmp_path, bad_name, content):
  folder = tmp_path / "mine"
  folder.mkdir()
  _write_image(folder / "a_good.png", 0)
  (folder / bad_name).write_bytes(content)
  with pytest.raises(preprocess.ImageError, match=bad_name):
    siqa.prepare(str(tmp_path / "data"), manual_dir=str(folder), **OPTIONS)


def test_user_images_become_contents(tmp_path):
  folder = tmp_path / "mine"
  folder.mkdir()
  for i, name in enumerate(["a b.png", "a-b.jpg", "c.png", ".hidden.png"]):
    _write_image(folder / name, i)
  (folder / "notes.txt").write_text("not an image, not read")
  config = siqa.make_config(image_size=16, crops_per_content=1, distorted_per_crop=2,
                            user_image_dir=str(folder), contents=())
  contents = pristine.load_contents(config.contents, config.user_image_dir)
  base = pristine.USER_CONTENT_ID_BASE
  assert [(c.name, c.content_id) for c in contents] == [
      ("user_a-b", base), ("user_a-b-1", base + 1), ("user_c", base + 2)]
  builder = siqa.prepare(str(tmp_path / "data"), **config.options())
  ids = [int(r["content_id"]) for split in SPLITS for r in _read_all(builder)[split]]
  assert sorted(ids) == [base, base, base + 1, base + 1, base + 2, base + 2]


def _random_levels(rng, groups):
  return np.stack([distortions.sample_levels(rng, colour=True) for _ in range(groups)])


def test_random_requirement_scores_range_monotone_varied():
  rng = np.random.default_rng(0)
  levels = _random_levels(rng, 11)
  rankings, directions = set(), set()
  for draw in range(200):
    scores = requirements.random_requirement_scores(levels, np.random.default_rng(draw))
    assert scores.shape == (11,) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    rankings.add(tuple(np.argsort(scores, kind="stable")))
    # Under one draw, raising any one type's level (an absent type to 1) moves every score the
    # same way or not at all: scored as one group, the original and every bumped copy.
    bumped = []
    for t in range(len(DISTORTIONS)):
      copy = levels.copy()
      copy[:, t] = np.minimum(copy[:, t] + 1, 5)
      bumped.append(copy)
    both = requirements.random_requirement_scores(np.concatenate([levels] + bumped),
                                                  np.random.default_rng(draw))
    delta = both[11:].reshape(len(bumped), 11) - both[:11]
    assert np.all(delta >= -1e-7) or np.all(delta <= 1e-7)
    directions.add(bool(np.sum(delta) > 0))
  assert directions == {True, False}
  assert len(rankings) > 100
  with pytest.raises(ValueError, match="levels must be"):
    requirements.random_requirement_scores(levels[:, :3], rng)


def test_distortions_grow_with_level():
  reference = pristine.crop(preprocess.load_image(pristine.PRISTINE[0].path()), 32,
                            np.random.default_rng(0))
  for t, name in enumerate(DISTORTIONS):
    severities = np.zeros((5, len(DISTORTIONS)))
    severities[:, t] = np.arange(1, 6)
    distorted = np.stack([distortions.apply(reference, s, np.random.default_rng(1))
                          for s in severities])
    psnr = fr_measures.psnr(reference, distorted)
    assert np.all(np.diff(psnr) < 0), (name, psnr)


def _severities(**levels) -> np.ndarray:
  """One row of severities per value: _severities(noise=[0, 1, 2]) -> [3, T]."""
  count = len(next(iter(levels.values())))
  out = np.zeros((count, len(DISTORTIONS)))
  for name, values in levels.items():
    out[:, DISTORTIONS.index(name)] = values
  return out


def _content(name: str, size: int = 32) -> np.ndarray:
  source = next(s for s in pristine.PRISTINE if s.name == name)
  return pristine.crop(preprocess.load_image(source.path()), size, np.random.default_rng(0))


def test_grain_preference_rises_then_falls_with_noise():
  flat = np.zeros((6, 8, 8, 3), np.uint8)
  quality = rules.RULES["grain_preference"].quality(_severities(noise=np.arange(6)), flat[0], flat)
  best = int(np.argmax(quality))
  assert 0 < best < 5 and np.all(np.diff(quality[:best + 1]) > 0)
  assert np.all(np.diff(quality[best:]) < 0)


def test_exposure_target_depends_on_the_content():
  rule = rules.RULES["exposure_target"]
  bright = np.clip(_content("moon").astype(np.int32) + 120, 0, 255).astype(np.uint8)
  dark = (_content("moon") * 0.6).astype(np.uint8)
  darken = _severities(darken=[0.0, 3.0])
  for reference, sign in ((bright, +1), (dark, -1)):
    distorted = np.stack([distortions.apply(reference, s, np.random.default_rng(0))
                          for s in darken])
    quality = rule.quality(darken, reference, distorted)
    assert sign * (quality[1] - quality[0]) > 0.05, (sign, quality)


def test_masked_artifacts_hide_noise_and_reveal_blur_on_texture():
  rule = rules.RULES["masked_artifacts"]
  flat, busy = _content("moon"), _content("gravel")
  assert rules.texture_activity(busy) > 2 * rules.texture_activity(flat)
  noise, blur = _severities(noise=[3.0]), _severities(blur=[3.0])
  unused = np.zeros((1, 32, 32, 3), np.uint8)
  assert rule.quality(noise, busy, unused) > rule.quality(noise, flat, unused) + 0.05
  assert rule.quality(blur, busy, unused) < rule.quality(blur, flat, unused) - 0.05


def test_procedural_contents_are_seeded_and_train_only():
  for kind in procedural.GENERATORS:
    image = procedural.generate(kind, 3)
    assert image.shape == (procedural.SIDE, procedural.SIDE, 3) and image.dtype == np.uint8
    assert image.std() > 5, kind  # not flat
    np.testing.assert_array_equal(image, procedural.generate(kind, 3))
    assert not np.array_equal(image, procedural.generate(kind, 4))
  names = ["astronaut", "camera", "chelsea", "procedural_mosaic", "procedural_clouds"]
  contents = pristine.load_contents(names, None, seed=0)
  assert [c.train_only for c in contents] == [False, False, False, True, True]
  splits = pristine.assign_splits(contents, [c.colour for c in contents], 0,
                                  [c.train_only for c in contents])
  assert {c.name for c in splits["train"]} >= {"procedural_mosaic", "procedural_clouds"}
  assert all(len(splits[s]) == 1 and not splits[s][0].train_only for s in ("validation", "test"))


def test_family_span_finds_a_requirement_inside_the_family():
  rng = np.random.default_rng(0)
  levels = _random_levels(rng, 200)
  scores = rng.uniform(size=(200, len(requirements.REQUIREMENTS)))
  inside = requirements.TABLE.index("grain_preference")
  scores[:, inside] = requirements.random_requirement_scores(levels, np.random.default_rng([0, 7]))
  span = analysis.family_span(scores, levels, draws=10)
  assert span["grain_preference"]["random_family"] == pytest.approx(1.0)
  assert all(v["random_family"] < 0.5 for name, v in span.items() if name != "grain_preference")
  assert all(0 <= v["training"] < 0.5 for v in span.values())
