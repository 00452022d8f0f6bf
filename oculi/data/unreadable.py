"""Why an image could not be read, as a value: ``Unreadable(kind, reason)``.

Preparing an image (``oculi.data.contained``) gives its pixels or an ``Unreadable``: ``kind`` is a short code
that a program reads (``oculi serve`` answers each kind with its error code), ``reason`` the words a person
reads (the CLI's warnings, skipped.csv, the server's messages), e.g. ``Unreadable("truncated", "truncated or
corrupt image data")``. It is a plain frozen dataclass, so it pickles: worker processes send it back to the
process that asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ImageDecodeError

# The kinds, each with the reason it is given (decode.py words some with a detail: "image too large (...)").
NOT_AN_IMAGE = "not_an_image"  # "not an image": PIL recognises none of the formats in the bytes
UNSUPPORTED_FORMAT = "unsupported_format"  # "unsupported format": a file name ending in no image extension
EMPTY_FILE = "empty_file"  # "empty file"
CANNOT_READ = "cannot_read"  # "cannot read file (...)": the operating system refused to read it
TRUNCATED = "truncated"  # "truncated or corrupt image data": the header read, the pixels did not
TOO_LARGE = "too_large"  # "image too large (...)": more pixels than max_image_pixels()
DECODER_CRASHED = "decoder_crashed"  # "decoder crashed": the process decoding it died
KINDS = (NOT_AN_IMAGE, UNSUPPORTED_FORMAT, EMPTY_FILE, CANNOT_READ, TRUNCATED, TOO_LARGE, DECODER_CRASHED)


@dataclass(frozen=True)
class Unreadable:
    """An image that could not be read: ``kind`` (one of ``KINDS``) and ``reason``, the message users see."""

    kind: str
    reason: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind of unreadable image {self.kind!r}; the kinds are {', '.join(KINDS)}")

    @classmethod
    def of(cls, err: ImageDecodeError) -> "Unreadable":
        return cls(err.kind, err.reason)


CRASHED = Unreadable(DECODER_CRASHED, "decoder crashed")
