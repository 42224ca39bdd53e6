"""Shared config defaults (ml_collections). Experiments start from these and override fields.

Defaults are the generative-recommenders ML-1M research configs: AdamW(1e-3, β=(0.9, 0.98),
wd 0), batch 128, 101 epochs, dropout 0.2, sampled softmax with 128 uniform negatives per
position, τ = 0.05, max_seq_len 200.
"""

from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
  """A config value names something that does not exist or cannot work (e.g. an unknown model).

  The experiment CLI reports it as one `error:` line, like bad input data."""


def sequential_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = ""
  c.seed = 42

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "ml-1m"
  c.data.protocol = "loo"  # 'loo' (train/val/test) or 'paper' (train/test, no validation)
  c.data.max_seq_len = 200
  c.data.download = False
  # MovieLens from 'files' (data_dir, movielens.py) or 'tfds': a prepared TFDS movielens/<v>-ratings
  # and -movies (ml-100k, ml-1m) in tfds_data_dir ('' = TFDS's default); data/tfds_source.py.
  c.data.source = "files"
  c.data.tfds_data_dir = ""
  # Pack several users into one row of max_seq_len tokens (same loss, ~half the tokens on ML-1M).
  c.data.pack = True
  # Past items removed from the full ranking: 'window' = the max_seq_len items the model sees
  # (generative-recommenders), 'all' = every past item (S3-Rec / TIGER protocol on Amazon),
  # 'none' = nothing removed (RecBole's full ranking for sequential models).
  c.data.history_filter = "window"
  # > 0: cold-start split: this fraction of the catalog (seeded by `seed`) is held out of training
  # entirely and reported separately as test targets (results.json: test_cold, test_warm).
  c.data.cold_start_frac = 0.0
  # MovieLens candidate items (ranked and sampled): 'metadata' = every movie of movies.dat (the
  # reference's all_item_ids; 3,883 on ML-1M), 'rated' = the movies with a rating (3,706, what
  # RecBole ranks). Amazon: always item ids 1..n.
  c.data.catalog = "metadata"
  # MovieLens filters, applied before the split (RecBole's benchmark: 3 and 10; data/movielens.py
  # filter_ratings): drop ratings below min_rating, then users and items with fewer than
  # min_interactions ratings, repeatedly (k-core). 0 = off.
  c.data.min_rating = 0.0
  c.data.min_interactions = 0
  # Training rows: 'last' = each user's last max_seq_len + 1 training events (generative-
  # recommenders), 'all' = every training event is a target once: long histories are cut into
  # several rows (data/sequences.py window_ends; RecBole trains on every event too).
  c.data.train_windows = "last"
  # With train_windows='all': windows start every train_stride events and each owns only its
  # last train_stride targets, so every target sees >= max_seq_len + 1 - train_stride events of
  # context, at max_seq_len / train_stride times the tokens. 0 = max_seq_len (windows overlap by
  # one event); 1 = RecBole's prefix examples (each target with its full history).
  c.data.train_stride = 0
  # HSTU Stochastic Length (training only): > 0 shortens a sequence of n > N^{α/2} tokens to
  # N^{α/2} random tokens with probability 1 - N^α/n² (N = max_seq_len); 0 = off. See
  # data/pipeline.py stochastic_length_examples.
  c.data.stochastic_length_alpha = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "hstu"
  c.model.embed_dim = 50
  c.model.num_blocks = 2
  c.model.num_heads = 1
  c.model.dqk = 50
  c.model.dv = 50
  c.model.ffn_hidden_dim = 50  # SASRec only
  c.model.dropout = 0.2  # HSTU linear dropout / SASRec attention+FFN dropout
  # SASRec blocks: 'pre_ln' (kang205 / generative-recommenders: Q = LN(X), ReLU FFN) or 'post_ln'
  # (RecBole / S3-Rec: BERT layout, LN(E + P) input without √D, GELU, N(0, 0.02²) weights;
  # nn/transformer.py). 'post_ln' reads model.attn_dropout for the attention weights.
  c.model.sasrec_block = "pre_ln"
  c.model.attn_dropout = 0.2
  c.model.input_dropout = 0.2
  # SiLU(.)/n uses the reference's padded length n = max_seq_len + gr_output_length(10) + 1.
  c.model.attn_norm_len = 211
  c.model.num_buckets = 128
  c.model.use_time_bias = True
  # HSTU attention: 'dense' ([B, H, N, N] scores) or 'blockwise' (same outputs, tiles of
  # attention_block × attention_block, O(N·block) activation memory; nn/hstu.py).
  c.model.attention_impl = "dense"
  c.model.attention_block = 128
  # Item vectors (input and output table): 'id' (learned table), 'text' (a learned projection of
  # frozen all-MiniLM-L6-v2 embeddings of the item text, data/text.py; MovieLens only) or
  # 'id+text' (both, combined by `fusion`: 'sum' | 'concat' | 'gate'). See models/sequential.py.
  c.model.item_features = "id"
  c.model.fusion = "sum"
  # 'cosine': unit user states and item vectors (generative-recommenders); 'dot': raw dot product
  # after a final layer norm (the original SASRec, for loss.name='bce').
  c.model.score = "cosine"
  # Positional embeddings: 'start' (t from each sequence's first event; generative-recommenders) or
  # 'end' (N − L + t: the original SASRec's left-padded windows, the newest event always at N − 1).
  c.model.positions = "start"

  c.loss = ml_collections.ConfigDict()
  c.loss.name = "sampled_softmax"  # or 'full_softmax', or 'bce' (the original SASRec's loss)
  c.loss.num_negatives = 128
  c.loss.temperature = 0.05
  c.loss.impl = "gather"  # 'gather' | 'dense': two exact implementations, pick the faster
  # Tokens scored against the whole catalog at a time (full_softmax and impl='dense'; a chunk's
  # [chunk, catalog] scores live only inside one step of a loop: catalog_scores.py); 0 = all at
  # once, the plain XLA program (more memory traffic; the reference in tests and FLOP counts).
  c.loss.chunk = 1024

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_epochs = 101
  c.train.learning_rate = 1e-3
  c.train.b1 = 0.9
  c.train.b2 = 0.98
  c.train.weight_decay = 0.0
  c.train.grad_clip_norm = 0.0  # > 0: clip gradients to this global L2 norm first; 0 = off
  c.train.patience = 0  # early stopping on val NDCG@10 after this many epochs without gain; 0 = off
  c.train.eval_batch_size = 128  # users per validation batch (128 vs 256: results.md, session 6)
  c.train.select_metric = "ndcg@10"
  # PRNG for dropout masks and negatives: 'threefry2x32' (JAX default) or 'rbg' (XLA's
  # RngBitGenerator: cheaper on CPU). Both are deterministic for a seed on a given backend.
  c.train.rng_impl = "threefry2x32"
  # Mixed precision: 'bfloat16' runs the model and loss matmuls in bf16 on a bf16 copy of the
  # params, made inside the step from the float32 master weights (which the optimizer updates, in
  # float32). Reductions (norms, softmax, log-sum-exp) stay float32; evaluation scores in float32.
  c.train.compute_dtype = "float32"

  # Device mesh ('data', 'model') and logical partition rules (train/mesh.py). 'vocab' -> 'model'
  # with model > 1 splits the item table's rows over 'model' (sharded.py scores them in place).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices the batch is split over; -1: all devices left after `model`
  c.mesh.model = 1  # devices the item table's rows are split over
  c.mesh.rules = (("vocab", "model"), ("embed", None))  # logical axis -> mesh axis; others replicated

  c.paper = ml_collections.ConfigDict()  # published test numbers, printed next to ours
  return c


