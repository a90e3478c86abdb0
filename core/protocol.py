"""gimp-semantic wire protocol, the one place it is defined and implemented.

Standard library only: the installer copies this file beside the GIMP plug-in, whose Python has
no numpy and no access to the daemon's virtual environment. The daemon imports it as
``core.protocol``.

Transport: HTTP/1.1 on 127.0.0.1 (curl-able). The daemon never listens elsewhere; a plug-in on another
machine reaches it through an SSH tunnel (``ssh -L``) named by ``RemoteDaemon`` below.
Every request carries ``Authorization: Bearer <token>``; the token lives in a 0600 file named
in the discovery file.

    GET  /v1/health            -> 200 JSON  {"name", "version", "protocol", "device", "pid", "actions"}
    POST /v1/jobs              body: one frame (see below) holding the request header and its arrays
                               -> 200, chunked stream of frames: "accepted" {"job"}, any number of
                                  "progress" {"fraction", "text"}, then exactly one final frame,
                                  "result" (with arrays) or "error" {"code", "message"}.
    POST /v1/jobs/<id>/cancel  -> 200 JSON {"cancelled": bool}. Closing the stream cancels as well.

Errors before a stream starts are a non-2xx status with JSON ``{"error": {"code", "message"}}``.

Limits (core/daemon/server.py): a body over the daemon's ``--max-payload-mb`` (default 2048 MB, told
in health's ``max_payload_bytes``) gets 413 ``payload_too_large`` before it is read, and with
``Expect: 100-continue`` before it is sent; a body is held only as far as it has arrived. A frame must
fill its body exactly (400 otherwise). A connection silent for ``--socket-timeout`` (default 60 s) is
closed; past 64 connections at once, new ones get 503 ``busy``.

Frame layout (all integers little-endian):

    b"GSF1" | header length: u32 | payload length: u64 | header: UTF-8 JSON | payload: raw bytes

A header's ``"arrays"`` lists ``{"name", "dtype", "shape", "offset", "nbytes"}``, offsets relative
to the payload's start. Pixels travel as raw bytes, rows top to bottom, channels interleaved
(H, W, C), never base64 or PNG. dtypes: ``u8``, ``u16``, ``f32`` (native little-endian).
"""

from __future__ import annotations

import http.client
import json
import operator
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

PROTOCOL_VERSION = 1
FRAME_MAGIC = b"GSF1"
FRAME_PREFIX = struct.Struct("<4sIQ")
FRAME_CONTENT_TYPE = "application/x-gimp-semantic-frames"
MAX_HEADER_BYTES = 1 << 20
# A payload is read in pieces of this size into a buffer that grows with what arrived: a frame header of a
# few bytes can announce gigabytes and then stall, and reserving the announced size up front let one
# such request hold 1.9 GB.
READ_CHUNK_BYTES = 1 << 22
DTYPE_SIZES = {"u8": 1, "u16": 2, "f32": 4}


class ErrorCode(str, Enum):
    unauthorized = "unauthorized"
    bad_request = "bad_request"
    unknown_action = "unknown_action"
    bad_input = "bad_input"
    payload_too_large = "payload_too_large"
    version_mismatch = "version_mismatch"
    weights_missing = "weights_missing"
    weights_corrupt = "weights_corrupt"
    out_of_memory = "out_of_memory"
    cancelled = "cancelled"
    daemon_unavailable = "daemon_unavailable"
    busy = "busy"
    internal = "internal"


HTTP_STATUS = {
    ErrorCode.unauthorized: 401,
    ErrorCode.bad_request: 400,
    ErrorCode.unknown_action: 404,
    ErrorCode.bad_input: 422,
    ErrorCode.payload_too_large: 413,
    ErrorCode.version_mismatch: 409,
    ErrorCode.weights_missing: 503,
    ErrorCode.weights_corrupt: 503,
    ErrorCode.out_of_memory: 507,
    ErrorCode.cancelled: 499,
    ErrorCode.daemon_unavailable: 503,
    ErrorCode.busy: 503,
    ErrorCode.internal: 500,
}


class SemanticError(Exception):
    """An error with a message written for the person using GIMP or the CLI."""

    def __init__(self, code: ErrorCode | str, message: str):
        super().__init__(message)
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else ErrorCode.internal
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.code.value, "message": self.message}

    @classmethod
    def from_dict(cls, data: object) -> SemanticError:
        if not isinstance(data, dict):
            return cls(ErrorCode.internal, f"Unexpected error report: {json.dumps(data)[:200]}")
        return cls(str(data.get("code", "internal")), str(data.get("message", "unknown error")))

    def __str__(self) -> str:
        return self.message


