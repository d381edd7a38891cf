"""HTML pieces of the run report: escaping, tables, numbers, the page around the sections (no torch)."""

import base64
import math
from collections.abc import Iterable
from html import escape
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 1em 2em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 2px 8px; }
th { background: #f3f3f3; text-align: left; }
tr.key td { font-weight: bold; } .failed { color: #b00020; } .muted { color: #777; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; max-height: 40em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; } figure { margin: 0; }
figure img { max-width: 560px; border: 1px solid #ddd; }
.overview { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.curves { flex: 1; display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 0.5em; }
#js-errors:empty { display: none; } #js-errors { color: #b00020; white-space: pre-wrap; }
"""

# Scripts that fail while the page loads (in plotly or anywhere) are listed in #js-errors, on the page for the
# reader and in the DOM for tests/experiment/test_report_browser.py.
ERROR_CATCHER = """
window.reportErrors = [];
function showErrors() {
  var box = document.getElementById("js-errors");
  if (box) { box.textContent = window.reportErrors.join("\\n"); }
}
function reportError(text) { window.reportErrors.push(text); showErrors(); }
window.addEventListener("error", function (e) { reportError("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) { reportError("rejection: " + e.reason); });
window.addEventListener("DOMContentLoaded", showErrors);
"""


def esc(value: Any) -> str:
    """Any value as escaped HTML text."""
    return escape(str(value), quote=True)


def number(value: Any) -> str:
    """A metric value: 4 significant digits, integers as they are; anything else as text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def table(header: Iterable[str], rows: Iterable[Iterable[str]], keys: Iterable[int] = ()) -> str:
    """A table of cells that are HTML already (escape them first); rows at the indices ``keys`` in bold."""
    bold = set(keys)
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join(
        f"<tr{' class=key' if i in bold else ''}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table of escaped names and HTML values."""
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def data_uri(mime: str, content: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def size_text(size: int) -> str:
    """Bytes as B, KB, MB or GB."""
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def page(title: str, body: str, plotly_js: str | None) -> str:
    """The whole document: one CSS block, the error catcher, plotly's bundle when there are figures."""
    plotly = f'<script type="text/javascript">{plotly_js}</script>' if plotly_js else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style><script>{ERROR_CATCHER}</script>{plotly}</head>"
        f'<body><pre id="js-errors"></pre>{body}</body></html>\n'
    )
