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
