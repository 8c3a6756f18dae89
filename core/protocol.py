"""The wire contract between the host and the agent: pydantic v2 models and topics.

Every JSON message carries ``protocol`` (== PROTOCOL_VERSION). Models forbid
unknown fields, non-finite numbers and control characters and validate sizes
and ranges, so anything malformed from the network is a
``pydantic.ValidationError`` naming the bad field. Chunks are raw bytes on
``paoding/v2/artifacts/<sha256>/<index>``; the signed manifest carries each
chunk's sha256. Host messages (Manifest, Cancel) are signed by the host key,
device messages (Status, Report, ChunkRequest) by the device key; a signature
covers ``signed_bytes()``: the canonical JSON of every field but the signature.
The topic tree, QoS and retained flags are documented in docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import ConfigError

PROTOCOL_VERSION = 2
PROTOCOL_ROOT = "paoding/v2"
TOPIC_ROOT = f"{PROTOCOL_ROOT}/devices"  # + /<device id>/<kind>
ARTIFACT_ROOT = f"{PROTOCOL_ROOT}/artifacts"  # + /<sha256>/<index>
DEVICE_FILTER = f"{TOPIC_ROOT}/+/+"  # the host's one intake subscription
DEVICE_KINDS = ("status", "need", "report")  # what a device publishes

MAX_ARTIFACT_BYTES = 512 * 1024 * 1024  # 512 MiB: bigger than any model for a small device
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 1024 * 1024  # AWS IoT caps a message at 128 KB; the default is 64 KB
DEFAULT_CHUNK_BYTES = 64 * 1024
MAX_CHUNKS = 6144  # chunk digests of model + probes keep a manifest under 1 MiB
MAX_MESSAGE_BYTES = 1024 * 1024  # JSON messages (not chunks) larger than this are dropped
# the largest MQTT packet an agent accepts: one chunk or one JSON message plus headers
MAX_PACKET_BYTES = max(MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES) + 4096
MAX_RANGES = 4096
MAX_MS = 1e6  # latencies and times in a device message: >= 0 and below this
DEFAULT_TTL_S = 3600.0  # a manifest's default lifetime (expires_at - created_at)
# releases are milliseconds since the epoch by default: a release more than this beyond
# the device's last accepted release (or its clock) needs a signed ``release_jump``
RELEASE_AHEAD_MS = 30 * 24 * 3600 * 1000

DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
DeploymentId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ArtifactName = Literal["model", "probes"]
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
ShortText = Annotated[str, Field(max_length=4096, pattern=_PRINTABLE)]
Name = Annotated[str, Field(max_length=128, pattern=_PRINTABLE)]
Ms = Annotated[float, Field(ge=0, lt=MAX_MS)]
Fraction = Annotated[float, Field(ge=0, le=1)]

# THE id pattern (device, deployment, rollout ids; a device id is also its broker user
# name): 1-64 ASCII letters, digits, '_', '.', '-', not starting with '_', '.', '-'.
# Always checked whole (re.fullmatch): '$' would let a trailing newline through.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ID_RE = re.compile(ID_PATTERN)


class WireModel(BaseModel):
    """Base of every message: strict about unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()

    def signed_bytes(self) -> bytes:
        """The canonical bytes a signature covers: every field but the signature."""
        data = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> Any:
        """Parse a message; ValueError (pydantic.ValidationError) names the problem."""
        if isinstance(payload, bytes | bytearray) and len(payload) > MAX_MESSAGE_BYTES:
            raise ValueError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
        return cls.model_validate_json(payload)


class Versioned(WireModel):
    protocol: int = Field(default=PROTOCOL_VERSION, json_schema_extra={"const": PROTOCOL_VERSION})

    @field_validator("protocol")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != PROTOCOL_VERSION:
            raise ValueError(f"protocol version {v} is not supported (this side speaks "
                             f"{PROTOCOL_VERSION})")
        return v


# --- host -> device ---------------------------------------------------------


