"""Train-step speed of torch-rechub's HSTUModel + SeqTrainer loss on real ML-1M batches.

  /work/peers_venv/bin/python benchmarks/peers/torch_rechub_hstu.py --data_dir /work/shared/data

The HSTU ML-1M config (B=128, N=200, D=50, 2 layers, 1 head, dqk=dv=50, dropout 0.2, vocab 3953),
torch-rechub's full-vocabulary cross-entropy over every non-PAD position (SeqTrainer's
`_compute_next_token_loss`, called on a real SeqTrainer), AdamW(1e-3, β=(0.9, 0.98), wd 0).
Each timed step is the body of `SeqTrainer.train_one_epoch`: forward, loss, zero_grad, backward,
optimizer step, loss.item(). Prints one JSON line: median/min step time over --steps steps after
--warmup steps, and the step's FLOPs from torch's FlopCounterMode (matmuls only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ml1m  # noqa: E402  (sibling module; the peers' venv has no genrec_jax)

ML1M_VOCAB = 3952 + 1  # item ids are not remapped; 0 = PAD


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", default=os.environ.get("GENREC_DATA_DIR", "data"))
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--max_seq_len", type=int, default=200)
  p.add_argument("--seed", type=int, default=42)
  return p.parse_args()


def build(args: argparse.Namespace):
  """HSTUModel at the HSTU ML-1M config and a SeqTrainer holding its AdamW."""
  from torch_rechub.models.generative import HSTUModel
  from torch_rechub.trainers import SeqTrainer

  model = HSTUModel(vocab_size=ML1M_VOCAB, d_model=50, n_heads=1, n_layers=2, dqk=50, dv=50,
                    max_seq_len=args.max_seq_len, dropout=0.2)
  trainer = SeqTrainer(model, optimizer_fn=torch.optim.AdamW,
                       optimizer_params={"lr": 1e-3, "betas": (0.9, 0.98), "weight_decay": 0.0},
                       device="cpu")
  return model, trainer


def train_step(model, trainer, tokens_BxN, tdiff_BxN, targets_B) -> float:
  """One step exactly as SeqTrainer.train_one_epoch's loop body."""
  logits_BxNxV = model(tokens_BxN, tdiff_BxN)
  loss = trainer._compute_next_token_loss(logits_BxNxV, tokens_BxN, targets_B)  # pylint: disable=protected-access
  model.zero_grad()
  loss.backward()
  trainer.optimizer.step()
  return loss.item()


def step_flops(model, trainer, batch) -> float:
  """FLOPs of one train step as counted by torch (matmul-like ops only)."""
  from torch.utils.flop_counter import FlopCounterMode

  counter = FlopCounterMode(display=False)
  with counter:
    train_step(model, trainer, *batch)
  return float(counter.get_total_flops())


def main() -> None:
  args = parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  items, times = ml1m.user_sequences(ml1m.read_ratings(args.data_dir))
  tokens, tdiff, targets = ml1m.train_examples(items, times, args.max_seq_len)
  rows = ml1m.batch_rows(len(items), args.batch_size, args.seed, args.warmup + args.steps + 1)
  batches = [(torch.from_numpy(tokens[r]), torch.from_numpy(tdiff[r]), torch.from_numpy(targets[r]))
             for r in rows]
  model, trainer = build(args)
  model.train()
  flops = step_flops(model, trainer, batches[-1])
  for b in batches[:args.warmup]:
    train_step(model, trainer, *b)
  times_s, cpu_s, losses = [], [], []
  for b in batches[args.warmup:args.warmup + args.steps]:
    t, c = time.perf_counter(), time.process_time()
    losses.append(train_step(model, trainer, *b))
    times_s.append(time.perf_counter() - t)
    cpu_s.append(time.process_time() - c)
  med = float(np.median(times_s))
  import torch_rechub  # pylint: disable=import-outside-toplevel
  print(json.dumps({
      "peer": "torch-rechub HSTUModel + SeqTrainer (full-softmax CE)",
      "step_ms_median": round(1000 * med, 2),
      "step_ms_min": round(1000 * min(times_s), 2),
      "steps_timed": len(times_s),
      "cpu_ms_median": round(1000 * float(np.median(cpu_s)), 2),
      "steps_per_epoch": -(-len(items) // args.batch_size),
      "flops_per_step": flops,
      "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
      "batch": [args.batch_size, args.max_seq_len],
      "nonpad_tokens_per_batch": float(np.mean([int((b[0] != 0).sum()) for b in batches])),
      "params": sum(p.numel() for p in model.parameters()),
      "torch": torch.__version__,
      "torch_rechub": getattr(torch_rechub, "__version__", "?"),
      "threads": torch.get_num_threads(),
      "cpu": platform.processor() or platform.machine(),
  }))


if __name__ == "__main__":
  main()
