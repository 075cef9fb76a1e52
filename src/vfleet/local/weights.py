"""Which model weights named by the fleet are on this machine: the filesystem reads that the
pure `local.plan` leaves to its caller."""

from __future__ import annotations

from pathlib import Path

from vfleet.fleetspec.models import Fleet
from vfleet.local.plan import disk_path


def on_disk(fleet: Fleet, pvc_root: str | None) -> dict[str, str]:
    """Model name -> its local or PVC weights (`~` expanded), for those whose path exists;
    `plan.Options.on_disk` takes it."""
    out: dict[str, str] = {}
    for model in fleet.models:
        where = disk_path(model, pvc_root)
        if where is None:
            continue
        path = Path(where).expanduser()
        if path.exists():
            out[model.name] = str(path)
    return out
