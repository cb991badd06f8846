"""The one lock design: a lease kept in the run's Store, created if absent and kept alive by a heartbeat.

The lock object names its holder (host, process, a random token) and the time of its last
heartbeat, which the holder refreshes every `ttl_s / 4` with a compare-and-swap. Another process
may take a lock over only when it is stale:
- its holder ran on this host and that process is gone: at once, so a rerun after kill -9 does
  not wait out the TTL ("this host" means the same kernel and PID namespace, where a process id
  means the same process; its start time tells a reused id from the holder);
- otherwise when the heartbeat is older than `ttl_s` (a holder on another node cannot be asked).
A lock that may still be live is refused with `RunInUse` (exit 75), so a retried pod comes back
after the orchestrator's back-off and finds the lock stale or released.

The Store's conditional operations make this work the same on S3 and in a local directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from job.errors import RunInUse
from job.storage import Store, Versioned

TAKEOVER_ATTEMPTS = 3  # create, or take over a stale lock; more means another process keeps winning


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written into it."""

    host: str
    pid: int
    token: str
    heartbeat: float
    machine: str | None = None  # kernel boot id and PID namespace: where `pid` can be looked up
    started: str | None = None  # the process's start time, from /proc

    @classmethod
    def this_process(cls) -> Holder:
        pid = os.getpid()
        return cls(
            socket.gethostname(), pid, secrets.token_hex(8), time.time(), this_machine(), process_start(pid)
        )

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder | None:
        """The holder written in a lock; None when the lock is unreadable (not written by a holder)."""
        try:
            fields = json.loads(data)
            return cls(
                str(fields["host"]),
                int(fields["pid"]),
                str(fields["token"]),
                float(fields["heartbeat"]),
                fields.get("machine"),
                fields.get("started"),
            )
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            return None


def this_machine() -> str | None:
    """The kernel boot id and this process's PID namespace; None where /proc does not tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}"


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot); None when it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # from field 3 on; the command name before ")" may hold spaces
    return None if fields[0] == "Z" else fields[19]  # state, starttime (field 22)


def stale_reason(holder: Holder, ttl_s: float) -> str | None:
    """Why a lock held by `holder` may be taken over, or None while it may be live."""
    if (
        holder.machine is not None
        and holder.machine == this_machine()
        and holder.host == socket.gethostname()
    ):
        if process_start(holder.pid) != holder.started:
            return "its process is gone"
        return None  # alive on this host: its heartbeat age does not matter
    age = time.time() - holder.heartbeat
    return f"no heartbeat for {age:.0f}s" if age >= ttl_s else None


def _refusal(store: Store, key: str, holder: Holder) -> RunInUse:
    age = time.time() - holder.heartbeat
    return RunInUse(
        f"the run is in use by another process ({holder.host} pid {holder.pid}, heartbeat {age:.0f}s "
        f"ago; {store.where(key)}); not touching it. Retry later: a lock whose holder stopped goes "
        "stale after runtime.lock_ttl_s"
    )


def lock_key(name: str) -> str:
    return f"locks/{name}.lock"


def refuse_if_locked(store: Store, name: str, ttl_s: float) -> None:
    """Raise RunInUse if another process may still hold lock `name` (reads only)."""
    key = lock_key(name)
    current = store.read_versioned(key)
    if current is None:
        return
    holder = Holder.from_bytes(current.data)
    if holder is not None and stale_reason(holder, ttl_s) is None:
        raise _refusal(store, key, holder)


@contextlib.contextmanager
def run_lock(store: Store, name: str, log: Any, ttl_s: float = 120.0) -> Iterator[None]:
    """Hold lock `name` of the run in `store` for the block, refreshing its heartbeat.

    A second process with the same run id stops at once (RunInUse, exit 75) instead of writing
    over the first's files; a lock left by a killed process is taken over (see the module doc).
    """
    key = lock_key(name)
    me = Holder.this_process()
    _acquire(store, key, me, ttl_s, log)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(store, key, me, ttl_s / 4, stop, log), name=f"lock-{name}", daemon=True
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join(timeout=5)
        with contextlib.suppress(
            Exception
        ):  # an unreleased lock goes stale; failing the step for it would not help
            _release(store, key, me)


def _acquire(store: Store, key: str, me: Holder, ttl_s: float, log: Any) -> None:
    for _ in range(TAKEOVER_ATTEMPTS):
        if store.create_if_absent(key, me.to_bytes()):
            return
        current = store.read_versioned(key)
        if current is None:  # released between our two calls: try to create it again
            continue
        holder = Holder.from_bytes(current.data)
        reason = stale_reason(holder, ttl_s) if holder else "unreadable lock"
        if holder is not None and reason is None:
            raise _refusal(store, key, holder)
        log.warning(
            "taking over a stale lock",
            lock=store.where(key),
            reason=reason,
            previous_owner=holder.host if holder else None,
        )
        if store.replace_if_unchanged(key, me.to_bytes(), current.version):
            return
    raise RunInUse(f"{store.where(key)}: other processes kept taking the lock first; not touching the run")


def _ours(current: Versioned | None, me: Holder) -> bool:
    holder = Holder.from_bytes(current.data) if current else None
    return holder is not None and holder.token == me.token


def _heartbeat(store: Store, key: str, me: Holder, every_s: float, stop: threading.Event, log: Any) -> None:
    while not stop.wait(every_s):
        try:
            current = store.read_versioned(key)
            if not _ours(current, me):
                log.error("lost the run lock: another process took it over", lock=store.where(key))
                return
            assert current is not None
            store.replace_if_unchanged(key, replace(me, heartbeat=time.time()).to_bytes(), current.version)
        except Exception as exc:  # a missed beat only shortens the lease
            log.warning("lock heartbeat failed", lock=store.where(key), error=str(exc))


def _release(store: Store, key: str, me: Holder) -> None:
    """Delete the lock if it is still ours (a holder that was taken over leaves the new one alone)."""
    if _ours(store.read_versioned(key), me):
        store.delete(key)
