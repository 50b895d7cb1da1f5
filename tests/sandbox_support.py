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


@pytest.fixture(scope="module")
def wikicode_box():
    """A (sandbox, router) pair for the wikicode environment (`wikicode.make(..., sandbox=...)`), per module."""
    from hopsmith.envs import wikicode
    from hopsmith.tools.sandbox import SandboxConfig

    router = wikicode._Router()
    sandbox = local_sandbox(router.primitives(), SandboxConfig(wall_seconds=10))
    yield sandbox, router
    sandbox.close()
