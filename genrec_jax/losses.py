"""Next-item losses over L2-normalised user states and item embeddings (cosine / temperature).

Sampled softmax as the reference's SampledSoftmaxLoss with LocalNegativesSampler: for every
supervised position, K negatives drawn uniformly with replacement from the catalog, independently
per position; logits = cos / τ; a negative equal to the positive gets logit -5e4;
loss = mean over supervised positions of -log softmax([pos, negs])[0].

Two exact implementations of the same loss:
  'gather': gathers the K negative embeddings per position, like the reference, but a chunk of
            positions at a time, so the B·N·K·D gathered floats are never written out at once;
            the log-sum-exp and its gradient come out of one pass over the chunks
            (catalog_scores.gathered_logsumexp_sum: each row gathered once, not once forward and
            again backward; the table gradient is a scatter-add per chunk).
  'dense':  scores every catalog item (catalog_scores.catalog_take: chunk by chunk, never the
            whole [B·N, C] logits), then takes the K sampled logits (B·N·C·D FLOPs: worth it
            when the catalog is not much larger than K; ML-1M: 3.7k items, K = 128).

`infonce_loss` is HLLM's objective (a shared negative pool, learnable logit scale, near-duplicate
negatives masked); see its docstring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from genrec_jax.catalog_scores import (
    CHUNK, MASKED_LOGIT, catalog_gather_dot, catalog_logsumexp_sum, catalog_take, gather_chunk,
    gathered_logsumexp_sum,
)

Array = jax.Array


def _dot(a_xD: Array, b_xD: Array) -> Array:
  """<a, b> over the last axis, accumulated and returned in float32 (also for bf16 inputs)."""
  return jnp.einsum("...d,...d->...", a_xD, b_xD, preferred_element_type=jnp.float32)


def _weighted_mean(loss_BxN: Array, weights_BxN: Array) -> Array:
  return jnp.sum(loss_BxN * weights_BxN) / jnp.maximum(jnp.sum(weights_BxN), 1.0)


def _mean_lse_minus_pos(lse_sum: Array, pos_BxN: Array, weights_BxN: Array) -> Array:
  """Σ w·(lse − pos) / Σ w from the already summed Σ w·lse (the chunked catalog losses)."""
  return (lse_sum - jnp.sum(pos_BxN * weights_BxN)) / jnp.maximum(jnp.sum(weights_BxN), 1.0)


def gathered_dot(user_xD: Array, table_VxD: Array, ids_xK: Array, chunk: int = CHUNK) -> Array:
  """logits[..., k] = <user[...], table[ids[..., k]]> (leading dims shared by user and ids), in
  float32. chunk > 0: the rows are gathered `gather_chunk(K)` tokens at a time
  (catalog_scores.catalog_gather_dot; the size is set by K, not by `chunk`); chunk = 0: all
  [..., K, D] rows at once, the plain program."""
  if chunk == 0:
    return jnp.einsum("...d,...kd->...k", user_xD, table_VxD[ids_xK], preferred_element_type=jnp.float32)
  lead, d, k = user_xD.shape[:-1], user_xD.shape[-1], ids_xK.shape[-1]
  logits_MxK = catalog_gather_dot(
      user_xD.reshape(-1, d), table_VxD, ids_xK.reshape(-1, k), gather_chunk(k)
  )
  return logits_MxK.reshape(*lead, k)


def sample_negatives(key: Array, shape: tuple[int, ...], num_negatives: int, catalog_size: int) -> Array:
  """Offsets into the catalog, uniform with replacement, [*shape, K]."""
  return jax.random.randint(key, shape + (num_negatives,), 0, catalog_size)


def sampled_softmax_loss(
    user_BxNxD: Array,
    targets_BxN: Array,
    table_VxD: Array,
    catalog_C: Array,
    neg_offsets_BxNxK: Array,
    temperature: float,
    impl: str = "dense",
    chunk: int = CHUNK,
) -> Array:
  """Sampled softmax loss; `table_VxD` is the normalised item table, `catalog_C` its valid ids.
  chunk: tokens scored against the catalog at a time by impl='dense' (catalog_scores.py; 'gather'
  sizes its chunks by K, see gathered_dot); 0 = all at once, the plain program of either impl
  (the reference the chunked ones are tested against)."""
  neg_ids_BxNxK = catalog_C[neg_offsets_BxNxK]
  pos_BxN = _dot(user_BxNxD, table_VxD[targets_BxN]) / temperature
  if impl == "dense" and chunk == 0:  # the plain program: all [B, N, C] logits at once
    logits_BxNxC = jnp.einsum("bnd,cd->bnc", user_BxNxD, table_VxD[catalog_C],
                              preferred_element_type=jnp.float32) / temperature
    neg_BxNxK = jnp.take_along_axis(logits_BxNxC, neg_offsets_BxNxK, axis=-1)
  elif impl == "dense":  # every catalog score, chunk by chunk, then the K sampled ones
    b, n, d = user_BxNxD.shape
    neg_MxK = catalog_take(
        user_BxNxD.reshape(b * n, d) / temperature, table_VxD[catalog_C], neg_offsets_BxNxK.reshape(b * n, -1),
        chunk,
    )
    neg_BxNxK = neg_MxK.reshape(b, n, -1)
  elif impl == "gather" and chunk > 0:
    # −log softmax([pos, negs])[0] = lse − pos, the lse summed over tokens in one gathering pass
    # (catalog_scores.gathered_logsumexp_sum: value and gradient together).
    b, n, d = user_BxNxD.shape
    k = neg_ids_BxNxK.shape[-1]
    weights_BxN = (targets_BxN != 0).astype(jnp.float32)
    lse_sum = gathered_logsumexp_sum(
        user_BxNxD.reshape(b * n, d) / temperature, table_VxD, neg_ids_BxNxK.reshape(b * n, k),
        (neg_ids_BxNxK != targets_BxN[..., None]).reshape(b * n, k), pos_BxN.reshape(-1),
        weights_BxN.reshape(-1), gather_chunk(k),
    )
    return _mean_lse_minus_pos(lse_sum, pos_BxN, weights_BxN)
  elif impl == "gather":
    neg_BxNxK = gathered_dot(user_BxNxD, table_VxD, neg_ids_BxNxK, chunk) / temperature
  else:
    raise ValueError(f"unknown sampled-softmax impl {impl!r}")
  return sampled_softmax_from_logits(pos_BxN, neg_BxNxK, neg_ids_BxNxK, targets_BxN)


def sampled_softmax_from_logits(
    pos_BxN: Array, neg_BxNxK: Array, neg_ids_BxNxK: Array, targets_BxN: Array
) -> Array:
  """Mean over supervised positions (target != 0) of −log softmax([pos, negs])[0], a negative
  equal to the target masked to MASKED_LOGIT. Shared by every sampled-softmax implementation
  (here and the row-sharded one in sharded.py), which differ only in how they score."""
  neg_BxNxK = jnp.where(neg_ids_BxNxK == targets_BxN[..., None], MASKED_LOGIT, neg_BxNxK)
  all_BxNx1K = jnp.concatenate([pos_BxN[..., None], neg_BxNxK], axis=-1)
  loss_BxN = jax.nn.logsumexp(all_BxNx1K, axis=-1) - pos_BxN
  return _weighted_mean(loss_BxN, (targets_BxN != 0).astype(jnp.float32))


def full_softmax_loss(
    user_BxNxD: Array, targets_BxN: Array, table_VxD: Array, catalog_C: Array, temperature: float,
    chunk: int = CHUNK,
) -> Array:
  """Softmax over the whole catalog: -log p(target) with p ∝ exp(cos / τ), `chunk` tokens at a
  time (catalog_scores.py); chunk = 0: all [B, N, C] logits at once, the plain program."""
  b, n, d = user_BxNxD.shape
  weights_BxN = (targets_BxN != 0).astype(jnp.float32)
  pos_BxN = _dot(user_BxNxD, table_VxD[targets_BxN]) / temperature
  if chunk == 0:  # the plain program: all [B, N, C] logits at once
    logits_BxNxC = jnp.einsum("bnd,cd->bnc", user_BxNxD, table_VxD[catalog_C],
                              preferred_element_type=jnp.float32) / temperature
    return _weighted_mean(jax.nn.logsumexp(logits_BxNxC, axis=-1) - pos_BxN, weights_BxN)
  # Σ_t w_t log Σ_c exp(s_tc), s = cos / τ, without the [B·N, C] logits in memory (catalog_scores.py)
  lse_sum = catalog_logsumexp_sum(
      user_BxNxD.reshape(b * n, d) / temperature, table_VxD[catalog_C], weights_BxN.reshape(-1), chunk
  )
  return _mean_lse_minus_pos(lse_sum, pos_BxN, weights_BxN)


def bce_loss(
    user_BxNxD: Array, targets_BxN: Array, table_VxD: Array, neg_ids_BxN: Array, temperature: float = 1.0
) -> Array:
  """The original SASRec's binary cross-entropy with one sampled negative per position.

    r⁺ = <u_t, E[i_{t+1}]> / τ,   r⁻ = <u_t, E[j_t]> / τ
    L  = mean over supervised t of  −log σ(r⁺) − log(1 − σ(r⁻)) = softplus(−r⁺) + softplus(r⁻)
  A negative equal to the positive contributes no negative term (SASRec samples j outside the
  user's whole sequence; we sample from the catalog and drop the rare collision with the target).
  """
  weights_BxN = (targets_BxN != 0).astype(jnp.float32)
  pos_BxN = _dot(user_BxNxD, table_VxD[targets_BxN]) / temperature
  neg_BxN = _dot(user_BxNxD, table_VxD[neg_ids_BxN]) / temperature
  neg_term_BxN = jnp.where(neg_ids_BxN == targets_BxN, 0.0, jax.nn.softplus(neg_BxN))
  return _weighted_mean(jax.nn.softplus(-pos_BxN) + neg_term_BxN, weights_BxN)


# --- InfoNCE with a learnable logit scale (HLLM, arXiv 2409.12740; bytedance/HLLM hllm.py nce_loss) ---

LOGIT_SCALE = "logit_scale"  # top-level param name of the learnable log logit scale θ
LOGIT_SCALE_INIT = float(np.log(1.0 / 0.07))  # θ_0 = ln(1/0.07), as CLIP / HLLM
LOGIT_SCALE_MAX = float(np.log(100.0))  # HLLM clamps θ to [0, ln 100] before every forward
NCE_THRESHOLD = 0.99  # HLLM's nce_thres: negatives with cos(positive, negative) > 0.99 are dropped


def clamp_logit_scale(theta: Array, max_value: float = LOGIT_SCALE_MAX) -> Array:
  """θ clamped to [0, max_value] in value, with gradient 1 (a straight-through clamp).

  HLLM clamps the parameter in place (no gradient) and then differentiates exp(θ) at the clamped
  value; `project_logit_scale` does the in-place part after each update, this the forward part.
  """
  return theta + jax.lax.stop_gradient(jnp.clip(theta, 0.0, max_value) - theta)


def project_logit_scale(params: dict, max_value: float = LOGIT_SCALE_MAX) -> dict:
  """params with params['logit_scale'] clamped to [0, max_value] (a no-op without one)."""
  if not isinstance(params, dict) or LOGIT_SCALE not in params:
    return params
  return {**params, LOGIT_SCALE: jnp.clip(params[LOGIT_SCALE], 0.0, max_value)}


def _unit(x: Array, eps: float = 1e-6) -> Array:
  """x / max(‖x‖₂, eps) over the last axis."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def infonce_loss(
    user_BxNxD: Array,
    pos_BxNxD: Array,
    neg_KxD: Array,
    weights_BxN: Array,
    logit_scale: Array,
    threshold: float = NCE_THRESHOLD,
    max_logit_scale: float = LOGIT_SCALE_MAX,
) -> Array:
  """HLLM's generative next-item InfoNCE over a pool of K negatives shared by every position.

  user_BxNxD: user states; pos_BxNxD: embeddings of the next items; neg_KxD: embeddings of the
  sampled negatives (HLLM all-gathers them over the global batch); weights_BxN: 1 at supervised
  positions. None of them needs to be normalised. logit_scale: the learnable θ (a scalar).
  """
  # s = exp(clamp(θ, 0, ln 100))
  s = jnp.exp(clamp_logit_scale(logit_scale, max_logit_scale))
  # u = h/‖h‖,  p = e(i⁺)/‖e(i⁺)‖,  n_k = e(i_k)/‖e(i_k)‖
  u_BxNxD, p_BxNxD, n_KxD = _unit(user_BxNxD), _unit(pos_BxNxD), _unit(neg_KxD)
  # ℓ⁺ = s·cos(u, p),  ℓ_k = s·cos(u, n_k)
  pos_BxN = s * jnp.sum(u_BxNxD * p_BxNxD, axis=-1)
  neg_BxNxK = s * jnp.einsum("bnd,kd->bnk", u_BxNxD, n_KxD)
  # ℓ_k = −∞ where cos(p, n_k) > 0.99: a negative (nearly) identical to the positive is dropped.
  too_close_BxNxK = jnp.einsum("bnd,kd->bnk", p_BxNxD, n_KxD) > threshold
  neg_BxNxK = jnp.where(too_close_BxNxK, jnp.finfo(neg_BxNxK.dtype).min, neg_BxNxK)
  # L = mean over supervised positions of  −ℓ⁺ + log(exp ℓ⁺ + Σ_k exp ℓ_k)
  all_BxNx1K = jnp.concatenate([pos_BxN[..., None], neg_BxNxK], axis=-1)
  loss_BxN = jax.nn.logsumexp(all_BxNx1K, axis=-1) - pos_BxN
  return _weighted_mean(loss_BxN, weights_BxN.astype(loss_BxN.dtype))