def bad_input(message: str) -> SemanticError:
    return SemanticError(ErrorCode.bad_input, message)


@dataclass
class Array:
    """A dense H×W×C (or H×W) array as raw bytes; numpy-free so the plug-in can build one."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | bytearray | memoryview

    def __post_init__(self):
        shape = whole_numbers(self.shape)
        if shape is None:
            raise bad_input(f"Array '{self.name}' has shape {self.shape!r}; its sides must be whole numbers.")
        self.shape = shape
        if self.dtype not in DTYPE_SIZES:
            raise bad_input(f"Array '{self.name}' has unsupported type '{self.dtype}' (use u8, u16 or f32).")
        if not 2 <= len(self.shape) <= 3 or any(s <= 0 for s in self.shape):
            raise bad_input(f"Array '{self.name}' has shape {list(self.shape)}; expected height×width×channels.")
        if len(memoryview(self.data).cast("B")) != self.expected_nbytes:
            raise bad_input(
                f"Array '{self.name}' has {len(memoryview(self.data).cast('B'))} bytes, but shape "
                f"{list(self.shape)} of {self.dtype} needs {self.expected_nbytes}."
            )

    @property
    def expected_nbytes(self) -> int:
        n = DTYPE_SIZES[self.dtype]
        for s in self.shape:
            n *= s
        return n

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def channels(self) -> int:
        return self.shape[2] if len(self.shape) == 3 else 1


def whole_numbers(values: object) -> tuple[int, ...] | None:
    """``values`` as a tuple of ints, or None unless it is a list or tuple of whole numbers.

    Strict on purpose: int() would turn a shape of [8.7, 8, 3] into 8 rows, and True into 1.
    """
    if not isinstance(values, list | tuple) or any(isinstance(v, bool) for v in values):
        return None
    try:
        return tuple(operator.index(v) for v in values)
    except TypeError:
        return None


@dataclass
class Frame:
    kind: str  # "request", "accepted", "progress", "result", "error"
    header: dict = field(default_factory=dict)
    arrays: dict[str, Array] = field(default_factory=dict)


@dataclass
class JobRequest:
    action: str
    params: dict
    arrays: dict[str, Array]
    protocol: int = PROTOCOL_VERSION
    client_version: str = ""

    def to_frame(self) -> Frame:
        header = {
            "protocol": self.protocol,
            "action": self.action,
            "params": self.params,
            "client_version": self.client_version,
        }
        return Frame("request", header, self.arrays)

    @classmethod
    def from_frame(cls, frame: Frame) -> JobRequest:
        header = frame.header
        if not isinstance(header.get("action"), str):
            raise SemanticError(ErrorCode.bad_request, "The request names no action.")
        params = header.get("params", {})
        if not isinstance(params, dict):
            raise SemanticError(ErrorCode.bad_request, "The request's params must be a JSON object.")
        protocol = whole_numbers([header.get("protocol", -1)])
        if protocol is None:
            raise SemanticError(ErrorCode.bad_request, "The request's protocol must be a whole number, got "
                                                       f"{json.dumps(header.get('protocol'))}.")
        return cls(
            action=header["action"],
            params=params,
            arrays=frame.arrays,
            protocol=protocol[0],
            client_version=str(header.get("client_version", "")),
        )


# --- frames -------------------------------------------------------------------------------------


def encode_frame_parts(frame: Frame) -> list[bytes | memoryview]:
    """Frame as a list of buffers, so large arrays are written without being copied."""
    descriptors, offset = [], 0
    for array in frame.arrays.values():
        nbytes = array.expected_nbytes
        descriptors.append(
            {"name": array.name, "dtype": array.dtype, "shape": list(array.shape),
             "offset": offset, "nbytes": nbytes}
        )
        offset += nbytes
    header = dict(frame.header, kind=frame.kind, arrays=descriptors)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    prefix = FRAME_PREFIX.pack(FRAME_MAGIC, len(header_bytes), offset)
    return [prefix, header_bytes] + [memoryview(a.data).cast("B") for a in frame.arrays.values()]


def read_frame(read: Callable[[int], bytes], max_payload: int | None = None,
               eof_ok: bool = False, body_size: int | None = None) -> Frame | None:
    """Read one frame with ``read(n)``; the payload lands in one buffer that arrays view.

    With ``eof_ok``, a stream that ends cleanly before the frame starts returns None. ``body_size``
    (an HTTP body's Content-Length) must match the size the frame announces, checked before the
    payload is read.
    """
    first = read(FRAME_PREFIX.size)
    if not first and eof_ok:
        return None
    prefix = first + _read_exact(read, FRAME_PREFIX.size - len(first)) if len(first) < FRAME_PREFIX.size else first
    magic, header_len, payload_len = FRAME_PREFIX.unpack(prefix)
    if magic != FRAME_MAGIC:
        raise SemanticError(ErrorCode.bad_request, "Not a gimp-semantic frame (bad magic bytes).")
    if header_len > MAX_HEADER_BYTES:
        raise SemanticError(ErrorCode.bad_request, "Frame header is too large.")
    if max_payload is not None and payload_len > max_payload:
        raise SemanticError(
            ErrorCode.payload_too_large,
            f"The image data is {payload_len / 1e6:.0f} MB, over the daemon's limit of "
            f"{max_payload / 1e6:.0f} MB. Use a smaller layer or raise --max-payload-mb.",
        )
    frame_size = FRAME_PREFIX.size + header_len + payload_len
    if body_size is not None and frame_size != body_size:
        raise SemanticError(ErrorCode.bad_request, f"The frame announces {frame_size} bytes but the request "
                                                   f"body (its Content-Length) has {body_size}.")
    try:
        header = json.loads(_read_exact(read, header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SemanticError(ErrorCode.bad_request, f"Frame header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SemanticError(ErrorCode.bad_request,
                            f"The frame header must be a JSON object, not {json.dumps(header)[:40]}.")
    descriptors = header.pop("arrays", [])
    if not isinstance(descriptors, list):
        raise SemanticError(ErrorCode.bad_request, "The frame header's 'arrays' must be a list of descriptors.")
    places = [_array_place(desc, payload_len) for desc in descriptors]  # all checked before the payload
    payload = memoryview(_read_exact(read, payload_len))
    arrays = {name: Array(name, dtype, shape, payload[start:start + nbytes])
              for name, dtype, shape, start, nbytes in places}
    return Frame(str(header.pop("kind", "")), header, arrays)


def _array_place(desc: object, payload_len: int) -> tuple[str, str, tuple[int, ...], int, int]:
    """(name, dtype, shape, offset, nbytes) of one array descriptor, or a bad_request saying what is wrong."""
    if not isinstance(desc, dict) or not isinstance(desc.get("name"), str):
        raise SemanticError(ErrorCode.bad_request, "Malformed array descriptor: expected an object with a name.")
    name = desc["name"]
    place = whole_numbers([desc.get("offset"), desc.get("nbytes")])
    if place is None:
        raise SemanticError(ErrorCode.bad_request, f"Array '{name}' needs whole-number 'offset' and 'nbytes'.")
    start, nbytes = place
    if start < 0 or nbytes < 0 or start + nbytes > payload_len:
        raise SemanticError(ErrorCode.bad_request, f"Array '{name}' lies outside the payload.")
    shape = whole_numbers(desc.get("shape"))
    if shape is None:
        raise SemanticError(ErrorCode.bad_request,
                            f"Array '{name}' has shape {json.dumps(desc.get('shape'))}; a shape is a list of "
                            "whole numbers: height, width and channels.")
    return name, str(desc.get("dtype")), shape, start, nbytes


def _read_exact(read: Callable[[int], bytes], n: int) -> bytearray:
    buf = bytearray()  # grows as bytes arrive (see READ_CHUNK_BYTES), never to more than were sent
    while len(buf) < n:
        chunk = read(min(n - len(buf), READ_CHUNK_BYTES))
        if not chunk:
            raise SemanticError(ErrorCode.bad_request, "The connection closed in the middle of a frame.")
        buf += chunk
    return buf


# --- client (used by the plug-in, the CLI's --remote mode and the tests) ------------------------


ProgressCallback = Callable[[float, str], None]


LOCAL_DAEMON_HINT = "Start it with 'gimp-semantic daemon' or re-run the installer."


class DaemonClient:
    def __init__(self, host: str, port: int, token: str, timeout: float = 600.0,
                 client_version: str = "", unreachable_hint: str = LOCAL_DAEMON_HINT):
        self.host, self.port, self.token = host, int(port), token
        self.timeout = timeout
        self.client_version = client_version
        self.unreachable_hint = unreachable_hint  # what to do when the daemon cannot be reached
        self.max_payload_bytes: int | None = None  # learnt from health(); checked before sending

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Semantic-Protocol": str(PROTOCOL_VERSION)}

    def health(self, timeout: float = 5.0) -> dict:
        health = self._json("GET", "/v1/health", timeout=timeout)
        if health.get("name") != "gimp-semantic":
            raise self._not_the_daemon("its answer is not a gimp-semantic health report")
        limit = whole_numbers([health.get("max_payload_bytes")])
        self.max_payload_bytes = limit[0] if limit and limit[0] > 0 else None
        return health

    def cancel(self, job_id: str) -> bool:
        return bool(self._json("POST", f"/v1/jobs/{job_id}/cancel", timeout=5.0).get("cancelled"))

    def _json(self, method: str, path: str, timeout: float) -> dict:
        conn = self._connection(timeout)
        try:
            conn.request(method, path, headers=self._headers())
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()
        data = _parse_json(body)
        if response.status != 200:
            raise self._refusal(response.status, data)
        return data

    def _refusal(self, status: int, data: dict) -> SemanticError:
        """The daemon's error answer; one not shaped like it comes from another program on the port."""
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str):
            return SemanticError.from_dict(error)
        return self._not_the_daemon(f"it answered HTTP {status}")

    def _unreachable(self, exc: Exception) -> SemanticError:
        if isinstance(exc, http.client.BadStatusLine) and not isinstance(exc, ConnectionError):
            return self._not_the_daemon(f"it does not answer in HTTP: {str(exc)[:60]!r}")
        return unavailable(self.host, self.port, exc, self.unreachable_hint)

    def _not_the_daemon(self, what: str) -> SemanticError:
        return SemanticError(ErrorCode.daemon_unavailable,
                             f"The program answering at {self.host}:{self.port} is not the gimp-semantic daemon "
                             f"({what}). {self.unreachable_hint}")

    def run(self, action: str, params: dict, arrays: list[Array] | dict[str, Array],
            on_progress: ProgressCallback | None = None,
            should_cancel: Callable[[], bool] | None = None) -> Frame:
        """Run a job and return its result frame; raises SemanticError with the daemon's message."""
        if isinstance(arrays, list):
            arrays = {a.name: a for a in arrays}
        request = JobRequest(action, params, arrays, client_version=self.client_version)
        parts = encode_frame_parts(request.to_frame())
        payload = sum(len(p) for p in parts[2:])
        if self.max_payload_bytes and payload > self.max_payload_bytes:
            raise SemanticError(
                ErrorCode.payload_too_large,
                f"The image data is {payload / 1e6:.0f} MB, over the daemon's limit of "
                f"{self.max_payload_bytes / 1e6:.0f} MB. Use a smaller layer or raise --max-payload-mb.")
        conn = self._connection()
        streaming = False  # True once the daemon accepted the job: a failure then is no failure to connect
        try:
            headers = dict(self._headers(), **{"Content-Type": FRAME_CONTENT_TYPE,
                                               "Content-Length": str(sum(len(p) for p in parts))})
            conn.putrequest("POST", "/v1/jobs", skip_accept_encoding=True)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            try:
                for part in parts:
                    conn.sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon refused early (e.g. too large); its answer is still there to read
            response = conn.getresponse()
            if response.status != 200:
                raise self._refusal(response.status, _parse_json(response.read()))
            streaming = True
            for frame in iter_frames(response):
                if frame.kind == "accepted":
                    job_id = frame.header.get("job", "")
                elif frame.kind == "progress":
                    if on_progress:
                        on_progress(float(frame.header.get("fraction", 0.0)), str(frame.header.get("text", "")))
                    if should_cancel and should_cancel():
                        self.cancel(job_id)
                elif frame.kind == "result":
                    _read_to_end(response)
                    return frame
                elif frame.kind == "error":
                    _read_to_end(response)
                    raise SemanticError.from_dict(frame.header)
            raise SemanticError(ErrorCode.internal, "The daemon ended the job without a result.")
        except (OSError, http.client.HTTPException) as exc:  # e.g. IncompleteRead: the link dropped mid-job
            if streaming:
                raise SemanticError(
                    ErrorCode.daemon_unavailable,
                    f"The connection to the gimp-semantic daemon at {self.host}:{self.port} broke during the "
                    f"job ({type(exc).__name__}): the daemon stopped or crashed. Run the job again; if this "
                    "repeats, the daemon's log says why.") from None
            raise self._unreachable(exc) from None
        finally:
            conn.close()


