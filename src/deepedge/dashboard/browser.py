"""How the dashboard's tests and benchmark start a browser: Debian's Chromium, headless.

Playwright's own Chromium download fails on our machines, so Playwright drives the
system's (``executable_path``). Without the background-networking flags Chromium keeps
dialling out on a closed network, many connections at a time.
"""

from __future__ import annotations

import shutil
from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "launch_chromium"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser from a started ``sync_playwright()``."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True
    )
