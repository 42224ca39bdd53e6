"""Train-step speed of RecBole's SASRec on real ML-1M batches.

  /work/peers_venv/bin/python benchmarks/peers/recbole_sasrec.py --data_dir /work/shared/data [--preset matched|recbole]

`matched` (default): our SASRec ML-1M shape (D=50, 2 blocks, 1 head, FFN 50 ReLU, dropout 0.2,
N=200, B=128); `recbole`: RecBole's defaults (D=64, 2 heads, FFN 256 GELU, dropout 0.5, N=50,
B=2048). RecBole's SASRec with loss_type CE is a full softmax over all items at ONE position per
training example, and its training set has one example per prefix of each user's training
sequence (data augmentation). So one RecBole step scores B targets where a genrec_jax step scores
every position of B users; `epoch_s_projected` (= median step x steps per epoch) compares the two
on equal footing: one pass over the same training targets.
Each timed step is the body of RecBole's `Trainer._train_epoch` (zero_grad, calculate_loss,
backward, optimizer step, loss.item()) on batches from RecBole's own train dataloader.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recbole_common  # noqa: E402


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", default=os.environ.get("GENREC_DATA_DIR", "data"))
  p.add_argument("--data_root", default=recbole_common.DEFAULT_DATA_ROOT, help="RecBole atomic files.")
  p.add_argument("--preset", default="matched", choices=sorted(recbole_common.SASREC_PRESETS))
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--seed", type=int, default=42)
  return p.parse_args()


def train_step(model, optimizer, interaction) -> float:
  """One step as the body of RecBole's Trainer._train_epoch (no AMP, no grad clipping)."""
  optimizer.zero_grad()
  loss = model.calculate_loss(interaction)
  loss.backward()
  optimizer.step()
  return loss.item()


def step_flops(model, optimizer, interaction) -> float:
  """FLOPs of one train step as counted by torch (matmul-like ops only)."""
  from torch.utils.flop_counter import FlopCounterMode

  counter = FlopCounterMode(display=False)
  with counter:
    train_step(model, optimizer, interaction)
  return float(counter.get_total_flops())


def main() -> None:
  args = parse_args()
  from recbole.config import Config
  from recbole.data import create_dataset, data_preparation
  from recbole.model.sequential_recommender import SASRec
  from recbole.trainer import Trainer
  from recbole.utils import init_seed
  import recbole

  root = recbole_common.prepare("ml-1m", args.data_dir, args.data_root)
  cfg_dict = {**recbole_common.base_config(root, args.seed), **recbole_common.SASREC_PRESETS[args.preset]}
  config = Config(model="SASRec", dataset="ml-1m", config_dict=cfg_dict)
  init_seed(config["seed"], config["reproducibility"])
  torch.set_num_threads(args.threads)  # after RecBole's set-up, which may change it
  logging.disable(logging.INFO)
  t0 = time.perf_counter()
  dataset = create_dataset(config)
  train_data, _, _ = data_preparation(config, dataset)
  prep_s = time.perf_counter() - t0
  model = SASRec(config, train_data.dataset).to(config["device"])
  trainer = Trainer(config, model)
  model.train()
  times_s, cpu_s, losses = [], [], []
  it = iter(train_data)
  for i in range(args.warmup + args.steps):
    interaction = next(it).to(config["device"])
    t, c = time.perf_counter(), time.process_time()
    losses.append(train_step(model, trainer.optimizer, interaction))
    if i >= args.warmup:
      times_s.append(time.perf_counter() - t)
      cpu_s.append(time.process_time() - c)
  flops = step_flops(model, trainer.optimizer, next(it).to(config["device"]))
  med = float(np.median(times_s))
  print(json.dumps({
      "peer": f"RecBole SASRec (CE full softmax, last position per prefix example), preset={args.preset}",
      "step_ms_median": round(1000 * med, 2),
      "step_ms_min": round(1000 * min(times_s), 2),
      "steps_timed": len(times_s),
      "cpu_ms_median": round(1000 * float(np.median(cpu_s)), 2),
      "flops_per_step": flops,
      "steps_per_epoch": len(train_data),
      "train_examples": len(train_data.dataset),
      "epoch_s_projected": round(med * len(train_data), 1),
      "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
      "preset": {k: v for k, v in recbole_common.SASREC_PRESETS[args.preset].items()},
      "data_prep_s": round(prep_s, 1),
      "params": sum(p.numel() for p in model.parameters()),
      "torch": torch.__version__, "recbole": recbole.__version__,
      "threads": torch.get_num_threads(),
      "cpu": platform.processor() or platform.machine(),
  }))


if __name__ == "__main__":
  main()
