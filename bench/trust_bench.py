"""The trust campaign as a report: every host-side finding replayed, counts to bench/results/trust.*.

    python -m bench.trust_bench

Runs tests/fleet/test_trust_campaign.py against real Mosquitto brokers (it
starts its own) and writes bench/results/trust.json and trust.md: for each
finding, the attacks sent, how many the host believed, what refused them and,
where the test measures it, what the attack did with the defence turned off.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    out = ROOT / "bench" / "results"
    env = dict(os.environ, PAODING_TRUST_REPORT=str(out), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "fleet" / "test_trust_campaign.py")]
    code = subprocess.call(cmd, env=env, cwd=ROOT)
    if code == 0:
        print((out / "trust.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
