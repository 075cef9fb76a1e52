"""`vfleet k8s`: render, install, upgrade, uninstall and status of a fleet on Kubernetes, and
the chart as a Helm package.

`render` is pure: files -> `Fleet` -> chart values -> Helm SDK template render -> YAML. The
other commands are `render`'s values handed to Helm's install/upgrade actions, against the
current kubeconfig. Every problem ends the command with one line and exit status 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfleet.engines.rulefile import load_rules
from vfleet.engines.rules import RulesError
from vfleet.fleetspec.caveats import as_warning, caveats, documents
from vfleet.fleetspec.load import load
from vfleet.fleetspec.models import NAME
from vfleet.fleetspec.source import SpecError
from vfleet.kube import render as helm
from vfleet.kube.values import (
    chart_values,
    deep_merge,
    namespace_of,
    node_path_problems,
    shipped_chat_templates,
)

# A chat template shipped in a ConfigMap: real ones are a few KiB; the ConfigMap (and Helm's
# release record, which holds the values) must stay well under the API server's 1 MiB.
MAX_CHAT_TEMPLATE = 256 * 1024

_files = click.option(
    "-f",
    "--file",
    "files",
    multiple=True,
    required=True,
    help="A fleet, vllm-stack/TKE/T9k values or manifests (repeatable: objects join the fleet).",
)
_release = click.option("--release", help="Release name (default: the fleet's name, or vfleet).")
_namespace = click.option(
    "-n", "--namespace", help="Namespace (default: the one the files name, else default)."
)
_set = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A chart value as helm --set takes it (repeatable), e.g. routerSpec.replicaCount=2.",
)
_chart = click.option(
    "--chart", type=click.Path(file_okay=False), help="Another copy of the chart."
)


@click.group("k8s")
def k8s() -> None:
    """Run a fleet on Kubernetes through the vfleet Helm chart (Helm SDK, no helm binary)."""


class _Job:
    """What every subcommand reads first: the fleet, its chart values, release and namespace."""

    def __init__(
        self,
        files: tuple[str, ...],
        release: str | None,
        namespace: str | None,
        sets: tuple[str, ...],
        chart: str | None,
    ) -> None:
        try:
            loaded = load(files)
            # the rules of the chart the values are for: its keys and flags
            rules = load_rules(chart)
        except (SpecError, RulesError) as exc:
            raise click.ClickException(str(exc)) from None
        # a local path is on a node or in an image there: as written, not joined to the spec's
        # directory as `vfleet up` reads it
        fleet = loaded.fleet.paths_as_written()
        for loc, message in node_path_problems(fleet)[:1]:
            raise click.ClickException(str(loaded.error_at(loc, message)))
        # except a chat template written as a local path: read here as `vfleet up` reads it
        # (from the spec's directory) and shipped in a ConfigMap, since the pod has no such file
        templates: dict[str, str] = {}
        for i in shipped_chat_templates(fleet):
            path = loaded.fleet.models[i].vllm.chat_template or ""  # joined, `~` expanded
            try:
                templates[fleet.models[i].name] = _chat_template(path)
            except ValueError as exc:
                loc = ("models", i, "vllm", "chatTemplate")
                raise click.ClickException(str(loaded.error_at(loc, str(exc)))) from None
        built = chart_values(fleet, engine_rules=rules, chat_templates=templates)
        self.values = with_sets(built.values, sets)
        self.release = release or default_release(fleet.name)
        self.namespace = namespace or namespace_of(fleet) or "default"
        try:
            found = caveats(documents(files), fleet, f"{self.release}-router-service", loaded.notes)
        except SpecError as exc:
            raise click.ClickException(str(exc)) from None
        # one format for all of it: `warning: FILE:LINE: message`
        self.notes = [as_warning(n) for n in (*loaded.notes, *built.notes)]
        self.notes += [str(c) for c in found]

    def echo_notes(self) -> None:
        for note in self.notes:
            click.echo(note, err=True)


def _chat_template(path: str) -> str:
    """The text of the chat template file `path`, for the chart's ConfigMap; ValueError (one
    line, naming the file) when there is none to ship."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CHAT_TEMPLATE + 1)
    except FileNotFoundError:
        why = "does not exist"
    except IsADirectoryError:
        why = "is a directory, not a file"
    except OSError as exc:
        why = f"cannot be read ({exc.strerror})"
    else:
        if len(raw) > MAX_CHAT_TEMPLATE:
            why = (
                f"is over {MAX_CHAT_TEMPLATE // 1024} KiB, too large for a ConfigMap: put it in "
                "the image or on a volume and write its absolute path"
            )
        else:
            try:
                return raw.decode()
            except UnicodeDecodeError:
                why = "is not UTF-8 text"
    raise ValueError(f"chat template {path} {why} (k8s render ships it in a ConfigMap)")


def default_release(fleet_name: str) -> str:
    """The fleet's name when it can start Kubernetes names (a letter first), else vfleet."""
    ok = NAME.match(fleet_name) and fleet_name[0].isalpha() and len(fleet_name) <= 30
    return fleet_name if ok else "vfleet"


def with_sets(values: dict[str, Any], sets: tuple[str, ...]) -> dict[str, Any]:
    """`--set a.b=c` expressions (Helm's syntax, parsed by the Helm SDK) over `values`."""
    if not sets:
        return values
    import helm_python

    out = values
    for expr in sets:
        try:
            out = deep_merge(out, helm_python.parse_set_string(expr))
        except helm_python.HelmError as exc:
            raise click.ClickException(f"--set {expr}: {helm.one_line(str(exc))}") from None
    return out


