"""`vfleet download`: argv and environment in, `download()` / `wait_for_shards()` out.

Errors leave as one `click.ClickException` line (exit 1, no traceback); with `--json` an
`{"event": "error"}` line precedes it on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vfleet.download.api import download as run_download
from vfleet.download.api import shard_from_env, wait_for_shards
from vfleet.download.errors import DownloadError
from vfleet.download.fetch import FetchSettings
from vfleet.download.plan import Shard
from vfleet.download.progress import JsonReporter, Reporter, RichReporter


@click.command("download")
@click.argument("source", nargs=-1)
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory the files land in (created if missing).",
)
@click.option("--revision", help="Branch, tag or commit (hub and git sources). Default: main.")
@click.option("--include", multiple=True, help="Glob of paths to download (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of paths to skip (repeatable).")
@click.option(
    "--shard",
    "shard_text",
    metavar="I/N",
    help="Download shard I (from 0) of N, balanced by bytes. "
    "Default: JOB_COMPLETION_INDEX/JOB_COMPLETION_TOTAL.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Concurrent connections.",
)
@click.option(
    "--chunk-mib",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Chunk size in MiB: unit of parallel fetch and of resume.",
)
@click.option(
    "--wait-all",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="After downloading (or with no SOURCE: instead), wait until all N shard markers exist.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(0),
    default=86400.0,
    show_default=True,
    help="Seconds --wait-all waits before failing.",
)
@click.option(
    "--endpoint",
    help="Hub or S3 endpoint URL (default: HF_ENDPOINT, "
    "MODELSCOPE_ENDPOINT, AWS_ENDPOINT_URL_S3 or the public service).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="JSON lines on stdout (the default when stdout is not a terminal).",
)
def download(
    source: tuple[str, ...],
    to: Path,
    revision: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    shard_text: str | None,
    workers: int,
    chunk_mib: int,
    wait_all: int | None,
    wait_timeout: float,
    endpoint: str | None,
    as_json: bool,
) -> None:
    """Download model files from SOURCE into --to, verified and resumable.

    SOURCE is hf://org/name, modelscope://org/name, s3://bucket/prefix, git+https://host/repo
    or one or more https:// file URLs (@FILE reads URLs from a file, one per line).
    """
    if not source and wait_all is None:
        raise click.UsageError("give a SOURCE, or --wait-all N to wait for other shards")
    reporter: Reporter = (
        JsonReporter(sys.stdout) if as_json or not sys.stdout.isatty() else RichReporter()
    )
    try:
        shard = Shard.parse(shard_text) if shard_text else shard_from_env()
        digest = None
        if source:
            if wait_all is not None and wait_all != (shard.count if shard else 1):
                raise click.UsageError("--wait-all N must equal the N of --shard I/N")
            result = run_download(
                source,
                to,
                revision=revision,
                include=include,
                exclude=exclude,
                shard=shard,
                workers=workers,
                endpoint=endpoint,
                reporter=reporter,
                settings=FetchSettings(chunk_bytes=chunk_mib * 2**20),
            )
            digest = result.digest
        if wait_all is not None:
            wait_for_shards(to, wait_all, digest=digest, timeout_s=wait_timeout, reporter=reporter)
            reporter.note(f"all {wait_all} shard(s) of {to} are complete")
    except DownloadError as exc:
        if not source:
            reporter.fail(str(exc))  # download() reports its own failures
        raise click.ClickException(str(exc)) from exc
