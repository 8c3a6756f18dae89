"""The wire contract between the host and the agent: pydantic v2 models and topics.

Every JSON message carries ``protocol`` (== PROTOCOL_VERSION). Models forbid
unknown fields and validate sizes, so anything malformed from the network is
a ``pydantic.ValidationError`` naming the bad field. Chunks are raw bytes;
their topic says which deployment, artifact and index they belong to.
The topic tree, QoS and retained flags are documented in docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROTOCOL_VERSION = 1
TOPIC_ROOT = "paoding/v1/devices"

MAX_ARTIFACT_BYTES = 512 * 1024 * 1024  # 512 MiB: bigger than any model for a small device
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 1024 * 1024  # AWS IoT caps a message at 128 KB; the default is 64 KB
DEFAULT_CHUNK_BYTES = 64 * 1024
MAX_CHUNKS = 1 << 20
MAX_MESSAGE_BYTES = 1024 * 1024  # JSON messages (not chunks) larger than this are dropped
MAX_RANGES = 4096

DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
DeploymentId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ArtifactName = Literal["model", "probes"]
ShortText = Annotated[str, Field(max_length=4096)]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class WireModel(BaseModel):
    """Base of every message: strict about unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> Any:
        """Parse a message; ValueError (pydantic.ValidationError) names the problem."""
        if isinstance(payload, bytes | bytearray) and len(payload) > MAX_MESSAGE_BYTES:
            raise ValueError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
        return cls.model_validate_json(payload)


