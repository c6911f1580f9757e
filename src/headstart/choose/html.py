"""The HTML pages of the reports (``report.html``, ``compare.html``): the markdown that was
written beside them, rendered by markdown-it (CommonMark with tables) into the one Jinja2
template and stylesheet under ``templates/``.

The page stands alone: every plot the markdown names (``![caption](curves.png)``, a file
beside the markdown) is embedded as a ``data:`` URI, so the page can be mailed or moved
without its folder.  Raw HTML in the markdown is shown as text, never interpreted.
"""

from __future__ import annotations

import base64
import functools
import html
import itertools
import mimetypes
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markupsafe import Markup

from headstart._io import atomic_write_text
from headstart._version import __version__

__all__ = ["html_page", "render_markdown", "write_html_page"]

TEMPLATE = "page.html.j2"


@functools.cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("headstart.choose", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )


def _figures(tokens: list[Token]) -> None:
    """A paragraph that holds one image alone becomes a ``<figure>``."""
    for i in range(len(tokens) - 2):
        opened, inline, closed = tokens[i : i + 3]
        if (
            opened.type == "paragraph_open"
            and closed.type == "paragraph_close"
            and inline.children is not None
            and [c.type for c in inline.children] == ["image"]
        ):
            opened.tag = closed.tag = "figure"
            inline.children[0].meta["figure"] = True


def _image(
    renderer: RendererHTML, tokens: list[Token], idx: int, options: Any, env: dict[str, Any]
) -> str:
    """An image beside the markdown, embedded as a data: URI; its caption under it when it
    stands alone.  One that is not there is said to be missing rather than shown broken."""
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    path = Path(env["folder"]) / src
    if "://" in src or src.startswith("data:") or not path.is_file():
        return f'<span class="missing">[plot not written: {html.escape(src)}]</span>'
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    img = (
        f'<img src="data:{kind};base64,{data}" alt="{html.escape(alt)}" '
        f'data-file="{html.escape(path.name)}">'
    )
    if token.meta.get("figure"):
        img += f"<figcaption>{html.escape(alt)}</figcaption>"
    return img


def _table_open(
    renderer: RendererHTML, tokens: list[Token], idx: int, options: Any, env: dict[str, Any]
) -> str:
    """Wide tables scroll sideways on a phone instead of widening the page."""
    return '<div class="table-scroll">' + renderer.renderToken(tokens, idx, options, env)


def _table_close(
    renderer: RendererHTML, tokens: list[Token], idx: int, options: Any, env: dict[str, Any]
) -> str:
    return renderer.renderToken(tokens, idx, options, env) + "</div>\n"


@functools.cache
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("image", _image)
    md.add_render_rule("table_open", _table_open)
    md.add_render_rule("table_close", _table_close)
    return md


def render_markdown(markdown_text: str, folder: Path) -> str:
    """``markdown_text`` as HTML, its images read from ``folder`` and embedded."""
    md = _markdown()
    env = {"folder": str(folder)}
    tokens = md.parse(markdown_text, env)
    _figures(tokens)
    return str(md.renderer.render(tokens, md.options, env))


def _title(markdown_text: str) -> str:
    """The first level-1 heading's text, without its markup."""
    tokens = _markdown().parse(markdown_text)
    for opened, inline in itertools.pairwise(tokens):
        if opened.type == "heading_open" and opened.tag == "h1":
            children = inline.children or []
            return "".join(c.content for c in children if c.type in ("text", "code_inline"))
    return "headstart"


def html_page(markdown_text: str, folder: Path, *, source: str = "the markdown") -> str:
    """A standalone page: ``markdown_text`` rendered into the shared template, titled by
    its first heading, the plots it names (files in ``folder``) embedded."""
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            title=_title(markdown_text),
            body=Markup(render_markdown(markdown_text, folder)),
            version=__version__,
            source=source,
        )
    )


def write_html_page(markdown_path: Path, dest: Path) -> Path:
    """The page of the markdown file at ``markdown_path`` (its plots beside it), written
    atomically to ``dest``."""
    text = markdown_path.read_text(encoding="utf-8")
    page = html_page(text, markdown_path.parent, source=markdown_path.name)
    atomic_write_text(dest, page)
    return dest
