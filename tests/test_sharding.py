"""The update does not depend on how the devices are laid out: 1 device, data=8, data=4 x fsdp=2.

8 CPU devices are simulated in a subprocess (tests/sharding_check.py): XLA reads the device count
when JAX starts, and this process keeps its single device for the other tests.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_update_is_the_same_on_8_devices_and_with_fsdp():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  run = subprocess.run([sys.executable, os.path.join(HERE, "sharding_check.py")], env=env,
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-4000:]
  report = json.loads(run.stdout.split("REPORT ", 1)[1])
  print(json.dumps(report, indent=1))
  for layout in ("data8", "data4_fsdp2"):
    result = report[layout]
    assert result["train_step"] == 1
    # One mean over the same 24 predictions, summed in another order.
    assert result["loss_diff"] <= 1e-6 * report["loss"], layout
    assert result["grad_norm_rel_diff"] <= 1e-5, layout
    # Adam moments, step and parameters within the gradient's float32 tolerance (update_check).
    for key in ("mu", "nu", "step", "params"):
      assert result[key] <= 1, (layout, key, result[key])
    # Most elements' step is fixed by the gradient (the rest are 0 up to rounding); there the
    # layouts agree to float32 rounding of the parameters.
    assert result["determined_fraction"] > 0.9, layout
    assert result["determined_step_error_over_lr"] < 1e-4, layout
    # BatchNorm statistics of each group, and their mean, wherever the groups are.
    assert result["batch_stats_max_change"] > 1e-2
    assert result["batch_stats_max_diff"] <= 1e-6, layout
  assert report["data8"]["split_arrays"] == 0
  # fsdp=2 really splits parameters and optimiser moments between devices.
  assert report["data4_fsdp2"]["split_arrays"] > 10
