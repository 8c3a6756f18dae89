"""Device profiles: one YAML file per device class, validated by ``schema.DeviceProfile``.

``load(id_or_path)`` and ``list_profiles()`` are all most callers need. This
package never imports TensorFlow: the on-device agent uses it too.

Profiles are looked up in order: an explicit file path; the directories in
``$PAODING_PROFILES`` (``os.pathsep``-separated); the user directory
``~/.config/paoding-edge/profiles`` (where ``profiles calibrate`` writes);
the profiles shipped in this package.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.errors import ProfileError
from core.protocol import ID_PATTERN
from device_profiles.schema import DeviceProfile

__all__ = [
    "DeviceProfile",
    "ProfileError",
    "before_after",
    "calibration_note",
    "dump",
    "list_profiles",
    "load",
    "load_file",
    "locate",
    "search_path",
    "shipped",
    "user_dir",
]

PACKAGE_DIR = Path(__file__).resolve().parent



def user_dir() -> Path:
    """Where calibrated profiles are written by default."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "paoding-edge" / "profiles"


def search_path() -> list[Path]:
    """The directories searched for profile ids, first match wins."""
    dirs = [Path(p) for p in os.environ.get("PAODING_PROFILES", "").split(os.pathsep) if p]
    return [*dirs, user_dir(), PACKAGE_DIR]


def _format_errors(source: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(profile)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (not in the schema)"
        parts.append(f"{loc}: {msg}")
    return f"invalid profile {source}: " + "; ".join(parts)


def validate(data: Any, source: str = "<data>") -> DeviceProfile:
    """Validate a mapping as a profile; raise ProfileError naming each bad field."""
    if not isinstance(data, dict):
        raise ProfileError(
            f"invalid profile {source}: expected a mapping, got {type(data).__name__}"
        )
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_errors(source, exc)) from None


def load_file(path: str | os.PathLike[str]) -> DeviceProfile:
    """Load and validate one profile file (.yaml, .yml or .json)."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"profile file not found: {p}")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProfileError(f"cannot read profile {p}: {reason}") from None
    return validate(data, str(p))


def check_profile_id(profile_id: str) -> str:
    """``profile_id`` when it is a plain id (core.protocol.ID_PATTERN, whole); else ProfileError.

    A profile id names a file in the profile directories; '../x', 'a/b' or an
    absolute path would name any file on disk.
    """
    if not isinstance(profile_id, str) or not re.fullmatch(ID_PATTERN, profile_id):
        shown = profile_id[:40] if isinstance(profile_id, str) else profile_id
        raise ProfileError(f"invalid profile id {shown!r}: use 1-64 of A-Z a-z 0-9 _ . - "
                           "(not starting with _ . -); give a file path to load a file")
    return profile_id


def _find(profile_id: str) -> Path | None:
    check_profile_id(profile_id)
    for d in search_path():
        for ext in (".yaml", ".yml", ".json"):
            candidate = d / f"{profile_id}{ext}"
            if candidate.is_file():
                return candidate
    return None


def load(id_or_path: str | os.PathLike[str]) -> DeviceProfile:
    """A profile by id (searched in ``search_path()``) or by file path."""
    s = str(id_or_path)
    if os.sep in s or s.endswith((".yaml", ".yml", ".json")):
        return load_file(s)
    found = _find(s)
    if found is None:
        known = ", ".join(list_profiles()) or "none"
        raise ProfileError(f"unknown profile {s!r} (known: {known})")
    profile = load_file(found)
    if profile.id != s:
        raise ProfileError(f"profile file {found} has id {profile.id!r}, expected {s!r}")
    return profile


def list_profiles() -> list[str]:
    """Ids of every profile on the search path (shadowed duplicates listed once)."""
    ids: list[str] = []
    for d in search_path():
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix in (".yaml", ".yml", ".json") and f.stem not in ids:
                ids.append(f.stem)
    return sorted(ids)


def locate(profile_id: str) -> Path | None:
    """The file in the profile directories a profile id names, if any (ProfileError: not an id)."""
    return _find(profile_id)


def dump(profile: DeviceProfile) -> str:
    """The profile as YAML (the shape ``load_file`` reads back)."""
    data = profile.model_dump(mode="json", exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False, width=100)


def shipped(profile_id: str) -> DeviceProfile | None:
    """The profile shipped in this package under ``profile_id`` (None: not a shipped id)."""
    for ext in (".yaml", ".yml", ".json"):
        f = PACKAGE_DIR / f"{profile_id}{ext}"
        if f.is_file():
            return load_file(f)
    return None


def calibration_note(profile: DeviceProfile) -> str | None:
    """How a profile replaces the shipped one of its id with a calibrated latency model
    (``profiles calibrate``), for tune's output and report; None when it does not."""
    found = _find(profile.id)
    if found is None or found.parent == PACKAGE_DIR or profile.latency.provenance != "calibrated":
        return None
    base = shipped(profile.id)
    if base is None or base.latency == profile.latency or load_file(found) != profile:
        return None
    lm = profile.latency
    return (f"calibrated profile {found} ({lm.calibration_reports} reports, "
            f"{(lm.calibrated_at or '')[:10]}) in place of the shipped one "
            f"({base.latency.provenance})")


def before_after(profile_id: str) -> tuple[DeviceProfile, DeviceProfile | None]:
    """(the profile a calibration starts from, the calibrated one in use or None)."""
    current = load(profile_id)
    if calibration_note(current) is None:
        return current, None
    return shipped(profile_id) or current, current