def hllm_fields(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the HLLM fields (user LLM, InfoNCE, item LLM) to a sequential_config()."""
  from genrec_jax.data.text import HLLM_ITEM_PROMPT  # pylint: disable=g-import-not-at-top  (cycle)

  c.model.name = "hllm"
  c.model.user_init = "random"  # 'random' (small Llama) | 'smollm2' (e2e only: SmolLM2 blocks)
  c.model.user_layers = 2
  c.model.user_hidden = 64  # a random user LLM's width; item embeddings are projected to it
  c.model.user_heads = 4
  c.model.user_kv_heads = 2
  c.model.user_ffn = 256

  c.loss.name = "infonce"
  # One pool per step, shared by every position, as HLLM (its Books runs: 512 or 28,672). On ML-1M
  # a pool of 512 learned much slower than 2,048 (HSTU-ID, 2 epochs: val NDCG@10 0.016 vs 0.040).
  c.loss.num_negatives = 2048
  c.loss.nce_threshold = 0.99  # HLLM nce_thres

  c.hllm = ml_collections.ConfigDict()
  c.hllm.mode = "frozen"  # 'frozen' (cached item embeddings, trainer.fit) | 'e2e' (train/hllm.py)
  c.hllm.item_llm = "smollm2-135m"  # or 'scratch' (e2e: a random Llama of the model.user_* size)
  c.hllm.tokenizer_vocab = 2000  # 'scratch': sentencepiece pieces trained on the item texts
  c.hllm.tokenizer_type = "unigram"  # 'scratch': sentencepiece 'unigram' | 'bpe'
  c.hllm.item_layers = 8  # first k of SmolLM2's 30 blocks
  c.hllm.pooling = "item_token"  # HLLM item_emb_token_n=1; 'mean' = item_emb_token_n=0
  c.hllm.max_text_len = 64  # HLLM MAX_TEXT_LENGTH (yaml default; its Books scripts use 256)
  c.hllm.prompt = HLLM_ITEM_PROMPT
  c.hllm.encode_batch_size = 64
  c.hllm.length_multiple = 16  # token widths rounded up to this (few jit shapes)
  # frozen only: standardise the cached item embeddings per dimension (models/hllm.py
  # standardize_items; not in HLLM, which fine-tunes its item LLM)
  c.hllm.standardize = True
  # e2e only
  c.hllm.num_steps = 1000
  c.hllm.warmup_frac = 0.1  # HLLM scheduler_args warmup 0.1, cosine
  c.hllm.eval_every = 0  # steps between validations; 0 = at the end only
  c.hllm.log_every = 10
  return c
