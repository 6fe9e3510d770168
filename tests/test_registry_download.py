"""The registry download (issue 13), against local HTTP servers on 127.0.0.1 only: sizes at
64 KiB boundaries, stalls and trickles, truncated and hostile archives, stale work folders,
and errors that name the URL actually used.  No TensorFlow is needed: archives are built here."""

import functools
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from mobilenet_np import registry
from mobilenet_np.errors import CorruptFileError, DownloadError, WeightsError

NAME = "mobilenet_v1_050_160"
ENTRY = registry.REGISTRY[NAME]


class _Handler(http.server.SimpleHTTPRequestHandler):
    trickle = None              # seconds between single bytes, or None to serve normally
    stall = None                # seconds to wait after the headers

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.trickle is None and self.stall is None:
            return super().do_GET()
        try:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            if self.stall:
                time.sleep(self.stall)
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(self.trickle or 0)
        except OSError:
            pass                 # the client gave up, as it should


@pytest.fixture
def serve(tmp_path):
    """serve(files, trickle=None, stall=None) -> base URL of a server holding ``files``."""
    servers = []

    def start(files: dict[str, bytes], **behaviour):
        folder = tmp_path / f"served{len(servers)}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        handler = functools.partial(type("H", (_Handler,), behaviour), directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENET_NP_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tgz(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_v1_base_url_is_https():
    assert registry.V1_BASE.startswith("https://") and ENTRY.url.startswith("https://")
    assert all(e.url.startswith("https://") for e in registry.REGISTRY.values())


@pytest.mark.parametrize("size", [1 << 16, (1 << 16) + 1, (1 << 16) + 8191, 3 * (1 << 16) + 100, 5000])
def test_archives_of_any_size_download_whole(serve, tmp_path, size):
    """The size check used to run before the file was flushed: 1-8191 bytes past a multiple of
    64 KiB were refused."""
    data = os.urandom(size)
    url = serve({ENTRY.archive_name: data}) + "/" + ENTRY.archive_name
    dest = tmp_path / "got.tgz"
    registry._download(url, dest, False, ENTRY, tmp_path / "t.h5")
    assert dest.read_bytes() == data


@pytest.mark.parametrize("behaviour, timeouts, message", [
    ({"stall": 30}, {"MOBILENET_NP_STALL_TIMEOUT": "1"}, r"127\.0\.0\.1.*no data for 1 s"),
    # One byte every 0.2 s never trips the stall timeout; the overall one ends it.
    ({"trickle": 0.2}, {"MOBILENET_NP_STALL_TIMEOUT": "5", "MOBILENET_NP_DOWNLOAD_TIMEOUT": "2"},
     r"not finished after 2 s"),
])
def test_stalled_or_trickling_servers_time_out(serve, tmp_path, monkeypatch, behaviour, timeouts, message):
    url = serve({}, **behaviour) + "/" + ENTRY.archive_name
    for variable, value in timeouts.items():
        monkeypatch.setenv(variable, value)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=message):
        registry._download(url, tmp_path / "a.tgz", False, ENTRY, tmp_path / "t.h5")
    assert time.monotonic() - start < 8


def test_archive_too_large_is_refused(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "MAX_ARCHIVE_BYTES", 1000)
    url = serve({ENTRY.archive_name: bytes(5000)}) + "/" + ENTRY.archive_name
    with pytest.raises(DownloadError, match="more than the 1000 allowed"):
        registry._download(url, tmp_path / "a.tgz", False, ENTRY, tmp_path / "t.h5")


def _resolve_from(serve, monkeypatch, archive: bytes):
    base = serve({ENTRY.archive_name: archive})
    monkeypatch.setenv("MOBILENET_NP_MIRROR", base)
    return base + "/" + ENTRY.archive_name


