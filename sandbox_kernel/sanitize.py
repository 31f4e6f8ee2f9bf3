"""Rich output from a container, made safe to render in the notebook.

Outputs made in a session are *trusted* by Jupyter (their HTML and scripts run),
so what a container displays is cleaned first unless the user passes
``--trust-output``: HTML and Markdown go through nh3 (scripts, event handlers,
iframes, forms and styles removed), SVG is shown as an ``<img>`` (a browser runs
no script in an image), and MIME types that are code (JavaScript, widget
views, LaTeX with its macros) are dropped. text/plain always stays.
"""

from __future__ import annotations

import base64
import binascii
import html
from typing import Any

SAFE_AS_IS = ("text/plain", "application/json", "image/png", "image/jpeg", "image/gif")
IMAGES = ("image/png", "image/jpeg", "image/gif")


def clean_html(text: str) -> str:
    import nh3

    return nh3.clean(text)


def sanitize(data: dict[str, Any], metadata: dict[str, Any], trusted: bool = False
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle to publish: only string values, known types, cleaned unless ``trusted``."""
    out: dict[str, Any] = {}
    for mime, value in data.items():
        if not isinstance(mime, str):
            continue
        if mime == "application/json":
            out[mime] = value
            continue
        if not isinstance(value, str):
            continue
        if trusted:
            out[mime] = value
        elif mime in IMAGES:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                continue
            out[mime] = value
        elif mime in SAFE_AS_IS:
            out[mime] = value
        elif mime in ("text/html", "text/markdown"):
            out[mime] = clean_html(value)
        elif mime == "image/svg+xml" and "text/html" not in data:
            b64 = base64.b64encode(value.encode()).decode()
            out["text/html"] = f'<img src="data:image/svg+xml;base64,{html.escape(b64)}" alt="SVG from the container">'
    if "text/plain" not in out:
        out["text/plain"] = "<output from the container>"
    meta = {k: v for k, v in metadata.items() if k in out and isinstance(v, dict)} if isinstance(metadata, dict) else {}
    return out, meta
