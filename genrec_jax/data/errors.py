"""Errors raised by the dataset loaders.

Each error carries one message that says what is wrong and where, so that a
user who sees it can fix the input without reading the loader's code.
"""

from __future__ import annotations

import os


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not on disk where the loader looked (and download was off).

  The message names exactly which files to put where.
  """


class DataFormatError(ValueError):
  """A data file exists but its content is not in the expected format.

  Attributes:
    path: the file (or ``zip:member``) that is wrong.
    line: the 1-based line number of the first bad line, or None when the
      problem is not tied to a line (e.g. a corrupt zip archive).
    what: what is wrong, in words.
    got: the offending line's text (None when there is no such line).
  """

  def __init__(
      self,
      path: str | os.PathLike[str],
      line: int | None,
      what: str,
      got: str | None = None,
  ):
    self.path = os.fspath(path)
    self.line = line
    self.what = what
    self.got = got
    where = self.path if line is None else f"{self.path}:{line}"
    message = f"{where}: {what}"
    if got is not None:
      message += f"; got {got[:80]!r}"
    super().__init__(message)

  def __reduce__(self):
    # Keeps the error picklable (e.g. across multiprocessing workers).
    return (type(self), (self.path, self.line, self.what, self.got))


class DownloadError(RuntimeError):
  """A dataset could not be downloaded, or the download failed verification."""
