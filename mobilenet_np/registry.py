"""The published TF-Slim MobileNets by name, and the cache that turns a name into a weights file.

Names follow TF-Hub (``mobilenet_v1_050_160``, ``mobilenet_v2_050_96``): architecture, depth
multiplier x 100, input size.  ``resolve(name)`` returns a converted file from the cache
directory (``$MOBILENET_NP_HOME``, default ``~/.cache/mobilenet-np``); when there is none it
downloads the official TF-Slim archive, checks it, converts it and caches the result.  The
download base can be redirected with ``$MOBILENET_NP_MIRROR`` (a local copy, or a test server).

Downloads have a stall timeout and an overall timeout, archives a bound on their size and on
what they expand to; only the checkpoint's own ``.index`` and ``.data-*`` members are
extracted, each at most once.  Work happens in a ``.download-<pid>-*`` folder of the cache,
removed on any failure; one left by a killed process is removed by the next run.  Errors name
the URL actually used (the mirror, when set).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptFileError, DownloadError, WeightsError

# Limits on a download (seconds; $MOBILENET_NP_STALL_TIMEOUT / $MOBILENET_NP_DOWNLOAD_TIMEOUT
# override them) and on what an archive may hold.  The largest official archive (V2 1.4/224)
# is about 90 MB and its checkpoint about 50 MB, far below these bounds.
STALL_TIMEOUT = 60.0            # no byte for this long: the download is given up
DOWNLOAD_TIMEOUT = 1800.0       # the whole download must finish within this
MAX_ARCHIVE_BYTES = 1 << 30
MAX_EXTRACTED_BYTES = 2 << 30
CHUNK = 1 << 16

V1_BASE = "https://download.tensorflow.org/models/mobilenet_v1_2018_02_22/"
V2_BASE = "https://storage.googleapis.com/mobilenet_v2/checkpoints/"

V1_WIDTHS = {25: "0.25", 50: "0.5", 75: "0.75", 100: "1.0"}
V1_SIZES = (128, 160, 192, 224)
V2_WIDTHS = {35: "0.35", 50: "0.5", 75: "0.75", 100: "1.0", 130: "1.3", 140: "1.4"}
V2_SIZES = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class Entry:
    name: str                  # mobilenet_v2_050_96
    architecture: str          # mobilenet_v2
    depth_multiplier: float
    input_size: int
    url: str                   # the official TF-Slim checkpoint archive
    checkpoint: str            # the checkpoint prefix inside the archive
    preset: str = "hub"        # default preprocessing: the TF-Hub contract (resize to input size)

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[1]


def _entries() -> dict[str, Entry]:
    out = {}
    for pct, width in V1_WIDTHS.items():
        for size in V1_SIZES:
            stem = f"mobilenet_v1_{width}_{size}"
            out[f"mobilenet_v1_{pct:03d}_{size}"] = Entry(
                f"mobilenet_v1_{pct:03d}_{size}", "mobilenet_v1", float(width), size,
                f"{V1_BASE}{stem}.tgz", f"{stem}.ckpt")
    for pct, width in V2_WIDTHS.items():
        # 1.3 and 1.4 were published at 224 only.
        for size in (V2_SIZES if pct <= 100 else (224,)):
            stem = f"mobilenet_v2_{width}_{size}"
            out[f"mobilenet_v2_{pct:03d}_{size}"] = Entry(
                f"mobilenet_v2_{pct:03d}_{size}", "mobilenet_v2", float(width), size,
                f"{V2_BASE}{stem}.tgz", f"{stem}.ckpt")
    return out


REGISTRY: dict[str, Entry] = _entries()


def list_models() -> list[str]:
    return sorted(REGISTRY, key=lambda n: (REGISTRY[n].architecture, REGISTRY[n].depth_multiplier,
                                           REGISTRY[n].input_size))


def cache_dir() -> Path:
    env = os.environ.get("MOBILENET_NP_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mobilenet-np"


def download_url(entry: Entry) -> str:
    mirror = os.environ.get("MOBILENET_NP_MIRROR")
    return mirror.rstrip("/") + "/" + entry.archive_name if mirror else entry.url


def resolve(name: str, weights: str = "ema", progress: bool = True) -> Path:
    """The cached weights file for a registry name, downloading and converting it if needed."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; 'mobilenet-np list' shows the {len(REGISTRY)} known names")
    entry = REGISTRY[name]
    target = cache_dir() / f"{name}.h5"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_downloads(target.parent)
    url = download_url(entry)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".download-{os.getpid()}-") as tmp:
        archive = Path(tmp) / entry.archive_name
        _download(url, archive, progress, entry, target)
        prefix = _extract_checkpoint(archive, Path(tmp) / "x", entry, url)
        from weights_tools.convert import convert
        converted = Path(tmp) / "converted.h5"
        try:
            found = convert(prefix, converted, weights=weights, input_size=entry.input_size, model_name=name)
        except WeightsError as exc:
            raise type(exc)(f"archive from {url}: {exc}") from None
        if (found.architecture, found.depth_multiplier) != (entry.architecture, entry.depth_multiplier):
            raise CorruptFileError(f"{url}: holds {found.describe()}, not {name}")
        os.replace(converted, target)
    return target


