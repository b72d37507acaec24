"""Cell claims: which writer works on which cell of a shared results store, and which attempt.

Beside the tables, outside every folder DuckDB reads (`<results>/claims/sweep=<name>/`):
  owners/<run>.json          one per running sweep: host, pid, run id and a heartbeat it rewrites
  cells/<cell_id>/a<N>.json  attempt N of the cell belongs to the owner <run> it names

Attempt N is claimed by creating `a<N>.json` exclusively, so two writers never get the same N and
never write the same `{cell_id}-a{N}.parquet`; the highest claim of a cell is its current one. A
claim is live while its owner's heartbeat is younger than the timeout (and, on the owner's own host,
its process exists: a rerun after a crash takes over at once); its owner marks it released when the
cell is done. On a local filesystem the create is a hard link of a complete temporary file (fails
if the name exists). Object stores have no create-if-absent in pyarrow: there the claim is
`a<N>-<run>.json`, written, then the cell's folder is listed; a writer that sees another claim of
the same N withdraws its own and tries later. With read-after-write listings (S3, GCS) at most one
of two racing writers keeps N (each sees the other unless its list ran before the other's write).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

CLAIM_TIMEOUT_S = 60.0       # a claim whose owner has not beaten for this long is stale
_CLAIM_NAME = re.compile(r"^a(\d+)(?:-[0-9a-f]+)?\.json$")


@dataclass(frozen=True)
class Claim:
    cell_id: str
    attempt: int
    run: str
    released: bool


class Claims:
    """This writer's claims in one sweep's partition. `owning()` keeps its heartbeat going."""

    def __init__(self, fs: pafs.FileSystem, base: str, sweep: str, local: bool,
                 timeout_s: float = CLAIM_TIMEOUT_S):
        self.fs, self.local, self.timeout_s = fs, local, timeout_s
        self.folder = f"{base.rstrip('/')}/claims/sweep={sweep}"
        self.run = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._depth = 0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._owners: dict[str, tuple[float, dict | None]] = {}     # run -> (read at, lease): re-read each second

    # -- the owner lease -------------------------------------------------------------------------

    def _lease(self, run: str) -> str:
        return f"{self.folder}/owners/{run}.json"

    def _write_lease(self) -> None:
        self._put(self._lease(self.run), {"run": self.run, "host": self.host, "pid": self.pid,
                                          "heartbeat": time.time()}, replace=True)

    @contextlib.contextmanager
    def owning(self):
        """While the block runs this writer's lease is beaten every timeout/4 s; on exit it is removed,
        so claims it did not release are free at once."""
        if self._depth == 0:
            self.fs.create_dir(f"{self.folder}/owners", recursive=True)
            self._write_lease()
            self._stop.clear()
            self._beat = threading.Thread(target=self._beat_loop, name="qmx-claims-heartbeat", daemon=True)
            self._beat.start()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._stop.set()
                self._beat.join()
                with contextlib.suppress(OSError):
                    self.fs.delete_file(self._lease(self.run))

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            with contextlib.suppress(OSError):      # a missed beat is survivable; the next one retries
                self._write_lease()

    def _owner_live(self, run: str) -> bool:
        if run == self.run:
            return self._depth > 0
        read_at, lease = self._owners.get(run, (0.0, None))
        if time.monotonic() - read_at > 1.0:
            lease = self._get(self._lease(run))
            self._owners[run] = (time.monotonic(), lease)
        if lease is None or time.time() - lease["heartbeat"] > self.timeout_s:
            return False
        return lease["host"] != self.host or _pid_alive(lease["pid"])

    def live_owners(self) -> list[str]:
        """The other writers beating on this sweep now (host:pid of each)."""
        sel = pafs.FileSelector(f"{self.folder}/owners", allow_not_found=True)
        runs = [f.base_name.removesuffix(".json") for f in self.fs.get_file_info(sel) if f.base_name.endswith(".json")]
        return [f"{lease['host']}:{lease['pid']}" for run in runs if run != self.run and self._owner_live(run)
                and (lease := self._owners[run][1]) is not None]

    # -- cell claims -----------------------------------------------------------------------------

    def _cell_dir(self, cell_id: str) -> str:
        return f"{self.folder}/cells/{cell_id}"

    def _listing(self, cell_id: str) -> list[tuple[int, str]]:
        sel = pafs.FileSelector(self._cell_dir(cell_id), allow_not_found=True)
        found = [(int(m.group(1)), f.path) for f in self.fs.get_file_info(sel)
                 if f.type == pafs.FileType.File and (m := _CLAIM_NAME.match(f.base_name))]
        return sorted(found)

    def top(self, cell_id: str) -> Claim | None:
        """The cell's current (highest) claim."""
        for attempt, path in reversed(self._listing(cell_id)):
            body = self._get(path)
            if body is not None:
                return Claim(cell_id, attempt, body["run"], body.get("released", False))
        return None

    def live(self, claim: Claim) -> bool:
        """Held: not released, and its owner beats (another writer must leave the cell alone)."""
        return not claim.released and self._owner_live(claim.run)

    def create(self, cell_id: str, attempt: int) -> bool:
        """Claim attempt `attempt` of the cell for this writer; False when another writer has it."""
        body = {"run": self.run, "host": self.host, "pid": self.pid, "claimed_at": time.time()}
        folder = self._cell_dir(cell_id)
        self.fs.create_dir(folder, recursive=True)
        if self.local:
            final = f"{folder}/a{attempt}.json"
            tmp = f"{folder}/.a{attempt}.{self.run}.tmp"
            with open(tmp, "w") as f:
                json.dump(body, f)
            try:
                os.link(tmp, final)          # atomic, and fails if the name exists: the exclusive create
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        mine = f"{folder}/a{attempt}-{self.run}.json"
        self._put(mine, body, replace=False)
        if any(n == attempt and path != mine for n, path in self._listing(cell_id)):
            with contextlib.suppress(OSError):
                self.fs.delete_file(mine)
            return False
        return True

    def release(self, cell_id: str, attempt: int) -> None:
        """The cell is done for this writer (its runs row is written): others may take it up."""
        for n, path in self._listing(cell_id):
            if n == attempt:
                body = self._get(path)
                if body is not None and body["run"] == self.run:
                    self._put(path, {**body, "released": True}, replace=True)

    def holds(self, cell_id: str, attempt: int) -> bool:
        """This writer's claim is still the cell's current one (a writer that lost it, stalled past the
        timeout, must not write)."""
        top = self.top(cell_id)
        return top is not None and (top.attempt, top.run) == (attempt, self.run)

    # -- small JSON files ------------------------------------------------------------------------

    def _put(self, path: str, body: dict, replace: bool) -> None:
        data = json.dumps(body).encode()
        if self.local and replace:          # rename over the old file: a reader sees old or new, whole
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return
        with self.fs.open_output_stream(path) as out:    # one PUT: all or nothing on object stores
            out.write(data)

    def _get(self, path: str) -> dict | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        except OSError as e:            # pyarrow reports a missing object as a plain OSError on some stores
            if any(t in str(e).lower() for t in ("not found", "no such file", "does not exist")):
                return None
            raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
