"""File helpers shared by every part of the package (no torch, no rclpy): hashing and atomic writes."""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks."""
    return files_sha256([path], chunk)


def files_sha256(paths: Iterable[str | Path], chunk: int = 1 << 20) -> str:
    """One hex sha256 over several files' bytes in order (an ONNX and its external-data file, say)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    """This process's umask. Read from /proc where it exists (Linux >= 4.7): ``os.umask`` can only be read by
    setting it, which races with threads creating files."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_open_mode(path: str | Path) -> int:
    """The permission bits ``open(path, "w")`` would leave: an existing file keeps its own, a new one gets
    0o666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The temporary file has a unique name in the same folder (two processes writing one path at once do not
    share it), is flushed to disk, then renamed over ``path``. It gets the mode a plain ``open()`` would give
    (``mkstemp`` makes it 0600, which would hide a sidecar from a node running as another user).
    """
    path = Path(path)
    mode = plain_open_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
