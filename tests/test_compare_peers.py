"""benchmarks/peers/ml1m.py (the peers' batches), recbole_common.py (RecBole's atomic files) and
benchmarks/compare_peers.py (the table)."""

from __future__ import annotations

import sys

import numpy as np

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "peers"))
import ml1m  # noqa: E402  (numpy-only sibling module of the peer scripts)
import recbole_common  # noqa: E402  (imports no RecBole itself)

from benchmarks import compare_peers  # noqa: E402


def _ratings() -> np.ndarray:
  # (user, item, rating, ts); user 2's rows are out of time order and have a tie at ts 50.
  return np.array([[2, 7, 5, 90], [1, 3, 4, 10], [2, 8, 3, 50], [1, 4, 4, 20], [2, 9, 1, 50],
                   [1, 5, 4, 30], [2, 6, 2, 10], [1, 6, 4, 40], [1, 2, 2, 60], [2, 3, 3, 95]])


def test_user_sequences_time_order_ties_in_file_order():
  items, times = ml1m.user_sequences(_ratings())
  np.testing.assert_array_equal(items[0], [3, 4, 5, 6, 2])
  np.testing.assert_array_equal(items[1], [6, 8, 9, 7, 3])
  np.testing.assert_array_equal(times[1], [10, 50, 50, 90, 95])


def test_train_examples_left_padded_leave_two_out():
  items, times = ml1m.user_sequences(_ratings())
  tokens_UxN, tdiff_UxN, targets_U = ml1m.train_examples(items, times, max_seq_len=3)
  # user 1 trains on [3, 4, 5] (last two held out): input [0, 3, 4] -> target 5 at t=30.
  np.testing.assert_array_equal(tokens_UxN[0], [0, 3, 4])
  np.testing.assert_array_equal(tdiff_UxN[0], [0, 20, 10])
  np.testing.assert_array_equal(targets_U, [5, 9])
  np.testing.assert_array_equal(tokens_UxN[1], [0, 6, 8])
  np.testing.assert_array_equal(tdiff_UxN[1], [0, 40, 0])


def test_batch_rows_full_batches_new_permutation_per_epoch():
  rows = ml1m.batch_rows(num_users=10, batch_size=4, seed=0, num_batches=5)
  assert [len(r) for r in rows] == [4] * 5
  assert len(set(np.concatenate(rows[:2]))) == 8  # within an epoch no user repeats


def test_table_ratios_and_epochs():
  ours = {"step_ms_median": 100.0, "roofline_fraction": 0.25, "matmul_peak_gflops": 200.0}
  peer = {"step_ms_median": 1000.0, "flops_per_step": 40e9, "steps_per_epoch": 480}
  results = [{"name": "w", "ours": [{"label": "x", "result": ours}], "peer": peer},
             {"name": "v", "ours": [{"label": "y", "result": {"error": "boom"}}], "peer": None}]
  lines = compare_peers.table(results).splitlines()
  cells = [c.strip() for c in lines[2].split("|")[1:-1]]
  # peer roofline = 40 GFLOP / 200 GFLOP/s / 1 s = 20%; ours epoch = 48 steps x 0.1 s; peer 480 x 1 s.
  assert cells == ["w", "x", "100", "25.0%", "1000", "20.0%", "10.0", "4.8", "480", "100"]
  assert "error" in lines[3] and "n/a" in lines[3]


def test_recbole_amazon_inter_keeps_each_users_line_order(data_dir, tmp_path):
  """The real Beauty file as RecBole's .inter: every interaction once, and per user the items in
  the line's order under the position timestamps RecBole sorts by."""
  root = recbole_common.prepare("amazon-beauty", str(data_dir), str(tmp_path))
  rows = np.loadtxt(tmp_path / "amazon-beauty" / "amazon-beauty.inter", dtype=np.int64, skiprows=1)
  lines = (data_dir / "amazon-beauty" / "Beauty.txt").read_text().splitlines()
  assert root == str(tmp_path) and len(rows) == sum(len(line.split()) - 1 for line in lines)
  by_user = {}
  for user, item, t in rows:
    by_user.setdefault(int(user), []).append((int(t), int(item)))
  for line in lines[:: max(1, len(lines) // 500)]:
    user, *items = map(int, line.split())
    assert [item for _, item in sorted(by_user[user])] == items


def test_rounds_alternate_sides_and_ratio_is_median_of_paired_rounds(monkeypatch):
  """measure(): the side going first alternates; the ratio pairs each round's runs; the reported
  run per side is the median one."""
  calls = []
  peer_ms, ours_ms = iter([1000.0, 3000.0, 1100.0]), iter([100.0, 400.0, 200.0])

  def fake_peer(p, python, data_dir, steps):
    calls.append("peer")
    return {"step_ms_median": next(peer_ms), "flops_per_step": 1e9}

  def fake_ours(o, data_dir, steps):
    calls.append("ours")
    return {"step_ms_median": next(ours_ms), "roofline_fraction": 0.1, "matmul_peak_gflops": 100.0}

  monkeypatch.setattr(compare_peers, "run_peer", fake_peer)
  monkeypatch.setattr(compare_peers, "run_ours", fake_ours)
  w = compare_peers.Workload("w", (compare_peers.Ours("x"),), compare_peers.Peer("p.py"), "")
  r = compare_peers.measure(w, "d", 5, 3, "python")
  assert calls == ["peer", "ours", "ours", "peer", "peer", "ours"]
  o = r["ours"][0]["result"]
  assert o["ratio_rounds"] == [10.0, 7.5, 5.5]
  assert (o["step_ms_median"], r["peer"]["step_ms_median"]) == (200.0, 1100.0)
  assert o["rounds_ms"] == [100.0, 400.0, 200.0]
  cells = [c.strip() for c in compare_peers.table([r]).splitlines()[2].split("|")[1:-1]]
  assert cells[6] == "7.5"  # the median paired ratio, not 1100 / 200 = 5.5
