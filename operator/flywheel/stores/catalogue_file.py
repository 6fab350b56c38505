"""The rule catalogue file on disk, as a mounted ConfigMap keeps it.

The kubelet updates a mounted ConfigMap in place without ever rewriting the file the
operator opened: it writes the new version into a fresh timestamped directory and swaps the
``..data`` symlink to it, so ``rules.yaml`` → ``..data/rules.yaml`` resolves to another file.
An inotify watch on the path would watch the old inode and miss the swap; polling the
*resolved* path's identity (real path, inode, size, mtime) notices it, and costs one
``stat`` per poll. The content hash decides whether anything changed: a swap that brings the
same bytes (a ConfigMap re-applied unchanged) is no new version.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from flywheel.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What a ``stat`` of the resolved path says; another identity means: read it again."""

    real_path: str
    inode: int
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class FileVersion:
    """One version of the file: its bytes and their SHA-256."""

    identity: FileIdentity
    data: bytes
    digest: str

    def text(self) -> str:
        """The content as text; :class:`ConfigurationError` when it is not UTF-8."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"not UTF-8 text: {exc}") from exc


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CatalogueFile:
    """Reads the catalogue file; every error is a :class:`ConfigurationError` naming the path."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def identity(self) -> FileIdentity:
        try:
            real_path = os.path.realpath(self.path)
            stat = os.stat(real_path)
        except OSError as exc:
            raise ConfigurationError(f"rule catalogue {self.path}: cannot be read: {exc.strerror or exc}") from exc
        return FileIdentity(real_path, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def read(self) -> FileVersion:
        identity = self.identity()
        try:
            data = Path(identity.real_path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"rule catalogue {self.path}: cannot be read: {exc.strerror or exc}") from exc
        return FileVersion(identity, data, content_digest(data))


__all__ = ["CatalogueFile", "FileIdentity", "FileVersion", "content_digest"]