class Artifact(WireModel):
    """One file sent in chunks: its digest, size and chunking."""

    sha256: Sha256
    size: int = Field(gt=0, le=MAX_ARTIFACT_BYTES)
    chunk_size: int = Field(default=DEFAULT_CHUNK_BYTES, ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES)
    chunk_sha256: list[Sha256] = Field(max_length=MAX_CHUNKS)

    @classmethod
    def of(cls, data: bytes, chunk_size: int = DEFAULT_CHUNK_BYTES) -> Artifact:
        """The artifact record of ``data``: digest, size and one digest per chunk."""
        step = max(int(chunk_size), 1)
        return cls(sha256=hashlib.sha256(data).hexdigest(), size=len(data), chunk_size=chunk_size,
                   chunk_sha256=[hashlib.sha256(data[i:i + step]).hexdigest()
                                 for i in range(0, len(data), step)])

    @property
    def chunks(self) -> int:
        return math.ceil(self.size / self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """Expected byte length of chunk ``index`` (the last one may be shorter)."""
        if not 0 <= index < self.chunks:
            raise ValueError(f"chunk index {index} outside 0..{self.chunks - 1}")
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def chunk_ok(self, index: int, data: bytes) -> bool:
        """Whether ``data`` is chunk ``index`` as the (signed) manifest describes it."""
        return (0 <= index < self.chunks and len(data) == self.chunk_length(index)
                and hmac.compare_digest(hashlib.sha256(data).hexdigest(),
                                        self.chunk_sha256[index]))

    @model_validator(mode="after")
    def _bounded_chunks(self) -> Artifact:
        if self.chunks > MAX_CHUNKS:
            raise ValueError(f"{self.chunks} chunks exceed the limit of {MAX_CHUNKS}")
        if len(self.chunk_sha256) != self.chunks:
            raise ValueError(f"chunk_sha256 has {len(self.chunk_sha256)} digests for "
                             f"{self.chunks} chunks")
        return self


class Thresholds(WireModel):
    """What the model must meet on the device to become active (None: not checked)."""

    max_p90_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    max_mean_ms: float | None = Field(default=None, gt=0, le=3_600_000)
    max_peak_memory_mb: float | None = Field(default=None, gt=0, le=1_048_576)
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    min_clean_accuracy: float | None = Field(default=None, ge=0, le=1)
    min_robust_accuracy: float | None = Field(default=None, ge=0, le=1)
    max_abs_deviation: float | None = Field(default=None, ge=0)


class BenchmarkSettings(WireModel):
    """Like LiteRT's benchmark_model: warm-up, then ``runs`` runs or ``min_seconds``."""

    warmup_runs: int = Field(default=3, ge=0, le=10_000)
    runs: int = Field(default=50, ge=1, le=1_000_000)
    min_seconds: float = Field(default=0.0, ge=0, le=3600)
    max_seconds: float = Field(default=60.0, gt=0, le=3600)
    threads: int | None = Field(default=None, ge=1, le=256)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class Signature(WireModel):
    """The host's signature over a message's canonical bytes (see ``signed_bytes``)."""

    alg: Literal["ed25519", "hmac-sha256"]
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    value: str = Field(min_length=1, max_length=1024)  # base64


class DeviceSignature(WireModel):
    """A device's Ed25519 signature over a message's canonical bytes."""

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    value: str = Field(min_length=1, max_length=128)  # base64 of 64 bytes


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Manifest(Versioned):
    """A deployment: what to fetch, how to verify it and what it must achieve.

    ``release`` grows strictly per device; a manifest whose release is not
    above the device's last accepted one is a downgrade or a replay and is
    refused unless ``rollback`` (signed) says the operator means it. After
    ``expires_at`` a deployment that has not finished its transfer ends
    ``expired`` and frees the device.
    """

    type: Literal["manifest"] = "manifest"
    deployment_id: DeploymentId
    device_id: DeviceId
    rollout_id: DeploymentId | None = None
    release: int = Field(default_factory=_now_ms, ge=0, le=2**62)
    created_at: float = Field(default_factory=time.time, ge=0)
    expires_at: float = Field(default=0.0, ge=0)  # 0: created_at + DEFAULT_TTL_S
    rollback: bool = False
    # the operator's explicit step past RELEASE_AHEAD_MS (release_jump), or the way out
    # for a device wedged by a release far ahead: ``release_reset`` makes this manifest's
    # release the device's last accepted one, whatever was accepted before
    release_jump: bool = False
    release_reset: bool = False
    model: Artifact
    probes: Artifact | None = None
    thresholds: Thresholds = Thresholds()
    benchmark: BenchmarkSettings = BenchmarkSettings()
    signature: Signature | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_expiry(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("expires_at"):
            created = data.get("created_at")
            if created is None:
                created = time.time()
                data = dict(data, created_at=created)
            if isinstance(created, int | float):
                data = dict(data, expires_at=float(created) + DEFAULT_TTL_S)
        return data

    @model_validator(mode="after")
    def _expiry_after_creation(self) -> Manifest:
        if self.expires_at <= self.created_at:
            raise ValueError(f"expires_at {self.expires_at} is not after created_at "
                             f"{self.created_at}")
        return self

    def artifacts(self) -> dict[str, Artifact]:
        out = {"model": self.model}
        if self.probes is not None:
            out["probes"] = self.probes
        return out

    @property
    def digest(self) -> str:
        """sha256 of ``signed_bytes()``: reports echo it, so a host tells deployments apart."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()

    def artifact_by_sha(self, sha256: str) -> tuple[str, Artifact] | None:
        """(name, artifact) of this manifest's artifact with digest ``sha256``."""
        return next(((n, a) for n, a in self.artifacts().items() if a.sha256 == sha256), None)


class Cancel(Versioned):
    """The host ends a deployment that has not finished its transfer (signed by the host)."""

    type: Literal["cancel"] = "cancel"
    deployment_id: DeploymentId
    device_id: DeviceId
    issued_at: float = Field(default_factory=time.time, ge=0)
    signature: Signature | None = None


# --- device -> host ---------------------------------------------------------


class ChunkRequest(Versioned):
    """The agent asks for the chunks it lacks, as half-open ranges [start, end)."""

    type: Literal["need"] = "need"
    device_id: DeviceId
    deployment_id: DeploymentId
    artifact: Sha256  # the artifact's sha256
    ranges: list[tuple[int, int]] = Field(max_length=MAX_RANGES)
    have: int = Field(ge=0, le=MAX_CHUNKS)
    timestamp: float = Field(default_factory=time.time, ge=0)
    signature: DeviceSignature | None = None

    @field_validator("ranges")
    @classmethod
    def _valid_ranges(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for start, end in v:
            if not 0 <= start < end <= MAX_CHUNKS:
                raise ValueError(f"bad chunk range [{start}, {end})")
        return v


class RuntimeInfo(WireModel):
    name: str = Field(max_length=64, pattern=_PRINTABLE)
    version: str = Field(max_length=64, pattern=_PRINTABLE)


class LatencyStats(WireModel):
    """Milliseconds over the measured runs."""

    count: int = Field(ge=0)
    mean: Ms
    std: Ms
    min: Ms
    max: Ms
    p50: Ms
    p90: Ms
    p99: Ms


class BenchmarkResult(WireModel):
    runtime: RuntimeInfo
    threads: int | None = Field(default=None, ge=1, le=1024)
    init_ms: Ms
    first_inference_ms: Ms
    warmup_runs: int = Field(ge=0)
    warmup_mean_ms: Ms
    latency_ms: LatencyStats
    peak_memory_mb: float = Field(ge=0, le=1_048_576)
    rss_before_mb: float = Field(ge=0, le=1_048_576)
    measured_seconds: float = Field(ge=0, lt=MAX_MS)
    overhead_ms_per_run: Ms = 0.0
    emulated: bool = False
    slowdown: float = Field(default=1.0, ge=1, le=10_000)
    emulation: str | None = Field(default=None, max_length=1024, pattern=_PRINTABLE)
    # Set when the agent's instructions were emulated (qemu-user on another
    # architecture): the latency is the emulator's, not a device measurement,
    # and must not be compared with a profile's budgets or used to calibrate.
    cpu_emulator: str | None = Field(default=None, max_length=256, pattern=_PRINTABLE)


class CheckResults(WireModel):
    """Probe checks; accuracies in [0, 1], robust accuracy keyed 'attack@eps'."""

    count: int = Field(ge=0)
    clean_accuracy: Fraction | None = None
    robust_accuracy: dict[Annotated[str, Field(max_length=64, pattern=_PRINTABLE)],
                          Fraction] = Field(default={}, max_length=256)
    min_robust_accuracy: Fraction | None = None
    agreement: Fraction | None = None
    max_abs_deviation: float | None = Field(default=None, ge=0)
    seconds: float = Field(default=0.0, ge=0, lt=MAX_MS)


State = Literal[
    "received", "verified", "installed", "benchmarked",
    "active", "rolled_back", "rejected", "failed", "expired", "cancelled", "error",
]
FINAL_STATES: frozenset[str] = frozenset(
    {"active", "rolled_back", "rejected", "failed", "expired", "cancelled"})


class TransferStats(WireModel):
    bytes: int = Field(ge=0)
    chunks: int = Field(ge=0)
    seconds: float = Field(ge=0, lt=MAX_MS)
    resumed: bool = False
    resumed_chunks: int = Field(default=0, ge=0)  # already on disk when the agent restarted


class Report(Versioned):
    """One step of a deployment (or an ``error`` about a bad message)."""

    type: Literal["report"] = "report"
    report_id: str = Field(default_factory=lambda: uuid.uuid4().hex,
                           pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    device_id: DeviceId
    deployment_id: DeploymentId | None = None
    manifest_sha256: Sha256 | None = None  # Manifest.digest of the manifest this answers
    state: State
    final: bool = False
    reason: ShortText | None = None
    timestamp: float = Field(default_factory=time.time, ge=0)
    model_sha256: Sha256 | None = None
    runtime: RuntimeInfo | None = None
    transfer: TransferStats | None = None
    benchmark: BenchmarkResult | None = None
    checks: CheckResults | None = None
    active_sha256: Sha256 | None = None
    signature: DeviceSignature | None = None


class ActiveModel(WireModel):
    deployment_id: DeploymentId | None = None
    sha256: Sha256
    size: int = Field(ge=0)


class Status(Versioned):
    """The retained status (birth message); the Last Will sets ``online=False``."""

    type: Literal["status"] = "status"
    device_id: DeviceId
    online: bool
    profile: Name | None = None
    runtime: RuntimeInfo | None = None
    active_model: ActiveModel | None = None
    agent_version: str | None = Field(default=None, max_length=32, pattern=_PRINTABLE)
    emulation: str | None = Field(default=None, max_length=1024, pattern=_PRINTABLE)
    timestamp: float = Field(default_factory=time.time, ge=0)
    signature: DeviceSignature | None = None


DeviceMessage = Status | Report | ChunkRequest
DEVICE_MODELS: dict[str, type[Status] | type[Report] | type[ChunkRequest]] = {
    "status": Status, "report": Report, "need": ChunkRequest}


# --- topics -----------------------------------------------------------------


def check_id(value: str, what: str = "device id") -> str:
    """``value`` when it matches ID_PATTERN whole; else ConfigError (a ValueError) in one line."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        shown = repr(value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value)
        raise ConfigError(f"invalid {what} {shown}: use 1-64 of A-Z a-z 0-9 _ . - "
                          "(not starting with _ . -)")
    return value


class Topics:
    """The topic tree of one device (see docs/protocol.md)."""

    def __init__(self, device_id: str, root: str = TOPIC_ROOT) -> None:
        self.device_id = check_id(device_id)
        self.base = f"{root}/{device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def manifest(self) -> str:
        return f"{self.base}/manifest"

    @property
    def cancel(self) -> str:
        return f"{self.base}/cancel"

    @property
    def need(self) -> str:
        return f"{self.base}/need"

    @property
    def report(self) -> str:
        return f"{self.base}/report"


_INDEX_RE = re.compile(r"[0-9]{1,7}")  # ASCII digits only: str.isdigit() takes "١" too


def artifact_filter(sha256: str) -> str:
    """The filter that matches every chunk of one artifact."""
    return f"{ARTIFACT_ROOT}/{sha256}/+"


def artifact_topic(sha256: str, index: int) -> str:
    return f"{ARTIFACT_ROOT}/{sha256}/{index}"


def parse_artifact_topic(topic: str) -> tuple[str, int]:
    """(artifact sha256, chunk index) of a chunk topic; ValueError if malformed."""
    prefix = f"{ARTIFACT_ROOT}/"
    parts = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
    if len(parts) != 2:
        raise ValueError(f"not a chunk topic: {topic[:200]!r}")
    sha, index = parts
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ValueError(f"bad artifact digest in chunk topic {topic[:200]!r}")
    if not _INDEX_RE.fullmatch(index):
        raise ValueError(f"bad chunk index {index[:20]!r} in {topic[:200]!r} "
                         "(ASCII digits only)")
    return sha, int(index)


def parse_device_topic(topic: str) -> tuple[str, str]:
    """(device id, kind) of ``paoding/v2/devices/<id>/<kind>``; ValueError otherwise."""
    prefix = f"{TOPIC_ROOT}/"
    parts = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
    if len(parts) != 2:
        raise ValueError(f"not a device topic: {topic[:200]!r}")
    return check_id(parts[0]), parts[1]
