"""CFGAN (Chae et al., CIKM 2018) on MovieLens-100K with the authors' ML-100K hyper-parameters
(their released code, parameters.py): item-based ('itemBased'), the ZP scheme (zero-reconstruction
and partial masking) with S_ZR = S_PM = 70% of the unpurchased entries and α = 0.03; G: 1 hidden
layer of 400, D: 1 hidden layer of 125 (sigmoid); Adam 1e-4 for both; batches G 32 / D 64;
reg_G 0.001, reg_D 0; per epoch 2 passes of D then 4 of G; 1,000 G passes in all (the code draws
750..1000 at random; we fix 1000 -> 250 epochs of 4 G passes).

Evaluation as the paper: every rating is a purchase, each user's items split at random 80/20
(seeded; int(0.2 n) to test), the test items ranked among all items the user did not buy in
training; P@5, P@20, N@5, N@20 (plus recall). No validation split: the reported numbers are those
of the last epoch, as the authors' code.

Reproduce:
  python -m experiments.cfgan_movielens --workdir runs/cfgan_ml100k
"""

import ml_collections

from genrec_jax import cli
from genrec_jax.train import user_vectors

# Chae et al. 2018's ML-100K CFGAN row, as transcribed by Pérez Maurera et al. (ECIR 2022
# replication, experiments/replication.py ORIGINALLY_PUBLISHED_RESULTS). Their recall is
# hits / |test items| (ours is normalised by min(K, |test items|)), so only P and N are listed.
PAPER_ML100K_CFGAN = {"precision@5": 0.444, "precision@20": 0.294, "ndcg@5": 0.476, "ndcg@20": 0.433}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "cfgan_movielens"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "ml-100k"
  c.data.protocol = "random"
  c.data.download = False
  c.data.test_prop = 0.2
  c.data.split_seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "cfgan"
  c.model.mode = "item"  # 'item' (authors' ML-100K setting) | 'user'
  c.model.scheme = "ZP"  # 'ZR' | 'PM' | 'ZP'
  c.model.g_hidden_dim = 400
  c.model.g_hidden_layers = 1
  c.model.d_hidden_dim = 125
  c.model.d_hidden_layers = 1
  c.model.zr_ratio = 0.7  # S_ZR: fraction of unpurchased entries pulled to 0
  c.model.pm_ratio = 0.7  # S_PM: fraction of unpurchased entries unmasked for D
  c.model.zr_coefficient = 0.03  # α
  c.model.reg_g = 0.001
  c.model.reg_d = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 250
  c.train.d_steps = 2
  c.train.g_steps = 4
  c.train.batch_size_d = 64
  c.train.batch_size_g = 32
  c.train.lr_g = 1e-4
  c.train.lr_d = 1e-4
  c.train.eval_batch_size = 1024
  c.train.eval_every = 10
  c.train.select_metric = "precision@5"

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (5, 20)

  c.paper = ml_collections.ConfigDict(PAPER_ML100K_CFGAN)
  return c


if __name__ == "__main__":
  cli.run(get_config, user_vectors.run)