def remove_stale_downloads(folder: Path, max_age: float = 24 * 3600) -> list[Path]:
    """Remove the ``.download-<pid>-*`` work folders of processes that no longer run (killed
    mid-download or mid-extraction), and unnamed ones older than ``max_age`` seconds."""
    removed = []
    for path in folder.glob(".download-*"):
        match = re.fullmatch(r"\.download-(\d+)-.*", path.name)
        if match:
            stale = not _process_alive(int(match[1]))
        else:
            try:
                stale = time.time() - path.stat().st_mtime > max_age
            except FileNotFoundError:
                continue
        if stale and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:           # it exists, under another user
        return True
    return True


def _seconds(variable: str, default: float) -> float:
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        raise ValueError(f"${variable} must be a number of seconds, got {os.environ[variable]!r}") from None
    if not value > 0:
        raise ValueError(f"${variable} must be positive, got {value}")
    return value


def _download(url: str, dest: Path, progress: bool, entry: Entry, target: Path) -> None:
    """Fetch ``url`` into ``dest``: no more than MAX_ARCHIVE_BYTES, no stall longer than the
    stall timeout, all of it within the overall timeout, and exactly Content-Length bytes."""
    import urllib.error         # here: 45 ms of every start otherwise, for a download that is rare
    import urllib.request
    stall = _seconds("MOBILENET_NP_STALL_TIMEOUT", STALL_TIMEOUT)
    overall = _seconds("MOBILENET_NP_DOWNLOAD_TIMEOUT", DOWNLOAD_TIMEOUT)
    deadline = time.monotonic() + overall
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=stall) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            if total is not None and total > MAX_ARCHIVE_BYTES:
                raise DownloadError(f"{url}: the archive is {total} bytes, more than the {MAX_ARCHIVE_BYTES} allowed")
            from tqdm import tqdm
            with tqdm(total=total, unit="B", unit_scale=True, desc=entry.archive_name,
                      disable=not progress or None) as bar:
                # read1 returns what one receive brings, so a server that trickles bytes
                # cannot keep a read waiting past the deadline.
                while chunk := resp.read1(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                    if written > MAX_ARCHIVE_BYTES:
                        raise DownloadError(f"{url}: more than {MAX_ARCHIVE_BYTES} bytes; not a MobileNet archive")
                    if time.monotonic() > deadline:
                        raise DownloadError(f"{url}: download not finished after {overall:g} s "
                                            "($MOBILENET_NP_DOWNLOAD_TIMEOUT)")
        if total is not None and written != total:
            raise DownloadError(f"{url}: download stopped after {written} of {total} bytes")
    except (urllib.error.URLError, OSError, DownloadError) as exc:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            exc = f"no data for {stall:g} s ($MOBILENET_NP_STALL_TIMEOUT)"
        raise DownloadError(
            f"cannot download {entry.name} from {url} ({exc}). Offline? Get {entry.url} by other means, "
            f"then run: weights-tools convert <extracted>/{entry.checkpoint} {target} "
            f"--input-size {entry.input_size}") from None


def _checkpoint_member(name: str, entry: Entry) -> bool:
    """The members the converter needs: the checkpoint's index and its data shards."""
    base = os.path.basename(name)
    return base == f"{entry.checkpoint}.index" or re.fullmatch(
        re.escape(entry.checkpoint) + r"\.data-\d{5}-of-\d{5}", base) is not None


def _extract_checkpoint(archive: Path, into: Path, entry: Entry, url: str) -> Path:
    """Unpack the checkpoint files (only those, each once, within MAX_EXTRACTED_BYTES) from the
    archive and return the prefix.  Errors name ``url``, where the archive came from."""
    import tarfile      # here: only a checkpoint download needs it, not every start
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and _checkpoint_member(m.name, entry)]
            bases = [os.path.basename(m.name) for m in members]
            twice = sorted({b for b in bases if bases.count(b) > 1})
            if twice:
                raise CorruptFileError(f"{url}: the archive holds {', '.join(twice)} more than once; refused")
            if f"{entry.checkpoint}.index" not in bases:
                raise CorruptFileError(f"{url}: no {entry.checkpoint}.index in the archive")
            if sum(m.size for m in members) > MAX_EXTRACTED_BYTES:
                raise CorruptFileError(f"{url}: the checkpoint files expand to more than "
                                       f"{MAX_EXTRACTED_BYTES} bytes; refused")
            into.mkdir(parents=True)
            for m, base in zip(members, bases, strict=True):
                with tar.extractfile(m) as src, open(into / base, "wb") as out:
                    _copy_at_most(src, out, m.size, url)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CorruptFileError(f"{url}: not a readable .tgz archive ({type(exc).__name__}: {exc})") from None
    return into / entry.checkpoint


def _copy_at_most(src, out, size: int, url: str) -> None:
    """Copy a member, refusing more bytes than its header declared."""
    left = size
    while chunk := src.read(min(CHUNK, left + 1)):
        left -= len(chunk)
        if left < 0:
            raise CorruptFileError(f"{url}: an archive member holds more than its declared {size} bytes")
        out.write(chunk)
