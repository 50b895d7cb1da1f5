"""Builds a LocalSandbox for the sandbox tests, or skips them where bubblewrap cannot run.

CI installs bubblewrap (.ci/run) and sets HOPSMITH_REQUIRE_SANDBOX=1, so there a missing or broken
bubblewrap fails the tests instead of skipping them."""
from __future__ import annotations

import os

import pytest

from hopsmith.tools.sandbox import LocalSandbox, SandboxUnavailable


def local_sandbox(primitives, config, **kwargs) -> LocalSandbox:
    try:
        return LocalSandbox(primitives, config, **kwargs)
    except SandboxUnavailable as exc:
        if os.environ.get("HOPSMITH_REQUIRE_SANDBOX"):
            raise
        pytest.skip(f"no bubblewrap sandbox here: {exc}")
