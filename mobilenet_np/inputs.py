"""What the embedding pipeline reads: image files, folders of images, and lists of paths.

``collect_inputs`` turns what a user named into an ordered list of ``Item`` records (the path
recorded in the output and the path opened).  Deliberately not here: decoding (``preprocess.py``)
and running the model (``pipeline.py``).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from PIL import Image

#: Files given on the command line with these suffixes are lists of image paths, one a line.
LIST_SUFFIXES = (".txt", ".lst")

#: Inside folders, files are images when Pillow can open their extension.
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class Item(NamedTuple):
    """One input image: ``path`` as recorded in the output, ``source`` as opened."""

    path: str
    source: str


def collect_inputs(inputs, recursive: bool = False, skipped: list | None = None) -> list[Item]:
    """The images named by ``inputs``, in order: files as given; folders' images (by extension,
    sorted, recorded relative to the folder; ``recursive`` descends into sub-folders); and the
    lines of ``.txt`` / ``.lst`` list files (relative lines resolved against the list's folder,
    recorded as written).  Missing files are kept: they fail, with a reason, when decoded.

    ``skipped``, if given, receives (path, reason) for what a folder holds but is not taken:
    files of types Pillow cannot open (``.heic``, ``.svg``, ...) and folders that cannot be
    read.  Hidden files (``.name``) are passed over without a word."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    skipped = [] if skipped is None else skipped
    items = []
    for given in map(os.fspath, inputs):
        if os.path.isdir(given):
            items += _folder_items(given, recursive, skipped)
        elif given.lower().endswith(LIST_SUFFIXES) and os.path.isfile(given):
            items += _list_items(given)
        else:
            items.append(Item(given, given))
    return items


def _folder_items(root: str, recursive: bool, skipped: list) -> list[Item]:
    found = []

    def unreadable(error: OSError) -> None:
        reason = "permission denied" if isinstance(error, PermissionError) else (error.strerror or str(error))
        skipped.append((error.filename or root, f"folder not read: {reason}"))

    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        # Without recursion a sub-folder named like an image is an input that fails, not a
        # silent omission; with recursion it is a folder to descend into.
        names = files if recursive else files + subfolders
        for name in names:
            path = os.path.join(folder, name)
            if _is_image_name(name):
                found.append(os.path.relpath(path, root))
            elif name in files and not name.startswith("."):
                kind = os.path.splitext(name)[1].lower() or "no extension"
                skipped.append((path, f"not an image type Pillow reads ({kind})"))
        if not recursive:
            break
    found.sort(key=lambda rel: rel.split(os.sep))
    return [Item(rel.replace(os.sep, "/"), os.path.join(root, rel)) for rel in found]


def _list_items(list_file: str) -> list[Item]:
    base = os.path.dirname(list_file)
    with open(list_file, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [Item(line, os.path.join(base, line)) for line in lines if line]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def text_path(path: str) -> str:
    """A path as UTF-8-safe text (undecodable file-name bytes become backslash escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
