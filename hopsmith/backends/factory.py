"""Build a backend from a spec string, so configs and command lines name engines uniformly.

    make_backend("embedded")                                   # the bundled local model (HFBackend)
    make_backend("HuggingFaceTB/SmolLM2-135M-Instruct")        # a hub id or a model directory
    make_backend("hf:/models/qwen3-0.6b", batch_size=8)        # the same, explicitly
    make_backend("openai:gpt-4o-mini")                         # OpenAI, key from $OPENAI_API_KEY
    make_backend("openai:Qwen/Qwen3-8B@http://localhost:8000/v1")   # any OpenAI-compatible server
    make_backend("gemini:gemini-2.5-flash")                    # Gemini, key from $GEMINI_API_KEY

Keyword arguments go to the backend's constructor. Engines are imported only when asked for, so a
remote-only run never loads torch and a local run never needs the remote clients.
"""
from __future__ import annotations

from pathlib import Path

from . import Backend

SPEC_FORMS = (
    "embedded",
    "<model dir or hub id>",
    "hf:<model dir or hub id>",
    "openai:<model>",
    "openai:<model>@<base_url>",
    "gemini:<model>",
)


def _spec_error(spec: str, why: str) -> ValueError:
    return ValueError(f"backend spec {spec!r}: {why}; expected one of: {', '.join(SPEC_FORMS)}")


def split_openai_spec(rest: str) -> tuple[str, str | None]:
    """`model@base_url` -> (model, base_url); the URL is whatever follows the last "@http"."""
    at = max(rest.rfind("@http://"), rest.rfind("@https://"))
    if at < 0:
        return rest, None
    return rest[:at], rest[at + 1 :]


def is_remote(spec: str) -> bool:
    """Whether a spec names a hosted model (`openai:...`, `gemini:...`) rather than local weights."""
    spec = spec.strip()
    return spec.lower().startswith(("openai:", "gemini:")) and not Path(spec).exists()


def make_backend(spec: str, **kw) -> Backend:
    spec = spec.strip()
    if not spec:
        raise _spec_error(spec, "empty")
    prefix, sep, rest = spec.partition(":")
    # A path that exists wins over prefix parsing (a directory may contain ":").
    if not sep or Path(spec).exists():
        from .hf import HFBackend

        return HFBackend(spec, **kw)
    prefix = prefix.lower()
    if prefix == "hf":
        from .hf import HFBackend

        if not rest:
            raise _spec_error(spec, "no model after 'hf:'")
        return HFBackend(rest, **kw)
    if prefix == "openai":
        from .openai_compat import OpenAICompatBackend

        model, base_url = split_openai_spec(rest)
        if not model:
            raise _spec_error(spec, "no model after 'openai:'")
        if base_url is not None:
            kw.setdefault("base_url", base_url)
        return OpenAICompatBackend(model, **kw)
    if prefix == "gemini":
        from .gemini import GeminiBackend

        return GeminiBackend(rest, **kw) if rest else GeminiBackend(**kw)
    raise _spec_error(spec, f"unknown prefix {prefix!r}")
