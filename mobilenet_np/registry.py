"""The published TF-Slim MobileNets by name, and the cache that turns a name into a weights file.

Names follow TF-Hub (``mobilenet_v1_050_160``, ``mobilenet_v2_050_96``): architecture, depth
multiplier x 100, input size.  ``resolve(name)`` returns a converted file from the cache
directory (``$MOBILENET_NP_HOME``, default ``~/.cache/mobilenet-np``); when there is none it
downloads the official TF-Slim archive, checks it, converts it and caches the result.  The
download base can be redirected with ``$MOBILENET_NP_MIRROR`` (a local copy, or a test server).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

V1_BASE = "http://download.tensorflow.org/models/mobilenet_v1_2018_02_22/"
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
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        archive = Path(tmp) / entry.archive_name
        _download(download_url(entry), archive, progress, entry, target)
        prefix = _extract_checkpoint(archive, Path(tmp) / "x", entry)
        from weights_tools.convert import convert
        found = convert(prefix, target, weights=weights, input_size=entry.input_size, model_name=name)
        if (found.architecture, found.depth_multiplier) != (entry.architecture, entry.depth_multiplier):
            target.unlink()
            raise RuntimeError(f"{entry.url}: holds {found.describe()}, not {name}")
    return target


def _download(url: str, dest: Path, progress: bool, entry: Entry, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            from tqdm import tqdm
            with tqdm(total=total, unit="B", unit_scale=True, desc=entry.archive_name,
                      disable=not progress or None) as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and dest.stat().st_size != total:
                raise OSError(f"download of {url} stopped after {dest.stat().st_size} of {total} bytes")
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(
            f"cannot download {entry.name} from {url} ({exc}). Offline? Get {entry.url} by other means, "
            f"then run: weights-tools convert <extracted>/{entry.checkpoint} {target} "
            f"--input-size {entry.input_size}") from None


def _extract_checkpoint(archive: Path, into: Path, entry: Entry) -> Path:
    """Unpack the checkpoint files (only those) from the archive and return the prefix."""
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and os.path.basename(m.name).startswith(entry.checkpoint)]
            if not members:
                raise RuntimeError(f"{archive.name}: no {entry.checkpoint}.* files in the archive")
            into.mkdir(parents=True)
            for m in members:
                src = tar.extractfile(m)
                with open(into / os.path.basename(m.name), "wb") as out:
                    shutil.copyfileobj(src, out)
    except tarfile.TarError as exc:
        raise RuntimeError(f"{archive.name}: not a readable .tgz archive ({exc})") from None
    return into / entry.checkpoint
