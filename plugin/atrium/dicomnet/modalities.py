"""C-GET is refused to every peer: Orthanc 1.10 has no plugin hook for its C-GET SCP,
which would send any organization's instances to whoever asks.

Orthanc answers a C-GET only from a declared modality whose ``AllowGet`` is true
(or from anyone with ``DicomAlwaysAllowGet``, which Atrium refuses at start-up).
So every modality is kept at ``AllowGet: false``: those of the configuration file
or Orthanc's database are rewritten through ``PUT /modalities/{name}`` once Orthanc
has started, and every definition arriving later through that route is rewritten
before Orthanc sees it (:func:`without_get`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

__all__ = ["ModalityAdmin", "lock_down_get", "without_get"]

log = logging.getLogger(__name__)

# Orthanc's short form of a modality: [AET, host, port] or [AET, host, port, manufacturer]
_SHORT_FORM = ("AET", "Host", "Port", "Manufacturer")


class ModalityAdmin(Protocol):
    def get_json(self, path: str) -> Any: ...

    def put_json(self, path: str, body: Any) -> Any: ...


def without_get(definition: Any) -> Any:
    """A modality definition (Orthanc's short list form or its object form) as an
    object with ``AllowGet`` false. Anything else is returned unchanged, for Orthanc
    to refuse."""
    if isinstance(definition, list) and 3 <= len(definition) <= 4:
        return {**dict(zip(_SHORT_FORM, definition, strict=False)), "AllowGet": False}
    if isinstance(definition, Mapping):
        return {**definition, "AllowGet": False}
    return definition


def lock_down_get(orthanc: ModalityAdmin) -> list[str]:
    """Set ``AllowGet`` false on every declared modality that allows C-GET; the
    names changed."""
    modalities = orthanc.get_json("/modalities?expand")
    changed = []
    for name, definition in sorted(dict(modalities).items()):
        if isinstance(definition, Mapping) and definition.get("AllowGet") is False:
            continue
        orthanc.put_json(f"/modalities/{quote(name, safe='')}", without_get(definition))
        changed.append(name)
    if changed:
        log.warning("dicom.c_get_refused modalities=%s: AllowGet set to false (C-GET is "
                    "not scoped per organization)", ",".join(changed))
    return changed
