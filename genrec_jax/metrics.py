"""Full-ranking metrics with one held-out item per user.

rank = 1 + #{candidate items scored strictly higher than the target}, where candidates are the
catalog minus the items in the user's (model-visible) history, as the reference's eval filters
`past_ids`. With one relevant item:
  HR@k   = [rank <= k]
  NDCG@k = [rank <= k] / log2(rank + 1)
  MRR    = 1 / rank
Accumulated in a streaming fashion over evaluation batches.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

HR_KS = (1, 5, 10, 50, 200)  # @5 for the Amazon (TIGER/S3-Rec) tables, the rest for MovieLens
NDCG_KS = (5, 10, 50, 200)


def target_ranks(
    user_BxD: Array, targets_B: Array, history_BxN: Array, table_VxD: Array, candidate_V: Array
) -> Array:
  """1-based rank of each target among candidates not in the history. [B] int32."""
  scores_BxV = user_BxD @ table_VxD.T
  b = jnp.arange(user_BxD.shape[0])[:, None]
  in_history_BxV = jnp.zeros(scores_BxV.shape, bool).at[b, history_BxN].set(True)
  valid_BxV = candidate_V[None, :] & ~in_history_BxV
  target_score_B = jnp.take_along_axis(scores_BxV, targets_B[:, None], axis=1)
  higher_B = jnp.sum((scores_BxV > target_score_B) & valid_BxV, axis=1)
  return (higher_B + 1).astype(jnp.int32)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
  """Mean HR@k, NDCG@k and MRR for an array of 1-based ranks."""
  ranks = np.asarray(ranks, np.float64)
  out: dict[str, float] = {}
  for k in HR_KS:
    out[f"hr@{k}"] = float(np.mean(ranks <= k)) if len(ranks) else 0.0
  for k in NDCG_KS:
    gain = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    out[f"ndcg@{k}"] = float(np.mean(gain)) if len(ranks) else 0.0
  out["mrr"] = float(np.mean(1.0 / ranks)) if len(ranks) else 0.0
  return out


@dataclasses.dataclass
class RankingAccumulator:
  """Streaming sums of per-user metric values; `result()` gives the means."""

  sums: dict[str, float] = dataclasses.field(default_factory=dict)
  count: int = 0

  def add(self, ranks: np.ndarray) -> None:
    ranks = np.asarray(ranks)
    if not len(ranks):
      return
    for name, mean in metrics_from_ranks(ranks).items():
      self.sums[name] = self.sums.get(name, 0.0) + mean * len(ranks)
    self.count += len(ranks)

  def result(self) -> dict[str, float]:
    out = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
    out["num_users"] = self.count
    return out


# ---- Metrics from dense score matrices (user-vector models: Mult-VAE, CFGAN, MF) -------------
#
# Candidates are all columns minus the user's excluded (history / fold-in) items.
# One held-out item per user (leave-one-out): rank it, then `metrics_from_ranks`.
# A held-out set T_u per user (Liang et al. 2018; Chae et al. 2018), top-K list π of the candidates:
#   Recall@K    = |π[:K] ∩ T_u| / min(K, |T_u|)        (Liang et al.'s normalised recall)
#   Precision@K = |π[:K] ∩ T_u| / K
#   NDCG@K      = Σ_{k<K} [π_k ∈ T_u] / log2(k + 2)  /  Σ_{k < min(K, |T_u|)} 1 / log2(k + 2)


def ranks_from_scores(scores_BxI: Array, target_B: Array, exclude_BxI: Array) -> Array:
  """1-based rank of each user's target column among the non-excluded columns. [B] int32.

  rank = 1 + #{j not excluded: score_j > score_target} (ties count in the target's favour, as
  `target_ranks`)."""
  target_score_B = jnp.take_along_axis(scores_BxI, target_B[:, None], axis=1)
  higher_B = jnp.sum((scores_BxI > target_score_B) & ~exclude_BxI, axis=1)
  return (higher_B + 1).astype(jnp.int32)


def topk_metrics(
    scores_BxI: Array, target_BxI: Array, exclude_BxI: Array, ks: tuple[int, ...]
) -> dict[str, Array]:
  """Per-user recall@k, precision@k and ndcg@k (equations above) for each k in `ks`. [B] each.

  target_BxI / exclude_BxI are boolean; rows without targets give 0 (callers drop them)."""
  kmax = max(ks)
  masked_BxI = jnp.where(exclude_BxI, -jnp.inf, scores_BxI)
  _, top_BxK = jax.lax.top_k(masked_BxI, kmax)
  hit_BxK = jnp.take_along_axis(target_BxI, top_BxK, axis=1).astype(jnp.float32)
  n_true_B = jnp.sum(target_BxI, axis=1).astype(jnp.float32)
  disc_K = 1.0 / jnp.log2(jnp.arange(kmax, dtype=jnp.float32) + 2.0)
  cum_disc_K = jnp.cumsum(disc_K)
  out = {}
  for k in ks:
    hits_B = jnp.sum(hit_BxK[:, :k], axis=1)
    n_ideal_B = jnp.minimum(n_true_B, k)
    dcg_B = hit_BxK[:, :k] @ disc_K[:k]
    idcg_B = jnp.where(n_ideal_B > 0, cum_disc_K[jnp.maximum(n_ideal_B.astype(jnp.int32) - 1, 0)], 1.0)
    out[f"recall@{k}"] = hits_B / jnp.maximum(n_ideal_B, 1.0)
    out[f"precision@{k}"] = hits_B / k
    out[f"ndcg@{k}"] = dcg_B / idcg_B
  return out


@dataclasses.dataclass
class MeanAccumulator:
  """Streaming means of per-user metric arrays; `result()` gives {name: mean, 'num_users': n}."""

  sums: dict[str, float] = dataclasses.field(default_factory=dict)
  count: int = 0

  def add(self, per_user: dict[str, np.ndarray]) -> None:
    n = None
    for name, v in per_user.items():
      v = np.asarray(v, np.float64)
      n = len(v)
      self.sums[name] = self.sums.get(name, 0.0) + float(np.sum(v))
    self.count += n or 0

  def result(self) -> dict[str, float]:
    out = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
    out["num_users"] = self.count
    return out
