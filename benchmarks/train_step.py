"""Train-step speed of an experiment's config on real data, with a roofline.

  python -m benchmarks.train_step --experiment hstu_movielens [--steps 30] [--config.x=y ...]

Times `--steps` jitted train steps on real training batches (after warm-up and compilation),
counts the step's FLOPs with XLA's cost analysis (less the loss work skipped on padding slots),
measures this machine's fp32 matmul peak in JAX (before and after the timed steps; the higher
one is used), and prints as its last line one JSON object with
step_ms_median, step_ms_min, steps_timed, flops_per_step, matmul_peak_gflops, roofline_fraction
(= flops / peak / median time).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """Best-of-`repeats` fp32 GFLOP/s of an n×n×n matmul in JAX."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_time(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n**3 / best / 1e9


def _time(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def main(argv) -> None:
  del argv
  from genrec_jax import distributed
  from genrec_jax.data import pipeline
  from genrec_jax.data.registry import load_task
  from genrec_jax.data import text
  from genrec_jax.models.sequential import build_model
  from genrec_jax.train import trainer

  cfg = flags.FLAGS.config
  task = load_task(cfg, flags.FLAGS.data_dir)
  text_emb = text.load_item_text_embeddings(cfg, flags.FLAGS.data_dir, task.num_items)
  mesh = trainer.make_mesh()
  model = build_model(cfg, task.num_items, text_emb)
  tx = trainer.make_optimizer(cfg)
  catalog = jnp.asarray(task.catalog, jnp.int32)
  state = trainer.init_state(model, tx, cfg, jax.random.key(cfg.seed))
  step_fn = trainer.make_train_step(model, tx, cfg, catalog, mesh)
  n_warm, n_time = 3, flags.FLAGS.steps
  # The trainer's own batches: its row layout over the devices and, with
  # data.stochastic_length_alpha > 0, Stochastic Length applied (epoch 0's shortened examples).
  shard = distributed.data_shard(mesh)
  sl_alpha = cfg.data.get("stochastic_length_alpha", 0.0)
  dataset = pipeline.train_dataset(
      task.split.train, cfg.train.batch_size, cfg.seed, n_warm + n_time, cfg.data.pack, shard,
      pipeline.row_multiple(shard[2]), sl_alpha)
  batches = [trainer.to_device(dataset[k], mesh) for k in range(n_warm + n_time)]
  # XLA's cost analysis counts a loop body once, and the catalog losses loop over token chunks
  # (catalog_scores.py, which also pads D to 16 lanes): count the model FLOPs on the plain program
  # of the same step (loss.chunk = 0: all tokens at once, no padding).
  flop_cfg = cfg.copy_and_resolve_references()
  with flop_cfg.unlocked():
    flop_cfg.loss.chunk = 0
  flop_step = trainer.make_train_step(model, tx, flop_cfg, catalog, mesh)
  flops_by_shape: dict[tuple, float] = {}
  for b in batches:
    shape = b["ids"].shape
    if shape not in flops_by_shape:
      compiled = flop_step.lower(state, b).compile()
      # XLA reports the FLOPs of one device's partition of the data-parallel step.
      per_device = float(compiled.cost_analysis().get("flops", float("nan")))
      flops_by_shape[shape] = per_device * mesh.devices.size
  for b in batches[:n_warm]:
    state, loss = step_fn(state, b)
  jax.block_until_ready(state)
  # The peak is measured before and after the timed steps: the VM's speed drifts by tens of
  # percent over minutes, and a peak taken in a slow moment would inflate the roofline fraction.
  peak_before = matmul_peak_gflops()
  times = []
  for b in batches[n_warm:]:
    t = time.perf_counter()
    state, loss = step_fn(state, b)
    jax.block_until_ready((state, loss))
    times.append(time.perf_counter() - t)
  flops = float(np.mean([flops_by_shape[b["ids"].shape] for b in batches[n_warm:]]))
  # The chunked full-softmax loss skips the token slots that have no target (padding), so the
  # roofline counts the plain program's FLOPs minus that skipped catalog work: 3 matmuls of
  # 2·C·D FLOPs per skipped slot (scores, and their gradients for users and items). Chunks
  # are skipped whole, so a few empty slots are still computed: the fraction errs low.
  slots = np.mean([b["targets"].size for b in batches[n_warm:]])
  supervised = np.mean([int(np.sum(np.asarray(b["targets"]) != 0)) for b in batches[n_warm:]])
  skipped = 0.0
  if cfg.loss.name == "full_softmax" and cfg.loss.chunk > 0:
    skipped = (slots - supervised) * 3 * 2 * catalog.shape[0] * cfg.model.embed_dim
  useful = flops - skipped
  peak_after = matmul_peak_gflops()
  peak = max(peak_before, peak_after)
  med = float(np.median(times))
  out = {
      "experiment": flags.FLAGS.experiment,
      "step_ms_median": round(1000 * med, 2),
      "step_ms_min": round(1000 * min(times), 2),
      "steps_timed": len(times),
      "flops_per_step": useful,
      "flops_plain_program": flops,
      "token_slots_per_batch": float(slots),
      "supervised_per_batch": float(supervised),
      "matmul_peak_gflops": round(peak, 1),
      "matmul_peak_before_after": [round(peak_before, 1), round(peak_after, 1)],
      "roofline_fraction": round(useful / (peak * 1e9) / med, 4),
      "rows_per_batch": sorted({int(b["ids"].shape[0]) for b in batches}),
      "pack": bool(cfg.data.pack),
      "stochastic_length_alpha": float(sl_alpha),
      "loss_impl": cfg.loss.impl,
      "devices": jax.device_count(),
      "cpu": platform.processor() or platform.machine(),
      "threads": os.cpu_count(),
      "allocator": os.environ.get("LD_PRELOAD", "") or "glibc",
  }
  print(json.dumps(out))


if __name__ == "__main__":
  from genrec_jax.cli import configure_runtime

  configure_runtime()  # same allocator and host devices as the experiments
  # The experiment's config is the default; every field can be overridden (--config.x=y).
  exp = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--experiment=")), None)
  if exp is None and "--experiment" in sys.argv:
    exp = sys.argv[sys.argv.index("--experiment") + 1]
  if exp is None:
    sys.exit("usage: python -m benchmarks.train_step --experiment NAME [--steps N] [--config.x=y]")
  flags.DEFINE_string("experiment", None, "Experiment module under experiments/.")
  flags.DEFINE_integer("steps", 30, "Timed steps.")
  flags.DEFINE_string("data_dir", os.environ.get("GENREC_DATA_DIR", "data"), "Dataset root.")
  config_flags.DEFINE_config_dict("config", importlib.import_module(f"experiments.{exp}").get_config())
  app.run(main)
