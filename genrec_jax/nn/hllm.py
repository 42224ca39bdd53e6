"""HLLM (Chen et al., ByteDance, arXiv 2409.12740): an item LLM and a user LLM, in Linen.

Item LLM: an item's text (prompt + fields) becomes tokens t_1..t_n; HLLM appends one placeholder
token and overwrites its input embedding with a learned vector [ITEM] (N(0, 0.02), hidden size),
then reads the final-layer hidden state (after the final RMSNorm) at that position:

  x_j = E[t_j] (j ≤ n),  x_{n+1} = [ITEM]                              (input embeddings)
  h   = LLM_item(x_1..x_{n+1})                                         (causal)
  e   = h_{n+1}                                                        ('item_token' pooling)
  e   = (1/n) Σ_{j≤n} h_j                                               ('mean': no [ITEM] token)

User LLM: a causal LLM over item embeddings as input embeddings (no word embeddings):

  u_1..u_N = LLM_user(e(i_1)..e(i_N)),  u_t predicts i_{t+1}

(bytedance/HLLM code/REC/model/HLLM/hllm.py forward_item_emb / forward; batchset.py.) Both LLMs
are Llama decoders (`genrec_jax.nn.llama` blocks, so SmolLM2 weights load unchanged); the
parameter trees are the Llama ones: item LLM {token_embd, blk_i, output_norm, item_token}, user
LLM {blk_i, output_norm}. The objective lives in `genrec_jax.losses.infonce_loss`.

Differences from the reference code (numerically irrelevant): HLLM packs the items of a batch
into one varlen row (flash attention with cu_seqlens); we right-pad each item to a common length
and mask, which gives the same states at real tokens. HLLM offsets each item's position ids by
(MAX_TEXT_LENGTH − n); RoPE scores depend only on position differences, so positions 0..n give
the same outputs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from genrec_jax.nn.llama import LlamaConfig, decoder_stack

Array = jax.Array
POOLINGS = ("item_token", "mean")
ITEM_TOKEN = "item_token"  # param name of the learned [ITEM] embedding


class LlamaStack(nn.Module):
  """The first `num_layers` Llama blocks and the final RMSNorm over given input embeddings.

  The same parameter names as `genrec_jax.nn.llama.Llama` without its token embedding, so a
  Llama checkpoint's params (minus 'token_embd') load as they are. The caller gives the
  attention mask (which keys each query may read) and the RoPE positions.
  """

  config: LlamaConfig
  num_layers: int | None = None

  @nn.compact
  def __call__(self, x_BxLxD: Array, allowed_BxLxL: Array, positions_BxL: Array) -> Array:
    cfg = self.config
    k = cfg.num_layers if self.num_layers is None else self.num_layers
    return decoder_stack(cfg, k, x_BxLxD, allowed_BxLxL, positions_BxL)


def segment_causal_mask(seg_BxL: Array) -> Array:
  """allowed[b, i, j] = j ≤ i, token j in the same sequence as token i, and j not padding (0)."""
  n = seg_BxL.shape[1]
  causal_LxL = jnp.tril(jnp.ones((n, n), dtype=bool))
  same_BxLxL = seg_BxL[:, :, None] == seg_BxL[:, None, :]
  return causal_LxL[None] & same_BxLxL & (seg_BxL[:, None, :] != 0)


def item_token_layout(length_M: Array, num_tokens: int, pooling: str) -> tuple[Array, Array]:
  """(is_item_MxT, mask_MxT): where the [ITEM] slot is (index n = the text length, right after
  the text) and which tokens are real (text, plus the slot with 'item_token' pooling)."""
  t_1xT = jnp.arange(num_tokens)[None, :]
  n_Mx1 = length_M[:, None]
  if pooling == "item_token":
    return t_1xT == n_Mx1, t_1xT <= n_Mx1
  return jnp.zeros((length_M.shape[0], num_tokens), bool), t_1xT < n_Mx1


class ItemLLM(nn.Module):
  """Item text tokens -> one embedding per item (module docstring), [M, D].

  tokens_MxT: text token ids, right-padded; the slot at index length (the [ITEM] placeholder)
  and everything after it are ignored as inputs. length_M: number of text tokens n (≤ T − 1
  with 'item_token' pooling, which needs the slot).
  """

  config: LlamaConfig
  num_layers: int | None = None
  pooling: str = "item_token"

  @nn.compact
  def __call__(self, tokens_MxT: Array, length_M: Array) -> Array:
    cfg = self.config
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling {self.pooling!r} not in {POOLINGS}")
    m, t = tokens_MxT.shape
    embed = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, embedding_init=nn.initializers.normal(0.02),
        name="token_embd",
    )
    x_MxTxD = embed(tokens_MxT)
    is_item_MxT, mask_MxT = item_token_layout(length_M, t, self.pooling)
    if self.pooling == "item_token":
      # x_{n+1} = [ITEM]: a learned vector overwrites the placeholder's input embedding.
      item_D = self.param(ITEM_TOKEN, nn.initializers.normal(0.02), (cfg.hidden_size,))
      x_MxTxD = jnp.where(is_item_MxT[..., None], item_D.astype(x_MxTxD.dtype), x_MxTxD)
    allowed_MxTxT = segment_causal_mask(mask_MxT.astype(jnp.int32))
    positions_MxT = jnp.broadcast_to(jnp.arange(t)[None, :], (m, t))
    h_MxTxD = LlamaStack(cfg, self.num_layers, name="llm")(x_MxTxD, allowed_MxTxT, positions_MxT)
    if self.pooling == "item_token":
      # e = h_{n+1}: the final hidden state at the [ITEM] slot.
      return h_MxTxD[jnp.arange(m), length_M]
    # e = (1/n) Σ_{j≤n} h_j
    m_MxTx1 = mask_MxT[..., None].astype(h_MxTxD.dtype)
    return jnp.sum(h_MxTxD * m_MxTx1, axis=1) / jnp.maximum(jnp.sum(m_MxTx1, axis=1), 1.0)


class UserLLM(nn.Module):
  """Causal Llama over item embeddings: user state at every token, [B, N, D] (not normalised).

  Rows may pack several users' sequences: seg_BxN numbers them (0 = padding) and pos_BxN is the
  position within its sequence (the RoPE position), as in data/pipeline.py batches. Inputs must
  have the user LLM's width (HLLM uses one hidden size for both LLMs; a narrower user LLM reads
  projected item embeddings, see models/hllm.py).
  """

  config: LlamaConfig
  num_layers: int | None = None

  @nn.compact
  def __call__(self, x_BxNxD: Array, seg_BxN: Array, pos_BxN: Array) -> Array:
    if x_BxNxD.shape[-1] != self.config.hidden_size:
      raise ValueError(f"item embeddings of width {x_BxNxD.shape[-1]} for a user LLM of hidden "
                       f"size {self.config.hidden_size}")
    stack = LlamaStack(self.config, self.num_layers, name="llm")
    return stack(x_BxNxD, segment_causal_mask(seg_BxN), pos_BxN)


class HLLM(nn.Module):
  """Item LLM + user LLM + the learnable InfoNCE logit scale (end-to-end training).

  Params: {item_llm: {token_embd, item_token, llm: {blk_i, output_norm}},
           user_llm: {llm: {blk_i, output_norm}}, logit_scale}.
  """

  item_config: LlamaConfig
  user_config: LlamaConfig
  item_layers: int | None = None
  user_layers: int | None = None
  pooling: str = "item_token"
  logit_scale_init: float = 0.0  # set to losses.LOGIT_SCALE_INIT by the builder

  def setup(self):
    self.item_llm = ItemLLM(self.item_config, self.item_layers, self.pooling)
    self.user_llm = UserLLM(self.user_config, self.user_layers)
    self.logit_scale = self.param(
        "logit_scale", nn.initializers.constant(self.logit_scale_init), ()
    )

  def __call__(self, tokens_MxT, length_M, seq_rows_BxS, seg_BxN, pos_BxN):
    """(item embeddings of the rows [M, D], user states [B, N, D]) for init and tests.

    seq_rows_BxS (S = N + 1) index the M item rows: the user LLM reads items 0..N−1.
    """
    e_MxD = self.item_embeddings(tokens_MxT, length_M)
    x_BxNxD = e_MxD[seq_rows_BxS[:, :-1]]
    return e_MxD, self.user_states(x_BxNxD, seg_BxN, pos_BxN)

  def item_embeddings(self, tokens_MxT: Array, length_M: Array) -> Array:
    return self.item_llm(tokens_MxT, length_M)

  def user_states(self, x_BxNxD: Array, seg_BxN: Array, pos_BxN: Array) -> Array:
    return self.user_llm(x_BxNxD, seg_BxN, pos_BxN)
