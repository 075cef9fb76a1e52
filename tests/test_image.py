"""The vfleet image without Docker (scripts/image/): the OCI archive writer on a tiny root
filesystem (layout, digests, config, user, entrypoint, labels, no credentials, reproducible),
what loaders make of it (skopeo, umoci, when installed), the Dockerfile agreeing with it, the
build's wheel hand-over (take-wheels.sh), and, on a built image, its config and vfleet running
inside its root filesystem (`vfleet --version`, `vfleet router --help`, a router in front of a
sim engine).

The built-image tests need root (chroot) and an image: VFLEET_IMAGE_ARCHIVE=FILE (one
scripts/image/build.sh wrote: CI's scripts/test.sh builds it, as root, while it compiles the
wheels), or VFLEET_IMAGE_BUILD=1 (builds one here; minutes, see docs/benchmarks.md). Without
them they are skipped with the reason; VFLEET_IMAGE_BUILD_LOG=FILE (CI's build failed) fails
them with its end.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SimProcess, start_ready
from httpclient import request

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "scripts" / "image"
sys.path.insert(0, str(IMAGE))
import oci  # noqa: E402  (scripts/image is not a package)

CREATED = 1_700_000_000


def _tiny_rootfs(root: Path) -> Path:
    (root / "opt" / "vfleet" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    tool = root / "opt" / "vfleet" / "bin" / "vfleet"
    tool.write_text("#!/bin/sh\necho vfleet\n")
    tool.chmod(0o755)
    (root / "usr-bin-link").symlink_to("opt/vfleet/bin/vfleet")
    (root / "etc" / "passwd-hardlink").hardlink_to(root / "etc" / "passwd")
    return root


def _layer_of(small: dict[str, bytes], archive: Path) -> tuple[bytes, dict[str, Any]]:
    index = json.loads(small["index.json"])
    manifest = json.loads(small[oci._path(index["manifests"][0]["digest"])])
    with tarfile.open(archive) as tar:
        fh = tar.extractfile(oci._path(manifest["layers"][0]["digest"]))
        assert fh is not None
        return fh.read(), manifest


def test_archive_layout_config_and_layer(tmp_path: Path) -> None:
    out = tmp_path / "image.oci.tar"
    info = oci.ImageInfo("1.2.3", revision="abc123", created=CREATED, ref="reg.example/vf:1.2.3")
    oci.write_archive(_tiny_rootfs(tmp_path / "rootfs"), out, info)
    index, config, small = oci.read_archive(out)  # checks every blob's digest
    assert json.loads(small["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    entry = index["manifests"][0]
    assert entry["mediaType"] == oci.MEDIA_MANIFEST
    assert entry["annotations"]["io.containerd.image.name"] == "reg.example/vf:1.2.3"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1.2.3"

    cfg = config["config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["/opt/vfleet/bin/vfleet"]
    assert cfg["WorkingDir"] == "/home/vfleet"
    assert any(e.startswith("PATH=/opt/vfleet/bin:") for e in cfg["Env"])
    assert not [e for e in cfg["Env"] if re.search(r"TOKEN|KEY|SECRET|PASSWORD", e.split("=")[0])]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == "1.2.3"
    assert labels["org.opencontainers.image.revision"] == "abc123"
    assert labels["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert {"title", "source", "licenses", "description"} <= {k.rsplit(".", 1)[1] for k in labels}
    assert (config["os"], config["architecture"]) == ("linux", "amd64")

    layer, manifest = _layer_of(small, out)
    assert manifest["layers"][0]["mediaType"] == oci.MEDIA_LAYER
    plain = gzip.decompress(layer)
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(plain).hexdigest()}"]
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        members = {m.name: m for m in tar}
    assert members["opt/vfleet/bin/vfleet"].mode == 0o755
    assert members["usr-bin-link"].issym()
    assert members["etc/passwd-hardlink"].islnk()
    assert members["etc/passwd-hardlink"].linkname == "etc/passwd"
    assert all(m.mtime <= CREATED and not m.uname for m in members.values())

    docker = json.loads(small["manifest.json"])  # what older `docker load` reads
    assert docker == [
        {
            "Config": oci._path(manifest["config"]["digest"]),
            "RepoTags": ["reg.example/vf:1.2.3"],
            "Layers": [oci._path(manifest["layers"][0]["digest"])],
        }
    ]


def test_rootfs_tar_entries_are_normalized(tmp_path: Path) -> None:
    """A rootfs tar as mmdebstrap writes it: ./ names, hard links, device nodes."""
    src = tmp_path / "rootfs.tar"
    with tarfile.open(src, "w") as tar:
        for name, kind in (("./", tarfile.DIRTYPE), ("./usr/", tarfile.DIRTYPE)):
            ti = tarfile.TarInfo(name)
            ti.type, ti.uname, ti.mtime = kind, "root", CREATED + 99
            tar.addfile(ti)
        data = b"#!/bin/sh\n"
        ti = tarfile.TarInfo("./usr/perl")
        ti.size, ti.mtime = len(data), CREATED - 5
        tar.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/perl5")
        link.type, link.linkname = tarfile.LNKTYPE, "./usr/perl"
        tar.addfile(link)
        dev = tarfile.TarInfo("./dev/null")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(dev)
    out = tmp_path / "image.oci.tar"
    oci.write_archive(src, out, oci.ImageInfo("0.0.1", created=CREATED))
    _, _, small = oci.read_archive(out)
    layer, _ = _layer_of(small, out)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        members = {m.name: m for m in tar}
    assert sorted(members) == ["usr", "usr/perl", "usr/perl5"]
    assert members["usr/perl5"].islnk() and members["usr/perl5"].linkname == "usr/perl"
    assert members["usr"].mtime == CREATED and members["usr/perl"].mtime == CREATED - 5


def test_archive_is_reproducible(tmp_path: Path) -> None:
    rootfs = _tiny_rootfs(tmp_path / "rootfs")
    info = oci.ImageInfo("0.0.1", created=CREATED)
    oci.write_archive(rootfs, tmp_path / "a.tar", info)
    oci.write_archive(rootfs, tmp_path / "b.tar", info)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


@pytest.mark.parametrize("secret", ["root/.netrc", "root/.ssh/id_ed25519", "etc/pip.conf"])
def test_credentials_in_the_rootfs_are_refused(tmp_path: Path, secret: str) -> None:
    rootfs = _tiny_rootfs(tmp_path / "rootfs")
    (rootfs / secret).parent.mkdir(parents=True, exist_ok=True)
    (rootfs / secret).write_text("machine example.com password hunter2\n")
    with pytest.raises(SystemExit, match="credentials"):
        oci.write_archive(rootfs, tmp_path / "image.oci.tar", oci.ImageInfo("0.0.1"))
    assert not list(tmp_path.glob("image.oci.tar*"))


def test_cli_problem_is_one_line(tmp_path: Path) -> None:
    out_args = ("--out", str(tmp_path / "x.tar"), "--version", "1")
    done = subprocess.run(
        [sys.executable, str(IMAGE / "oci.py"), "--rootfs", str(tmp_path / "nope"), *out_args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_reads_the_archive(tmp_path: Path) -> None:
    out = tmp_path / "image.oci.tar"
    oci.write_archive(_tiny_rootfs(tmp_path / "rootfs"), out, oci.ImageInfo("0.0.1"))
    done = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{out}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout)["config"]["User"] == "10001:10001"
    # a copy re-reads every blob and checks it against its digest
    subprocess.run(
        ["skopeo", "copy", f"oci-archive:{out}", f"oci:{tmp_path / 'copy'}:0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed")
def test_umoci_unpacks_the_archive(tmp_path: Path) -> None:
    out = tmp_path / "image.oci.tar"
    oci.write_archive(_tiny_rootfs(tmp_path / "rootfs"), out, oci.ImageInfo("0.0.1"))
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(out) as tar:
        tar.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout}:0.0.1", str(bundle)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert (
        (bundle / "rootfs" / "opt" / "vfleet" / "bin" / "vfleet")
        .read_text()
        .endswith("echo vfleet\n")
    )
    runtime = json.loads((bundle / "config.json").read_text())
    assert runtime["process"]["args"] == ["/opt/vfleet/bin/vfleet"]


def _dockerfile() -> dict[str, Any]:
    """ENV, LABEL, USER, WORKDIR and ENTRYPOINT of the Dockerfile's final stage."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = text.rsplit("\nFROM ", 1)[1]
    out: dict[str, Any] = {"Env": {}, "Labels": {}}
    for line in final.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word in ("ENV", "LABEL"):
            pairs = re.findall(r'([\w.]+)=("[^"]*"|\S+)', rest)
            out["Env" if word == "ENV" else "Labels"].update((k, v.strip('"')) for k, v in pairs)
        elif word == "ENTRYPOINT":
            out["Entrypoint"] = json.loads(rest)
        elif word in ("USER", "WORKDIR"):
            out["User" if word == "USER" else "WorkingDir"] = rest.strip()
    return out


