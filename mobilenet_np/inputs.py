"""What the embedding pipeline reads: image files, folders of images, and lists of paths.

``collect_inputs`` turns what a user named into an ordered list of ``Item`` records (the path
recorded in the output and the path opened).  Deliberately not here: decoding (``preprocess.py``)
and running the model (``pipeline.py``).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import NamedTuple

import numpy as np

#: Files given on the command line with these suffixes are lists of image paths, one a line.
LIST_SUFFIXES = (".txt", ".lst")

@functools.cache
def image_extensions() -> frozenset[str]:
    """Inside folders, files are images when Pillow can open their extension.  (A function, not
    a constant: asking Pillow imports all its format plugins, ~80 ms of every start.)"""
    from PIL import Image       # here: importing Pillow costs ~25 ms, which a model call need not pay
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class Item(NamedTuple):
    """One input image: ``path`` as recorded in the output, ``source`` as opened (a path, or
    an in-memory image: bytes, a file object, a PIL image, an array)."""

    path: str
    source: object


def collect_inputs(inputs, recursive: bool = False, skipped: list | None = None) -> list[Item]:
    """The images named by ``inputs``, in order: files as given; folders' images (by extension,
    sorted; ``recursive`` descends into sub-folders); the lines of ``.txt`` / ``.lst`` list
    files (relative lines resolved against the list's folder); and in-memory images (bytes, file
    objects, PIL images, [H, W, 3] arrays or an [N, H, W, 3] batch), recorded by their file name
    if they have one, else as ``<input i>``.

    Recorded paths are unique and say which file they are: with one folder (or one list) as
    the only input, relative to it (as written in the list); otherwise as the inputs were named,
    relative to the current folder or absolute, so that ``a/x.jpg`` and ``b/x.jpg`` stay apart.
    A file named twice is embedded once.  Missing files are kept: they fail, with a reason,
    when decoded.

    ``skipped``, if given, receives (path, reason) for what a folder holds but is not taken:
    files of types Pillow cannot open (``.heic``, ``.svg``, ...) and folders that cannot be
    read.  Hidden files (``.name``) are passed over without a word."""
    inputs = [inputs] if _is_one_input(inputs) else list(inputs)
    skipped = [] if skipped is None else skipped
    items = []
    for index, given in enumerate(inputs):
        if not isinstance(given, (str, os.PathLike)):
            items.append(Item(_in_memory_name(given, index), given))
            continue
        given = os.fspath(given)
        if os.path.isdir(given):
            found = _folder_items(given, recursive, skipped)
        elif given.lower().endswith(LIST_SUFFIXES) and os.path.isfile(given):
            found = _list_items(given)
        else:
            found = [Item(given, given)]
        items += found if len(inputs) == 1 else [Item(i.source.replace(os.sep, "/"), i.source) for i in found]
    return _first_of_each_path(items)


def _is_one_input(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.ndim < 4
    return isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_pil_image(x) or hasattr(x, "read")


def _is_pil_image(x) -> bool:
    image = sys.modules.get("PIL.Image")        # no PIL image exists before Pillow is imported
    return image is not None and isinstance(x, image.Image)


def _in_memory_name(source, index: int) -> str:
    name = getattr(source, "filename", None) or getattr(source, "name", None)
    return os.fsdecode(name) if isinstance(name, (str, os.PathLike)) and os.fsdecode(name) else f"<input {index}>"


def _first_of_each_path(items: list[Item]) -> list[Item]:
    seen, out = set(), []
    for item in items:
        if not isinstance(item.source, str):      # in memory: always its own image
            out.append(item)
        elif item.path not in seen:
            seen.add(item.path)
            out.append(item)
    return out


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
    return os.path.splitext(name)[1].lower() in image_extensions()


def text_path(path: str) -> str:
    """A path as UTF-8-safe text (undecodable file-name bytes become backslash escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
