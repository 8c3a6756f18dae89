"""Agent settings: command line > environment (PAODING_AGENT_*) > config file (YAML/JSON)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ConfigError
from core.protocol import check_id

ENV_PREFIX = "PAODING_AGENT_"
LIST_FIELDS = ("trust_key", "trust_hmac")


class AgentConfig(BaseModel):
    """Every setting of ``paoding-agent run``; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    profile: str | None = None
    broker: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    mqtt_protocol: str = "5"
    device_key: Path | None = None
    trust_key: list[Path] = []
    trust_hmac: list[Path] = []
    allow_unsigned: bool = False
    state_dir: Path = Path("/var/lib/paoding-agent")
    emulate: str | None = None
    runtime: str | None = None
    stall_seconds: float = Field(default=2.0, gt=0, le=600)
    # the benchmark child's address-space cap; default: the profile's RAM (else this machine's)
    memory_limit_mb: float | None = Field(default=None, ge=64)
    log_level: str = "INFO"

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        return check_id(v)

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log level {v!r}: use DEBUG, INFO, WARNING or ERROR")
        return v

    def read_password(self) -> str | None:
        if self.password_file is None:
            return self.password
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read password file {self.password_file}: {exc.strerror}") from None


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"config file {p} is not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name in LIST_FIELDS:
            out[name] = [v for v in value.split(os.pathsep) if v]
        else:
            out[name] = value
    return out


def load_config(cli: Mapping[str, Any], env: Mapping[str, str] | None = None,
                config_file: str | os.PathLike[str] | None = None) -> AgentConfig:
    """Merge the three sources (None on the command line means 'not given')."""
    env = os.environ if env is None else env
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(read_config_file(config_file))
    merged.update(from_env(env))
    merged.update({k: v for k, v in cli.items() if v is not None and v != []})
    if "device_id" not in merged:
        raise ConfigError("device id is required: --device-id, PAODING_AGENT_DEVICE_ID "
                                 "or device_id in the config file")
    try:
        return AgentConfig(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"setting {loc}: {err['msg']}") from None