def infonce_kept_fraction(
    pos_BxNxD: Array, neg_KxD: Array, weights_BxN: Array, threshold: float = NCE_THRESHOLD
) -> Array:
  """Mean over supervised positions of the fraction of negatives `infonce_loss` keeps
  (cos(positive, negative) ≤ threshold); HLLM logs the same count as `nce_samples`."""
  kept_BxN = jnp.mean(jnp.einsum("bnd,kd->bnk", _unit(pos_BxNxD), _unit(neg_KxD)) <= threshold, axis=-1)
  return _weighted_mean(kept_BxN.astype(weights_BxN.dtype), weights_BxN)


# --- Collaborative-filtering towers (MF-BPR, two-tower retrieval, YouTubeDNN; models/towers.py) ---


def bpr_loss(pos_B: Array, neg_B: Array) -> Array:
  """BPR (Rendle et al. 2009): mean over pairs of −log σ(s_ui − s_uj) = softplus(s_uj − s_ui).

  pos_B, neg_B: scores of the observed item i and of the sampled negative j for each (u, i, j).
  The L2 term of BPR-Opt is `l2_penalty` over the same rows, added by the caller.
  """
  return jnp.mean(jax.nn.softplus(neg_B - pos_B))


def sample_unseen(key: Array, seen_UxV: Array, users_B: Array, catalog_C: Array, tries: int = 32) -> Array:
  """One negative per row, uniform over the catalog items user u has not interacted with:
  BPR's j ∈ I \\ I_u⁺ (Rendle et al. 2009, D_S). Rejection sampling: `tries` uniform draws per
  row, the first unseen one is kept (each kept draw is uniform over the unseen items); if all are
  seen (probability (|I_u⁺|/|I|)^tries: below 1e-6 for ML-1M's heaviest user, ~60% seen) the last draw is
  kept. seen_UxV: bool, True where the user has a training interaction. [B] ids."""
  cand_BxT = catalog_C[jax.random.randint(key, (users_B.shape[0], tries), 0, catalog_C.shape[0])]
  unseen_BxT = ~seen_UxV[users_B[:, None], cand_BxT]
  first_B = jnp.where(jnp.any(unseen_BxT, axis=1), jnp.argmax(unseen_BxT, axis=1), tries - 1)
  return jnp.take_along_axis(cand_BxT, first_B[:, None], axis=1)[:, 0]


