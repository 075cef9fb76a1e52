"""S3 and S3-compatible stores (MinIO, Ceph, COS, OSS...): `s3://bucket/prefix`.

boto3 lists the objects under the prefix and presigns a GET for each; the bytes come through
our ranged fetcher like any other file. Credentials, region and endpoint come from the usual
AWS chain (env, config files, instance roles; `AWS_ENDPOINT_URL_S3` or `--endpoint` for a
compatible store). With no credentials at all the bucket is read anonymously.

Verification: sizes always; sha256 where the object carries a full-object SHA256 checksum.
ETags are not used as MD5s: with SSE-KMS or multipart uploads they are not one.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from vfleet.download.errors import (
    AuthError,
    BadSource,
    DownloadError,
    SourceNotFound,
    TransferError,
)
from vfleet.download.plan import Checksum, FileEntry, safe_path
from vfleet.download.sources.base import HttpSource, Listing
from vfleet.download.transport import Http, HttpTarget

PRESIGN_TTL_S = 6 * 3600  # a presigned URL is made per request, so this only bounds one GET
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "401"}
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404"}


class S3Source(HttpSource):
    def __init__(self, rest: str, http: Http, endpoint: str | None = None) -> None:
        super().__init__(f"s3://{rest}", http)
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise BadSource(f"{self.url}: expected s3://bucket/prefix")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        session = boto3.session.Session()
        signed = session.get_credentials() is not None
        config = Config(
            signature_version=None if signed else UNSIGNED,
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        self._client: Any = session.client("s3", endpoint_url=endpoint, config=config)
        self._keys: dict[str, str] = {}

    def listing(self) -> Listing:
        files: list[FileEntry] = []
        etags = hashlib.sha256()
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key: str = obj["Key"]
                    if key.endswith("/"):
                        continue  # a "folder" placeholder object
                    rel = safe_path(key[len(self.prefix) :])
                    checksum = (
                        self._sha256(key) if "SHA256" in obj.get("ChecksumAlgorithm", []) else None
                    )
                    files.append(FileEntry(rel, int(obj["Size"]), checksum))
                    self._keys[rel] = key
                    etags.update(f"{key}\0{obj.get('ETag', '')}\n".encode())
        except DownloadError:
            raise
        except (ClientError, BotoCoreError) as exc:
            raise self._map(exc) from exc
        if not files:
            raise SourceNotFound(f"{self.url}: no objects under this prefix")
        # No commits in S3: the listing's ETags stand in for one, so shards can compare notes.
        return Listing(f"etags-{etags.hexdigest()[:32]}", files)

    def _sha256(self, key: str) -> Checksum | None:
        head = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        value, kind = head.get("ChecksumSHA256"), head.get("ChecksumType", "FULL_OBJECT")
        if not value or kind != "FULL_OBJECT" or "-" in value:
            return None  # a checksum of part checksums cannot be checked against the bytes
        return Checksum("sha256", base64.b64decode(value).hex())

    def target(self, entry: FileEntry) -> HttpTarget:
        url = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._keys[entry.path]},
            ExpiresIn=PRESIGN_TTL_S,
        )
        return HttpTarget(str(url))

    def _map(self, exc: Exception) -> DownloadError:
        if isinstance(exc, NoCredentialsError):
            return AuthError(f"{self.url}: no AWS credentials found")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _AUTH_CODES:
                return AuthError(f"{self.url}: access denied ({code}); check AWS credentials")
            if code in _MISSING_CODES:
                return SourceNotFound(f"{self.url}: bucket not found ({code})")
            return TransferError(f"{self.url}: S3 error {code}: {exc}")
        return TransferError(f"{self.url}: cannot reach S3: {exc}")
