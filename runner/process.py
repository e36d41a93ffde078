"""Running one nanochat command: live output, a heartbeat in silence, progress parsing, the log kept in storage.

The child runs in its own process group so that stopping the node agent (Ctrl-C, SIGTERM from a backend)
stops every torchrun rank with it. Output is read in a thread and printed line by line as it arrives; carriage
returns (tqdm bars) count as line ends so progress is never held back.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STOP_GRACE_SEC = 15
PR_SET_PDEATHSIG = 1


def _resolve_prctl():
    """libc's prctl, looked up once here in the parent: the child between fork and exec must not load libraries
    or take locks (other threads of the agent may hold them), only call an already resolved function."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the process-group kill in stop_process_group still applies


_PRCTL = _resolve_prctl()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the node agent dies (even by SIGKILL), so no trainer is orphaned.
    torchrun forwards that SIGTERM to its workers."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


class LogSink:
    """Appends a step's output to a local log file and mirrors that file to storage every few seconds.

    Object stores cannot append, so the whole file is re-uploaded; a background thread does it so a slow or
    briefly unreachable storage never stalls the output of the training run. The file is line-buffered, so a
    full disk (ENOSPC) surfaces in `write` at the line that did not fit, in the agent's own thread, which stops
    the step and ends the run with the disk-full message; the upload thread never dies with a traceback.
    """

    def __init__(self, local: Path, storage, remote_rel: str, interval: float = 15.0, log=print):
        self.local, self.storage, self.remote_rel, self.interval, self.log = local, storage, remote_rel, interval, log
        self.local.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.local.open("a", encoding="utf-8", buffering=1)
        self.error: OSError | None = None  # the first local write that failed; every later write re-raises it
        self.dirty = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="log-upload", daemon=True)
        self.thread.start()
        self.upload_failures = 0

    def write(self, line: str) -> None:
        if self.error is not None:
            raise self.error
        try:
            self.file.write(line + "\n")
        except OSError as e:
            self.error = e
            raise
        self.dirty.set()

    def _flush(self) -> None:
        try:
            self.file.flush()
        except OSError as e:  # the disk is full: what reached the file is still worth uploading
            self.error = self.error or e

    def _upload(self) -> None:
        self._flush()
        target = self.storage.path(self.remote_rel)
        try:
            self.storage.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.storage.fs.put_file(str(self.local), target)
            self.upload_failures = 0
        except Exception as e:  # noqa: BLE001 - the run must go on; the next upload catches up
            self.upload_failures += 1
            if self.upload_failures in (1, 10, 100):
                self.log(f"could not upload the log to storage ({type(e).__name__}: {e}); will retry")

    def _loop(self) -> None:
        from .checkpoints import lower_priority

        lower_priority()
        while not self.stop.is_set():
            self.stop.wait(self.interval)
            if self.dirty.is_set():
                self.dirty.clear()
                self._upload()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=self.interval + 5)
        self._upload()
        try:
            self.file.close()
        except OSError as e:
            self.error = self.error or e  # already said by the write that failed, or by the agent


def ran_out_of_space(log: Path, folder: Path, tail_bytes: int = 16384) -> bool:
    """Whether a failed step most likely died of a full disk: its log's end says ENOSPC, or `folder` has no room."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - tail_bytes))
            if b"No space left on device" in f.read():
                return True
    except OSError:
        pass
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _reader(stream, lines: queue.Queue) -> None:
    buffer = b""
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        parts = re.split(rb"\r\n|\n|\r", buffer)
        buffer = parts.pop()
        for part in parts:
            lines.put(part.decode("utf-8", errors="replace"))
    if buffer:
        lines.put(buffer.decode("utf-8", errors="replace"))
    lines.put(None)


def stop_process_group(proc: subprocess.Popen, grace: float = STOP_GRACE_SEC) -> None:
    """SIGTERM the child's whole group, then SIGKILL what is left after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass


def run_streamed(argv: list[str], cwd: str, env: dict, sink: LogSink, on_line, heartbeat_sec: float, label: str,
                 out=None, stop=None) -> int:
    """Run `argv`, echo and log every line, call `on_line(line)`, print a heartbeat after silence; return the exit code.
    `stop()`, asked about once a second, returns why to stop the process early (or None)."""
    out = out or sys.stdout
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
    reader.start()
    started = last_output = time.monotonic()
    try:
        while True:
            why = stop() if stop else None
            if why:
                note = f"[runner] {label}: stopped: {why}"
                print(note, file=out, flush=True)
                sink.write(note)
                stop_process_group(proc)
                break
            try:
                line = lines.get(timeout=min(1.0, heartbeat_sec))
            except queue.Empty:
                now = time.monotonic()
                if now - last_output >= heartbeat_sec:
                    note = f"[runner] {label}: still running, no output for {now - last_output:.0f}s (elapsed {(now - started) / 60:.1f} min)"
                    print(note, file=out, flush=True)
                    sink.write(note)
                    last_output = now
                continue
            if line is None:
                break
            last_output = time.monotonic()
            print(line, file=out, flush=True)
            sink.write(line)
            on_line(line)
        return proc.wait()
    finally:
        stop_process_group(proc)
        reader.join(timeout=5)
        if proc.stdout:
            proc.stdout.close()


def run_interactive(argv: list[str], cwd: str, env: dict) -> int:
    """Run a command on this terminal (chat): stdin/stdout are its own. It dies with us, even by SIGKILL, and
    SIGTERM or Ctrl-C to us stops it before we exit."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, preexec_fn=_die_with_parent)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                proc.terminate()  # it got the terminal's SIGINT too; make sure it goes
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