def l2_penalty(*rows: Array) -> Array:
  """Σ over the given embedding rows of ‖row‖² / (number of rows of the first): BPR's λ‖Θ‖² term,
  taken (as in Rendle's SGD) only over the parameters of the sampled triples, averaged per triple."""
  return sum(jnp.sum(jnp.square(r)) for r in rows) / rows[0].shape[0]


def in_batch_softmax_loss(
    user_BxD: Array,
    item_BxD: Array,
    log_q_B: Array | None,
    temperature: float,
    extra_negatives: tuple[Array, Array | None, Array | None] | None = None,
    *,
    item_ids_B: Array | None = None,
    in_batch: bool = True,
) -> Array:
  """Batch softmax with logQ correction (Yi et al., RecSys 2019), optionally mixed negatives.

  Row b's positive is item_BxD[b]; its negatives are the other rows' items (in-batch) and, with
  `extra_negatives = (neg_KxD, log_q_K, neg_ids_K)`, K items sampled from the catalog (mixed
  negative sampling, Yang et al. WWW 2020). Every candidate's logit is corrected by its own log
  sampling probability:
    s(u_b, v_j) = <u_b, v_j> / τ − log q_j
    L = mean_b [ −s(u_b, v_b) + log( Σ_{j ∈ batch} e^{s(u_b, v_j)} + Σ_{k ≤ K} e^{s(u_b, v_k)} ) ]
  log_q_B / log_q_K: log of each candidate's expected count among that step's negatives (in-batch:
  ≈ B·p_j; uniform: K/|C|), so both kinds are on one scale; None = no correction (q ≡ 1).
  item_ids_B / neg_ids_K: when given, a negative that is the row's own positive item (an
  in-batch duplicate or a sampled hit) is masked out. `in_batch=False` keeps only the diagonal
  (the positive) of the in-batch block: a plain sampled softmax over `extra_negatives`.
  """
  b = user_BxD.shape[0]
  logits_BxB = user_BxD @ item_BxD.T / temperature
  if log_q_B is not None:
    logits_BxB = logits_BxB - log_q_B[None, :]
  diag_BxB = jnp.eye(b, dtype=bool)
  keep_BxB = diag_BxB if not in_batch else jnp.ones((b, b), bool)
  if item_ids_B is not None:  # an in-batch copy of the row's own positive is not a negative
    keep_BxB = keep_BxB & ((item_ids_B[:, None] != item_ids_B[None, :]) | diag_BxB)
  logits_BxB = jnp.where(keep_BxB, logits_BxB, MASKED_LOGIT)
  pos_B = jnp.diagonal(logits_BxB)
  all_logits = [logits_BxB]
  if extra_negatives is not None:
    neg_KxD, log_q_K, neg_ids_K = extra_negatives
    logits_BxK = user_BxD @ neg_KxD.T / temperature
    if log_q_K is not None:
      logits_BxK = logits_BxK - log_q_K[None, :]
    if neg_ids_K is not None and item_ids_B is not None:
      logits_BxK = jnp.where(neg_ids_K[None, :] == item_ids_B[:, None], MASKED_LOGIT, logits_BxK)
    all_logits.append(logits_BxK)
  logits_BxC = jnp.concatenate(all_logits, axis=1)
  return jnp.mean(jax.nn.logsumexp(logits_BxC, axis=1) - pos_B)


