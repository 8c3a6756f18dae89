"""The agent's state directory: atomic files that survive a kill at any moment.

Layout (all under ``root``)::

    state.json          active and previous model records (the source of truth)
    active.tflite       symlink to the active model: the stable path for applications
    models/<sha>.tflite installed models (only the active and previous are kept)
    deployment.lock     the deployment in progress: id, stage, manifest
    transfers/<id>/     chunks being received (see agent.transfer)
    spool/              reports not yet acknowledged by the broker
    history.jsonl       one line per finished deployment (status)
    ledger.txt          one line "<release> <deployment id>" per authenticated manifest
                        accepted or refused as busy: replay and downgrade detection,
                        read once per agent start, appended after authentication

Every write is write-to-temp, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from core.errors import StorageError
from core.files import fsync_dir, read_json, sha256_file, write_atomic, write_json_atomic

MODEL_SUFFIX = ".tflite"


class Storage:
    """One agent's state directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            for sub in ("models", "transfers", "spool"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state directory {self.root}: {exc}") from None
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"state directory {self.root} is not writable")
        self._seen: set[str] | None = None
        self._last_release = 0

    # -- paths --------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def active_link(self) -> Path:
        return self.root / f"active{MODEL_SUFFIX}"

    @property
    def lock_path(self) -> Path:
        return self.root / "deployment.lock"

    @property
    def history_path(self) -> Path:
        return self.root / "history.jsonl"

    def model_path(self, sha256: str) -> Path:
        return self.root / "models" / f"{sha256}{MODEL_SUFFIX}"

    def transfer_dir(self, deployment_id: str) -> Path:
        return self.root / "transfers" / deployment_id

    # -- models -------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        data = read_json(self.state_path)
        if not isinstance(data, dict):
            return {"active": None, "previous": None}
        data.setdefault("active", None)
        data.setdefault("previous", None)
        return data

    def active(self) -> dict[str, Any] | None:
        return self.state()["active"]

    def active_model_path(self) -> Path | None:
        rec = self.active()
        return self.model_path(rec["sha256"]) if rec else None

    def install_model(self, src: Path, sha256: str) -> Path:
        """Copy ``src`` into models/ atomically (a no-op if that digest is already there)."""
        dst = self.model_path(sha256)
        if dst.exists() and sha256_file(dst) == sha256:
            return dst
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
        return dst

    def activate(self, record: dict[str, Any]) -> None:
        """Make ``record`` (deployment_id, sha256, size, ...) the active model.

        The model file must already be installed. The switch is one atomic
        rename of state.json; the symlink follows it.
        """
        if not self.model_path(record["sha256"]).exists():
            raise StorageError(f"model {record['sha256'][:12]} is not installed")
        old = self.state()
        prev = old["active"]
        if prev and prev.get("sha256") == record["sha256"]:
            prev = old["previous"]
        new = {"active": dict(record, activated_at=time.time()), "previous": prev,
               "updated_at": time.time()}
        write_json_atomic(self.state_path, new)
        self._link_active(record["sha256"])
        self.prune_models()

    def deactivate(self) -> None:
        """No model is active any more (a failed first deployment is undone)."""
        old = self.state()
        write_json_atomic(self.state_path, {"active": None, "previous": old["active"],
                                            "updated_at": time.time()})
        with contextlib.suppress(FileNotFoundError):
            self.active_link.unlink()
        fsync_dir(self.root)

    def _link_active(self, sha256: str) -> None:
        tmp = self.root / f".active.{os.getpid()}.lnk"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(Path("models") / f"{sha256}{MODEL_SUFFIX}", tmp)
        os.replace(tmp, self.active_link)
        fsync_dir(self.root)

    def prune_models(self) -> None:
        """Delete installed models other than the active and previous ones."""
        st = self.state()
        keep = {r["sha256"] for r in (st["active"], st["previous"]) if r}
        lock = self.read_lock()
        if lock and lock.get("sha256"):
            keep.add(lock["sha256"])
        for p in (self.root / "models").iterdir():
            if p.name.endswith(MODEL_SUFFIX) and p.name[: -len(MODEL_SUFFIX)] not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()

    def recover(self) -> list[str]:
        """Repair after a kill: temp files, a stale symlink, a missing active model.

        Returns what was done (for the log).
        """
        done: list[str] = []
        for d in (self.root, self.root / "models"):
            for p in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
                    done.append(f"removed {p.name}")
        st = self.state()
        active = st["active"]
        if active and not self.model_path(active["sha256"]).exists():
            prev = st["previous"]
            if prev and self.model_path(prev["sha256"]).exists():
                write_json_atomic(self.state_path, {"active": prev, "previous": None,
                                                    "updated_at": time.time()})
                done.append("active model file missing: fell back to the previous model")
                active = prev
            else:
                write_json_atomic(self.state_path, {"active": None, "previous": None,
                                                    "updated_at": time.time()})
                done.append("active model file missing and no previous model")
                active = None
        if active:
            want = Path("models") / f"{active['sha256']}{MODEL_SUFFIX}"
            try:
                current = Path(os.readlink(self.active_link))
            except OSError:
                current = None
            if current != want:
                self._link_active(active["sha256"])
                done.append("repaired the active.tflite link")
        return done

    # -- deployment lock ----------------------------------------------------

    def write_lock(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.lock_path, data)

    def read_lock(self) -> dict[str, Any] | None:
        data = read_json(self.lock_path)
        return data if isinstance(data, dict) else None

    def clear_lock(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.lock_path.unlink()
            fsync_dir(self.root)

    def remove_transfer(self, deployment_id: str) -> None:
        shutil.rmtree(self.transfer_dir(deployment_id), ignore_errors=True)

    # -- history ------------------------------------------------------------

    def append_history(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True) + "\n"
        with open(self.history_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def history(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            lines = self.history_path.read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a kill
        return out

    # -- ledger: replay and downgrade detection ---------------------------------

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.txt"

    def _ledger(self) -> set[str]:
        if self._seen is None:
            seen: set[str] = set()
            last = 0
            try:
                lines = self.ledger_path.read_text().splitlines()
            except OSError:  # an older state directory: start from its history
                lines = [f"0 {h.get('deployment_id')}" for h in self.history()]
            for line in lines:
                release, _, dep = line.partition(" ")
                reset = release.startswith("=")  # a signed release reset: the new last release
                release = release.removeprefix("=")
                if dep and release.isascii() and release.isdigit():
                    seen.add(dep)
                    last = int(release) if reset else max(last, int(release))
            self._seen, self._last_release = seen, last
        return self._seen

    def seen(self, deployment_id: str) -> bool:
        """Whether an authenticated manifest with this id was ever accepted or refused as busy."""
        return deployment_id in self._ledger()

    @property
    def last_release(self) -> int:
        """The highest release of an accepted manifest (0: none yet)."""
        self._ledger()
        return self._last_release

    def record(self, deployment_id: str, release: int, *, accepted: bool = True,
               reset: bool = False) -> None:
        """Note an authenticated deployment id (and its release when ``accepted``).

        ``reset`` (a signed release reset) makes ``release`` the last accepted
        release even when a higher one was accepted before.
        """
        seen = self._ledger()
        rel = int(release) if accepted else 0
        with open(self.ledger_path, "a") as f:
            f.write(f"{'=' if reset and accepted else ''}{rel} {deployment_id}\n")
            f.flush()
            os.fsync(f.fileno())
        seen.add(deployment_id)
        self._last_release = rel if reset and accepted else max(self._last_release, rel)

    # -- report spool -------------------------------------------------------

    def spool_add(self, report_id: str, payload: bytes, *, retain: bool = False) -> Path:
        """Keep a report until the broker acknowledges it (``retain``: publish it retained)."""
        kind = "r" if retain else "q"
        existing = list((self.root / "spool").glob(f"*-{report_id}.?.json"))
        if existing:  # the same report again (a resumed final state): send it once
            return existing[0]
        path = self.root / "spool" / f"{time.time_ns():020d}-{report_id}.{kind}.json"
        write_atomic(path, payload)
        return path

    @staticmethod
    def spool_retained(path: Path) -> bool:
        return path.name.endswith(".r.json")

    def spool_list(self) -> list[Path]:
        return sorted(p for p in (self.root / "spool").glob("*.json"))

    def spool_remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
