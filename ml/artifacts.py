"""Artifact integrity: a model folder's digest, and the files in it that could unpickle code.

Whoever can write the artifact store must not be able to run code in a serving replica: the
registry records a digest of each version's predictor folder at registration, and loaders refuse
a folder whose digest differs or that holds a pickle (our predictors never write one).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Extensions of files that are, or usually wrap, pickles (torch .bin/.pt/.pth/.ckpt, joblib).
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".bin", ".pt", ".pth", ".joblib", ".ckpt"})
PICKLE_PROTOCOLS = range(2, 6)  # the PROTO opcode (0x80) is followed by the protocol number
_CHUNK = 1 << 20


class UnsafeModel(RuntimeError):
    """A model version that must not be loaded; the message names it and the problem, never file
    contents, so it can travel to health checks and logs."""

    def __init__(self, name: str, version: str | int, problem: str):
        self.name, self.version, self.problem = name, str(version), problem
        super().__init__(f"{name} v{version}: {problem}")

    def __reduce__(self):  # keep the three fields through pickling (Ray ships it to the caller)
        return type(self), (self.name, self.version, self.problem)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[tuple[str, Path]]:
    return sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())


def digest(folder: str | Path) -> str:
    """sha256 of a folder's files, names included.

    Scheme: for every regular file under `folder` (recursively; folders themselves do not count),
    take its path relative to `folder` in POSIX form and the hex sha256 of its bytes; sort by that
    path; the digest is the hex sha256 of the UTF-8 lines `<path>\\0<file sha256>\\n`, concatenated.
    So renaming, adding, removing or changing any file changes it; where the folder lives does not.
    """
    h = hashlib.sha256()
    for rel, path in _files(Path(folder)):
        h.update(f"{rel}\0{_file_sha256(path)}\n".encode())
    return h.hexdigest()


def _is_safetensors(path: Path, head: bytes) -> bool:
    """A well-formed safetensors file: an 8-byte little-endian header length, then a JSON object.
    (Its first byte can be 0x80 by chance, e.g. a 640-byte header.)"""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    size = int.from_bytes(head[:8], "little")
    if size > path.stat().st_size - 8 or size > 100 * _CHUNK:
        return False
    with path.open("rb") as f:
        f.seek(8)
        try:
            return isinstance(json.loads(f.read(size)), dict)
        except ValueError:
            return False


def _looks_pickled(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 2 or head[0] != 0x80 or head[1] not in PICKLE_PROTOCOLS:
        return False
    return not _is_safetensors(path, head)


def find_pickles(folder: str | Path) -> list[str]:
    """Relative paths of the files that are pickles or may hold them: a pickle-ish extension, or
    content that starts like a pickle (0x80 then protocol 2..5). XGBoost's UBJSON/JSON and JSON
    files start with `{`; safetensors is recognised by its header and not flagged."""
    return [
        rel
        for rel, path in _files(Path(folder))
        if path.suffix.lower() in PICKLE_SUFFIXES or _looks_pickled(path)
    ]
