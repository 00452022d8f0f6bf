"""The HTML kit every page is built from (oculi.pages): report.html, compare.html and check.html."""

import base64
import io

import torch
from PIL import Image

from oculi.pages import SMALL_IMAGE, image_uri, page, paragraph, table_html


def _decoded(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_images_are_embedded_by_one_rule_small_lossless_photos_shrunk_webp():
    small, is_small = image_uri(torch.zeros(1, 8, SMALL_IMAGE - 1, dtype=torch.uint8), 112)
    assert is_small and small.startswith("data:image/png;") and _decoded(small).size == (SMALL_IMAGE - 1, 8)
    photo, is_small = image_uri(torch.randint(0, 256, (3, 300, 200), dtype=torch.uint8), 112)
    assert not is_small and photo.startswith("data:image/webp;") and _decoded(photo).size == (75, 112)


def test_the_page_and_its_blocks_escape_text():
    html = page("a <b> & c", "p{color:red}", paragraph("1 < 2", "warn") + table_html(["x", "<n>"], [["<y>", 3]]))
    assert html.startswith("<!DOCTYPE html>") and "<title>a &lt;b&gt; &amp; c</title>" in html
    assert '<p class="warn">1 &lt; 2</p>' in html and "<style>p{color:red}</style>" in html
    assert '<th class="num">&lt;n&gt;</th>' in html and "<td>&lt;y&gt;</td>" in html and "<script" not in html
