"""`vfleet spec check` and `vfleet spec schema`."""

from __future__ import annotations

import json

import click
import yaml

from vfleet.fleetspec.caveats import as_warning, caveats, documents
from vfleet.fleetspec.load import load
from vfleet.fleetspec.models import Fleet
from vfleet.fleetspec.source import SpecError

# The chart's router Service as `vfleet k8s render` names it with its default release, "vfleet"
# (an Ingress to any other Service goes around the router).
ROUTER_SERVICE = "vfleet-router-service"


@click.group()
def spec() -> None:
    """Validate fleet specs and print their schema."""


@spec.command()
@click.argument("paths", nargs=-1)
@click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    help="A file to check, as `vfleet up -f` takes it (repeatable; plain arguments work too).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the normalized spec as JSON.")
def check(paths: tuple[str, ...], files: tuple[str, ...], as_json: bool) -> None:
    """Validate FILES (a fleet, vllm-stack/TKE/T9k values or manifests); print the result, and
    on stderr a warning for everything whose meaning changes or that is left out."""
    every = (*files, *paths)
    if not every:
        raise click.UsageError("give the files to check: vfleet spec check -f FILE")
    try:
        loaded = load(every)
        found = caveats(documents(every), loaded.fleet, ROUTER_SERVICE, loaded.notes)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    for note in loaded.notes:
        click.echo(as_warning(note), err=True)
    for caveat in found:
        click.echo(str(caveat), err=True)
    data = loaded.fleet.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    data = {"apiVersion": "vfleet/v1", "kind": "Fleet", **data}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n"))
    n = sum(m.replicas for m in loaded.fleet.models)
    fmt = loaded.fleet.imported_from or "vfleet"
    click.echo(f"ok: {len(loaded.fleet.models)} model(s), {n} replica(s), read as {fmt}", err=True)


@spec.command()
def schema() -> None:
    """Print the JSON schema of the fleet spec."""
    click.echo(json.dumps(Fleet.model_json_schema(by_alias=True), indent=2))
