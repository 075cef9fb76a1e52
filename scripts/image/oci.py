"""Writes the vfleet image as an OCI image archive from a root filesystem, without Docker.

One layer (the root filesystem: a tar, as mmdebstrap writes it, or a directory), the image
config (user, entrypoint, environment, labels) and the manifest, laid out as an OCI image
layout (`oci-layout`, `index.json`, `blobs/sha256/...`) in one tar. The same tar also carries a
Docker `manifest.json` naming the same blobs, so `docker load` (any version), `podman load`
and `skopeo copy oci-archive:FILE docker://REGISTRY/...` all take it.

Output is reproducible: entries are sorted, owners numeric, times clamped to
SOURCE_DATE_EPOCH, gzip without a name or time. The image config lives here and nowhere else;
the Dockerfile states the same (tests/test_image.py checks that they agree).

    python3 scripts/image/oci.py --rootfs rootfs.tar --out vfleet.oci.tar --version 0.1.0
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"

USER = "10001:10001"
HOME = "/home/vfleet"
VENV = "/opt/vfleet"
ENTRYPOINT = [f"{VENV}/bin/vfleet"]
ENV = [
    f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"HOME={HOME}",
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
]
# Paths a root filesystem must not carry into the image: credentials of whoever built it.
SECRET_NAMES = (".netrc", ".git-credentials", ".pypirc", "pip.conf", "id_rsa", "id_ed25519")
SECRET_DIRS = ("root/.ssh", "root/.docker", "root/.aws", "root/.cache", "tmp/wheels")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageInfo:
    """What the labels say about the image."""

    version: str
    revision: str = ""
    created: int = 0  # seconds since the epoch (SOURCE_DATE_EPOCH)
    source: str = "https://github.com/vfleet/vfleet"
    ref: str = ""  # the name a loader gives it; default vfleet/vfleet:VERSION
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def ref_name(self) -> str:
        return self.ref or f"vfleet/vfleet:{self.version}"


def labels(info: ImageInfo) -> dict[str, str]:
    out = {
        "org.opencontainers.image.title": "vfleet",
        "org.opencontainers.image.description": "vfleet: router, downloader, simulator",
        "org.opencontainers.image.version": info.version,
        "org.opencontainers.image.source": info.source,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": _iso(info.created),
    }
    if info.revision:
        out["org.opencontainers.image.revision"] = info.revision
    return {**out, **info.extra_labels}


def image_config(info: ImageInfo, diff_id: str) -> dict[str, Any]:
    """The OCI image config of a one-layer linux/amd64 image."""
    return {
        "created": _iso(info.created),
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": USER,
            "Env": list(ENV),
            "Entrypoint": list(ENTRYPOINT),
            "WorkingDir": HOME,
            "Labels": labels(info),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": _iso(info.created), "created_by": "scripts/image/build.sh"}],
    }


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def secret_paths(names: list[str]) -> list[str]:
    """Entries of a layer that look like a builder's credentials."""
    found = []
    for name in names:
        clean = _relative(name)
        base = clean.rsplit("/", 1)[-1]
        if base in SECRET_NAMES or any(
            clean == d or clean.startswith(d + "/") for d in SECRET_DIRS
        ):
            found.append(clean)
    return found


