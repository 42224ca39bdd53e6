"""Example (docs/extending.md): a new dataset in a short experiment — any tab-separated events file.

Registers the dataset 'events': one event per line, `user <TAB> item <TAB> rating <TAB> unix time`
(MovieLens-100K's u.data has this layout), then trains the HSTU experiment on it as on any
built-in dataset: leave-one-out, full ranking, results.json.

  python -m experiments.example_events_dataset --workdir runs/events --config.data.events_file=ml-100k/u.data
"""

import os

from genrec_jax import cli, config, recipes
from genrec_jax.data import movielens, registry, sequences


def load_events(cfg, data_dir):
  """DATA_DIR/data.events_file -> each user's items in time order (ties keep the file's order).
  A malformed line stops the run with an error naming the file, the line number and its text."""
  events = movielens.read_ratings_file(os.path.join(data_dir, cfg.data.events_file), "udata")
  return sequences.group_by_user(events.user, events.item, events.timestamp)


registry.register_dataset("events", load_events)


def get_config():
  c = config.sequential_config()  # HSTU, N = 200, sampled softmax, leave-one-out
  c.experiment = "example_events_dataset"
  c.data.dataset = "events"
  c.data.events_file = "ml-100k/u.data"
  return c


if __name__ == "__main__":
  cli.run(get_config, recipes.run_sequential)
