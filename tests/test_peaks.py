"""The datasheet peaks `bench` divides by for MFU on accelerators (the CPU measures its own)."""
import pytest

from promptiqa_jax.bench import timing


@pytest.mark.parametrize("kind, bfloat16, float32", [
    ("TPU v4", 275e12, 275e12),
    ("TPU v5 lite", 197e12, 197e12),
    ("TPU v5e", 197e12, 197e12),
    ("TPU v5", 459e12, 459e12),
    ("TPU v5p", 459e12, 459e12),
    ("TPU v6 lite", 918e12, 918e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 156e12),
    ("NVIDIA A100-PCIE-40GB", 312e12, 156e12),
    ("NVIDIA H100 80GB HBM3", 989e12, 495e12),
    ("NVIDIA H100 PCIe", 756e12, 378e12),
    ("NVIDIA H100 NVL", 835e12, 418e12),
    ("NVIDIA H200", 989e12, 495e12),
])
def test_datasheet_peaks(kind, bfloat16, float32):
  assert timing.datasheet_peak(kind, "bfloat16")[0] == bfloat16
  peak, source = timing.datasheet_peak(kind, "float32")
  assert peak == float32 and source.startswith("datasheet ") and source.endswith(" float32")


@pytest.mark.parametrize("kind", ["cpu", "TPU v4 lite", "TPU7x", "NVIDIA GeForce RTX 4090"])
def test_no_datasheet_peak(kind):
  assert timing.datasheet_peak(kind, "bfloat16") is None


def test_the_cpu_measures_its_peak():
  peak, source = timing.device_peak("float32", n=256)
  assert peak > 0 and source.startswith("measured float32 256^3 matmul")
