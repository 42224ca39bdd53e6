"""RecBole baselines on ML-1M or Amazon Beauty/Sports (--dataset), leave-one-out, full ranking.

  nice -n 10 /work/peers_venv/bin/python benchmarks/peers/recbole_quality.py --data_dir /work/shared/data \
      --models BPR,MultiVAE,GRU4Rec,SASRec --budget_min 18 --out_dir /work/scratch/D_peers/quality
  ... --dataset amazon-beauty --models SASRec,GRU4Rec

Split as close to ours as RecBole allows (`eval_args: {split: {LS: valid_and_test}, order: TO,
mode: full}`): per user in time order, the last item is the test target, the second-to-last the
validation target, the rest is training; every item is ranked. Differences from genrec_jax:
RecBole masks ALL of the user's past items in the ranking (ours: the last max_seq_len), remaps
ids to the items that occur (ML-1M: 3,706 rated items; ours ranks the 3,883 catalog items) and
trains sequential models on every prefix with the loss at the last position. Amazon files have no
timestamps; the order of each user's line is passed as the time order (recbole_common.prepare).
Model settings are RecBole's defaults (properties/model/*.yaml; train batch 2048, Adam 1e-3),
except SASRec with `--sasrec_preset`.
Each model trains epoch by epoch, evaluates validation NDCG@10 every --eval_every epochs (RecBole's
eval_step), stops after --patience validations without gain, at --epochs, or when --budget_min of
wall time is used, and is
tested with its best-validation weights. Writes OUT_DIR/<model>_<dataset>.json (results.json-like:
val/test metric dicts, best_epoch, epochs_run, stopped_by, wall_time_s) and prints one JSON line
per model.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recbole_common  # noqa: E402

# What each model needs on top of recbole_common.base_config (which sets CE and no negatives).
MODEL_OVERRIDES = {
    "BPR": {"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
    "MultiVAE": {},
    "GRU4Rec": {},
    "SASRec": {},
}


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", default=os.environ.get("GENREC_DATA_DIR", "data"))
  p.add_argument("--data_root", default=recbole_common.DEFAULT_DATA_ROOT)
  p.add_argument("--models", default="BPR,MultiVAE,GRU4Rec,SASRec")
  p.add_argument("--dataset", default="ml-1m", choices=recbole_common.DATASETS)
  p.add_argument("--sasrec_preset", default="recbole", choices=sorted(recbole_common.SASREC_PRESETS))
  p.add_argument("--epochs", type=int, default=300, help="RecBole's default epoch cap.")
  p.add_argument("--patience", type=int, default=10, help="RecBole's default stopping_step.")
  p.add_argument("--eval_every", type=int, default=1,
                 help="Validate every k epochs (RecBole's eval_step; patience counts validations).")
  p.add_argument("--budget_min", type=float, default=18.0, help="Wall-time cap per model (minutes).")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--seed", type=int, default=42)
  p.add_argument("--out_dir", default="/work/scratch/D_peers/quality")
  return p.parse_args()


def _metrics(result: dict) -> dict:
  """RecBole's {'hit@10': .., 'ndcg@10': ..} -> ours {'hr@10': .., 'ndcg@10': ..}."""
  return {k.replace("hit@", "hr@"): float(v) for k, v in result.items()}


def run_model(name: str, args: argparse.Namespace) -> dict:
  """Trains `name` within the budget; returns the results dict."""
  from recbole.config import Config
  from recbole.data import create_dataset, data_preparation
  from recbole.utils import get_model, get_trainer, init_seed

  t_start = time.perf_counter()
  root = recbole_common.prepare(args.dataset, args.data_dir, args.data_root)
  cfg = {**recbole_common.base_config(root, args.seed, args.dataset), **MODEL_OVERRIDES[name]}
  if name == "SASRec":
    cfg.update(recbole_common.SASREC_PRESETS[args.sasrec_preset])
  config = Config(model=name, dataset=args.dataset, config_dict=cfg)
  init_seed(config["seed"], config["reproducibility"])
  torch.set_num_threads(args.threads)
  logging.disable(logging.INFO)
  dataset = create_dataset(config)
  train_data, valid_data, test_data = data_preparation(config, dataset)
  model = get_model(config["model"])(config, train_data.dataset).to(config["device"])
  trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
  best, best_epoch, best_state, since_best, stopped_by = -1.0, -1, None, 0, "epochs"
  epoch_s, epoch = [], 0
  for epoch in range(args.epochs):
    t = time.perf_counter()
    trainer._train_epoch(train_data, epoch)  # pylint: disable=protected-access
    epoch_s.append(time.perf_counter() - t)
    if (epoch + 1) % args.eval_every and epoch + 1 < args.epochs:
      continue  # RecBole's eval_step: validate every k epochs (patience counts validations)
    val = _metrics(trainer.evaluate(valid_data, load_best_model=False))
    if val["ndcg@10"] > best:
      best, best_epoch, best_state, since_best = val["ndcg@10"], epoch, copy.deepcopy(model.state_dict()), 0
      best_val = val
    else:
      since_best += 1
    print(json.dumps({"model": name, "epoch": epoch, "epoch_s": round(epoch_s[-1], 1),
                      "val_ndcg@10": round(val["ndcg@10"], 4), "val_hr@10": round(val["hr@10"], 4)}),
          file=sys.stderr, flush=True)
    if since_best >= args.patience:
      stopped_by = "patience"
      break
    elapsed = time.perf_counter() - t_start
    if elapsed + max(epoch_s) > 60 * args.budget_min:  # the next epoch would not fit
      stopped_by = "budget"
      break
  model.load_state_dict(best_state)
  test = _metrics(trainer.evaluate(test_data, load_best_model=False))
  import recbole  # pylint: disable=import-outside-toplevel
  return {
      "experiment": f"recbole_{name.lower()}_{args.dataset.replace('-', '')}",
      "peer": f"RecBole {recbole.__version__} {name}",
      "dataset": args.dataset, "protocol": "loo (RecBole LS valid_and_test, TO, full ranking)",
      "best_epoch": best_epoch, "epochs_run": epoch + 1, "stopped_by": stopped_by,
      "epoch_s_median": round(sorted(epoch_s)[len(epoch_s) // 2], 1),
      "wall_time_s": round(time.perf_counter() - t_start, 1),
      "val": best_val, "test": test,
      "config": {k: config[k] for k in ("train_batch_size", "learning_rate", "MAX_ITEM_LIST_LENGTH",
                                        "embedding_size", "hidden_size", "n_layers", "n_heads",
                                        "train_neg_sample_args", "loss_type")
                 if k in config},
  }


def main() -> None:
  args = parse_args()
  os.makedirs(args.out_dir, exist_ok=True)
  for name in args.models.split(","):
    if name not in MODEL_OVERRIDES:
      sys.exit(f"error: unknown model {name!r}; choose from {sorted(MODEL_OVERRIDES)}")
  for name in args.models.split(","):
    res = run_model(name, args)
    with open(os.path.join(args.out_dir, f"{name}_{args.dataset}.json"), "w") as f:
      json.dump(res, f, indent=1, default=str)
    print(json.dumps(res, default=str), flush=True)


if __name__ == "__main__":
  main()
