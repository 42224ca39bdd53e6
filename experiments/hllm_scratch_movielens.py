"""HLLM on MovieLens-1M with a small item LLM trained from scratch (no pretrained weights).

The HLLM model and objective of experiments/hllm_e2e_movielens.py (item LLM -> item embedding at
the end of the item's text, user LLM over the item embeddings, InfoNCE with the 0.99 negative mask
and a learnable logit scale), but both LLMs are small random Llamas (model.user_* size) and the
item text is tokenized by a sentencepiece unigram model trained on the ML-1M item texts
(data/item_tokenizer.py; hllm.tokenizer_vocab pieces, cached on disk). Trained end to end.

  nice -n 5 python -m experiments.hllm_scratch_movielens --workdir runs/hllm_scratch
"""

from __future__ import annotations

from genrec_jax import cli, recipes
from experiments import hllm_e2e_movielens


def get_config():
  c = hllm_e2e_movielens.get_config()  # mode e2e, mean pooling, HLLM's InfoNCE and schedule
  c.experiment = "hllm_scratch_movielens"
  c.hllm.item_llm = "scratch"
  c.hllm.tokenizer_vocab = 2000
  c.hllm.item_layers = 2
  c.hllm.prompt = ""  # no instruction prompt for a model that never saw instructions
  c.hllm.num_steps = 2000
  c.hllm.eval_every = 500
  c.hllm.log_every = 50
  c.model.user_init = "random"
  c.model.user_layers = 2  # width 64, 4 heads / 2 KV heads, FFN 256: hllm_fields' random user LLM
  c.data.max_seq_len = 50
  c.train.batch_size = 32
  c.train.learning_rate = 1e-3
  c.loss.num_negatives = 512
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_hllm)
