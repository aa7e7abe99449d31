"""The rendered book as a reader meets it: every page of ``_build/html`` opened in headless Chromium,
served from this machine with every other address unreachable (offline, like the book's readers on a
train and like CI).

Per page: every formula typeset by the book's own MathJax (no raw ``\\(`` or ``$$`` left in the
text, ``mjx-container`` present where the page has math); every image loaded; no JavaScript console
error; no output block or table wider than the text column; figures shown at no less than 2/3 of
their pixel width (so 10 pt matplotlib text stays readable); a solution toggle opens where a page
has one; a chapter page offers its executed notebook for download; no output shows a path of the
machine that built the book. A screenshot of each page is saved under ``_build/screenshots/`` for a person to look at.

Needs Chromium (Debian's ``chromium``; elsewhere set ``OUTLIERBOOK_CHROMIUM`` to a Chrome or Chromium
binary, or run ``python -m playwright install chromium``) and a built book (``make html``).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from outlierbook.paths import repo_root

HTML = Path(os.environ.get("OUTLIERBOOK_BOOK_HTML") or repo_root() / "_build" / "html")  # another build: set it
SHOTS = HTML.parent / "screenshots"
SKIP_PAGES = {"genindex.html", "search.html"}  # Sphinx's generated index and search pages
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    return os.environ.get("OUTLIERBOOK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def pages() -> list[str]:
    if not HTML.is_dir():
        return []
    return sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.html")
                  if p.name not in SKIP_PAGES and "_static" not in p.parts and "_sources" not in p.parts)


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").is_file():
        pytest.fail(f"the book is not built ({HTML}); run: make html")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        try:  # a system Chromium, else the one `python -m playwright install chromium` downloads
            b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        except Exception as exc:  # playwright's own error type differs between versions
            pytest.fail(f"cannot start Chromium ({str(exc).splitlines()[0]}): install Debian's chromium "
                        "(.ci/run does), set OUTLIERBOOK_CHROMIUM to a Chrome/Chromium binary, or run "
                        "python -m playwright install chromium")
        yield b
        b.close()


# What the page measures of itself, after MathJax has typeset.
MEASURE = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const column = article.getBoundingClientRect();
  const clone = article.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, .highlight, mjx-container').forEach(e => e.remove());
  const text = clone.textContent;
  const wide = [];
  for (const el of article.querySelectorAll('div.cell_output > *, div.cell_output table, div.output')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > column.right + 2 || el.scrollWidth > el.clientWidth + 2)) {
      wide.push((el.tagName + ' ' + (el.className || '') + ': ' + (el.textContent || '').trim().slice(0, 60)));
    }
  }
  const images = [...article.querySelectorAll('img')].map(img => ({
    src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth > 0,
    natural: img.naturalWidth, shown: img.getBoundingClientRect().width}));
  return {
    rawInline: text.includes('\\\\(') || text.includes('\\\\['),
    rawDisplay: text.includes('$$'),
    hasMath: document.querySelectorAll('.math, div.math, span.math').length > 0,
    typeset: document.querySelectorAll('mjx-container').length,
    wide: wide, images: images,
    toggles: document.querySelectorAll('button.toggle-button, details.dropdown summary, .dropdown summary').length,
    notebookDownload: [...document.querySelectorAll('a[href$=".ipynb"]')].length,
    outputs: [...article.querySelectorAll('div.cell_output')].map(e => e.textContent).join('\\n'),
  };
}"""


def machine_paths(text: str) -> list[str]:
    """The traces of the build machine in a page's outputs: its checkout's path, its temp folder, a
    displayed ``PosixPath``."""
    marks = (str(repo_root()), tempfile.gettempdir().rstrip("/") + "/", "PosixPath(")
    return [mark for mark in marks if mark in text]


@pytest.mark.parametrize("page", pages() or ["<no built book>"])
def test_page_reads_well_offline(page, server, browser):
    if page == "<no built book>":
        pytest.fail(f"the book is not built ({HTML}); run: make html")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    errors: list[str] = []
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(server):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort("internetdisconnected")

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    try:
        tab.goto(f"{server}/{page}", wait_until="load")
        tab.wait_for_function("() => !window.MathJax || !window.MathJax.startup || "
                              "window.MathJax.startup.promise.then(() => true)", timeout=30000)
        tab.wait_for_timeout(300)
        m = tab.evaluate(MEASURE)
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SHOTS / (page.replace("/", "__").removesuffix(".html") + ".png")), full_page=True)
        problems = []
        if m["rawInline"] or m["rawDisplay"]:
            problems.append("raw TeX (\\( or $$) left in the rendered text: math was not typeset")
        if m["hasMath"] and m["typeset"] == 0:
            problems.append("the page has math but MathJax typeset none of it")
        problems += [f"image not loaded: {i['src']}" for i in m["images"] if not i["loaded"]]
        problems += [f"figure shown at {i['shown']:.0f} px of its {i['natural']} px: text too small to read"
                     for i in m["images"] if i["loaded"] and i["natural"] > 1.5 * i["shown"] + 1]
        problems += [f"wider than the text column: {w}" for w in m["wide"]]
        problems += [f"JavaScript console error: {e}" for e in errors]
        problems += [f"requested an address outside this machine: {u}" for u in sorted(set(outside))]
        problems += [f"an output shows a path of the machine that built it ({leak!r}): print a name, not a path"
                     for leak in machine_paths(m["outputs"])]
        if page.startswith("notebooks/") and not m["notebookDownload"]:
            problems.append("a chapter page offers no download of its executed notebook (.ipynb)")
        if m["toggles"]:
            toggle = tab.locator("button.toggle-button, details.dropdown summary").first
            toggle.scroll_into_view_if_needed()
            toggle.click()
            tab.wait_for_timeout(400)
            opened = tab.evaluate("""() => {
              const d = document.querySelector('details.dropdown');
              if (d) return d.open;
              const b = document.querySelector('button.toggle-button');
              const hidden = b && b.closest('.admonition, .cell, div') ;
              return !!hidden && !hidden.classList.contains('toggle-hidden');
            }""")
            if not opened:
                problems.append("a solution toggle did not open when clicked")
        assert not problems, f"{page}:\n  " + "\n  ".join(problems)
    finally:
        context.close()
