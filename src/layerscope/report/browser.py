"""Open a rendered report in headless Chromium and check it: used by the tests and `report --check`.

Chromium runs with no network access beyond the file itself (``--disable-background-networking``
and friends), so a report that tried to fetch anything would show up as a request here.

Example:
    >>> find_chromium() is None or find_chromium().endswith("chromium")
    True
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from layerscope.errors import LayerscopeError

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    """The system Chromium binary, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class BrowserCheck:
    """What the browser saw: console errors, page errors, requests other than the file itself,
    the sections and figures present, charts that rendered, and whether any script from data ran."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    charts: int = 0
    charts_rendered: int = 0
    images: int = 0
    images_loaded: int = 0
    injected: bool = False
    width_overflow: int = 0


def check_report(html: Path, *, screenshot: Path | None = None, width: int = 1200,
                 timeout_ms: int = 30000) -> BrowserCheck:
    """Load ``html`` in headless Chromium, wait for charts, and collect a :class:`BrowserCheck`."""
    chromium = find_chromium()
    if chromium is None:
        raise LayerscopeError("no chromium found on PATH; install it (e.g. apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    out = BrowserCheck()
    url = Path(html).resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: out.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out.page_errors.append(str(e)))
            page.on("request", lambda r: out.requests.append(r.url) if r.url != url and
                    not r.url.startswith("data:") else None)
            page.goto(url, wait_until="load", timeout=timeout_ms)
            n_charts = page.locator("div.chart[data-chart]").count()
            if n_charts:
                page.wait_for_function(
                    "n => document.querySelectorAll('div.chart[data-rendered=\"1\"]').length >= n",
                    arg=n_charts, timeout=timeout_ms)
            out.charts = n_charts
            out.charts_rendered = page.evaluate(
                "[...document.querySelectorAll('div.chart[data-rendered=\"1\"]')]"
                ".filter(el => el.querySelector('svg.main-svg')).length")
            out.sections = page.evaluate(
                "[...document.querySelectorAll('section[data-section]')].map(s => s.dataset.section)")
            out.images = page.locator("figure img").count()
            out.images_loaded = page.evaluate(
                "[...document.querySelectorAll('figure img')].filter(i => i.complete && i.naturalWidth > 0).length")
            out.injected = bool(page.evaluate("window.__layerscope_injected === true"))
            out.width_overflow = page.evaluate(
                "Math.max(0, document.documentElement.scrollWidth - window.innerWidth)")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out
