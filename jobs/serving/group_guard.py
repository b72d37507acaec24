"""Run a command in this process's group and take the whole group down when either ends.

    python3 group_guard.py GRACE_S CMD [ARG ...]

`vllm serve` spawns its engine core with multiprocessing, and that grandchild holds the GPU's
memory. When the Ray worker that started the server dies (a sweep interrupted at its time cap, a
lost actor), the kernel's parent-death signal reaches only its direct child. On 2026-12-02 an engine
core orphaned that way held 124 GiB of an H200, and every later vLLM start on the machine failed.
This guard is that direct child, and the leader of the server's process group (the caller starts it
in a new session with a parent-death SIGTERM). When it gets SIGTERM or SIGINT (the worker died, or
`VllmServer.close`), or when the command exits on its own, it sends SIGTERM to every other member of
the group, waits up to GRACE_S for them to exit, SIGKILLs what is left, and exits with the command's
status. So the server's exit status still reaches the caller.

It is a script, not a module of the package: it imports nothing from quantmatrix, so it starts in
milliseconds in any environment. It runs on Linux only, because it reads the group's members from /proc.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


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
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def end_group(grace_s: float) -> None:
    pgid = os.getpgrp()
    _signal_all(group_members(pgid), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(left, signal.SIGKILL)


def main(argv: list[str]) -> int:
    grace_s, cmd = float(argv[0]), argv[1:]
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    child = subprocess.Popen(cmd)            # same process group as this guard
    while child.poll() is None and not stop:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)   # close() signals the whole group, this guard included
    end_group(grace_s)
    code = child.wait()
    return 128 - code if code < 0 else code  # a signal's death as a shell reports it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
