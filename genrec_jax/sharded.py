"""Losses, full-ranking ranks and top-k over an item table whose rows are split over 'model'.

Mesh ('data', 'model') (train/mesh.py): users and ids are split over 'data' and replicated over
'model'; the L2-normalised table [V, D] is split into M = |model| contiguous blocks of V/M rows,
device m holding rows [m·V/M, (m+1)·V/M). Every function runs under `jax.shard_map` and never
moves table rows: each device scores its own rows and only per-user numbers cross devices.

  row lookup     x[i] = Σ_m [i ∈ block m] · T_m[i − m·V/M]              psum over 'model'
  logits         s[b, k] = Σ_m [ids[b,k] ∈ block m] · ⟨u_b, T_m[·]⟩      psum of B·K floats
  full softmax   lse_b = c + log Σ_m Σ_{v ∈ m} exp(s_bv − c),  c = max_m max_{v ∈ m} s_bv
                 (pmax of B floats, psum of B floats)
  rank           1 + Σ_m #{v ∈ block m : candidate, not in history, s_bv > s_b,target}
                 (psum of B target scores, psum of B counts)
  top-k          local top-k per block, all_gather of M·k (score, id) pairs, final top-k

The gradient of a row-local op is row-local too (shard_map differentiates the collectives: the
cotangent of a psum'd output is handed to every block; the table gradient of data-parallel
replicas is psum'd over 'data'). The same functions with mesh=None are the unsharded references.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from genrec_jax import losses, metrics

Array = jax.Array
DATA, MODEL = "data", "model"
ROWS = P(MODEL, None)  # the table: rows over 'model'
MASK = P(MODEL)  # per-row masks (candidates)
BATCH = P(DATA)  # users, ids: rows over 'data'


def data_parallel_loss(
    loss_fn: Callable[..., Array], mesh: Mesh | None, targets_BxN: Array, batch_args: tuple,
    replicated_args: tuple,
) -> Array:
  """loss_fn(targets, *batch_args, *replicated_args), a mean over the supervised positions
  (targets != 0), evaluated on each 'data' shard of the batch by itself and combined as
  Σ_s w_s · mean_s / Σ_s w_s (w_s: the shard's supervised positions; a psum of two scalars).

  The value is the whole batch's mean; what changes is where the collectives go. Under plain jit,
  XLA's partitioner all-reduces the table gradient of a loop over token chunks
  (catalog_scores.py) once per chunk, and every all-reduce makes both devices wait; here each
  device runs its loop alone, and the replicated inputs' gradients are psum'd once (shard_map's
  transpose). batch_args are split over 'data' on their first axis like targets; mesh None or
  one 'data' device: loss_fn on the whole batch.
  """
  if mesh is None or mesh.shape[DATA] == 1:
    return loss_fn(targets_BxN, *batch_args, *replicated_args)

  n_batch = len(batch_args)

  def local(targets_l, *args):
    # Replicated inputs become per-device values ('varying' over 'data'): the gradient of that
    # cast is the one psum over 'data', and custom VJPs inside loss_fn see matching types.
    args = args[:n_batch] + tuple(jax.lax.pcast(a, (DATA,), to="varying") for a in args[n_batch:])
    w_l = jnp.sum(targets_l != 0).astype(jnp.float32)
    return jax.lax.psum(loss_fn(targets_l, *args) * w_l, DATA), jax.lax.psum(w_l, DATA)

  specs = (BATCH,) * (1 + len(batch_args)) + (P(),) * len(replicated_args)
  total, w = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P(), P()))(
      targets_BxN, *batch_args, *replicated_args
  )
  return total / jnp.maximum(w, 1.0)


def _block(table_local_VxD: Array) -> tuple[Array, int]:
  """(first global row of this device's block, rows per block)."""
  rows = table_local_VxD.shape[0]
  return jax.lax.axis_index(MODEL) * rows, rows


def _local_ids(ids: Array, first: Array, rows: int) -> tuple[Array, Array]:
  """(ids − first clipped into the block, [id ∈ block])."""
  local = ids - first
  inside = (local >= 0) & (local < rows)
  return jnp.where(inside, local, 0), inside


def _local_logits(user_BxNxD: Array, table_local_VxD: Array, ids_BxNxK: Array) -> Array:
  """⟨u, T[id]⟩ for the ids in this block, 0 elsewhere; the psum over 'model' completes it."""
  first, rows = _block(table_local_VxD)
  local_BxNxK, inside_BxNxK = _local_ids(ids_BxNxK, first, rows)
  dots_BxNxK = jnp.einsum("bnd,bnkd->bnk", user_BxNxD, table_local_VxD[local_BxNxK],
                          preferred_element_type=jnp.float32)
  return jnp.where(inside_BxNxK, dots_BxNxK, 0.0)


def take_rows(table_VxD: Array, ids: Array, mesh: Mesh | None) -> Array:
  """table[ids] with the table's rows split over 'model' (masked local lookup, psum)."""
  if mesh is None:
    return table_VxD[ids]

  def local(table_l, ids_l):
    first, rows = _block(table_l)
    idx, inside = _local_ids(ids_l, first, rows)
    return jax.lax.psum(jnp.where(inside[..., None], table_l[idx], 0.0), MODEL)

  spec = P(DATA)
  return jax.shard_map(local, mesh=mesh, in_specs=(ROWS, spec), out_specs=spec)(table_VxD, ids)


def gathered_logits(user_BxNxD: Array, table_VxD: Array, ids_BxNxK: Array, mesh: Mesh | None) -> Array:
  """logits[b, n, k] = ⟨user[b, n], table[ids[b, n, k]]⟩, [B, N, K]."""
  if mesh is None:
    return jnp.einsum("bnd,bnkd->bnk", user_BxNxD, table_VxD[ids_BxNxK], preferred_element_type=jnp.float32)

  def local(user_l, table_l, ids_l):
    return jax.lax.psum(_local_logits(user_l, table_l, ids_l), MODEL)

  return jax.shard_map(local, mesh=mesh, in_specs=(BATCH, ROWS, BATCH), out_specs=BATCH)(
      user_BxNxD, table_VxD, ids_BxNxK
  )


def sampled_softmax_loss(
    user_BxNxD: Array,
    targets_BxN: Array,
    table_VxD: Array,
    catalog_C: Array,
    neg_offsets_BxNxK: Array,
    temperature: float,
    mesh: Mesh | None,
) -> Array:
  """`losses.sampled_softmax_loss` (same negatives, masking and mean) on a row-sharded table:
  the positive and the K negatives of each position are scored in one psum of B·N·(1+K) floats."""
  neg_ids_BxNxK = catalog_C[neg_offsets_BxNxK]
  ids_BxNx1K = jnp.concatenate([targets_BxN[..., None], neg_ids_BxNxK], axis=-1)
  logits_BxNx1K = gathered_logits(user_BxNxD, table_VxD, ids_BxNx1K, mesh) / temperature
  return losses.sampled_softmax_from_logits(
      logits_BxNx1K[..., 0], logits_BxNx1K[..., 1:], neg_ids_BxNxK, targets_BxN
  )


def full_softmax_loss(
    user_BxNxD: Array, targets_BxN: Array, table_VxD: Array, candidate_V: Array, temperature: float,
    mesh: Mesh | None,
) -> Array:
  """`losses.full_softmax_loss` (softmax over the catalog = rows with candidate_V) on a row-sharded
  table: per-block max and sum of exps, combined by a pmax and a psum of B·N floats each."""
  weights_BxN = (targets_BxN != 0).astype(jnp.float32)

  def lse(user_l, table_l, cand_l, reduce_max, reduce_sum):
    logits_BxNxV = jnp.einsum("bnd,vd->bnv", user_l, table_l, preferred_element_type=jnp.float32) / temperature
    logits_BxNxV = jnp.where(cand_l, logits_BxNxV, -jnp.inf)
    # c = max over all candidates (no gradient: it cancels in c + log Σ exp(s − c))
    c_BxN = reduce_max(jax.lax.stop_gradient(jnp.max(logits_BxNxV, axis=-1)))
    return c_BxN + jnp.log(reduce_sum(jnp.sum(jnp.exp(logits_BxNxV - c_BxN[..., None]), axis=-1)))

  if mesh is None:
    lse_BxN = lse(user_BxNxD, table_VxD, candidate_V, lambda x: x, lambda x: x)
  else:
    local = functools.partial(lse, reduce_max=lambda x: jax.lax.pmax(x, MODEL),
                              reduce_sum=lambda x: jax.lax.psum(x, MODEL))
    lse_BxN = jax.shard_map(local, mesh=mesh, in_specs=(BATCH, ROWS, MASK), out_specs=BATCH)(
        user_BxNxD, table_VxD, candidate_V
    )
  pos_BxN = gathered_logits(user_BxNxD, table_VxD, targets_BxN[..., None], mesh)[..., 0] / temperature
  return losses._weighted_mean(lse_BxN - pos_BxN, weights_BxN)  # pylint: disable=protected-access


def _local_valid_scores(user_BxD, table_l, cand_l, history_BxN, first, rows):
  """Scores of this block's rows [B, V/M] and which are rankable (candidate, not in history)."""
  scores_BxV = user_BxD @ table_l.T
  idx_BxN, inside_BxN = _local_ids(history_BxN, first, rows)
  b = jnp.arange(user_BxD.shape[0])[:, None]
  in_history_BxV = jnp.zeros(scores_BxV.shape, bool).at[b, jnp.where(inside_BxN, idx_BxN, rows)].set(
      True, mode="drop"
  )
  return scores_BxV, cand_l[None, :] & ~in_history_BxV


def target_ranks(
    user_BxD: Array, targets_B: Array, history_BxN: Array, table_VxD: Array, candidate_V: Array,
    mesh: Mesh | None,
) -> Array:
  """`metrics.target_ranks` (1 + #candidates not in history scored above the target) on a
  row-sharded table: the target's score (from its block's score matrix) and the per-block counts
  are psum'd, B floats and B ints."""
  if mesh is None:
    return metrics.target_ranks(user_BxD, targets_B, history_BxN, table_VxD, candidate_V)

  def local(user_l, targets_l, history_l, table_l, cand_l):
    first, rows = _block(table_l)
    scores_BxV, valid_BxV = _local_valid_scores(user_l, table_l, cand_l, history_l, first, rows)
    t_B, t_inside_B = _local_ids(targets_l, first, rows)
    own_B = jnp.take_along_axis(scores_BxV, t_B[:, None], axis=1)[:, 0]
    target_B = jax.lax.psum(jnp.where(t_inside_B, own_B, 0.0), MODEL)
    higher_B = jnp.sum((scores_BxV > target_B[:, None]) & valid_BxV, axis=1)
    return (jax.lax.psum(higher_B, MODEL) + 1).astype(jnp.int32)

  return jax.shard_map(local, mesh=mesh, in_specs=(BATCH, BATCH, BATCH, ROWS, MASK), out_specs=BATCH)(
      user_BxD, targets_B, history_BxN, table_VxD, candidate_V
  )


def top_k(
    user_BxD: Array, table_VxD: Array, candidate_V: Array, history_BxN: Array | None, k: int,
    mesh: Mesh | None,
) -> tuple[Array, Array]:
  """The k best-scoring candidate items not in the history: (scores [B, k], ids [B, k]).

  Sharded: each block's top-k' (k' = min(k, V/M)), all_gather of the M·k' (score, id) pairs over
  'model', then the top-k of those; B·M·k'·8 bytes cross devices, not the table."""
  if history_BxN is None:
    history_BxN = jnp.zeros((user_BxD.shape[0], 1), jnp.int32)  # row 0 (padding) is never a candidate

  def local(user_l, history_l, table_l, cand_l, gather):
    first, rows = _block(table_l) if gather else (0, table_l.shape[0])
    scores_BxV, valid_BxV = _local_valid_scores(user_l, table_l, cand_l, history_l, first, rows)
    # a block holds every one of the global top-k it owns among its own top-min(k, rows)
    scores_Bxk, idx_Bxk = jax.lax.top_k(jnp.where(valid_BxV, scores_BxV, -jnp.inf), min(k, rows))
    ids_Bxk = (idx_Bxk + first).astype(jnp.int32)
    if not gather:
      return scores_Bxk, ids_Bxk
    # [M, B, k] -> [B, M·k]: every block's candidates, then the global top-k of them
    all_scores = jnp.moveaxis(jax.lax.all_gather(scores_Bxk, MODEL), 0, 1).reshape(scores_Bxk.shape[0], -1)
    all_ids = jnp.moveaxis(jax.lax.all_gather(ids_Bxk, MODEL), 0, 1).reshape(ids_Bxk.shape[0], -1)
    best_Bxk, pos_Bxk = jax.lax.top_k(all_scores, k)
    return best_Bxk, jnp.take_along_axis(all_ids, pos_Bxk, axis=1)

  if mesh is None:
    return local(user_BxD, history_BxN, table_VxD, candidate_V, gather=False)
  if k > table_VxD.shape[0]:
    raise ValueError(f"top_k: k={k} exceeds the {table_VxD.shape[0]} rows of the table")
  # check_vma=False: all_gather's result is typed as varying over 'model' although every block
  # then holds the same M·k pairs and computes the same final top-k (replicated, as out_specs say).
  return jax.shard_map(
      functools.partial(local, gather=True), mesh=mesh,
      in_specs=(BATCH, BATCH, ROWS, MASK), out_specs=(BATCH, BATCH), check_vma=False,
  )(user_BxD, history_BxN, table_VxD, candidate_V)
