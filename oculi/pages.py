"""The building blocks of oculi's HTML pages (report.html and compare.html, built by ``report``; check.html,
by ``check.page``): each page is one self-contained file, images embedded as data URIs, styles inline, no
script, no network. Each page brings its own style sheet; this module builds the markup they share, and
encodes the images they embed by one rule (``image_uri``)."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: pages are built without importing torch here
    import PIL.Image
    import torch

# Images under this many pixels a side stay lossless PNG at their own size: the browser enlarges them pixel
# by pixel, which would magnify any compression artefact. Larger ones (photos) are shrunk and lossy WebP.
SMALL_IMAGE = 64
# A lossy quality that shows no difference to the eye at the size the pages show the images (checked side
# by side on photo runs).
IMAGE_QUALITY = 80


def page(title: str, style: str, body: str) -> str:
    """The whole page: ``body`` (HTML) under ``title`` (text), styled by ``style`` (CSS)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""


def paragraph(text: str, kind: str = "") -> str:
    """``text`` as a paragraph; ``kind``: its CSS class (the page's style says what it looks like)."""
    return f'<p class="{kind}">{escape(text)}</p>' if kind else f"<p>{escape(text)}</p>"


def table_html(headers: list[str] | None, rows: list[list], numeric_from: int = 1) -> str:
    """A table that scrolls sideways on its own when the screen is narrower than it is (the page's style
    gives ``.scroll`` ``overflow-x: auto``); columns from ``numeric_from`` on are right-aligned where the
    style says so (``.num``). ``headers`` None: a two-column list of facts, no header row."""
    head = "" if headers is None else "<thead><tr>" + "".join(
        f"<th{_num(i, numeric_from)}>{escape(str(h))}</th>" for i, h in enumerate(headers)) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td{_num(i, numeric_from)}>{escape(str(v))}</td>" for i, v in enumerate(row))
                   + "</tr>" for row in rows)
    return f'<div class="scroll"><table>{head}<tbody>{body}</tbody></table></div>'


def _num(column: int, numeric_from: int) -> str:
    return ' class="num"' if column >= numeric_from else ""


# ---------------------------------------------------------------- embedded images

def image_uri(image: "torch.Tensor", side: int) -> tuple[str, bool]:
    """A uint8 [C, H, W] image as a data URI, and whether it is small (under SMALL_IMAGE px a side: PNG at
    its own size); a larger one is shrunk to at most ``side`` px a side (Lanczos) and WebP."""
    from PIL import Image
    picture = picture_of(image)
    if max(picture.size) < SMALL_IMAGE:
        return data_uri("png", png_bytes(picture)), True
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    return data_uri("webp", webp_bytes(picture, IMAGE_QUALITY)), False


def picture_of(image: "torch.Tensor") -> "PIL.Image.Image":
    """A uint8 [C, H, W] image (one channel: gray) as a PIL image."""
    from PIL import Image
    pixels = image.permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def png_bytes(picture: "PIL.Image.Image") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def webp_bytes(picture: "PIL.Image.Image", quality: int) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue()


def data_uri(kind: str, data: bytes) -> str:
    """``data`` (an image file's bytes, ``kind`` png, webp...) as a data URI."""
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"
