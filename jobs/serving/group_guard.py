"""Run a command in this process's group and take the whole group down when either ends.

    python3 group_guard.py GRACE_S PARENT_PID CMD [ARG ...]

`vllm serve` spawns its engine core with multiprocessing, and that grandchild holds the GPU's
memory. When the Ray worker that started the server dies (a sweep interrupted at its time cap, a
lost actor), the kernel's parent-death signal reaches only its direct child. On 2026-12-02 an engine
core orphaned that way held 124 GiB of an H200, and every later vLLM start on the machine failed.
This guard is that direct child, and the leader of the server's process group (the caller starts it
in a new session with a parent-death SIGTERM). When it gets SIGTERM or SIGINT (the worker died, or
`VllmServer.close`), or when the command exits on its own, it sends SIGTERM to every other member of
the group, waits up to GRACE_S for them to exit, SIGKILLs what is left and waits for that too, and
exits with the command's status. So the server's exit status still reaches the caller. A worker that
died before the parent-death signal was armed is caught by PARENT_PID: the guard then starts nothing.

It is a script, not a module of the package: it imports nothing from quantmatrix, so it starts in
milliseconds in any environment. It runs on Linux only, because it reads the group's members from /proc.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

KILL_WAIT_S = 10.0      # after SIGKILL, how long to wait for the group to be gone


def group_members(pgid: int) -> list[int]:
    """Live processes of the group, other than this one (zombies excluded: they hold nothing)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]   # fields after "(comm)"
        except (OSError, ValueError):
            continue                      # exited meanwhile
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry))
    return members


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):     # exited since the scan
            os.kill(pid, sig)


def end_group(grace_s: float) -> None:
    """SIGTERM to each member (also those that appear meanwhile), SIGKILL at the deadline, then wait
    (bounded) until the group is empty: the GPU is free only once its processes are gone."""
    pgid, signalled = os.getpgrp(), set()
    deadline = time.monotonic() + grace_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        _signal_all([pid for pid in left if pid not in signalled], signal.SIGTERM)
        signalled.update(left)
        time.sleep(0.1)
    deadline = time.monotonic() + KILL_WAIT_S
    while left and time.monotonic() < deadline:
        _signal_all(left, signal.SIGKILL)
        time.sleep(0.1)
        left = group_members(pgid)


def main(argv: list[str]) -> int:
    grace_s, parent, cmd = float(argv[0]), int(argv[1]), argv[2:]
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    if stop or os.getppid() != parent:      # told to stop, or orphaned, before the server started
        return 128 + signal.SIGTERM
    child = subprocess.Popen(cmd)            # same process group as this guard
    while child.poll() is None and not stop:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)   # close() signals the whole group, this guard included
    end_group(grace_s)
    code = child.wait()
    return 128 + -code if code < 0 else code     # death by signal N: 128 + N, as a shell reports it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