def _members(source: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """The entries of a rootfs tar (or directory), device nodes left out: runtimes make /dev."""
    if source.is_dir():
        yield from _dir_members(source)
        return
    with tarfile.open(source) as tar:
        for info in tar:
            if info.ischr() or info.isblk() or info.isfifo():
                continue
            yield info, tar.extractfile(info) if info.isreg() else None


def _dir_members(root: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    paths = sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
    first_of: dict[tuple[int, int], str] = {}  # hard links: (device, inode) -> first name
    for path in paths:
        st = path.lstat()
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            continue
        info = tarfile.TarInfo(path.relative_to(root).as_posix())
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.mtime = int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            yield info, None
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            yield info, None
        elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in first_of:
            info.type, info.linkname = tarfile.LNKTYPE, first_of[(st.st_dev, st.st_ino)]
            yield info, None
        else:
            if st.st_nlink > 1:
                first_of[(st.st_dev, st.st_ino)] = info.name
            info.size = st.st_size
            with path.open("rb") as fh:
                yield info, fh


def _relative(name: str) -> str:
    """A tar entry's name as layers write it: no leading ./ or /."""
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return "" if name == "." else name


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes (and counts) what passes through to `inner`."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += len(view)
        self.inner.write(view)
        return len(view)


def write_layer(source: Path, out: BinaryIO, created: int) -> tuple[str, str, int, list[str]]:
    """The rootfs as a gzipped, normalized tar on `out`: (diff_id, digest, size, names)."""
    outer = _Hashing(out)
    names: list[str] = []
    with gzip.GzipFile(filename="", mode="wb", fileobj=outer, mtime=0, compresslevel=6) as gz:
        inner = _Hashing(gz)  # type: ignore[arg-type]
        with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for info, data in _members(source):
                name = _relative(info.name)
                if not name:
                    continue
                info.name = name
                if info.islnk():  # a hard link names another entry of the layer
                    info.linkname = _relative(info.linkname)
                info.mtime = min(int(info.mtime), created) if created else int(info.mtime)
                info.uname = info.gname = ""
                info.pax_headers = {}
                names.append(name)
                tar.addfile(info, data)
    return f"sha256:{inner.sha.hexdigest()}", f"sha256:{outer.sha.hexdigest()}", outer.size, names


def write_archive(source: Path, out: Path, info: ImageInfo) -> dict[str, Any]:
    """The OCI image archive of `source` at `out`; returns the manifest it holds."""
    with tempfile.TemporaryDirectory(prefix="vfleet-oci-", dir=out.parent) as tmp:
        layer_path = Path(tmp) / "layer"
        with layer_path.open("wb") as fh:
            diff_id, layer_digest, layer_size, names = write_layer(source, fh, info.created)
        leaked = secret_paths(names)
        if leaked:
            raise SystemExit(f"the root filesystem holds credentials: {', '.join(leaked[:5])}")
        config = _blob(image_config(info, diff_id))
        manifest_doc = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
            "annotations": {"org.opencontainers.image.created": _iso(info.created)},
        }
        manifest = _blob(manifest_doc)
        index = _blob(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_INDEX,
                "manifests": [
                    {
                        "mediaType": MEDIA_MANIFEST,
                        "digest": _digest(manifest),
                        "size": len(manifest),
                        "platform": {"architecture": "amd64", "os": "linux"},
                        "annotations": {
                            # containerd/docker read the full name, skopeo/podman the tag part
                            "io.containerd.image.name": info.ref_name,
                            "org.opencontainers.image.ref.name": info.ref_name.rsplit(":", 1)[1],
                        },
                    }
                ],
            }
        )
        docker = _blob(
            [
                {
                    "Config": _path(_digest(config)),
                    "RepoTags": [info.ref_name],
                    "Layers": [_path(layer_digest)],
                }
            ]
        )
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_dir(tar, "blobs", info.created)
            _add_dir(tar, "blobs/sha256", info.created)
            _add_bytes(tar, _path(_digest(config)), config, info.created)
            _add_file(tar, _path(layer_digest), layer_path, info.created)
            _add_bytes(tar, _path(_digest(manifest)), manifest, info.created)
            _add_bytes(tar, "index.json", index, info.created)
            _add_bytes(tar, "manifest.json", docker, info.created)
            _add_bytes(tar, "oci-layout", _blob({"imageLayoutVersion": "1.0.0"}), info.created)
        partial.replace(out)
    return manifest_doc


def _blob(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _entry(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = mtime, 0o644
    return info


def _add_dir(tar: tarfile.TarFile, name: str, mtime: int) -> None:
    info = _entry(name, mtime)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = _entry(name, mtime)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path, mtime: int) -> None:
    info = _entry(name, mtime)
    info.size = path.stat().st_size
    with path.open("rb") as fh:
        tar.addfile(info, fh)


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """(index, config, small blobs by name) of an archive, every blob's digest checked.

    For tests and for build.sh's final check; the layer is hashed, not kept."""
    small: dict[str, bytes] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isreg():
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            sha = hashlib.sha256()
            data = b""
            while chunk := fh.read(_CHUNK):
                sha.update(chunk)
                if member.size < 4 * _CHUNK:
                    data += chunk
            name = member.name
            if name.startswith("blobs/sha256/") and sha.hexdigest() != name.rsplit("/", 1)[1]:
                raise ValueError(f"{name}: digest does not match its content")
            if member.size < 4 * _CHUNK:
                small[member.name] = data
    index = json.loads(small["index.json"])
    manifest = json.loads(small[_path(index["manifests"][0]["digest"])])
    config = json.loads(small[_path(manifest["config"]["digest"])])
    return index, config, small


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rootfs", type=Path, required=True, help="a rootfs tar or directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--revision", default="")
    parser.add_argument("--ref", default="", help="name a loader gives it (REPO:TAG)")
    parser.add_argument(
        "--created",
        type=int,
        default=int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0),
        help="seconds since the epoch (default: SOURCE_DATE_EPOCH)",
    )
    args = parser.parse_args(argv)
    if not args.rootfs.exists():
        print(f"oci.py: {args.rootfs}: no such file or directory", file=sys.stderr)
        return 1
    info = ImageInfo(args.version, args.revision, args.created, ref=args.ref)
    manifest = write_archive(args.rootfs, args.out.resolve(), info)
    layer = manifest["layers"][0]
    print(
        f"{args.out}: {info.ref_name}, layer {layer['size'] / 1e6:.1f} MB, {layer['digest']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
