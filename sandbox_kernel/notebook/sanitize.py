"""Rich output from a container, made safe to render in the notebook.

Jupyter *trusts* the outputs of a cell run in the session: their HTML is put in
the page as it is and their scripts run in the notebook's origin, where a
script can open a terminal as the server's user. So what a container displays
never reaches the page as it is.

Untrusted (the default):

- HTML goes through nh3: scripts, event handlers, iframes, forms, styles go;
  links keep http, https and mailto only (no ``javascript:``, no ``data:``);
  images keep inline ``data:image/...`` sources only, so showing an output
  fetches nothing from anywhere (no tracking pixel, nothing asked of the
  Jupyter server with the reader's cookies).
- Markdown is rendered here (markdown-it, CommonMark with tables) to HTML,
  math kept as it was for the page's MathJax, and that HTML is cleaned the same
  way: raw HTML in Markdown loses its scripts, ``javascript:`` links go.
- SVG is shown as an ``<img>`` of a ``data:`` URI (a browser runs no script
  in an image); PNG, JPEG and GIF must be valid base64.
- What is code (JavaScript, widget views, LaTeX with its macros) and types
  nothing here knows are dropped. text/plain always stays.

Trusted (``--trust-output``): HTML and JavaScript run, but in an iframe
sandboxed with ``allow-scripts`` and not ``allow-same-origin``, an opaque
origin of its own with no access to the page, its cookies or the server's API;
Markdown is cleaned as above but may show remote images; SVG goes to
JupyterLab as it is (it renders SVG as an image); LaTeX is kept unless it asks
for links, packages or HTML (``\\href``, ``\\require``, ``\\class``, ...).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import html
import re
import secrets
from collections.abc import Callable
from typing import Any

SAFE_AS_IS = ("text/plain", "application/json")
IMAGES = ("image/png", "image/jpeg", "image/gif")
LINK_SCHEMES = {"http", "https", "mailto"}
MARKDOWN_MAX = 32 << 10  # characters rendered as Markdown (at most ~0.2 s); a longer text is shown as it is
FRAME_HEIGHT = 320  # px, until the frame says how tall its document is (and where scripts do not run)
FRAME_MAX_HEIGHT = 4000
_INLINE_IMAGE = re.compile(r"\s*data:image/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*\Z", re.IGNORECASE)
_REMOTE = re.compile(r"\s*https?:", re.IGNORECASE)
_DATA = re.compile(r"\s*data:", re.IGNORECASE)
_LATEX_ACTIVE = re.compile(r"\\(?:href|url|require|class|cssId|style|data|html|unicode|mmlToken)(?![A-Za-z])")


def clean_html(text: str, *, remote_images: bool = False) -> str:
    """``text`` with nothing that runs, styles or fetches (but inline images, and with ``remote_images``
    http(s) ones)."""
    import nh3

    def keep(tag: str, attribute: str, value: str) -> str | None:
        if tag == "img" and attribute == "src":
            if _INLINE_IMAGE.match(value) or (remote_images and _REMOTE.match(value)):
                return value
            return None  # (a relative source would be fetched from the Jupyter server, with the reader's cookies)
        if _DATA.match(value):
            return None  # data: only as an image's source
        return value

    return nh3.clean(text, attribute_filter=keep, url_schemes=LINK_SCHEMES | {"data"})


# -- Markdown -----------------------------------------------------------------------------------------------------

# Math is taken out of the text before markdown-it reads it (so that its _ and * and \ stay what they are) and
# put back after, escaped, for the page's MathJax; code, fenced or inline, is left as it is. One pass: every
# closer is looked up in lists made once (a hostile text full of unclosed \begin{...} costs no more).
_TOKEN = re.compile(r"^[ ]{0,3}(?P<fence>`{3,}|~{3,})|(?P<ticks>`+)"
                    r"|(?P<open>\$\$|\$|\\\[|\\\(|\\begin\{(?P<env>[A-Za-z]+\*?)\})|\\.", re.MULTILINE | re.DOTALL)
_FENCE_LINE = re.compile(r"^[ ]{0,3}(`{3,}|~{3,})[ \t]*$", re.MULTILINE)
_CLOSERS = {"$$": "$$", "\\[": "\\]", "\\(": "\\)"}


class _Positions:
    """Where each closer starts in the text, for "the first one after i" in log time."""

    def __init__(self, text: str):
        self.text = text
        self.closers = {c: [m.start() for m in re.finditer(re.escape(c), text)] for c in (*_CLOSERS.values(), "$")}
        self.ends: dict[str, list[int]] = {}
        for m in re.finditer(r"\\end\{([A-Za-z]+\*?)\}", text):
            self.ends.setdefault(m.group(1), []).append(m.start())
        self.runs: dict[int, list[int]] = {}
        for m in re.finditer(r"`+", text):
            self.runs.setdefault(len(m.group()), []).append(m.start())
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.fences = [(m.start(), m.end(), m.group(1)) for m in _FENCE_LINE.finditer(text)]

    @staticmethod
    def after(positions: list[int], i: int) -> int | None:
        k = bisect.bisect_left(positions, i)
        return positions[k] if k < len(positions) else None


def _take_math(text: str, placeholder: Callable[[str], str]) -> str:
    at = _Positions(text)
    out: list[str] = []
    i = 0
    while (m := _TOKEN.search(text, i)) is not None:
        end = m.end()
        if m.group("fence"):  # a fenced block: to its closing fence (or the end of the text), as it is
            fence = m.group("fence")
            k = bisect.bisect_right(at.fences, (m.start(), len(text) + 1, ""))
            end = len(text)
            for start, stop, closing in at.fences[k:]:
                if start > m.start() and closing[0] == fence[0] and len(closing) >= len(fence):
                    end = stop
                    break
        elif m.group("ticks"):  # a code span: to the next run of as many backticks
            close = at.after(at.runs.get(len(m.group("ticks")), []), end)
            if close is not None:
                end = close + len(m.group("ticks"))
        elif m.group("open"):
            opener = m.group("open")
            if m.group("env"):
                close, width = at.after(at.ends.get(m.group("env"), []), end), len(m.group("env")) + 6
            elif opener == "$":
                close, width = at.after(at.closers["$"], end), 1
                newline = at.after(at.newlines, end)
                if close is not None and (close == end or (newline is not None and newline < close)):
                    close = None  # ($..$ is one line, not empty)
            else:
                close, width = at.after(at.closers[_CLOSERS[opener]], end), 2
            if close is not None:
                out.append(text[i:m.start()])
                out.append(placeholder(text[m.start():close + width]))
                i = close + width
                continue
        elif m.group() == "\\$":  # an escaped dollar stays escaped for MathJax (which shows it as $)
            out.append(text[i:m.start()])
            out.append(placeholder(m.group()))
            i = end
            continue
        out.append(text[i:end])
        i = end
    out.append(text[i:])
    return "".join(out)


def markdown_html(text: str, *, remote_images: bool = False) -> str:
    """Markdown rendered to cleaned HTML (raw HTML in it cleaned as any HTML), its math left for MathJax."""
    from markdown_it import MarkdownIt

    if len(text) > MARKDOWN_MAX:  # (what a parser does with megabytes of hostile text is not worth finding out)
        return f"<pre>{html.escape(text, quote=False)}</pre>"
    tag = f"sk{secrets.token_hex(8)}m"  # (a placeholder the text cannot have guessed)
    math: list[str] = []

    def protect(formula: str) -> str:
        math.append(formula)
        return f"{tag}{len(math) - 1}{tag}"

    renderer = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    rendered = renderer.render(_take_math(text, protect))
    rendered = re.sub(rf"{tag}(\d+){tag}", lambda m: html.escape(math[int(m.group(1))], quote=False), rendered)
    return clean_html(rendered, remote_images=remote_images)


# -- the sandboxed frame -----------------------------------------------------------------------------------------

# In the frame, first of all: tell the page how tall the document is (the page listens to this frame only).
_FRAME_HEAD = ("<!DOCTYPE html><meta charset='utf-8'><script>(function(){var post=function(){"
               "parent.postMessage({sandboxKernelHeight:document.documentElement.scrollHeight},'*')};"
               "addEventListener('load',post);if(window.ResizeObserver){new ResizeObserver(post)"
               ".observe(document.documentElement)}})()</script>")
# In the page (our own script: the frame's content never runs here): size the frame as it asks, within bounds.
_FRAME_SIZER = ("<script>(function(){{var f=document.getElementById('{id}');if(!f)return;"
                "addEventListener('message',function(e){{if(!f.isConnected||e.source!==f.contentWindow)return;"
                "var h=e.data&&e.data.sandboxKernelHeight;if(typeof h==='number'&&isFinite(h))"
                "f.style.height=Math.max(24,Math.min({most},Math.ceil(h)+4))+'px'}})}})()</script>")


def framed(document: str) -> str:
    """HTML for the page: ``document`` in an iframe whose scripts run in an opaque origin of their own."""
    frame_id = f"sk-frame-{secrets.token_hex(8)}"
    return (f'<iframe id="{frame_id}" class="sk-frame" sandbox="allow-scripts" referrerpolicy="no-referrer" '
            f'style="width:100%;height:{FRAME_HEIGHT}px;border:0" '
            f'srcdoc="{html.escape(_FRAME_HEAD + document, quote=True)}"></iframe>'
            + _FRAME_SIZER.format(id=frame_id, most=FRAME_MAX_HEIGHT))


def _script(code: str) -> str:
    """A document that runs ``code`` with ``element`` the node to show things in (as JupyterLab gives it)."""
    return ("<body><div class='output'></div><script>var element = document.querySelector('.output');</script>"
            "<script>" + re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE) + "</script></body>")


# -- a display bundle ----------------------------------------------------------------------------------------------


def _image(value: str) -> str | None:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return value


def sanitize(data: dict[str, Any], metadata: dict[str, Any], trusted: bool = False
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle to publish: string values of types known here, made safe as the module says."""
    out: dict[str, Any] = {}
    page_html: list[str] = []  # what becomes text/html, in order of preference
    for mime, value in data.items():
        if not isinstance(mime, str):
            continue
        if mime == "application/json":
            out[mime] = value
            continue
        if not isinstance(value, str):
            continue
        if mime in SAFE_AS_IS:
            out[mime] = value
        elif mime in IMAGES:
            if (image := _image(value)) is not None:
                out[mime] = image
        elif mime == "text/html":
            page_html.insert(0, framed(value) if trusted else clean_html(value))
        elif mime == "application/javascript" and trusted and "text/html" not in data:
            page_html.append(framed(_script(value)))
        elif mime == "text/markdown":
            page_html.append(markdown_html(value, remote_images=trusted))
        elif mime == "image/svg+xml":
            if trusted:
                out[mime] = value  # (JupyterLab shows an SVG as an <img>)
            else:
                b64 = html.escape(base64.b64encode(value.encode()).decode())
                page_html.append(f'<img src="data:image/svg+xml;base64,{b64}" alt="SVG from the container">')
        elif mime == "text/latex" and trusted and not _LATEX_ACTIVE.search(value):
            out[mime] = value
    if page_html:
        out["text/html"] = page_html[0]
    if "text/plain" not in out:
        out["text/plain"] = "<output from the container>"
    meta = {k: v for k, v in metadata.items() if k in out and isinstance(v, dict)} if isinstance(metadata, dict) else {}
    return out, meta