def iter_frames(response) -> Iterator[Frame]:
    while (frame := read_frame(response.read, eof_ok=True)) is not None:
        yield frame


def _read_to_end(response) -> None:
    """Read the stream's end marker after its last frame: closing with it unread resets the connection,
    which the daemon would see as an error."""
    try:
        response.read()
    except (OSError, http.client.HTTPException):
        pass  # the job's last frame is complete; a broken end marker changes nothing for the caller


def unavailable(host: str, port: int, exc: BaseException, hint: str = LOCAL_DAEMON_HINT) -> SemanticError:
    return SemanticError(ErrorCode.daemon_unavailable,
                         f"Cannot reach the gimp-semantic daemon at {host}:{port} ({exc}). {hint}")


def _parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# --- discovery ----------------------------------------------------------------------------------


@dataclass
class Discovery:
    """Written by the daemon to ``<state dir>/daemon.json`` so clients can find it."""

    address: str
    port: int
    token_file: str
    pid: int
    version: str
    protocol: int = PROTOCOL_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Discovery:
        """Raises ValueError for anything but a discovery object (empty, truncated or foreign files)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a discovery file holds a JSON object, not {text.strip()[:40]!r}")
        numbers = whole_numbers([data.get("port"), data.get("pid"), data.get("protocol", -1)])
        if numbers is None or not all(isinstance(data.get(k), str) for k in ("address", "token_file", "version")):
            raise ValueError("the discovery file lacks address, port, token_file, pid or version")
        port, pid, protocol = numbers
        return cls(data["address"], port, data["token_file"], pid, data["version"], protocol)

    def process_exists(self) -> bool:
        """Whether the daemon's process still runs, as far as this machine's process table tells.

        After a daemon died, its port may belong to any other program, which must not be sent the token.
        """
        if os.name != "posix":
            return True  # os.kill(pid, 0) would end the process on Windows; the health check decides there
        if self.pid <= 0:
            return False  # 0 and -1 address process groups, not one process
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # another user's process: not a daemon this user started
        return True

    def read_token(self) -> str:
        with open(self.token_file, encoding="utf-8") as f:
            return f.read().strip()


# --- remote daemon (another machine, through an SSH tunnel) -------------------------------------


@dataclass(frozen=True)
class RemoteDaemon:
    """A daemon on another machine, reached through ``ssh -N -L PORT:127.0.0.1:PORT host``.

    Named by the plug-in's config.json keys ``port``, ``token_file`` (a copy of the token file the
    daemon keeps with ``--token-file``) and ``address`` (the tunnel's local end, default 127.0.0.1).
    A plug-in so configured never starts a local daemon.
    """

    address: str
    port: int
    token_file: str

    @classmethod
    def from_config(cls, config: dict, source: str = "config.json") -> RemoteDaemon | None:
        """The remote daemon ``config`` names, None when it names none (use a local daemon)."""
        if config.get("port") in (None, ""):
            return None
        port, token_file = config.get("port"), config.get("token_file")
        address = config.get("address") or "127.0.0.1"
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise SemanticError(ErrorCode.daemon_unavailable,
                                f"{source}: 'port' must be the tunnel's local port (1-65535), not {port!r}. "
                                "Re-run the installer with --remote-port.")
        if not isinstance(token_file, str) or not token_file or not isinstance(address, str):
            raise SemanticError(ErrorCode.daemon_unavailable,
                                f"{source} names a remote daemon (port {port}) but no 'token_file' with a copy "
                                "of its token. Re-run the installer with --remote-token-file.")
        return cls(address, port, token_file)

    @property
    def token_path(self) -> str:
        return os.path.expanduser(self.token_file)

    def tunnel_hint(self) -> str:
        return (f"Is the SSH tunnel up? Open it with 'ssh -N -L {self.port}:127.0.0.1:{self.port} GPU-HOST' "
                f"and check that the daemon runs there ('gimp-semantic-daemon --port {self.port} --idle-exit 0 "
                "--token-file FILE'). This plug-in is set up for a remote daemon, so it starts no local one.")

    def client(self, client_version: str = "") -> DaemonClient:
        try:
            with open(self.token_path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SemanticError(ErrorCode.daemon_unavailable,
                                f"Cannot read the remote daemon's token from {self.token_path} ({exc}). Copy "
                                "the file the daemon was started with (--token-file) from the GPU machine, "
                                f"e.g. 'scp GPU-HOST:FILE {self.token_file}'.") from None
        return DaemonClient(self.address, self.port, token, client_version=client_version,
                            unreachable_hint=self.tunnel_hint())

    def connect(self, client_version: str = "", timeout: float = 10.0) -> tuple[DaemonClient, dict]:
        """A client and the daemon's health, or a SemanticError saying whether the tunnel or the token failed."""
        client = self.client(client_version)
        try:
            return client, client.health(timeout=timeout)
        except SemanticError as exc:
            if exc.code is ErrorCode.unauthorized:
                raise SemanticError(
                    ErrorCode.unauthorized,
                    f"The daemon behind {self.address}:{self.port} refused the token in {self.token_path}: the "
                    "daemon was started with another token file, or that file changed. Copy it again from "
                    "the GPU machine.") from None
            raise
