"""The Python agent with one deliberate fault, run as a real process: ``faulty_agent.py FAULT ARGS``.

Each fault breaks one promise of the protocol, so the conformance kit is
shown to fail exactly the checks that cover it. ARGS are ``paoding-agent``'s.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import agent.service as service  # noqa: E402
import agent.states as states  # noqa: E402
import agent.storage as storage  # noqa: E402
import agent.transfer as transfer  # noqa: E402
from agent.cli import main  # noqa: E402
from core.protocol import Report  # noqa: E402
from core.signing import SigningKey  # noqa: E402


def accept_downgrade() -> None:
    """Forgets the releases it accepted: an older release is installed again."""
    storage.Storage.last_release = property(lambda self: -1)  # type: ignore[assignment]


class _NeverLate(float):
    """The real time, except that it never reaches a manifest's expiry (``now >= expires``)."""

    def __ge__(self, other: object) -> bool:
        return False


def accept_expired() -> None:
    """Never sees a manifest expire: expired manifests are accepted (releases still bounded)."""
    init = service.Agent.__init__

    def patched(self: service.Agent, settings: service.AgentSettings) -> None:
        init(self, settings)
        self.ctx = dataclasses.replace(self.ctx, clock=lambda: _NeverLate(time.time()))

    service.Agent.__init__ = patched  # type: ignore[method-assign]


def active_without_activating() -> None:
    """Reports a model active without switching to it."""
    def run(self: states.Activate, ctx: states.Context) -> states.State:
        return states.Report(self.manifest, self.prior, "active", None, self.result, self.checks)

    states.Activate.run = run  # type: ignore[method-assign]


def report_before_install() -> None:
    """Says ``installed`` before it has even verified the model."""
    verify = states.Verify.run

    def run(self: states.Verify, ctx: states.Context) -> states.State:
        ctx.emit(ctx.report(self.manifest, "installed"))
        return verify(self, ctx)

    states.Verify.run = run  # type: ignore[method-assign]


def ignore_thresholds() -> None:
    """Activates whatever it measured: no rollback on a missed threshold."""
    states.threshold_failures = lambda *a, **k: []  # type: ignore[assignment]


def forget_chunks() -> None:
    """Asks for every chunk again, as if it kept nothing across a disconnect."""
    transfer.ArtifactReceiver.missing_ranges = (  # type: ignore[method-assign]
        lambda self, limit=4096: [(0, self.artifact.chunks)])


def foreign_report_key() -> None:
    """Signs its reports with a key that is not its enrolled one."""
    stranger = SigningKey.generate()
    sign = SigningKey.sign_device

    def patched(self: SigningKey, message):  # noqa: ANN001, ANN202
        return sign(stranger if isinstance(message, Report) else self, message)

    SigningKey.sign_device = patched  # type: ignore[method-assign]


FAULTS = {f.__name__.replace("_", "-"): f for f in (
    accept_downgrade, accept_expired, active_without_activating, report_before_install,
    ignore_thresholds,
    forget_chunks, foreign_report_key)}

if __name__ == "__main__":
    FAULTS[sys.argv[1]]()
    sys.exit(main(sys.argv[2:]))
