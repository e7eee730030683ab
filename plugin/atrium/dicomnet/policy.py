"""Whose data a DICOM peer may query and move: its calling AE title's organization."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["UNMAPPED_CHOICES", "AetPolicy"]

UNMAPPED_CHOICES = ("none", "default")


@dataclass(frozen=True)
class AetPolicy:
    """Calling AE title → organization name.

    ``aet_organizations`` is ``ATRIUM_AET_ORGANIZATIONS``. An AE title not in it gets
    nothing when ``unmapped`` is ``"none"`` (the default: a workstation someone
    declared in Orthanc but not in Atrium must not see every organization's
    patients), or the default organization's data when it is ``"default"``.
    """

    aet_organizations: Mapping[str, str]
    default_organization: str
    unmapped: str = "none"

    def __post_init__(self) -> None:
        if self.unmapped not in UNMAPPED_CHOICES:
            raise ValueError(f"unmapped must be one of {UNMAPPED_CHOICES}, got {self.unmapped!r}")

    def organization_for(self, calling_aet: str | None) -> str | None:
        """The organization whose data ``calling_aet`` may reach, or None: nothing.
        AE titles compare without their space padding, case-sensitively (PS3.8)."""
        aet = (calling_aet or "").strip()
        if aet and aet in self.aet_organizations:
            return self.aet_organizations[aet]
        return self.default_organization if self.unmapped == "default" else None
