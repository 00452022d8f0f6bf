"""check.html: one self-contained page (thumbnails inline as data URIs, no script, no network; built from
the pages' kit, ``oculi.pages``) with the warnings, the duplicates and leaks side by side with the image they
copy, and the likely label errors."""

from __future__ import annotations

from html import escape

from ..data.loading import TensorSet
from ..pages import image_uri, page, paragraph, table_html

THUMB = 112  # px, the longer side of a thumbnail
MAX_SHOWN = 60  # duplicates or label issues drawn; the CSV files list them all
STYLE = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.warn{background:#fff6e0;border-left:4px solid #e0a800;padding:8px 12px;margin:8px 0}
.ok{background:#eaf7ea;border-left:4px solid #3a3;padding:8px 12px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.pair{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;
max-width:260px}.pair img{width:112px;height:112px;object-fit:contain;background:#f4f4f4;image-rendering:auto}
.pair .names{word-break:break-all;color:#555}.tag{display:inline-block;padding:0 6px;border-radius:8px;
background:#eee;margin-right:4px}.tag.bad{background:#fdd}table{border-collapse:collapse}.scroll{overflow-x:auto}
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"""


class Thumbnails:
    """The thumbnail of an image of ``sets``, by path."""

    def __init__(self, sets: dict[str, TensorSet]):
        self.where = {p: (split, i) for split, s in sets.items() for i, p in enumerate(s.paths)}
        self.sets = sets

    def img(self, path: str) -> str:
        if path not in self.where:
            return ""
        split, i = self.where[path]
        return f'<img src="{image_uri(self.sets[split].images[i], THUMB)[0]}" alt="{escape(path)}">'


def check_page(result, sets: dict[str, TensorSet]) -> str:
    """The whole page for a ``CheckResult``."""
    thumbs = Thumbnails(sets)
    parts = [f"<h1>oculi check: {escape(result.data)}</h1>", paragraph(f"{result.summary()} ({result.seconds:.1f} s)"),
             "<h2>Warnings</h2>", warnings_html(result.warnings)]
    leaks = [d for d in result.duplicates if d.leak]
    conflicts = [d for d in result.duplicates if d.across_classes and not d.leak]
    others = [d for d in result.duplicates if not d.leak and not d.across_classes]
    for title, rows, empty in (("Leaks: val/test images that copy a training image (or, for test, a val image)", leaks, "No leak found."),
                               ("Same image, two labels", conflicts, "No image appears under two labels."),
                               ("Duplicates within a class", others, "No duplicate found.")):
        parts.append(f"<h2>{title} ({len(rows)})</h2>" + duplicates_html(rows, thumbs, empty))
    if result.label_issues is not None:
        parts.append(f"<h2>Likely label errors ({len(result.label_issues)})</h2>"
                     + paragraph(f"Judged by out-of-fold predictions on {result.label_method} and confident "
                                 "learning; most likely first. Score: 1 - the probability of the given label.")
                     + label_issues_html(result.label_issues, thumbs))
    parts.append("<h2>Images per class</h2>" + counts_html(result.profile))
    return page(f"oculi check: {result.data}", STYLE, "".join(parts))


def warnings_html(warnings) -> str:
    if not warnings:
        return paragraph("Nothing to warn about.", "ok")
    return "".join(paragraph(w.message, "warn") for w in warnings)


def duplicates_html(rows, thumbs: Thumbnails, empty: str) -> str:
    if not rows:
        return paragraph(empty, "ok")
    cards = []
    for d in rows[:MAX_SHOWN]:
        tags = (f'<span class="tag">{d.kind}</span>' + ('<span class="tag bad">across splits</span>' * d.across_splits)
                + ('<span class="tag bad">two labels</span>' * d.across_classes))
        cards.append(f'<div class="pair">{thumbs.img(d.path)}{thumbs.img(d.duplicate_of)}<div>{tags}</div>'
                     f'<div class="names">{escape(d.path)}<br>copies {escape(d.duplicate_of)}</div></div>')
    return f'<div class="grid">{"".join(cards)}</div>' + _more(rows, "duplicates.csv")


def label_issues_html(rows: list[dict], thumbs: Thumbnails) -> str:
    if not rows:
        return paragraph("No image stands out as mislabelled.", "ok")
    cards = [f'<div class="pair">{thumbs.img(r["path"])}<div>labelled <b>{escape(r["given"])}</b>, looks like '
             f'<b>{escape(r["suggested"])}</b> (score {r["score"]:.2f})</div><div class="names">'
             f'{escape(r["path"])}</div></div>' for r in rows[:MAX_SHOWN]]
    return f'<div class="grid">{"".join(cards)}</div>' + _more(rows, "label_issues.csv")


def _more(rows: list, csv: str) -> str:
    return paragraph(f"... and {len(rows) - MAX_SHOWN} more, all in {csv}.") if len(rows) > MAX_SHOWN else ""


def counts_html(prof: dict) -> str:
    splits = list(prof["counts"])
    classes = list(next(iter(prof["counts"].values()), {}))
    rows = [[c] + [prof["counts"][s][c] for s in splits] for c in classes]
    size = prof["size"]
    return table_html(["class"] + splits, rows) + paragraph(
        f"Sizes (height x width): smallest {size['min'][0]}x{size['min'][1]}, median {size['median'][0]}x"
        f"{size['median'][1]}, largest {size['max'][0]}x{size['max'][1]}; width/height from {prof['aspect']['min']} "
        f"to {prof['aspect']['max']}; {prof['grayscale']} grayscale.")