def streaming_frequency_update(
    last_step_V: Array, delta_V: Array, ids_B: Array, step: Array, alpha: float
) -> tuple[Array, Array]:
  """Yi et al. 2019, Algorithm 1 (streaming frequency estimation), with the item id as its hash.

  For every item j in the batch of global step t:
    δ_j ← (1 − α)·δ_j + α·(t − A_j),   A_j ← t
  δ_j estimates the number of steps between two occurrences of j, so j appears in a batch with
  probability q_j ≈ 1/δ_j (`streaming_log_q` gives log q_j = −log δ_j). Duplicates in the batch
  write the same value. Returns the new (A, δ).
  """
  step = step.astype(delta_V.dtype)
  new_delta_B = (1.0 - alpha) * delta_V[ids_B] + alpha * (step - last_step_V[ids_B])
  return last_step_V.at[ids_B].set(step), delta_V.at[ids_B].set(new_delta_B)


def streaming_log_q(delta_V: Array, ids_B: Array) -> Array:
  """log q_j = −log δ_j, the per-batch sampling probability of `streaming_frequency_update`."""
  return -jnp.log(jnp.maximum(delta_V[ids_B], 1.0))


def empirical_log_q(item_counts_V: np.ndarray, batch_size: int) -> np.ndarray:
  """log q_j = log(B · n_j / Σ n): log of item j's expected count in a batch of B training pairs
  drawn uniformly from the stream (n_j: j's count among the training positives). Items never
  seen get the count of one occurrence, so the table stays finite. float32 [V]."""
  counts = np.maximum(np.asarray(item_counts_V, np.float64), 1.0)
  total = max(float(np.sum(item_counts_V)), 1.0)
  return np.log(batch_size * counts / total).astype(np.float32)
