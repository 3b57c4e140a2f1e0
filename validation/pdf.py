"""HTML to PDF with the system Chromium: the report's figures are the same plotly figures as on
screen, printed as vectors, with a footer (document id, page x of y) on every page.

Chromium is driven through Playwright's Page.pdf (Chrome DevTools ``Page.printToPDF``), which is
what gives footer templates with page numbers; Playwright is pointed at the system browser and
never downloads one. The browser runs with networking disabled: a report is self-contained, so
anything it tried to fetch would be a bug, and this machine class has no internet anyway.
"""

from __future__ import annotations

import os
import shutil
from html import escape
from pathlib import Path
from typing import Final

from wbcv.base.errors import WbcvError

#: Where Debian (and most distributions) install Chromium; WBCV_CHROMIUM overrides.
CHROMIUM_CANDIDATES: Final[tuple[str, ...]] = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS: Final[tuple[str, ...]] = (
    "--no-sandbox",  # CI and containers run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
RENDER_TIMEOUT_MS: Final[int] = 120_000
#: How many plotly figures of the page have been drawn (each draws several .main-svg layers).
DRAWN_FIGURES_JS: Final[str] = (
    "[...document.querySelectorAll('.js-plotly-plot')].filter(g => g.querySelector('.main-svg')).length"
)


def find_chromium() -> str:
    """The Chromium executable: $WBCV_CHROMIUM, else the first candidate on PATH."""
    explicit = os.environ.get("WBCV_CHROMIUM")
    if explicit:
        if not Path(explicit).is_file():
            raise WbcvError(f"WBCV_CHROMIUM={explicit}: no such file; expected the path of a Chromium executable")
        return explicit
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise WbcvError(
        "report.pdf needs Chromium, and none was found on PATH (looked for "
        f"{', '.join(CHROMIUM_CANDIDATES)}): install it with `sudo apt-get install chromium` "
        "(`make setup` does this), or set WBCV_CHROMIUM to its path"
    )


def footer_template(left: str) -> str:
    """Chromium fills the pageNumber/totalPages spans; the text must be styled inline (8 pt)."""
    return (
        '<div style="font-family: DejaVu Sans, Arial, sans-serif; font-size: 8px; width: 100%; '
        'margin: 0 15mm; display: flex; justify-content: space-between; color: #444;">'
        f"<span>{escape(left)}</span>"
        '<span>page <span class="pageNumber"></span> of <span class="totalPages"></span></span></div>'
    )


def html_to_pdf(html_path: Path, pdf_path: Path, footer_left: str, expected_figures: int = 0) -> None:
    """Print ``html_path`` to ``pdf_path`` (A4), waiting until ``expected_figures`` plotly figures
    have been drawn; a page error (a script failing) stops the print with the message."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - playwright is a dependency
        raise WbcvError("report.pdf needs the Python package playwright: pip install playwright") from None
    executable = find_chromium()
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
            try:
                page = browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(Path(html_path).resolve().as_uri(), wait_until="load", timeout=RENDER_TIMEOUT_MS)
                page.wait_for_function(DRAWN_FIGURES_JS + f" >= {expected_figures}", timeout=RENDER_TIMEOUT_MS)
                if errors:
                    raise WbcvError(f"{html_path}: the report's scripts failed in Chromium: {'; '.join(errors)}")
                page.pdf(
                    path=str(pdf_path),
                    format="A4",
                    print_background=True,
                    display_header_footer=True,
                    header_template="<span></span>",
                    footer_template=footer_template(footer_left),
                    margin={"top": "14mm", "bottom": "16mm", "left": "14mm", "right": "14mm"},
                )
            finally:
                browser.close()
    except PlaywrightError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WbcvError(f"printing {html_path} with {executable} failed: {first}") from None
