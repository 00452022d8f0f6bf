"""check.html: one self-contained page (thumbnails inline as data URIs, no script, no network) with the
warnings, the duplicates and leaks side by side with the image they copy, and the likely label errors."""

from __future__ import annotations

import base64
import io
from html import escape

import torch

from ..data.loading import TensorSet

THUMB = 112  # px, the longer side of a thumbnail
MAX_SHOWN = 60  # duplicates or label issues drawn; the CSV files list them all
STYLE = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.warn{background:#fff6e0;border-left:4px solid #e0a800;padding:8px 12px;margin:8px 0}
.ok{background:#eaf7ea;border-left:4px solid #3a3;padding:8px 12px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.pair{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;
max-width:260px}.pair img{width:112px;height:112px;object-fit:contain;background:#f4f4f4;image-rendering:auto}
.pair .names{word-break:break-all;color:#555}.tag{display:inline-block;padding:0 6px;border-radius:8px;
background:#eee;margin-right:4px}.tag.bad{background:#fdd}table{border-collapse:collapse}
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"""


def thumbnail_uri(image: torch.Tensor) -> str:
    """A uint8 [C, H, W] image as a small JPEG data URI (PNG below 64 px, where JPEG would blur)."""
    from PIL import Image
    pixels = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    if max(picture.size) < 64:
        picture.save(buffer, format="PNG")
        kind = "png"
    else:
        picture.thumbnail((THUMB, THUMB))
        picture.save(buffer, format="JPEG", quality=80)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


class Thumbnails:
    """The thumbnail of an image of ``sets``, by path."""

    def __init__(self, sets: dict[str, TensorSet]):
        self.where = {p: (split, i) for split, s in sets.items() for i, p in enumerate(s.paths)}
        self.sets = sets

    def img(self, path: str) -> str:
        if path not in self.where:
            return ""
        split, i = self.where[path]
        return f'<img src="{thumbnail_uri(self.sets[split].images[i])}" alt="{escape(path)}">'


def check_page(result, sets: dict[str, TensorSet]) -> str:
    """The whole page for a ``CheckResult``."""
    thumbs = Thumbnails(sets)
    parts = [f"<h1>oculi check: {escape(result.data)}</h1><p>{escape(result.summary())} "
             f"({result.seconds:.1f} s)</p>", "<h2>Warnings</h2>", warnings_html(result.warnings)]
    leaks = [d for d in result.duplicates if d.leak]
    conflicts = [d for d in result.duplicates if d.across_classes and not d.leak]
    others = [d for d in result.duplicates if not d.leak and not d.across_classes]
    for title, rows, empty in (("Leaks: val/test images that copy a training image (or, for test, a val image)", leaks, "No leak found."),
                               ("Same image, two labels", conflicts, "No image appears under two labels."),
                               ("Duplicates within a class", others, "No duplicate found.")):
        parts.append(f"<h2>{title} ({len(rows)})</h2>" + duplicates_html(rows, thumbs, empty))
    if result.label_issues is not None:
        parts.append(f"<h2>Likely label errors ({len(result.label_issues)})</h2>"
                     f"<p>Judged by out-of-fold predictions on {escape(result.label_method)} and confident "
                     f"learning; most likely first. Score: 1 - the probability of the given label.</p>"
                     + label_issues_html(result.label_issues, thumbs))
    parts.append("<h2>Images per class</h2>" + counts_html(result.profile))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>oculi check: {escape(result.data)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def warnings_html(warnings) -> str:
    if not warnings:
        return '<p class="ok">Nothing to warn about.</p>'
    return "".join(f'<p class="warn">{escape(w.message)}</p>' for w in warnings)


def duplicates_html(rows, thumbs: Thumbnails, empty: str) -> str:
    if not rows:
        return f'<p class="ok">{empty}</p>'
    cards = []
    for d in rows[:MAX_SHOWN]:
        tags = (f'<span class="tag">{d.kind}</span>' + ('<span class="tag bad">across splits</span>' * d.across_splits)
                + ('<span class="tag bad">two labels</span>' * d.across_classes))
        cards.append(f'<div class="pair">{thumbs.img(d.path)}{thumbs.img(d.duplicate_of)}<div>{tags}</div>'
                     f'<div class="names">{escape(d.path)}<br>copies {escape(d.duplicate_of)}</div></div>')
    return f'<div class="grid">{"".join(cards)}</div>' + _more(rows, "duplicates.csv")


def label_issues_html(rows: list[dict], thumbs: Thumbnails) -> str:
    if not rows:
        return '<p class="ok">No image stands out as mislabelled.</p>'
    cards = [f'<div class="pair">{thumbs.img(r["path"])}<div>labelled <b>{escape(r["given"])}</b>, looks like '
             f'<b>{escape(r["suggested"])}</b> (score {r["score"]:.2f})</div><div class="names">'
             f'{escape(r["path"])}</div></div>' for r in rows[:MAX_SHOWN]]
    return f'<div class="grid">{"".join(cards)}</div>' + _more(rows, "label_issues.csv")


def _more(rows: list, csv: str) -> str:
    return f"<p>... and {len(rows) - MAX_SHOWN} more, all in {csv}.</p>" if len(rows) > MAX_SHOWN else ""


def counts_html(prof: dict) -> str:
    splits = list(prof["counts"])
    classes = list(next(iter(prof["counts"].values()), {}))
    head = "".join(f"<th>{s}</th>" for s in splits)
    body = "".join(f"<tr><td>{escape(c)}</td>" + "".join(f"<td>{prof['counts'][s][c]}</td>" for s in splits)
                   + "</tr>" for c in classes)
    size = prof["size"]
    return (f"<table><tr><th>class</th>{head}</tr>{body}</table><p>Sizes (height x width): smallest "
            f"{size['min'][0]}x{size['min'][1]}, median {size['median'][0]}x{size['median'][1]}, largest "
            f"{size['max'][0]}x{size['max'][1]}; width/height from {prof['aspect']['min']} to "
            f"{prof['aspect']['max']}; {prof['grayscale']} grayscale.</p>")
