"""A real headless browser for the studio tests: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download is never used (no downloads at run time): the Python package
drives the system browser through ``executable_path``. CI installs it with
``apt-get install -y --no-install-recommends chromium``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOT_LIMIT_BYTES = 300_000

# Where committed screenshots live; tests write there only when asked (they differ per run).
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
UPDATE_SCREENSHOTS_ENV = "LIPSERVE_UPDATE_SCREENSHOTS"


def chromium_path() -> str:
    """The system Chromium; a missing browser is a set-up error, not a reason to skip."""
    for candidate in (os.environ.get("LIPSERVE_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium")


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # --no-sandbox: CI runs as root, where Chromium refuses its sandbox. Autoplay is allowed
            # so that the live preview starts without a real user's gesture.
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            yield b
        finally:
            b.close()


class PageLog:
    """Console errors and failed requests of a page, to explain a failing assertion."""

    def __init__(self, page: Page):
        self.lines: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.lines.append(f"pageerror: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            self.lines.append(f"console.{msg.type}: {msg.text}")

    def __str__(self) -> str:
        return "\n".join(self.lines) or "(no console errors)"


def screenshot(page: Page, name: str, fallback_dir: Path, full_page: bool = True) -> Path:
    """A PNG of the page, to docs/screenshots/ when LIPSERVE_UPDATE_SCREENSHOTS=1, else ``fallback_dir``.
    Fails if it is over the size committed screenshots may have."""
    directory = SCREENSHOT_DIR if os.environ.get(UPDATE_SCREENSHOTS_ENV) == "1" else fallback_dir
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    size = path.stat().st_size
    assert size < SCREENSHOT_LIMIT_BYTES, f"{path.name} is {size} bytes (limit {SCREENSHOT_LIMIT_BYTES})"
    return path


def unlabelled_controls(page: Page) -> list[str]:
    """Visible form controls without an accessible label (a <label>, aria-label or aria-labelledby)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((el) => el.offsetParent !== null)
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                            && !el.getAttribute('aria-labelledby')
                            && !(el.tagName === 'BUTTON' && el.textContent.trim()))
            .map((el) => el.outerHTML.slice(0, 80))"""
    )


def low_contrast_texts(page: Page, minimum: float = 4.5) -> list[str]:
    """Visible text whose WCAG contrast ratio against its (nearest opaque) background is under
    ``minimum``, as 'ratio: text'. Disabled controls and video overlays are not text to read."""
    return page.evaluate(
        """(minimum) => {
          const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
          const lum = ([r, g, b]) => {
            const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
          };
          const background = (el) => {
            for (; el; el = el.parentElement) {
              const c = rgb(getComputedStyle(el).backgroundColor);
              if (c.length === 3 || (c.length === 4 && c[3] > 0.9)) return c.slice(0, 3);
            }
            return [255, 255, 255];
          };
          const out = [];
          const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
          for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            const el = node.parentElement;
            if (!node.textContent.trim() || !el || el.offsetParent === null || el.closest('[disabled], video')) continue;
            const style = getComputedStyle(el);
            if (style.visibility === 'hidden' || el.closest('.visually-hidden')) continue;
            const [a, b] = [lum(rgb(style.color).slice(0, 3)), lum(background(el))];
            const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
            if (ratio < minimum) out.push(`${ratio.toFixed(2)}: ${node.textContent.trim().slice(0, 40)}`);
          }
          return out;
        }""",
        minimum,
    )
