"""Headless Chromium for checking report pages: the browser tests and benchmarks/report_load.py use it.

Playwright's Python package drives the system's Chromium (Debian: `apt-get install chromium`), found as
$HOPSMITH_CHROMIUM, else `chromium`, `chromium-browser` or `google-chrome` on PATH; Playwright's own
browser downloads are never used. The flags are those that make Chromium start cleanly in a container
with no network: no sandbox (root), no GPU, and no background connections (update checks, sync,
component downloads), which otherwise fail many at a time and slow the start.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


class BrowserUnavailable(RuntimeError):
    """No Chromium binary or no Playwright package: says which, and how to install it."""


def chromium_path() -> str:
    for candidate in (os.environ.get("HOPSMITH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise BrowserUnavailable("no Chromium found; install it (Debian: apt-get install -y chromium) or set "
                             "HOPSMITH_CHROMIUM to its path")


@contextmanager
def chromium():
    """A launched headless Chromium (Playwright `Browser`), closed on exit. Playwright gives each launch a
    new, empty profile directory."""
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserUnavailable("the playwright package is missing; pip install -e '.[dev]'") from None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
