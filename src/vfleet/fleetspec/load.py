"""Turning spec files into a validated `Fleet`: format detection, import, validation.

Any accepted format (native, vllm-stack, TKE, T9k values, Kubernetes manifests) goes through
the same path; errors name the user's file, line and field; notices and warnings come back
alongside the fleet, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vfleet.fleetspec import models
from vfleet.fleetspec.draft import Draft
from vfleet.fleetspec.importers import manifests, t9k, tke, vllm_stack
from vfleet.fleetspec.importers.common import put_args, slug
from vfleet.fleetspec.models import Fleet, adapter_is_path, chat_template_is_local
from vfleet.fleetspec.source import Document, SpecError, dotted, parse, read_text

VALUES_FORMATS = (("vllm-stack", vllm_stack), ("tke", tke), ("t9k", t9k))


@dataclass(frozen=True)
class Loaded:
    fleet: Fleet
    notes: list[str] = field(default_factory=list)
    draft: Draft | None = None  # where each fleet field came from, for `error_at`

    def error_at(self, loc: tuple[Any, ...], message: str) -> SpecError:
        """A problem with fleet field `loc` found after loading (e.g. one only Kubernetes
        has), pointing at the user's file, line and key as load's own errors do."""
        if self.draft is None:
            return SpecError("-", message, at=dotted(loc))
        return _error_at(self.draft, loc, message)


def load(files: Sequence[str | Path]) -> Loaded:
    """Read one or more files into one fleet: the first names it; later files add models and
    Kubernetes objects (e.g. a PersistentVolume next to a values file)."""
    if not files:
        raise SpecError("-", "no spec file given")
    drafts = [draft_of(_document(f)) for f in files]
    with_models = [d for d in drafts if d.data.get("models")]
    if not with_models:
        kinds = sorted({str(o.get("kind")) for d in drafts for o in _objects(d)})
        what = f", only Kubernetes objects ({', '.join(kinds)})" if kinds else ""
        raise SpecError(
            str(files[0]),
            f"no models here{what}; a fleet needs at least one model "
            "(give object files together with a fleet: -f fleet.yaml -f objects.yaml)",
        )
    base = with_models[0]
    notes = [n for d in drafts for n in d.notes]
    for extra in drafts:
        if extra is not base:
            _merge(base, extra)
    return Loaded(paths_from_files(validate(base), base), notes, base)


def paths_from_files(fleet: Fleet, draft: Draft) -> Fleet:
    """The fleet with each relative local path joined to the directory of the file that wrote
    it, as Helm and compose read paths in a file: `vfleet up -f conf/fleet.yaml` with
    `source: ./models/chat` reads conf/models/chat from any working directory. The paths: model
    sources, LoRA adapters (those written as paths, `adapter_is_path`), chat template files
    (`chat_template_is_local`) and `router.tenantsFile` (the router is the first file's)."""
    models = []
    for i, model in enumerate(fleet.models):
        where = draft.borrowed[i][0] if i in draft.borrowed else draft
        directory = _directory(where)
        update = {
            "source": model.source.joined_to(directory),
            "vllm": model.vllm.joined_to(directory),
        }
        models.append(model.model_copy(update=update))
    router = fleet.router.joined_to(_directory(draft))
    return fleet.model_copy(update={"models": tuple(models), "router": router})


def _directory(draft: Draft) -> str:
    return Path(draft.doc.file).absolute().parent.as_posix()


def missing_local_files(fleet: Fleet) -> list[tuple[tuple[Any, ...], str]]:
    """(fleet field, message) for each file this machine must read that is not there: the
    router's tenants file, and per model its chat template file and every LoRA adapter written
    as paths. For `vfleet up`, which names the spec's file and line with `Loaded.error_at`; a
    Kubernetes render reads these paths as written, on the cluster's side, and checks none. (A
    missing model source is the local plan's to report.)"""
    out: list[tuple[tuple[Any, ...], str]] = []
    tenants = fleet.router.tenants_file
    if tenants and not _is_file(tenants):
        out.append((("router", "tenantsFile"), f"tenants file {tenants} {_missing(tenants)}"))
    for i, model in enumerate(fleet.models):
        template = model.vllm.chat_template
        if template and chat_template_is_local(template) and not _is_file(template):
            at = ("models", i, "vllm", "chatTemplate")
            out.append((at, f"chat template {template} {_missing(template)}"))
        for name, path in model.vllm.lora.modules.items():
            if adapter_is_path(path) and not Path(path).expanduser().exists():
                loc = ("models", i, "vllm", "lora", "modules", name)
                out.append((loc, f"LoRA adapter {name!r}: {path} does not exist"))
    return out


def _is_file(path: str) -> bool:
    return Path(path).expanduser().is_file()


def _missing(path: str) -> str:
    return "is a directory, not a file" if Path(path).expanduser().is_dir() else "does not exist"


def _objects(draft: Draft) -> list[Any]:
    return list((draft.data.get("kubernetes") or {}).get("extraObjects") or [])


def _document(file: str | Path) -> Document:
    text = read_text(file)
    if tke.flattened_text(text):
        # Pasted from a web page that dropped the indentation; the chart's key tree restores
        # it, line for line, before YAML sees it.
        doc = parse(tke.renest(text), str(file))
        return Document(doc.file, doc.docs, doc.lines, doc.text, renested=True)
    return parse(text, str(file))


def draft_of(doc: Document) -> Draft:
    draft = Draft(doc)
    docs = doc.docs
    if not docs:
        raise SpecError(doc.file, "the file is empty")
    first = docs[0]
    if len(docs) > 1 or (
        isinstance(first, dict)
        and "kind" in first
        and "apiVersion" in first
        and first.get("kind") != "Fleet"
    ):
        if manifests.detect(docs):
            draft.data["importedFrom"] = "kubernetes-manifests"
            manifests.build(draft, docs)
            _default_name(draft)
            return draft
        raise SpecError(doc.file, "several YAML documents, but not all are Kubernetes objects")
    if not isinstance(first, dict):
        raise SpecError(
            doc.file,
            f"expected a mapping at the top level, got {type(first).__name__}",
            doc.line(()),
        )
    if "models" in first or first.get("kind") == "Fleet":
        _native(draft, first)
    elif tke.looks_flattened(first):
        raise doc.error(("model",), "TKE values without indentation that vfleet cannot re-nest")
    else:
        if doc.renested:
            draft.note((), "TKE values without indentation; read them by the chart's key tree")
        for name, module in VALUES_FORMATS:
            if module.detect(first):
                draft.data["importedFrom"] = name
                module.build(draft, first)
                break
        else:
            keys = ", ".join(sorted(map(str, first))[:8])
            raise doc.error(
                (),
                f"not a format vfleet knows (top-level keys: {keys}); expected "
                "a fleet (models:), vllm-stack values (servingEngineSpec:), TKE "
                "values (model:, server:) or T9k values (server.model.deployName)",
            )
    _default_name(draft)
    return draft


def _native(draft: Draft, doc: dict[str, Any]) -> None:
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    if doc.get("apiVersion") not in (None, "vfleet/v1"):
        draft.note(
            ("apiVersion",),
            f"apiVersion {doc['apiVersion']!r}; vfleet reads vfleet/v1",
            warning=True,
        )
    draft.data.update(body)
    items = body.get("models")
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        vllm = item.get("vllm")
        if isinstance(vllm, dict) and isinstance(vllm.get("extraArgs"), list):
            args = vllm.pop("extraArgs")
            put_args(draft, ("models", i), args, ("models", i, "vllm", "extraArgs"))


def _default_name(draft: Draft) -> None:
    if "name" not in draft.data:
        draft.data["name"] = slug(Path(draft.doc.file).stem) or "fleet"


def _merge(base: Draft, extra: Draft) -> None:
    offset = len(base.data.get("models") or [])
    for i, model in enumerate(extra.data.get("models") or []):
        base.data.setdefault("models", []).append(model)
        base.borrowed[offset + i] = (extra, i)  # errors in it point at its own file
    objects = (extra.data.get("kubernetes") or {}).get("extraObjects") or []
    if objects:
        kube = base.data.setdefault("kubernetes", {})
        kube["extraObjects"] = list(kube.get("extraObjects") or []) + list(objects)


def validate(draft: Draft) -> Fleet:
    _check_names(draft)
    try:
        return Fleet.model_validate(draft.data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _allowed(loc)
        elif err["type"] == "missing":
            message = "required, but missing"
        raise _error_at(draft, loc, message) from None


def _check_names(draft: Draft) -> None:
    """Fleet-wide rules (Fleet checks them too), here so the error can point at the line."""
    models = draft.data.get("models")
    if not isinstance(models, list):
        return
    seen: dict[str, int] = {}
    served: dict[str, str] = {}
    for i, m in enumerate(models):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            continue
        name = m["name"]
        if name in seen:
            raise _error_at(
                draft,
                ("models", i, "name"),
                f"model name {name!r} is already used by models[{seen[name]}]",
            )
        seen[name] = i
        names = m.get("servedNames") or [name]
        for s in names if isinstance(names, list) else []:
            if s in served and served[s] != name:
                raise _error_at(
                    draft,
                    ("models", i, "servedNames"),
                    f"served name {s!r} is also served by {served[s]}",
                )
            served[str(s)] = name
    router = draft.data.get("router")
    policies = router.get("modelPolicies") if isinstance(router, dict) else None
    for key in policies if isinstance(policies, dict) else {}:
        if key not in seen and key not in served:
            raise _error_at(
                draft, ("router", "modelPolicies", key), f"no model is named or served as {key!r}"
            )


def _error_at(draft: Draft, loc: tuple[Any, ...], message: str) -> SpecError:
    if len(loc) > 1 and loc[0] == "models" and loc[1] in draft.borrowed:
        other, j = draft.borrowed[loc[1]]
        return _error_at(other, ("models", j, *loc[2:]), message)
    imported = draft.data.get("importedFrom")
    src = draft.origin(loc) if imported else loc
    if src is None:
        src = ()
    line = draft.doc.line(src)
    at = dotted(src) if src else dotted(loc)
    if imported and src != loc:
        at = f"{at} (fleet field {dotted(loc)})" if at else f"fleet field {dotted(loc)}"
    return SpecError(draft.doc.file, message, line, at)


def _allowed(loc: tuple[Any, ...]) -> str:
    """The keys that are allowed where an unknown key was found."""
    model: Any = Fleet
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        info = fields.get(part)
        if info is None:
            break
        kinds = [a for a in getattr(info.annotation, "__args__", ()) if a is not type(None)]
        for candidate in [info.annotation, *kinds]:
            inner = getattr(candidate, "__args__", ())
            for c in (candidate, *inner):
                if isinstance(c, type) and issubclass(c, models.Spec):
                    model = c
                    break
    names = sorted(f.alias or n for n, f in model.model_fields.items())
    return f" (allowed here: {', '.join(names)})"
