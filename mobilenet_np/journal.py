"""The ``embed`` command's journal: an append-only record of finished batches beside the output.

One checksummed record per finished batch, flushed and fsynced.  After a crash or a SIGKILL at
any moment, the same command with ``--resume`` drops a torn last record, continues with the next
unrecorded input, and writes the same file an uninterrupted run would have written.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from typing import Iterator

import numpy as np

from .inputs import Item
from .pipeline import EmbedResult

_JOURNAL_MAGIC = b"mobilenet-np embed journal 1\n"
_RECORD = struct.Struct("<4sQI")  # tag, payload length, CRC-32 of the payload
_RECORD_TAG = b"REC1"
_META_LENGTH = struct.Struct("<I")


class Journal:
    """Append-only record of the finished batches of one ``embed`` run.

    Layout: a magic line, a record holding the run's identity (model, preset, the ordered
    inputs), then one record per batch: the length of a JSON part (paths, failures), the
    JSON, then the float32 features.  Each record carries its length and CRC-32 and is flushed and
    fsynced before the next batch starts, so a torn or garbled tail is detected on reading
    and cut off; everything before it is intact.
    """

    def __init__(self, path: str, identity: dict, width: int, resume: bool):
        self.path, self.width = path, width
        self.items_done, self.rows, self.failures = 0, 0, []
        self._identity = json.dumps(identity, sort_keys=True).encode()
        self.resumed = resume and os.path.exists(path) and self._replay()
        if not self.resumed:
            self._file = open(path, "w+b")
            self._file.write(_JOURNAL_MAGIC)
            self._append(self._identity)
            self._data_start = self._file.tell()

    @classmethod
    def read(cls, path: str, width: int) -> "Journal":
        """An existing journal opened read-only, its intact records counted (what the output
        writer needs: ``rows``, ``failures``, ``batches()``)."""
        self = cls.__new__(cls)
        self.path, self.width = path, width
        self.items_done, self.rows, self.failures = 0, 0, []
        self._file = open(path, "rb")
        records = _read_records(self._file) if self._file.read(len(_JOURNAL_MAGIC)) == _JOURNAL_MAGIC else iter(())
        identity = next(records, None)
        if identity is None:
            self._file.close()
            raise ValueError(f"{path}: not a readable embed journal")
        self._data_start = identity[0]
        for _, payload in records:
            self._count(_decode_batch(payload, width))
        return self

    def _replay(self) -> bool:
        """Read an existing journal; False if it is unusable (then the run starts over)."""
        self._file = open(self.path, "r+b")
        if self._file.read(len(_JOURNAL_MAGIC)) != _JOURNAL_MAGIC:
            self._file.close()
            return False
        records = _read_records(self._file)
        identity = next(records, None)
        if identity is None:
            self._file.close()
            return False
        if identity[1] != self._identity:
            self._file.close()
            raise ValueError(f"{self.path} was written by a different run (model, preset or inputs differ); "
                             "delete it or run without --resume")
        self._data_start = good_end = identity[0]
        for good_end, payload in records:
            self._count(_decode_batch(payload, self.width))
        self._file.truncate(good_end)  # a torn last record
        self._file.seek(good_end)
        return True

    def append(self, batch: EmbedResult) -> None:
        self._append(_encode_batch(batch))
        self._count(batch)

    def batches(self) -> Iterator[EmbedResult]:
        """The recorded batches from the start, checksums verified."""
        self._file.seek(self._data_start)
        rows = 0
        for _, payload in _read_records(self._file):
            batch = _decode_batch(payload, self.width)
            rows += len(batch.paths)
            yield batch
        if rows != self.rows:
            raise RuntimeError(f"{self.path}: {rows} rows readable of the {self.rows} written; "
                               "the journal was changed during the run")

    def close(self) -> None:
        self._file.close()

    def remove(self) -> None:
        self.close()
        os.remove(self.path)

    def _count(self, batch: EmbedResult) -> None:
        self.items_done += len(batch.paths) + len(batch.failures)
        self.rows += len(batch.paths)
        self.failures += batch.failures

    def _append(self, payload: bytes) -> None:
        self._file.write(_RECORD.pack(_RECORD_TAG, len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        os.fsync(self._file.fileno())


class OutputLock:
    """Only one run writes an output at a time: an exclusive ``flock`` on ``OUT.lock``, which
    holds the owner's process id so that a second run can say who has it.  Taken before the
    journal is opened (a second run would otherwise truncate the first one's journal) and
    released, and the file removed, when the run ends; the kernel drops the lock of a killed
    process, so a crash never leaves an output locked."""

    def __init__(self, output: str):
        self.path = f"{output}.lock"
        self._fd = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputBusyError(f"{self.path[:-5]} is being written by another run (process {owner}); "
                                      "wait for it to finish or stop it") from None
            # A run that just finished may have removed the file we opened: lock the current one.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.unlink(self.path)           # while still locked: no other run holds this inode
        except FileNotFoundError:
            pass
        os.close(self._fd)


class OutputBusyError(OSError):
    """Another process holds the output's lock."""


def _read_records(f) -> Iterator[tuple[int, bytes]]:
    """(end offset, payload) of each intact record from the current position; stops at the
    first short, garbled or checksum-failing one."""
    size = os.fstat(f.fileno()).st_size
    while True:
        head = f.read(_RECORD.size)
        if len(head) < _RECORD.size:
            return
        tag, length, crc = _RECORD.unpack(head)
        if tag != _RECORD_TAG or length > size - f.tell():
            return
        payload = f.read(length)
        if zlib.crc32(payload) != crc:
            return
        yield f.tell(), payload


def _encode_batch(batch: EmbedResult) -> bytes:
    meta = json.dumps({"paths": batch.paths, "failures": batch.failures}).encode()
    return _META_LENGTH.pack(len(meta)) + meta + np.ascontiguousarray(batch.features, "<f4").tobytes()


def _decode_batch(payload: bytes, width: int) -> EmbedResult:
    (meta_length,) = _META_LENGTH.unpack_from(payload)
    meta = json.loads(payload[_META_LENGTH.size : _META_LENGTH.size + meta_length])
    features = np.frombuffer(payload, "<f4", offset=_META_LENGTH.size + meta_length).reshape(-1, width)
    return EmbedResult(meta["paths"], features.astype(np.float32), [tuple(f) for f in meta["failures"]])


def run_identity(model, preset: str, items: list[Item]) -> dict:
    """What makes two runs "the same command" for ``--resume``: the weights (by digest, so a
    copy of the file under another name is the same model), the preprocessing, the inputs."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(os.fsencode(item.path) + b"\0" + os.fsencode(item.source) + b"\0")
    return {"weights_sha256": model.weights_sha256, "preset": preset,
            "input_size": list(model.input_size), "inputs_sha256": digest.hexdigest()}