def test_dockerfile_states_the_same_config() -> None:
    docker = _dockerfile()
    config = oci.image_config(oci.ImageInfo("${VERSION}", "${REVISION}", 0), "sha256:x")["config"]
    assert docker["User"] == config["User"]
    assert docker["Entrypoint"] == config["Entrypoint"]
    assert docker["WorkingDir"] == config["WorkingDir"]
    assert docker["Env"] == dict(e.split("=", 1) for e in config["Env"])
    labels = dict(config["Labels"], **{"org.opencontainers.image.created": "${CREATED}"})
    assert docker["Labels"] == labels
    text = (ROOT / "Dockerfile").read_text()
    # the same packages, dpkg filters and install script
    for name in ("packages.txt", "dpkg-slim.cfg", "setup-rootfs.sh"):
        assert f"scripts/image/{name}" in text, name


# -- the wheels' hand-over (build.sh installs the Debian packages while the wheels build) ------


def _take_wheels(src: Path, dst: Path, wait_s: int = 30, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["sh", str(IMAGE / "take-wheels.sh"), str(src), str(dst), "1.2.3", str(wait_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def _wheel(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"PK")


def test_take_wheels_waits_for_the_directory_to_appear_whole(tmp_path: Path) -> None:
    src, dst = tmp_path / "wheels", tmp_path / "taken"
    proc = _take_wheels(src, dst)
    partial = tmp_path / "wheels.partial"
    _wheel(partial, "vfleet-1.2.3-cp311-cp311-linux_x86_64.whl")
    _wheel(partial, "anyio-4.0.0-py3-none-any.whl")
    assert proc.poll() is None  # a partial directory is not taken
    partial.rename(src)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(p.name for p in dst.iterdir()) == [
        "anyio-4.0.0-py3-none-any.whl",
        "vfleet-1.2.3-cp311-cp311-linux_x86_64.whl",
    ]
    assert int((tmp_path / "taken.at").read_text()) > 0


def test_take_wheels_stops_when_they_will_not_come(tmp_path: Path) -> None:
    src = tmp_path / "wheels"
    proc = _take_wheels(src, tmp_path / "taken", wait_s=600)
    (tmp_path / "wheels.failed").touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.count("\n") == 1 and "not built" in err, err
    late = _take_wheels(tmp_path / "never", tmp_path / "taken2", wait_s=1)
    _, err = late.communicate(timeout=60)
    assert late.returncode == 1 and "after 1 s" in err, err


def test_take_wheels_wants_the_compiled_vfleet(tmp_path: Path) -> None:
    src = tmp_path / "wheels"
    _wheel(src, "vfleet-1.2.3-py3-none-any.whl")
    proc = _take_wheels(src, tmp_path / "taken")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "not compiled" in err, err
    accepted = _take_wheels(src, tmp_path / "taken2", VFLEET_MYPYC="0")
    _, err = accepted.communicate(timeout=60)
    assert accepted.returncode == 0, err
    _wheel(tmp_path / "other", "vfleet-9.9.9-cp311-cp311-linux_x86_64.whl")
    wrong = _take_wheels(tmp_path / "other", tmp_path / "taken3")
    _, err = wrong.communicate(timeout=60)
    assert wrong.returncode == 1 and "no vfleet-1.2.3 wheel" in err, err


# -- a built image ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    failed_log = os.environ.get("VFLEET_IMAGE_BUILD_LOG")
    if failed_log:
        pytest.fail(f"the image build failed: {Path(failed_log).read_text()[-4000:]}")
    if os.geteuid() != 0:
        pytest.skip("running vfleet inside the image's root filesystem needs root (chroot)")
    archive = os.environ.get("VFLEET_IMAGE_ARCHIVE")
    if archive:
        return Path(archive)
    if os.environ.get("VFLEET_IMAGE_BUILD") != "1":
        pytest.skip("set VFLEET_IMAGE_BUILD=1 (builds the image) or VFLEET_IMAGE_ARCHIVE=FILE")
    done = subprocess.run(
        [str(IMAGE / "build.sh"), "--worktree", "--out", str(tmp_path_factory.mktemp("image"))],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built_rootfs(built_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    _, _, small = oci.read_archive(built_archive)
    layer, _ = _layer_of(small, built_archive)
    rootfs = tmp_path_factory.mktemp("image") / "rootfs"
    rootfs.mkdir()
    # as root, tar keeps the owners and modes the image has
    subprocess.run(["tar", "-xzf", "-", "-C", str(rootfs)], input=layer, timeout=300, check=True)
    for mount_point in ("dev", "proc"):  # what a container runtime provides
        (rootfs / mount_point).mkdir(exist_ok=True)
    yield rootfs
    shutil.rmtree(rootfs, ignore_errors=True)


def test_built_image_config_and_size(
    built_archive: Path, built_rootfs: Path, record_property: Any
) -> None:
    _, config, small = oci.read_archive(built_archive)  # every blob against its digest
    cfg = config["config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["/opt/vfleet/bin/vfleet"]
    assert cfg["WorkingDir"] == "/home/vfleet"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    if (ROOT / ".git").exists():  # built from a clone: the commit is named
        assert labels["org.opencontainers.image.revision"], "no revision label"
    assert {"title", "source", "licenses", "description", "created"} <= {
        k.rsplit(".", 1)[1] for k in labels
    }
    assert not [e for e in cfg["Env"] if re.search(r"TOKEN|KEY|SECRET|PASSW|PIP_", e)]
    # no credentials, caches or build leftovers in the layer
    names = [str(p.relative_to(built_rootfs)) for p in built_rootfs.rglob("*")]
    assert not oci.secret_paths(names)
    leftovers = [
        n
        for n in names
        if n.startswith("tmp/vfleet-")
        or (
            n.startswith(("var/cache/apt/", "var/lib/apt/lists/"))
            and n.endswith((".deb", "Release", "Packages"))
        )
    ]
    assert not leftovers, leftovers[:10]
    home = built_rootfs / "home" / "vfleet"
    assert (home.stat().st_uid, home.stat().st_gid) == (10001, 10001)
    lock = (built_rootfs / "opt" / "vfleet" / "requirements.lock").read_text()
    assert f"vfleet=={version}" in lock and "file:" not in lock
    # the size, in the test report (docs/benchmarks.md records a build's)
    _, manifest = _layer_of(small, built_archive)
    layer_mb = manifest["layers"][0]["size"] / 1e6
    record_property("image_archive_mb", round(built_archive.stat().st_size / 1e6, 1))
    record_property("image_layer_mb", round(layer_mb, 1))
    assert 20 < layer_mb < 1000, layer_mb  # a layer with Python, git and vfleet; not a disk


def _in_image(rootfs: Path, *args: str) -> list[str]:
    """`args` as the image's user, in the image's root filesystem with /dev and /proc mounted
    in a private mount namespace (they go when the command ends)."""
    script = (
        f'mount --rbind /dev "{rootfs}/dev" && mount -t proc proc "{rootfs}/proc" && '
        f'exec chroot --userspec=10001:10001 "{rootfs}" /usr/bin/env -i HOME=/home/vfleet '
        f'PATH=/opt/vfleet/bin:/usr/bin:/bin "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args]


def test_vfleet_runs_inside_the_image(built_rootfs: Path) -> None:
    version = subprocess.run(
        _in_image(built_rootfs, "vfleet", "--version"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert re.search(r"version \d+\.\d+", version.stdout), version.stdout
    helped = subprocess.run(
        _in_image(built_rootfs, "vfleet", "router", "--help"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--backend" in helped.stdout
    # the compiled hot path is what runs
    compiled = list((built_rootfs / "opt" / "vfleet" / "lib").glob("python3.11/site-packages/*.so"))
    assert compiled, "no mypyc extension modules in the image"


SIM = ("--model", "demo", "--profile", "instant")


def test_router_in_front_of_a_sim_engine_inside_the_image(built_rootfs: Path) -> None:
    started: list[SimProcess] = []
    try:
        sim = start_ready(
            _in_image(built_rootfs, "vfleet", "sim", "--host", "127.0.0.1", "--port", "0", *SIM),
            "sim in the image",
            timeout_s=60,
        )
        started.append(sim)
        router = start_ready(
            _in_image(
                built_rootfs,
                "vfleet",
                "router",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--backend",
                sim.url,
            ),
            "router in the image",
            timeout_s=60,
        )
        started.append(router)
        status, body = request(router.url, "GET", "/v1/models", timeout=30)
        assert status == 200, body
        name = json.loads(body)["data"][0]["id"]
        chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        status, body = request(router.url, "POST", "/v1/chat/completions", chat, timeout=30)
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["content"]
    finally:
        for sp in reversed(started):
            assert sp.stop() == 0, "".join(sp.log)


def test_build_script_usage() -> None:
    shown = subprocess.run(
        [str(IMAGE / "build.sh"), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert shown.returncode == 0 and "--apt-cache DIR" in shown.stdout
    assert "set -euo" not in shown.stdout
    wrong = subprocess.run(
        [str(IMAGE / "build.sh"), "--bogus"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
