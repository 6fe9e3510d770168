"""The exceptions mobilenet-np raises for bad weight files and sources.

Every message names the file it is about and says what is wrong with it, in one line,
so that a command-line user can act on it without a traceback.  Bad *image arrays*
passed to a model raise plain ``ValueError`` instead (the NumPy convention).
"""


class WeightsError(Exception):
    """Base class: a weight source or weights file cannot be used."""


class CorruptFileError(WeightsError):
    """The file is damaged: truncated, bad checksum, inconsistent offsets."""


class UnsupportedFormatError(WeightsError):
    """The file is not a format we read, or a newer version of one."""


class ArchitectureError(WeightsError):
    """The tensors do not match any MobileNet the rules of SPEC.md allow:
    missing or unknown tensors, or tensors of the wrong shape."""


class MissingFileError(WeightsError, FileNotFoundError):
    """A file that the source needs (a shard, a weights file) is absent."""


class DownloadError(WeightsError, ConnectionError):
    """A registry download failed: unreachable, stalled, too slow, too large or cut short.
    The message names the URL actually used (the mirror, when one is set)."""


class ImageError(ValueError):
    """An image file cannot be decoded: empty, truncated, not an image, or a decompression bomb.
    The message is ``"<path>: <reason>"``; both parts are also attributes."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnknownSourceError(WeightsError, KeyError):
    """``mnp.load`` was given a name that is neither an existing file nor a registry name.
    A KeyError too (what earlier versions raised), printed as its plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# Exit statuses of both commands (mobilenet-np, weights-tools), as their --help pages say.
EXIT_OK, EXIT_PARTIAL, EXIT_FAILURE = 0, 1, 2
EXIT_INTERRUPTED = 130
