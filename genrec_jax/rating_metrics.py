"""Pointwise metrics of the rating and 'liked' heads (NumPy, over all evaluated events at once).

  RMSE    = sqrt(mean((r̂ − r)²))          MAE = mean(|r̂ − r|)
  logloss = −mean(y log p + (1 − y) log(1 − p)),  p clipped to [ε, 1 − ε]
  AUC     = P(score of a random positive > score of a random negative), ties count ½
          = (Σ ranks of positives − n⁺(n⁺ + 1)/2) / (n⁺ n⁻)   (Mann–Whitney, average ranks on ties)
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
  d = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
  return float(np.sqrt(np.mean(d * d)))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
  return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(true, np.float64))))


def logloss(prob: np.ndarray, label: np.ndarray) -> float:
  p = np.clip(np.asarray(prob, np.float64), EPS, 1.0 - EPS)
  y = np.asarray(label, np.float64)
  return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of x in ascending order; tied values share the mean of their ranks."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  xs = x[order]
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each run of ties
  ends = np.r_[starts[1:], len(xs)]
  mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.repeat(mean_rank, ends - starts)
  return ranks


def auc(score: np.ndarray, label: np.ndarray) -> float:
  """ROC AUC (module doc); NaN when only one class is present."""
  y = np.asarray(label).astype(bool)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  r = average_ranks(score)
  return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
