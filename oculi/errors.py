"""User-facing errors: one line, naming the file or flag, never a traceback."""


def first_line(err: BaseException, limit: int | None = 200) -> str:
    """The first line of ``err``'s message (its type's name when it has none), cut at ``limit`` characters:
    what a one-line error quotes of the exception behind it."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


class OculiError(Exception):
    """A problem with the user's input or options. The CLI prints it as one line and exits 2."""


class ImageDecodeError(OculiError):
    """A file that is not a readable image (corrupt, truncated, empty or another format): ``reason`` says why
    in words, ``kind`` as a short code (the kinds of ``oculi.data.unreadable``)."""

    def __init__(self, path, reason: str, kind: str):
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickled (a child process raising it) with its three arguments, not args' one
        return type(self), (self.path, self.reason, self.kind)


class BundleError(OculiError):
    """A model bundle that is missing, tampered with or does not match its architecture."""


class WeightsUnavailable(OculiError):
    """Pretrained weights that could not be had (offline, or none published): training may go on from
    scratch instead."""


class BundleWarning(UserWarning):
    """A bundle that loads but is less protected than a current one (the CLI prints it as one line)."""