def test_truncated_archive_is_a_clear_error_naming_the_mirror(serve, cache, monkeypatch):
    archive = _tgz([(f"./{ENTRY.checkpoint}.index", os.urandom(50_000))])
    url = _resolve_from(serve, monkeypatch, archive[: len(archive) // 2])
    with pytest.raises(CorruptFileError, match="not a readable .tgz archive") as info:
        registry.resolve(NAME, progress=False)
    assert str(info.value).startswith(url) and ENTRY.url not in str(info.value)
    assert not list(cache.glob(".download-*")) and not (cache / f"{NAME}.h5").exists()


def test_wrong_contents_are_blamed_on_the_mirror(serve, cache, monkeypatch):
    url = _resolve_from(serve, monkeypatch, _tgz([("./README", b"nothing here")]))
    with pytest.raises(CorruptFileError, match=f"no {ENTRY.checkpoint}.index in the archive") as info:
        registry.resolve(NAME, progress=False)
    assert str(info.value).startswith(url) and "download.tensorflow.org" not in str(info.value)


def test_unconvertible_checkpoint_is_blamed_on_the_mirror(serve, cache, monkeypatch):
    members = [(f"./{ENTRY.checkpoint}.index", b"not an sstable" * 10),
               (f"./{ENTRY.checkpoint}.data-00000-of-00001", b"")]
    url = _resolve_from(serve, monkeypatch, _tgz(members))
    with pytest.raises(WeightsError) as info:
        registry.resolve(NAME, progress=False)
    assert str(info.value).startswith(f"archive from {url}: ")


def test_a_second_member_with_the_index_name_is_refused(serve, cache, monkeypatch):
    """A later member with the same base name used to replace the real index silently."""
    members = [(f"./{ENTRY.checkpoint}.index", b"real"), (f"./{ENTRY.checkpoint}.data-00000-of-00001", b"d"),
               (f"./evil/{ENTRY.checkpoint}.index", b"fake")]
    _resolve_from(serve, monkeypatch, _tgz(members))
    with pytest.raises(CorruptFileError, match=rf"{ENTRY.checkpoint}\.index more than once"):
        registry.resolve(NAME, progress=False)


def test_extracted_size_is_bounded(serve, cache, monkeypatch):
    """A few kB of .tgz that expand to 8 MB (zeros compress well) against a 4 MB bound."""
    monkeypatch.setattr(registry, "MAX_EXTRACTED_BYTES", 4 << 20)
    members = [(f"./{ENTRY.checkpoint}.index", b"i"), (f"./{ENTRY.checkpoint}.data-00000-of-00001", bytes(8 << 20))]
    archive = _tgz(members)
    assert len(archive) < 64 << 10
    _resolve_from(serve, monkeypatch, archive)
    with pytest.raises(CorruptFileError, match="expand to more than 4194304 bytes"):
        registry.resolve(NAME, progress=False)
    assert not list(cache.glob(".download-*"))


def test_stale_download_folders_are_removed_on_the_next_run(cache, monkeypatch):
    """A process killed during extraction leaves its .download-<pid>-* folder; the next run
    removes it, but never the folder of a process that still runs."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = cache / f".download-{int(dead.stdout)}-abc123"
    (stale / "x").mkdir(parents=True)
    (stale / "x" / "big.data").write_bytes(bytes(1 << 20))
    live = cache / f".download-{os.getpid()}-def456"
    live.mkdir()
    old_style = cache / ".download-k2j3h4"
    old_style.mkdir()
    os.utime(old_style, (time.time() - 3 * 24 * 3600,) * 2)
    monkeypatch.setenv("MOBILENET_NP_MIRROR", "http://127.0.0.1:9")     # nothing listens: the run fails
    with pytest.raises(DownloadError, match=r"http://127\.0\.0\.1:9/"):
        registry.resolve(NAME, progress=False)
    assert not stale.exists() and not old_style.exists() and live.exists()


def test_kill_during_extraction_leaves_a_folder_the_next_run_removes(serve, cache, monkeypatch, tmp_path):
    """Kill a real run (SIGKILL) while it extracts a large member; the next run cleans up."""
    members = [(f"./{ENTRY.checkpoint}.index", b"i"), (f"./{ENTRY.checkpoint}.data-00000-of-00001", os.urandom(48 << 20))]
    archive = tmp_path / "big.tgz"
    with tarfile.open(archive, "w") as tar:            # uncompressed: the copy itself takes time
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    base = serve({ENTRY.archive_name: archive.read_bytes()})
    env = {**os.environ, "MOBILENET_NP_MIRROR": base, "MOBILENET_NP_HOME": str(cache),
           "PYTHONPATH": os.getcwd()}
    code = ("import mobilenet_np.registry as r, sys\n"
            "orig = r._copy_at_most\n"
            "def slow(*a):\n    print('extracting', flush=True)\n    import time; time.sleep(60)\n"
            "r._copy_at_most = slow\n"
            f"r.resolve({NAME!r}, progress=False)\n")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "extracting"
        assert list(cache.glob(".download-*"))
    finally:
        child.kill()
        child.wait()
    assert list(cache.glob(".download-*"))             # the kill left it behind
    monkeypatch.setenv("MOBILENET_NP_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(DownloadError):
        registry.resolve(NAME, progress=False)
    assert not list(cache.glob(".download-*"))