class Versioned(WireModel):
    protocol: int = PROTOCOL_VERSION

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

    @property
    def chunks(self) -> int:
        return math.ceil(self.size / self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """Expected byte length of chunk ``index`` (the last one may be shorter)."""
        if not 0 <= index < self.chunks:
            raise ValueError(f"chunk index {index} outside 0..{self.chunks - 1}")
        return min(self.chunk_size, self.size - index * self.chunk_size)

    @model_validator(mode="after")
    def _bounded_chunks(self) -> Artifact:
        if self.chunks > MAX_CHUNKS:
            raise ValueError(f"{self.chunks} chunks exceed the limit of {MAX_CHUNKS}")
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
    """A signature over the manifest's canonical bytes (see Manifest.signed_bytes)."""

    alg: Literal["ed25519", "hmac-sha256"]
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    value: str = Field(min_length=1, max_length=1024)  # base64


class Manifest(Versioned):
    """A deployment: what to fetch, how to verify it and what it must achieve."""

    type: Literal["manifest"] = "manifest"
    deployment_id: DeploymentId
    device_id: DeviceId
    created_at: float = Field(default_factory=time.time, ge=0)
    model: Artifact
    probes: Artifact | None = None
    thresholds: Thresholds = Thresholds()
    benchmark: BenchmarkSettings = BenchmarkSettings()
    signature: Signature | None = None

    def artifacts(self) -> dict[str, Artifact]:
        out = {"model": self.model}
        if self.probes is not None:
            out["probes"] = self.probes
        return out

    def signed_bytes(self) -> bytes:
        """The canonical bytes a signature covers: every field but the signature."""
        data = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        """sha256 of ``signed_bytes()``: reports echo it, so a host tells deployments apart."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()


# --- device -> host ---------------------------------------------------------


class ChunkRequest(Versioned):
    """The agent asks for the chunks it lacks, as half-open ranges [start, end)."""

    type: Literal["need"] = "need"
    device_id: DeviceId
    deployment_id: DeploymentId
    artifact: ArtifactName
    ranges: list[tuple[int, int]] = Field(max_length=MAX_RANGES)
    have: int = Field(ge=0, le=MAX_CHUNKS)

    @field_validator("ranges")
    @classmethod
    def _valid_ranges(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for start, end in v:
            if not 0 <= start < end <= MAX_CHUNKS:
                raise ValueError(f"bad chunk range [{start}, {end})")
        return v


class RuntimeInfo(WireModel):
    name: str = Field(max_length=64)
    version: str = Field(max_length=64)


class LatencyStats(WireModel):
    """Milliseconds over the measured runs."""

    count: int = Field(ge=0)
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p99: float


class BenchmarkResult(WireModel):
    runtime: RuntimeInfo
    threads: int | None = None
    init_ms: float
    first_inference_ms: float
    warmup_runs: int
    warmup_mean_ms: float
    latency_ms: LatencyStats
    peak_memory_mb: float
    rss_before_mb: float
    measured_seconds: float
    overhead_ms_per_run: float = 0.0
    emulated: bool = False
    slowdown: float = 1.0
    emulation: str | None = Field(default=None, max_length=1024)
    # Set when the agent's instructions were emulated (qemu-user on another
    # architecture): the latency is the emulator's, not a device measurement,
    # and must not be compared with a profile's budgets or used to calibrate.
    cpu_emulator: str | None = Field(default=None, max_length=256)


class CheckResults(WireModel):
    """Probe checks; accuracies in [0, 1], robust accuracy keyed 'attack@eps'."""

    count: int = Field(ge=0)
    clean_accuracy: float | None = None
    robust_accuracy: dict[str, float] = {}
    min_robust_accuracy: float | None = None
    agreement: float | None = None
    max_abs_deviation: float | None = None
    seconds: float = 0.0


State = Literal[
    "received", "verified", "installed", "benchmarked",
    "active", "rolled_back", "rejected", "failed", "error",
]
FINAL_STATES: frozenset[str] = frozenset({"active", "rolled_back", "rejected", "failed"})


class TransferStats(WireModel):
    bytes: int = Field(ge=0)
    chunks: int = Field(ge=0)
    seconds: float = Field(ge=0)
    resumed: bool = False
    resumed_chunks: int = Field(default=0, ge=0)  # already on disk when the agent restarted


class Report(Versioned):
    """One step of a deployment (or an ``error`` about a bad message)."""

    type: Literal["report"] = "report"
    report_id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=64)
    device_id: DeviceId
    deployment_id: DeploymentId | None = None
    manifest_sha256: Sha256 | None = None  # Manifest.digest of the manifest this answers
    state: State
    final: bool = False
    reason: ShortText | None = None
    timestamp: float = Field(default_factory=time.time)
    model_sha256: Sha256 | None = None
    runtime: RuntimeInfo | None = None
    transfer: TransferStats | None = None
    benchmark: BenchmarkResult | None = None
    checks: CheckResults | None = None
    active_sha256: Sha256 | None = None


class ActiveModel(WireModel):
    deployment_id: str | None = Field(default=None, max_length=64)
    sha256: Sha256
    size: int = Field(ge=0)


class Status(Versioned):
    """The retained status (birth message); the Last Will sets ``online=False``."""

    type: Literal["status"] = "status"
    device_id: DeviceId
    online: bool
    profile: str | None = Field(default=None, max_length=128)
    runtime: RuntimeInfo | None = None
    active_model: ActiveModel | None = None
    agent_version: str | None = Field(default=None, max_length=32)
    emulation: str | None = Field(default=None, max_length=1024)
    timestamp: float = Field(default_factory=time.time)


# --- topics -----------------------------------------------------------------


def check_id(value: str, what: str = "device id") -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-64 of A-Z a-z 0-9 _ . - "
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
    def need(self) -> str:
        return f"{self.base}/need"

    @property
    def report(self) -> str:
        return f"{self.base}/report"

    @property
    def chunk_filter(self) -> str:
        return f"{self.base}/chunk/+/+/+"

    def chunk(self, deployment_id: str, artifact: str, index: int) -> str:
        return f"{self.base}/chunk/{deployment_id}/{artifact}/{index}"

    def parse_chunk(self, topic: str) -> tuple[str, str, int]:
        """(deployment id, artifact, index) of a chunk topic; ValueError if malformed."""
        prefix = f"{self.base}/chunk/"
        if not topic.startswith(prefix):
            raise ValueError(f"not a chunk topic: {topic!r}")
        parts = topic[len(prefix):].split("/")
        if len(parts) != 3:
            raise ValueError(f"chunk topic needs deployment/artifact/index: {topic!r}")
        dep, artifact, index = parts
        check_id(dep, "deployment id")
        if artifact not in ("model", "probes"):
            raise ValueError(f"unknown artifact {artifact!r} in {topic!r}")
        if not index.isdigit() or len(index) > 8:
            raise ValueError(f"bad chunk index {index!r} in {topic!r}")
        return dep, artifact, int(index)
