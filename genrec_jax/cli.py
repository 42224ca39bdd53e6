"""Command line shared by all experiments.

  python -m experiments.NAME --workdir DIR [--data_dir DIR] [--resume] [--eval_only]
                             [--config.train.num_epochs=3 ...]

--data_dir defaults to $GENREC_DATA_DIR, else data/. Every config field can be overridden with
--config.<path>=<value>.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Callable

import ml_collections
from absl import app, flags
from ml_collections import config_flags


def default_data_dir() -> str:
  return os.environ.get("GENREC_DATA_DIR", "data")


def run(get_config: Callable[[], ml_collections.ConfigDict], main: Callable) -> None:
  """Defines the shared flags and runs `main(config, workdir, data_dir, resume, eval_only)`."""
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, results.json.", required=True)
  flags.DEFINE_string("data_dir", default_data_dir(), "Dataset root ($GENREC_DATA_DIR, else data/).")
  flags.DEFINE_bool("resume", False, "Continue the interrupted run in --workdir.")
  flags.DEFINE_bool("eval_only", False, "Reload the best checkpoint in --workdir and report metrics.")
  config_flags.DEFINE_config_dict("config", get_config())
  f = flags.FLAGS

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    main(f.config, f.workdir, f.data_dir, f.resume, f.eval_only)

  app.run(_main, argv=sys.argv)


def print_json(obj) -> None:
  print(json.dumps(obj, indent=2))


def workdir_path(workdir: str) -> pathlib.Path:
  return pathlib.Path(workdir).absolute()
