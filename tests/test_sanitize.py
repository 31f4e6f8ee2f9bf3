"""What a container displays, made safe for the page: cleaned unless trusted, and trusted code only in a
sandboxed frame. (The browser test checks in a real JupyterLab that a trusted script does not reach the page.)"""

from __future__ import annotations

import base64
import html
from html.parser import HTMLParser

from sandbox_kernel.notebook.sanitize import FRAME_MAX_HEIGHT, MARKDOWN_MAX, markdown_html, sanitize

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


class Page(HTMLParser):
    """The page-level structure of an output: its tags with attributes, and its scripts' text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data

    def urls(self) -> list[str]:
        return [v or "" for _, attrs in self.tags for k, v in attrs.items() if k in ("src", "href", "srcset")]


def shown(data: dict, trusted: bool = False) -> dict:
    return sanitize(data, {}, trusted)[0]


def test_untrusted_html_keeps_no_script_no_handler_and_fetches_nothing():
    out = shown({"text/plain": "x", "text/html": (
        '<b>bold</b><script>alert(1)</script><img src=x onerror=alert(2)><img src="http://tracker.example/p.png">'
        '<img src="/files/secret.png"><img src="data:image/png;base64,' + PNG + '" alt="ok">'
        '<a href="javascript:alert(3)">j</a><a href="JaVa&#115;cript:alert(4)">k</a>'
        '<a href="data:text/html,<script>alert(5)</script>">d</a><a href="https://docs.example/">docs</a>'
        '<iframe src="https://x.example/"></iframe><form action="/api/terminals"><button>go</button></form>'
        '<div style="background:url(https://x.example/)">s</div><svg onload="alert(6)"></svg>')})
    page = Page(out["text/html"])
    assert "<b>bold</b>" in out["text/html"] and not page.scripts
    assert not [attrs for _, attrs in page.tags if any(k.startswith("on") or k == "style" for k in attrs)]
    assert {tag for tag, _ in page.tags} <= {"b", "img", "a", "div", "button"}
    assert sorted(page.urls()) == [f"data:image/png;base64,{PNG}", "https://docs.example/"]


def test_untrusted_markdown_is_rendered_here_and_cleaned_with_its_math_and_code_intact():
    text = ("# Title\n\n**bold** $a_1 * b_2$ and $$x_1^2 * y_1$$, \\(z_i\\), costs \\$5\n\n"
            "`code $x$ <b>` and\n\n```\n<script>alert(0)</script> $not_math_$\n```\n\n"
            "<img src=x onerror=alert(1)> <script>alert(2)</script> [j](javascript:alert(3)) "
            "[k](jav&#97;script:alert(4)) ![remote](https://tracker.example/p.png) [docs](https://docs.example/)\n\n"
            "| a | b |\n|---|---|\n| 1 | 2 |\n")
    out = shown({"text/plain": "md", "text/markdown": text})
    assert "text/markdown" not in out, "the page gets the HTML made here, not Markdown it would render itself"
    rendered = out["text/html"]
    page = Page(rendered)
    assert not page.scripts and "onerror" not in rendered
    assert sorted(page.urls()) == ["https://docs.example/"]  # no javascript: link, no remote image
    assert "<h1>Title</h1>" in rendered and "<strong>bold</strong>" in rendered and "<td>2</td>" in rendered
    assert "$a_1 * b_2$" in rendered and "$$x_1^2 * y_1$$" in rendered and "\\(z_i\\)" in rendered
    assert "costs \\$5" in rendered  # (an escaped dollar stays escaped: MathJax shows it as $)
    assert "<code>code $x$ &lt;b&gt;</code>" in rendered
    assert "&lt;script&gt;alert(0)&lt;/script&gt; $not_math_$" in rendered  # a fenced block as it is


def test_markdown_past_the_cap_and_pathological_markdown_are_shown_safely():
    long = "<script>alert(1)</script>" + "x" * MARKDOWN_MAX
    assert markdown_html(long).startswith("<pre>&lt;script&gt;")
    for hostile in ("\\begin{a} " * 3000, "\\[ " * 10000, "".join("`" * k + "x" for k in range(1, 200)),
                    "$$ a " * 6000, "```\n" * 6000, "[" * 30000, "\\end{a}\\begin{a}$\\end{a}" * 1000):
        page = Page(markdown_html(hostile))
        assert not page.scripts and not page.urls()


def test_trusted_html_and_javascript_run_only_in_a_sandboxed_frame():
    script = "<script>parent.document.title = 'owned'</script><b>hi</b>"
    out = shown({"text/plain": "x", "text/html": script}, trusted=True)
    page = Page(out["text/html"])
    frames = [attrs for tag, attrs in page.tags if tag == "iframe"]
    assert len(frames) == 1 and frames[0]["sandbox"] == "allow-scripts"  # scripts, but no same origin
    assert script in html.unescape(frames[0]["srcdoc"])
    # the one script at page level is ours: it sizes the frame from the messages of that frame alone
    assert len(page.scripts) == 1 and "owned" not in page.scripts[0]
    assert f"getElementById('{frames[0]['id']}')" in page.scripts[0] and "e.source!==f.contentWindow" in page.scripts[0]
    assert str(FRAME_MAX_HEIGHT) in page.scripts[0]

    code = "parent.document.body.dataset.owned = 1 // </script><script>alert(1)"
    out = shown({"text/plain": "x", "application/javascript": code}, trusted=True)
    frame = next(attrs for tag, attrs in Page(out["text/html"]).tags if tag == "iframe")
    assert frame["sandbox"] == "allow-scripts" and "parent.document.body.dataset.owned" in frame["srcdoc"]
    assert "application/javascript" not in out
    assert shown({"text/plain": "x", "application/javascript": code}) == {"text/plain": "x"}  # untrusted: dropped


def test_trusted_markdown_may_show_remote_images_but_runs_nothing():
    out = shown({"text/markdown": "![plot](https://example.org/p.png) <script>alert(1)</script>"}, trusted=True)
    page = Page(out["text/html"])
    assert page.urls() == ["https://example.org/p.png"] and not page.scripts


def test_types_that_are_code_or_unknown_are_dropped_and_svg_is_an_image():
    view = {"model_id": "panel", "version_major": 2, "version_minor": 0}
    for trusted in (False, True):
        out = shown({"text/plain": "x", "application/vnd.jupyter.widget-view+json": view,
                     "application/x-unknown": "?", "image/png": "not base64!", "image/gif": PNG}, trusted)
        assert out == {"text/plain": "x", "image/gif": PNG}, trusted
    svg = "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    untrusted = shown({"image/svg+xml": svg})
    assert untrusted["text/html"].startswith('<img src="data:image/svg+xml;base64,')
    assert "image/svg+xml" not in untrusted
    assert shown({"image/svg+xml": svg}, trusted=True)["image/svg+xml"] == svg  # (JupyterLab shows it as an <img>)


def test_latex_is_kept_only_when_trusted_and_without_links_or_packages():
    assert "text/latex" not in shown({"text/latex": "$x^2$"})
    assert shown({"text/latex": "$x^2$"}, trusted=True)["text/latex"] == "$x^2$"
    for active in ("$\\href{javascript:alert(1)}{x}$", "$\\require{html}\\class{x}{y}$", "$\\url{https://x}$"):
        assert "text/latex" not in shown({"text/latex": active}, trusted=True)
