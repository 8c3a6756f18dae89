"""The trust campaigns as a report: every finding replayed, counts to bench/results/trust.*.

    python -m bench.trust_bench

Runs tests/fleet/test_trust_campaign.py (the first review) and
tests/fleet/test_trust_round_two.py (the second: a device in the host's
$share group, signed reports for deployments not its own, hostile enrolment
ids, models and probe bundles over the memory limit, releases far ahead,
profile ids that are paths) against real Mosquitto brokers (they start their
own) and writes bench/results/trust.json, trust.md and trust.png: for each
finding, the attacks sent, how many got through, what refused them and, where
measured, what the attack did with the defence turned off (messages stored,
bytes, peak RSS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import save_figure

ROOT = Path(__file__).resolve().parent.parent
TESTS = ("test_trust_campaign.py", "test_trust_round_two.py")


def _table(rows: list[dict]) -> list[str]:
    lines = ["| finding | attempts | got through | refused by | without the defence |",
             "|---|---:|---:|---|---|"]
    lines += [f"| {r['finding']} | {r['attempts']} | {r['believed']} | {r['refused_by']} "
              f"| {r['without_defence'] or '-'} |" for r in rows]
    return lines


def _plot(two: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    share, foreign, memory = two.get("share_group"), two.get("foreign_deployments"), \
        two.get("memory")
    if share:
        ax = axes[0]
        ax.bar(["guessable group", "secret group"],
               [share["host_got_guessable"], share["host_got_secret"]], color=["#c44", "#4a4"])
        ax.set_title(f"host intake: messages received of {share['attempts']}")
    if foreign:
        ax = axes[1]
        without = int(foreign["without_defence"].split()[0])
        ax.bar(["signature only", "gate"], [without, foreign["believed"]],
               color=["#c44", "#4a4"])
        ax.set_title(f"signed reports stored of {foreign['attempts']}")
    if memory:
        ax = axes[2]
        ax.bar(["zip bomb, no limit", "zip bomb, limit", "2 GiB input, limit"],
               [memory["peak_rss_mb_bomb_unbounded"], memory["peak_rss_mb_bomb"],
                memory["peak_rss_mb_model"]], color=["#c44", "#4a4", "#4a4"])
        ax.set_title("benchmark child peak RSS (MB)")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Trust review, round two: defended (green) and without the defence (red)")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> int:
    out = ROOT / "bench" / "results"
    env = dict(os.environ, PAODING_TRUST_REPORT=str(out), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *(str(ROOT / "tests" / "fleet" / t) for t in TESTS)]
    code = subprocess.call(cmd, env=env, cwd=ROOT)
    if code != 0:
        return code
    one = json.loads((out / "trust.json").read_text())
    two_rows = json.loads((out / "trust_round_two.json").read_text())["findings"]
    (out / "trust_round_two.json").unlink()
    machine = one["machine"]
    load = os.getloadavg()
    machine["load_avg_1_5_15"] = [round(x, 2) for x in load]
    data = {"findings": one["findings"], "round_two": two_rows, "machine": machine}
    (out / "trust.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    lines = ["# Trust campaigns: findings reproduced and refused", "",
             "Each attack replayed against a real Mosquitto (`python -m bench.trust_bench`: "
             "`tests/fleet/test_trust_campaign.py`, `tests/fleet/test_trust_round_two.py`). "
             f"Machine: {machine['system']} {machine['machine']}, {machine['cpus']} CPUs "
             f"(shared; load average {load[0]:.1f} at the end), Python {machine['python']}, "
             f"{machine['mosquitto']}.", "",
             "## Round one", "", *_table(one["findings"]), "",
             "## Round two", "", *_table(two_rows), "",
             "Figures of round two (messages stored, bytes, peak RSS):", ""]
    for r in two_rows:
        extra = {k: v for k, v in r.items()
                 if k not in ("finding", "attempts", "believed", "refused_by",
                              "without_defence", "key")}
        if extra:
            lines.append(f"- {r['key']}: " + ", ".join(f"{k} = {v}" for k, v in
                                                       sorted(extra.items())))
    lines += ["", "![round two](trust.png)"]
    (out / "trust.md").write_text("\n".join(lines) + "\n")
    _plot({r["key"]: r for r in two_rows}, out / "trust.png")
    print((out / "trust.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
