"""Benchmarks, kept apart from the library: `promptiqa-jax bench` and the input-stream benchmark.

  command       the bench command: options from the command line, the whole run, main()
  plan          what a run measures: Options, the timed model calls (Workload), random inputs
  flops         FLOPs counted from the model config (model_flops, workload_flops)
  timing        timed(), memory probes, the device's peak FLOP/s, the environment
  jax_side      the JAX measurements and per-stage profile
  torch_side    the same on the PyTorch implementation (optional dependency: torch)
  profile       the forward pass stage by stage, shared by both sides
  input_stream  the grain training stream beside the reference's DataLoader
                (python -m promptiqa_jax.bench.input_stream)
  report        records, JAX/PyTorch ratios, markdown tables, JSON
"""
