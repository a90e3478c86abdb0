"""The inference daemon: HTTP/1.1 on loopback, token auth, streamed jobs, idle unload and exit.

Protocol: core/protocol.py. One job computes at a time (models share one device and its memory);
others wait in line and say so through their progress stream.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import secrets
import selectors
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from core import __version__
from core.actions.base import Action, JobContext, ModelCache
from core.actions.inputs import to_numpy, to_wire
from core.actions.registry import all_actions, find_action
from core.device import select_device
from core.protocol import (
    FRAME_CONTENT_TYPE,
    HTTP_STATUS,
    PROTOCOL_VERSION,
    Discovery,
    ErrorCode,
    Frame,
    JobRequest,
    SemanticError,
    encode_frame_parts,
    read_frame,
)

log = logging.getLogger("gimp_semantic.daemon")
PROGRESS_INTERVAL_S = 0.05
# How often a streaming job looks whether its client hung up. GIMP's Cancel button SIGKILLs the plug-in,
# and a job waiting in line or between progress reports writes nothing that could fail, so we look.
CLIENT_CHECK_S = 0.1
MIN_TOKEN_CHARS = 16
DISCARD_LIMIT_BYTES = 256 << 20
# The HTTP edge's limits. Clients open one short connection per request, so a connection that sends or
# reads nothing for SOCKET_TIMEOUT_S is stalled or abandoned and is closed. Each connection holds a
# thread: past MAX_CONNECTIONS at once, new ones get a 503 'busy' and are closed (200 idle connections
# once held 205 threads). LISTEN_BACKLOG lets a burst of clients queue in the kernel instead of waiting
# out SYN retries (1 s each with the default of 5).
SOCKET_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 64
LISTEN_BACKLOG = 128
# What a refused connection may have sent that the accepting thread reads before closing it.
TURN_AWAY_READ_BYTES = 1 << 16
# How long a stopping daemon (SIGTERM, Ctrl+C) lets running jobs' streams carry the news to their clients.
SHUTDOWN_GRACE_S = 5.0
STOPPED_MESSAGE = ("The gimp-semantic daemon was stopped while this job ran (it was asked to quit). Run the "
                   "job again: the plug-in starts a new daemon when none runs.")


@dataclass
class DaemonConfig:
    host: str = "127.0.0.1"
    port: int = 0
    idle_exit_s: float = 1800.0  # 0 disables
    model_idle_s: float = 600.0
    max_payload_mb: float = 2048.0
    device: str | None = None
    state_dir: Path = field(default_factory=Path)
    log_file: Path | None = None
    socket_timeout_s: float = SOCKET_TIMEOUT_S
    # A token kept across restarts (created if missing), for clients on another machine that hold a
    # copy of it (SSH tunnel); None: a fresh token per start in state_dir/token.
    token_file: Path | None = None


@dataclass
class Job:
    id: str
    action: Action
    cancel_event: threading.Event = field(default_factory=threading.Event)
    events: queue.Queue = field(default_factory=queue.Queue)


class Daemon:
    def __init__(self, config: DaemonConfig):
        if config.host not in ("127.0.0.1", "localhost", "::1"):
            raise SemanticError(ErrorCode.bad_request, "The daemon listens on loopback only.")
        self.config = config
        self.device = select_device(config.device)
        self.models = ModelCache(config.model_idle_s)
        self.actions = all_actions()
        self.token = _kept_token(config.token_file) if config.token_file else secrets.token_urlsafe(32)
        self.jobs: dict[str, Job] = {}
        self.jobs_lock = threading.Lock()
        self.compute_lock = threading.Lock()
        self.last_activity = time.monotonic()
        self._active_requests = 0
        self._active_lock = threading.Lock()
        self._requests_done = threading.Condition(self._active_lock)
        self.stopping = threading.Event()
        try:
            self.http = _Server((config.host, config.port), _Handler, daemon=self)
        except OSError as exc:
            raise SemanticError(ErrorCode.bad_request,
                                f"Cannot listen on {config.host}:{config.port}: {exc}. "
                                "Another program may use that port; pick another with --port.") from None

    @property
    def port(self) -> int:
        return self.http.server_address[1]

    # --- lifecycle -----------------------------------------------------------------------------

    def serve(self) -> None:
        self._write_discovery()
        watcher = threading.Thread(target=self._watch_idle, name="idle-watcher", daemon=True)
        watcher.start()
        log.info("gimp-semantic %s listening on %s:%d (device %s)", __version__, self.config.host,
                 self.port, self.device)
        try:
            self.http.serve_forever(poll_interval=0.2)
        finally:
            self.http.server_close()
            # Request threads die with the process: let those at work finish their answer first.
            with self._requests_done:
                self._requests_done.wait_for(lambda: self._active_requests == 0, SHUTDOWN_GRACE_S)
            self._remove_discovery()
            log.info("daemon stopped")

    def stop(self) -> None:
        if not self.stopping.is_set():
            self.stopping.set()
            stopped = Frame("error", SemanticError(ErrorCode.daemon_unavailable, STOPPED_MESSAGE).to_dict())
            with self.jobs_lock:
                for job in self.jobs.values():
                    job.events.put(stopped)  # ahead of the job's own 'cancelled', which would not say why
                    job.cancel_event.set()
            threading.Thread(target=self.http.shutdown, daemon=True).start()

    def _watch_idle(self) -> None:
        while not self.stopping.wait(0.25):
            for key in self.models.unload_idle():
                log.info("unloaded idle model %s", key)
            idle = time.monotonic() - self.last_activity
            if self.config.idle_exit_s and self.active_requests == 0 and idle > self.config.idle_exit_s:
                log.info("idle for %.0f s, exiting", idle)
                self.stop()

    def _write_discovery(self) -> None:
        state = self.config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        token_path = self.config.token_file or state / "token"
        if not self.config.token_file:
            _write_private(token_path, self.token + "\n")
        discovery = Discovery(self.config.host, self.port, str(token_path), os.getpid(), __version__)
        _write_private(state / "daemon.json", discovery.to_json())

    def _remove_discovery(self) -> None:
        path = self.config.state_dir / "daemon.json"
        try:
            if Discovery.from_json(path.read_text()).pid == os.getpid():
                path.unlink()
        except (OSError, ValueError, KeyError):
            pass

    # --- requests ------------------------------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @property
    def active_requests(self) -> int:
        return self._active_requests

    def request_started(self) -> None:
        with self._active_lock:
            self._active_requests += 1
        self.touch()

    def request_ended(self) -> None:
        with self._active_lock:
            self._active_requests -= 1
            self._requests_done.notify_all()
        self.touch()

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())

    def health(self) -> dict:
        return {
            "name": "gimp-semantic",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "device": str(self.device),
            "pid": os.getpid(),
            "actions": sorted(self.actions),
            "loaded_models": self.models.keys(),
            "max_payload_bytes": int(self.config.max_payload_mb * 1e6),
        }

    def start_job(self, request: JobRequest) -> Job:
        if request.protocol != PROTOCOL_VERSION:
            raise SemanticError(
                ErrorCode.version_mismatch,
                f"The plug-in speaks protocol {request.protocol} (version {request.client_version or '?'}) "
                f"but the daemon speaks protocol {PROTOCOL_VERSION} (version {__version__}). "
                "Re-run the installer so both come from the same release.",
            )
        action = find_action(request.action, self.actions)
        job = Job(uuid.uuid4().hex[:12], action)
        arrays = {name: to_numpy(array) for name, array in request.arrays.items()}
        with self.jobs_lock:
            self.jobs[job.id] = job
        log.info("job %s %s accepted", job.id, action.name)
        worker = threading.Thread(target=self._run_job, args=(job, arrays, request.params),
                                  name=f"job-{job.id}", daemon=True)
        worker.start()
        return job

    def cancel(self, job_id: str) -> bool:
        with self.jobs_lock:
            job = self.jobs.get(job_id)
        if job is None:
            return False
        job.cancel_event.set()
        return True

    def _run_job(self, job: Job, arrays: dict[str, np.ndarray], params: dict) -> None:
        last_sent = [0.0]

        def progress(fraction: float, text: str) -> None:
            now = time.monotonic()
            if now - last_sent[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
                last_sent[0] = now
                # A plain float: JSON cannot encode NumPy scalars, and the frame is encoded in the stream.
                job.events.put(Frame("progress", {"fraction": float(fraction), "text": text}))

        ctx = JobContext(self.device, self.models, progress, job.cancel_event)
        started = time.monotonic()
        try:
            if not self.compute_lock.acquire(blocking=False):
                job.events.put(Frame("progress", {"fraction": 0.0, "text": "Waiting for another job"}))
                while not self.compute_lock.acquire(timeout=0.1):
                    ctx.check_cancelled()
            try:
                ctx.check_cancelled()
                outputs = job.action.run(arrays, params, ctx)
            finally:
                self.compute_lock.release()
            result = Frame("result", {"job": job.id, "seconds": round(time.monotonic() - started, 4)},
                           {name: to_wire(name, value) for name, value in outputs.items()})
            job.events.put(result)
            log.info("job %s %s done in %.2f s", job.id, job.action.name, time.monotonic() - started)
        except SemanticError as exc:
            log.info("job %s %s: %s: %s", job.id, job.action.name, exc.code.value, exc.message)
            job.events.put(Frame("error", exc.to_dict()))
        except (MemoryError, torch.OutOfMemoryError):
            log.exception("job %s ran out of memory", job.id)
            job.events.put(Frame("error", SemanticError(
                ErrorCode.out_of_memory,
                "Not enough memory for this image. Try a smaller layer or close other programs.").to_dict()))
        except Exception as exc:  # noqa: BLE001 - the daemon must keep serving; the log has the traceback
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            job.events.put(Frame("error", SemanticError(
                ErrorCode.internal,
                f"Internal error in '{job.action.name}': {type(exc).__name__}: {exc}. "
                f"Details are in the daemon log {self.config.log_file or ''}.").to_dict()))
        finally:
            self.touch()

    def finish_job(self, job: Job) -> None:
        with self.jobs_lock:
            self.jobs.pop(job.id, None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, handler, daemon: Daemon):
        self.semantic = daemon
        self.connection_slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.connection_slots.acquire(blocking=False):
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)  # a thread, which frees the slot at its end
        except BaseException:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def _turn_away(self, request: socket.socket) -> None:
        """503 'busy', written on the accepting thread without waiting for the request: a thread per refused
        connection is what the cap is there to prevent."""
        error = SemanticError(ErrorCode.busy,
                              f"The gimp-semantic daemon already serves {MAX_CONNECTIONS} connections, its "
                              "limit. Close other clients of it, or try again in a minute.")
        body = json.dumps({"error": error.to_dict()}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            request.send(head + body)  # a few hundred bytes: an empty socket buffer takes them at once
            request.shutdown(socket.SHUT_WR)
            # One read, not waiting: it takes a request head that has arrived (closing with it unread resets
            # the connection, which some clients report instead of the 503). Reading on while a client keeps
            # sending would hold up every accept: such a client gets the reset.
            request.recv(TURN_AWAY_READ_BYTES)
        except OSError:
            pass  # BlockingIOError: nothing has arrived yet; anything else: the client is gone already
        self.close_request(request)

    def handle_error(self, request, client_address) -> None:
        # socketserver prints these on stderr, which a user who runs the daemon in a terminal sees.
        log.error("connection from %s failed:\n%s", client_address, traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        # Reads and writes on the connection give up after this long without progress, so a stalled
        # client frees its thread and whatever its request holds.
        self.timeout = self.server.semantic.config.socket_timeout_s
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature from the base class
        log.debug("%s " + format, self.address_string(), *args)

    @property
    def daemon(self) -> Daemon:
        return self.server.semantic

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError as exc:
            # Between requests: the client reset the connection (e.g. closed it with an answer unread) or
            # stalled. Nobody is left to answer, and nothing is wrong with the daemon.
            log.debug("%s: connection ended: %s", self.address_string(), exc)
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """'100 Continue' only for a request that will be read: a wrong token or an oversized body gets
        its final answer before the client sends the body."""
        try:
            self._check_token()
            if self.command == "POST" and self.path.strip("/") == "v1/jobs":
                self._check_size(self._content_length())
        except SemanticError as exc:
            self.close_connection = True
            self._send_error(exc)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _check_token(self) -> None:
        if not self.daemon.authorized(self.headers.get("Authorization")):
            raise SemanticError(ErrorCode.unauthorized,
                                "Missing or wrong token. Clients read it from the file named in the "
                                "daemon's discovery file.")

    def _guarded(self, handler) -> None:
        daemon = self.daemon
        daemon.request_started()
        try:
            try:
                self._check_token()
            except SemanticError:
                self._discard_body()
                raise
            handler()
        except SemanticError as exc:
            self._send_error(exc)
        except OSError as exc:  # the client went away or stalled past the socket timeout: nobody to answer
            log.debug("%s %s: connection ended: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug must still get an answer; the log has the traceback
            log.error("%s %s failed:\n%s", self.command, self.path, traceback.format_exc())
            self.close_connection = True
            self._send_error(SemanticError(
                ErrorCode.internal, f"Internal error in the daemon: {type(exc).__name__}: {exc}. Details are "
                                    f"in the daemon log {daemon.config.log_file or ''}."))
        finally:
            daemon.request_ended()

    def _get(self) -> None:
        if self.path.rstrip("/") == "/v1/health":
            self._send_json(200, self.daemon.health())
        else:
            raise SemanticError(ErrorCode.bad_request, f"No such endpoint: GET {self.path}")

    def _post(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts == ["v1", "jobs"]:
            self._post_job()
        elif len(parts) == 4 and parts[:2] == ["v1", "jobs"] and parts[3] == "cancel":
            self._discard_body()
            self._send_json(200, {"cancelled": self.daemon.cancel(parts[2])})
        else:
            self._discard_body()
            raise SemanticError(ErrorCode.bad_request, f"No such endpoint: POST {self.path}")

    def _post_job(self) -> None:
        declared = self.headers.get("X-Semantic-Protocol")
        if declared is not None and declared != str(PROTOCOL_VERSION):
            self._discard_body()
            raise SemanticError(
                ErrorCode.version_mismatch,
                f"The client speaks protocol {declared}, the daemon (version {__version__}) speaks "
                f"{PROTOCOL_VERSION}. Re-run the installer so the plug-in and daemon match.")
        length = self._content_length()
        try:
            self._check_size(length)
        except SemanticError:
            self._discard_body()  # read what is cheap to read, so the client sees the 413, not a reset
            raise
        limit = int(self.daemon.config.max_payload_mb * 1e6)
        remaining = [length]

        def read(n: int) -> bytes:
            n = min(n, remaining[0])
            data = self.rfile.read(n) if n else b""
            remaining[0] -= len(data)
            return data

        frame = read_frame(read, max_payload=limit, body_size=length)
        if remaining[0]:
            self.close_connection = True
            raise SemanticError(ErrorCode.bad_request, "The request body is longer than its frame.")
        job = self.daemon.start_job(JobRequest.from_frame(frame))
        try:
            self._stream(job)
        finally:
            self.daemon.finish_job(job)

    def _stream(self, job: Job) -> None:
        self.send_response(200)
        self.send_header("Content-Type", FRAME_CONTENT_TYPE)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        # From here on the answer is this stream: whatever fails must end it here, since an exception left to
        # _guarded would write a second response into it, and the job would compute on for nobody.
        watcher = None
        try:
            # poll/epoll, not select(): select() fails on descriptors past 1023, which a busy process has.
            watcher = selectors.DefaultSelector()
            watcher.register(self.connection, selectors.EVENT_READ)
            self._write_chunk(encode_frame_parts(Frame("accepted", {"job": job.id})))
            watch_client = True
            while True:
                try:
                    frame = job.events.get(timeout=CLIENT_CHECK_S)
                except queue.Empty:
                    frame = None
                if frame is None:
                    if watch_client:
                        state = self._client_state(watcher)
                        if state == "gone":
                            raise ConnectionResetError("the client closed the connection")
                        watch_client = state == "connected"
                    continue
                self._write_chunk(encode_frame_parts(frame))
                if frame.kind in ("result", "error"):
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            job.cancel_event.set()  # the client went away: stop computing for nobody
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a bug: an error frame for the client, the traceback logged
            job.cancel_event.set()
            self.close_connection = True
            log.error("job %s %s: its stream failed:\n%s", job.id, job.action.name, traceback.format_exc())
            self._end_stream_with(SemanticError(
                ErrorCode.internal,
                f"Internal error in the daemon while it sent the job's progress or result: "
                f"{type(exc).__name__}: {exc}. Details are in the daemon log "
                f"{self.daemon.config.log_file or ''}."))
        finally:
            if watcher is not None:
                watcher.close()

    def _end_stream_with(self, error: SemanticError) -> None:
        """A last 'error' frame and the end of the stream. Frames are encoded before any of their bytes are
        written, and writes fail only with OSError (ValueError once closed): no chunk is half sent here."""
        try:
            self._write_chunk(encode_frame_parts(Frame("error", error.to_dict())))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (OSError, ValueError):
            pass  # the client is gone too

    def _client_state(self, watcher: selectors.BaseSelector) -> str:
        """'gone' once the client closed its end, 'connected' while it waits silently, 'sending' when it
        sent more bytes (a pipelined request: its end-of-stream is then not ours to watch for)."""
        try:
            if not watcher.select(timeout=0):
                return "connected"
            return "sending" if self.connection.recv(1, socket.MSG_PEEK) else "gone"
        except OSError:  # reset by the peer
            return "gone"

    def _write_chunk(self, parts: list) -> None:
        size = sum(len(p) for p in parts)
        self.wfile.write(f"{size:x}\r\n".encode())
        for part in parts:
            self.wfile.write(part)
        self.wfile.write(b"\r\n")
        self.wfile.flush()

    def _check_size(self, length: int) -> None:
        """The body's size against --max-payload-mb (plus room for the frame's header)."""
        limit = int(self.daemon.config.max_payload_mb * 1e6)
        if length > limit + (1 << 20):
            raise SemanticError(
                ErrorCode.payload_too_large,
                f"The request is {length / 1e6:.0f} MB, over the daemon's limit of {limit / 1e6:.0f} MB. "
                "Use a smaller layer, or start the daemon with a larger --max-payload-mb.")

    def _content_length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise SemanticError(ErrorCode.bad_request, "The request needs a Content-Length.") from None
        if length < 0:
            raise SemanticError(ErrorCode.bad_request, "Negative Content-Length.")
        return length

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > DISCARD_LIMIT_BYTES:
            self.close_connection = True  # not worth reading; drop the connection instead
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _send_json(self, status: int, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, exc: SemanticError) -> None:
        status = HTTP_STATUS.get(exc.code, 500)
        try:
            self._send_json(status, {"error": exc.to_dict()})
        except OSError:
            self.close_connection = True


def _kept_token(path: Path) -> str:
    """The token in ``path``, created (0600) when missing; refused when others may read it."""
    path = path.expanduser()
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_private(path, secrets.token_urlsafe(32) + "\n")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise SemanticError(ErrorCode.bad_request,
                                f"The token file {path} can be read by other users. Run 'chmod 600 {path}' "
                                "and start the daemon again.")
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SemanticError(ErrorCode.bad_request, f"Cannot use the token file {path}: {exc}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise SemanticError(ErrorCode.bad_request,
                            f"The token file {path} holds no usable token (one line of at least "
                            f"{MIN_TOKEN_CHARS} characters). Delete it and the daemon writes a new one.")
    return token


def _write_private(path: Path, text: str) -> None:
    """Write a file only the user can read (0600), atomically."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def configure_logging(log_file: Path, verbose: bool = False) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("gimp_semantic")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