@k8s.command()
@_files
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one file per object here instead of YAML on stdout.",
)
@_release
@_namespace
@_set
@_chart
@click.option("--values-only", is_flag=True, help="Print the chart values instead of manifests.")
def render(
    files: tuple[str, ...],
    out: Path | None,
    release: str | None,
    namespace: str | None,
    sets: tuple[str, ...],
    chart: str | None,
    values_only: bool,
) -> None:
    """Print the Kubernetes objects for FILES (nothing is sent to a cluster)."""
    job = _Job(files, release, namespace, sets, chart)
    job.echo_notes()
    if values_only:
        import yaml

        click.echo(yaml.safe_dump(job.values, sort_keys=False, allow_unicode=True), nl=False)
        return
    try:
        result = helm.render(job.values, release=job.release, namespace=job.namespace, chart=chart)
        if out is None:
            click.echo(result.yaml(), nl=False)
            return
        paths = helm.write_dir(result, out)
    except helm.KubeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(paths)} objects to {out}", err=True)


@k8s.command()
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for the archive.",
)
@_chart
def package(out: Path, chart: str | None) -> None:
    """Write the chart as a Helm package, vfleet-VERSION.tgz (VERSION: this vfleet's)."""
    from vfleet import __version__

    try:
        archive = helm.package(out, __version__, chart=chart)
    except helm.KubeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(archive))


def _cluster(namespace: str, kubeconfig: str | None, context: str | None) -> helm.Cluster:
    return helm.Cluster(namespace, kubeconfig, context)


_kubeconfig = click.option(
    "--kubeconfig", help="Kubeconfig file (default: KUBECONFIG, ~/.kube/config)."
)
_context = click.option("--kube-context", "context", help="Kubeconfig context.")
_wait = click.option("--wait", is_flag=True, help="Wait until every object is ready.")
_timeout = click.option(
    "--timeout",
    type=click.IntRange(1),
    default=600,
    show_default=True,
    help="Seconds Helm may take.",
)


def _apply(
    upgrade: bool,
    files: tuple[str, ...],
    release: str | None,
    namespace: str | None,
    sets: tuple[str, ...],
    chart: str | None,
    kubeconfig: str | None,
    context: str | None,
    wait: bool,
    timeout: int,
    create_namespace: bool = False,
) -> None:
    job = _Job(files, release, namespace, sets, chart)
    job.echo_notes()
    try:
        summary = helm.install(
            _cluster(job.namespace, kubeconfig, context),
            job.values,
            job.release,
            chart=chart,
            upgrade=upgrade,
            wait=wait,
            timeout_s=timeout,
            create_namespace=create_namespace,
        )
    except helm.KubeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(describe(summary))
    notes = (summary.get("info") or {}).get("notes")
    if notes:
        click.echo(str(notes).rstrip())


@k8s.command()
@_files
@_release
@_namespace
@_set
@_chart
@_kubeconfig
@_context
@_wait
@_timeout
@click.option("--create-namespace", is_flag=True, help="Create the namespace if it is missing.")
def install(
    files: tuple[str, ...],
    release: str | None,
    namespace: str | None,
    sets: tuple[str, ...],
    chart: str | None,
    kubeconfig: str | None,
    context: str | None,
    wait: bool,
    timeout: int,
    create_namespace: bool,
) -> None:
    """Install FILES as a Helm release of the vfleet chart."""
    _apply(
        False,
        files,
        release,
        namespace,
        sets,
        chart,
        kubeconfig,
        context,
        wait,
        timeout,
        create_namespace,
    )


@k8s.command()
@_files
@_release
@_namespace
@_set
@_chart
@_kubeconfig
@_context
@_wait
@_timeout
def upgrade(
    files: tuple[str, ...],
    release: str | None,
    namespace: str | None,
    sets: tuple[str, ...],
    chart: str | None,
    kubeconfig: str | None,
    context: str | None,
    wait: bool,
    timeout: int,
) -> None:
    """Upgrade the release to what FILES now say."""
    _apply(True, files, release, namespace, sets, chart, kubeconfig, context, wait, timeout)


@k8s.command()
@click.argument("release")
@click.option("-n", "--namespace", default="default", show_default=True)
@_kubeconfig
@_context
@_wait
def uninstall(
    release: str, namespace: str, kubeconfig: str | None, context: str | None, wait: bool
) -> None:
    """Remove RELEASE (the weights' PersistentVolumeClaims are kept)."""
    try:
        helm.uninstall(_cluster(namespace, kubeconfig, context), release, wait=wait)
    except helm.KubeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"release {release} uninstalled from {namespace}")


@k8s.command()
@click.argument("release")
@click.option("-n", "--namespace", default="default", show_default=True)
@_kubeconfig
@_context
def status(release: str, namespace: str, kubeconfig: str | None, context: str | None) -> None:
    """Show RELEASE: revision, state, chart, notes."""
    try:
        summary = helm.status(_cluster(namespace, kubeconfig, context), release)
    except helm.KubeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(describe(summary))


def describe(summary: dict[str, Any]) -> str:
    """One line from Helm's release summary."""
    info = summary.get("info") or {}
    chart = (summary.get("chart") or {}).get("metadata") or {}
    parts = [
        f"release {summary.get('name', '?')}",
        f"namespace {summary.get('namespace', '?')}",
        f"revision {summary.get('version', '?')}",
        f"status {info.get('status', summary.get('status', '?'))}",
    ]
    if chart:
        parts.append(f"chart {chart.get('name', '?')}-{chart.get('version', '?')}")
    return ", ".join(parts)
