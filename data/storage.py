"""Local paths and `s3://` URIs behind one pyarrow filesystem interface.

Outputs are first written to a staging folder next to the target and published only when
complete, so a failed run never leaves a half-written folder that looks finished. On S3,
where there is no rename, objects are copied into place and the manifest is written last:
a folder counts as complete only when its manifest exists.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

from data.config import Settings

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Location:
    """A folder on some filesystem: `fs` plus a path in that filesystem's own syntax."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def child(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *parts])
        uri = "/".join([self.uri.rstrip("/"), *parts])
        return Location(self.fs, path, uri)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as f:
            return f.read().decode("utf-8")

    def write_text(self, text: str) -> None:
        with self.fs.open_output_stream(self.path) as f:
            f.write(text.encode("utf-8"))

    def list_files(self, suffix: str = "") -> list[str]:
        """Paths of all files below this folder (recursively) ending with `suffix`."""
        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.path.endswith(suffix)
            and not os.path.basename(i.path).startswith((".", "_"))
        )


def s3_filesystem(settings: Settings | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3 client; credentials come from the standard AWS environment variables."""
    settings = settings or Settings.from_env()
    kwargs: dict[str, object] = {}
    if settings.s3_endpoint_url:
        kwargs["endpoint_override"] = settings.s3_endpoint_url
        kwargs["scheme"] = "https" if settings.s3_endpoint_url.startswith("https") else "http"
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        kwargs["region"] = region
    # Explicit keys travel with the pickled filesystem to Ray workers, whose environment
    # may lack them; without keys pyarrow falls back to the usual AWS credential chain.
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | os.PathLike[str], settings: Settings | None = None) -> Location:
    """Turn a local path or an `s3://bucket/prefix` URI into a Location."""
    text = os.fspath(uri)
    if text.startswith("s3://"):
        return Location(s3_filesystem(settings), text[len("s3://") :].rstrip("/"), text)
    if "://" in text:
        raise ValueError(f"{text}: only local paths and s3:// URIs are supported")
    path = os.path.abspath(text)
    return Location(pafs.LocalFileSystem(), path, path)


@contextmanager
def staged_output(target: Location, overwrite: bool) -> Iterator[Location]:
    """Yield a fresh staging folder; on success publish it as `target`, on error delete it.

    An existing complete target (one with a manifest) is refused unless `overwrite`.
    """
    if target.child(MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"{target.uri} already holds a complete output; pass --overwrite")
    parent, name = target.path.rstrip("/").rsplit("/", 1)
    token = uuid.uuid4().hex[:8]
    staging_path = f"{parent}/.{name}.staging-{token}"
    staging_uri = target.uri.rstrip("/").rsplit("/", 1)[0] + f"/.{name}.staging-{token}"
    staging = Location(target.fs, staging_path, staging_uri)
    target.fs.create_dir(staging.path, recursive=True)
    try:
        yield staging
        _publish(staging, target)
    finally:
        if staging.exists():
            target.fs.delete_dir(staging.path)


def _publish(staging: Location, target: Location) -> None:
    if not staging.child(MANIFEST_NAME).exists():
        raise RuntimeError(f"refusing to publish {staging.uri}: it has no {MANIFEST_NAME}")
    if isinstance(target.fs, pafs.LocalFileSystem):
        old = None
        if target.exists():
            old = f"{target.path}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target.path, old)
        os.rename(staging.path, target.path)
        if old:
            target.fs.delete_dir(old)
        return
    # Object stores: hide the old output first (manifest gone = incomplete), copy, manifest last.
    if target.exists():
        target.fs.delete_dir(target.path)
    manifest = staging.child(MANIFEST_NAME).path
    for src in staging.list_files():
        if src != manifest:
            target.fs.copy_file(src, target.path + src[len(staging.path) :])
    target.fs.copy_file(manifest, target.child(MANIFEST_NAME).path)
