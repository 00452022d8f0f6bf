"""HTML building blocks of ``report.html`` (and ``compare.html``), over the pages' common kit
(``oculi.pages``): one self-contained page, readable from a phone's width up to a laptop's."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from ..pages import data_uri, image_uri, page, webp_bytes
from ..plots import close_figure

if TYPE_CHECKING:  # for the annotations only
    import PIL.Image
    import torch

@dataclass
class Section:
    """One part of the report: ``id`` is its anchor in the table of contents."""

    id: str
    title: str
    body: str


def figure_html(fig: Figure, alt: str, caption: str = "", photos: bool = False) -> str:
    """``fig`` embedded, shown 100 CSS pixels per inch, scaled down (never up) to the page width; drawn at
    150 dpi so that it stays sharp on high-density screens. The figure is closed.

    A plot (lines, bars, text, flat colours) is a PNG: it compresses well losslessly and its text stays
    crisp. ``photos``: the figure shows photos or feature maps, which PNG stores poorly (a photo figure
    weighs 1-2 MB); then the smaller of the PNG and a lossy WebP is used."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_FIGURE_DPI)
    width = round(fig.get_figwidth() * 100)
    close_figure(fig)
    png = buffer.getvalue()
    src = data_uri("png", png)
    if photos:
        lossy = webp_bytes(_decode(png).convert("RGB"), _FIGURE_QUALITY)
        src = min(src, data_uri("webp", lossy), key=len)
    note = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{escape(alt)}" style="width:{width}px">{note}</figure>'


def image_tile(image: "torch.Tensor", caption: str = "", verdict: str = "") -> str:
    """One uint8 [C, H, W] image as a tile of a ``tiles_html`` grid; ``caption`` is HTML; ``verdict``
    ("right" or "wrong") colours its frame. Encoded by the pages' rule (``pages.image_uri``): small images
    lossless, drawn pixelated; photos WebP, shrunk to at most TILE_PIXELS a side."""
    src, small = image_uri(image, TILE_PIXELS)
    note = f"<figcaption>{caption}</figcaption>" if caption else ""
    return (f'<figure class="tile {verdict}{" small" * small}"><img src="{src}" alt="{escape(_text_of(caption))}">'
            f"{note}</figure>")


# A tile is shown 104-150 CSS px wide (the grid's columns); twice that is sharp on a high-density screen.
TILE_PIXELS = 224
_FIGURE_DPI = 150
# A lossy quality for figures of photos, higher than the pages' (pages.IMAGE_QUALITY): it keeps their text
# and thin lines clean (checked side by side on photo runs).
_FIGURE_QUALITY = 90


def _decode(data: bytes) -> "PIL.Image.Image":
    from PIL import Image
    return Image.open(io.BytesIO(data))


def tiles_html(tiles: list[str]) -> str:
    """Tiles in a grid that wraps to the screen: 2-3 a row on a phone, 8-10 on a laptop."""
    return f'<div class="tiles">{"".join(tiles)}</div>'


def _text_of(html: str) -> str:
    """Caption HTML without its tags, for an image's alt text."""
    return re.sub(r"<[^>]+>", " ", html).strip() or "image"


def facts_html(facts: list[tuple[str, str]]) -> str:
    """Headline figures as a row of cards that wraps on narrow screens."""
    cards = "".join(f'<div class="card"><div class="value">{escape(v)}</div><div class="label">{escape(k)}</div></div>'
                    for k, v in facts)
    return f'<div class="cards">{cards}</div>'


def render_page(title: str, subtitle: str, facts: list[tuple[str, str]], sections: list[Section],
                footer: str = "Made by oculi. Rebuild with <code>oculi report RUN</code>.") -> str:
    """The whole page: header with headline figures, a table of contents, then each section; ``footer``
    is HTML."""
    toc = "".join(f'<li><a href="#{s.id}">{n}. {escape(s.title)}</a></li>' for n, s in enumerate(sections, 1))
    body = "".join(f'<section id="{s.id}"><h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return page(title, _STYLE, f"""<header id="summary"><h1>{escape(title)}</h1><p class="sub">{escape(subtitle)}</p>{facts_html(facts)}
<nav><ol>{toc}</ol></nav></header>
<main>{body}</main>
<footer>{footer}</footer>""")


_STYLE = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); }
header, main, footer { max-width: 1100px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 20px; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.6rem; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.3rem; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h2, h3 { overflow-wrap: anywhere; }
h3 { font-size: 1.05rem; margin: 20px 0 8px; }
.sub { color: var(--muted); margin: 0 0 12px; overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 120px; }
.card .value { font-size: 1.3rem; font-weight: 600; }
.card .label { color: var(--muted); font-size: 0.85rem; }
nav ol { display: flex; flex-wrap: wrap; gap: 4px 18px; list-style: none; padding: 0; margin: 8px 0 16px; }
a { color: var(--accent); }
figure { margin: 12px 0; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 0.9rem; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.92rem; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: var(--soft); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: var(--soft); padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
p, li { overflow-wrap: anywhere; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(104px, 1fr)); gap: 10px; margin: 12px 0; }
.tile { margin: 0; }
.tile img { display: block; width: 100%; height: auto; border: 3px solid transparent; border-radius: 3px; }
.tile.small img { image-rendering: pixelated; }
.tile.right img { border-color: #2da44e; }
.tile.wrong img { border-color: #cf222e; }
.tile figcaption { font-size: 0.8rem; line-height: 1.3; overflow-wrap: anywhere; margin-top: 2px; }
.tile.right figcaption { color: #1a7f37; }
.tile.wrong figcaption { color: #cf222e; }
.class-row h3 { margin-bottom: 4px; }
.charts { display: flex; flex-wrap: wrap; gap: 0 24px; }
details summary { cursor: pointer; color: var(--accent); }
footer { color: var(--muted); font-size: 0.85rem; padding: 24px 16px; }
"""
