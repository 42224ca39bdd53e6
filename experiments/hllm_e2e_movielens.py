"""HLLM (arXiv 2409.12740) on MovieLens-1M, end to end: item LLM and user LLM trained together.

Both LLMs start from SmolLM2-135M-Instruct truncated to their first k blocks (hllm.item_layers,
model.user_layers); the item LLM embeds every item of a step from its text ([ITEM] token), the
user LLM reads the item embeddings, and HLLM's InfoNCE trains both, the [ITEM] token and the
logit scale (genrec_jax/train/hllm.py). Optimiser as HLLM's LLM_deepspeed.yaml: AdamW(lr 1e-4,
weight decay 0.01), 10% linear warm-up then cosine decay. Windows of max_seq_len + 1 items per
user (one per user per epoch, as the spine's training examples; HLLM's default cuts the whole
sequence into such chunks, see docs/hllm.md), K negatives shared per step.
Evaluation is the spine's (full ranking over the catalog embedded by the current item LLM,
leave-one-out, HR/NDCG), at the end (and every hllm.eval_every steps).

CPU-sized defaults (1 item block + 1 user block, mean pooling, windows of 8 + 1 items, 2 users
and 16 negatives per step, 300 steps, HLLM's lr 1e-4; ~5.5 min here):
  nice -n 19 python -m experiments.hllm_e2e_movielens --workdir runs/hllm_e2e_cpu_mean
4 users and 32 negatives per step, lr 5e-4 (the clearer loss decrease in docs/hllm.md; ~8.5 min):
  nice -n 19 python -m experiments.hllm_e2e_movielens --workdir runs/hllm_e2e_cpu_mean_b4 \\
      --config.train.learning_rate=5e-4 --config.train.batch_size=4 --config.loss.num_negatives=32
The same with HLLM's [ITEM] token (its loss rises: see the pooling comment in get_config):
  nice -n 19 python -m experiments.hllm_e2e_movielens --workdir runs/hllm_e2e_cpu \\
      --config.hllm.pooling=item_token
Full-size run on an accelerator (all 30 blocks in both LLMs, HLLM's Books-neg512 shape: windows
of 50, 8 users and 512 negatives per step, texts up to 256 tokens, 5 epochs = 3,775 steps,
validation every epoch; never run by us, CPU is far too slow for it):
  python -m experiments.hllm_e2e_movielens --workdir runs/hllm_e2e_full \\
      --config.hllm.item_layers=30 --config.model.user_layers=30 --config.data.max_seq_len=50 \\
      --config.train.batch_size=8 --config.loss.num_negatives=512 --config.hllm.max_text_len=256 \\
      --config.hllm.num_steps=3775 --config.hllm.eval_every=755 --config.hllm.pooling=item_token
"""

from __future__ import annotations

from genrec_jax import cli, config, recipes


def get_config():
  c = config.hllm_fields(config.sequential_config())
  c.experiment = "hllm_e2e_movielens"
  c.hllm.mode = "e2e"
  c.hllm.item_layers = 1
  # Mean pooling for the 1-block CPU default: after a single block the [ITEM] state is nearly the
  # same for every item (83% of ML-1M item pairs above HLLM's 0.99 mask at init, vs 0.2% for mean
  # pooling), so most negatives start masked and the loss starts near 0 and rises as the item
  # embeddings spread (measured: 0.07 -> 2.36 over 300 steps). The full-size run uses [ITEM].
  c.hllm.pooling = "mean"
  c.hllm.max_text_len = 64
  c.hllm.num_steps = 300
  c.hllm.eval_every = 0
  c.model.user_init = "smollm2"  # HLLM initialises the user LLM from a pretrained LLM too
  c.model.user_layers = 1
  c.data.max_seq_len = 8  # every ML-1M training window is full (users have >= 20 ratings)
  c.train.batch_size = 2
  c.train.eval_batch_size = 256
  c.train.learning_rate = 1e-4
  c.train.weight_decay = 0.01
  c.loss.num_negatives = 16
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_hllm)
