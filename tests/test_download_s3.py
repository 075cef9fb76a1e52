"""`vfleet download s3://...` against moto's S3 server on 127.0.0.1 (an S3-compatible endpoint)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from downloadkit import clean_env, run, tree

CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3() -> Iterator[tuple[str, Any]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    try:
        yield url, client
    finally:
        server.stop()


FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model-00001.safetensors": bytes(range(256)) * 40000,
    "sub/model-00002.safetensors": b"\x01" * (3 * 2**20 + 5),
}


def _fill(client: Any, bucket: str, prefix: str) -> None:
    client.create_bucket(Bucket=bucket)
    for name, data in FILES.items():
        extra = {"ChecksumAlgorithm": "SHA256"} if name.endswith(".json") else {}
        client.put_object(Bucket=bucket, Key=f"{prefix}{name}", Body=data, **extra)
    client.put_object(Bucket=bucket, Key=f"{prefix}empty-dir/", Body=b"")
    client.put_object(Bucket=bucket, Key="elsewhere/other.bin", Body=b"not in the prefix")


def test_bucket_prefix_with_endpoint_env(s3: tuple[str, Any], tmp_path: Path) -> None:
    url, client = s3
    _fill(client, "models", "llama/7b/")
    env = clean_env(tmp_path, AWS_ENDPOINT_URL_S3=url, **CREDS)
    out = tmp_path / "out"
    r = run("s3://models/llama/7b", "--to", str(out), "--chunk-mib", "1", env=env)
    assert r.code == 0, r.stderr
    assert tree(out) == FILES
    again = run("s3://models/llama/7b/", "--to", str(out), env=env)
    assert again.code == 0 and again.last("done")["downloaded_bytes"] == 0


def test_missing_bucket_and_bad_credentials(s3: tuple[str, Any], tmp_path: Path) -> None:
    url, client = s3
    env = clean_env(tmp_path, **CREDS)
    r = run("s3://nope/x", "--to", str(tmp_path / "o"), "--endpoint", url, env=env)
    assert r.code == 1 and "bucket not found" in r.stderr and "Traceback" not in r.stderr
    _fill(client, "models", "")
    r = run("s3://models/nothing-here", "--to", str(tmp_path / "o"), "--endpoint", url, env=env)
    assert r.code == 1 and "no objects under this prefix" in r.stderr


def test_sha256_checksum_from_the_object_is_used(
    s3: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfleet.download.sources.s3 import S3Source
    from vfleet.download.transport import Http

    url, client = s3
    _fill(client, "models", "m/")
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    listing = S3Source("models/m", Http(), url).listing()
    by_path = {e.path: e for e in listing.files}
    assert set(by_path) == set(FILES)
    cfg = by_path["config.json"]
    assert cfg.checksum is not None, "moto keeps the SHA256 given at upload"
    assert cfg.checksum.hex == hashlib.sha256(FILES["config.json"]).hexdigest()
    assert by_path["model-00001.safetensors"].checksum is None
