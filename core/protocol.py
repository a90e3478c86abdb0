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

Frame layout (all integers little-endian):

    b"GSF1" | header length: u32 | payload length: u64 | header: UTF-8 JSON | payload: raw bytes

A header's ``"arrays"`` lists ``{"name", "dtype", "shape", "offset", "nbytes"}``, offsets relative
to the payload's start. Pixels travel as raw bytes, rows top to bottom, channels interleaved
(H, W, C), never base64 or PNG. dtypes: ``u8``, ``u16``, ``f32`` (native little-endian).
"""

from __future__ import annotations

import http.client
import json
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
    def from_dict(cls, data: dict) -> SemanticError:
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
        self.shape = tuple(int(s) for s in self.shape)
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
        return cls(
            action=header["action"],
            params=params,
            arrays=frame.arrays,
            protocol=int(header.get("protocol", -1)),
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
               eof_ok: bool = False) -> Frame | None:
    """Read one frame with ``read(n)``; the payload lands in one buffer that arrays view.

    With ``eof_ok``, a stream that ends cleanly before the frame starts returns None.
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
    try:
        header = json.loads(_read_exact(read, header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SemanticError(ErrorCode.bad_request, f"Frame header is not valid JSON: {exc}") from None
    payload = memoryview(_read_exact(read, payload_len))
    arrays = {}
    for desc in header.pop("arrays", []):
        try:
            start, nbytes = int(desc["offset"]), int(desc["nbytes"])
            name = str(desc["name"])
        except (KeyError, TypeError, ValueError):
            raise SemanticError(ErrorCode.bad_request, "Malformed array descriptor.") from None
        if start < 0 or start + nbytes > payload_len:
            raise SemanticError(ErrorCode.bad_request, f"Array '{name}' lies outside the payload.")
        arrays[name] = Array(name, str(desc.get("dtype")), tuple(desc.get("shape", ())),
                             payload[start:start + nbytes])
    return Frame(str(header.pop("kind", "")), header, arrays)


def _read_exact(read: Callable[[int], bytes], n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        chunk = read(min(n - got, 1 << 22))
        if not chunk:
            raise SemanticError(ErrorCode.bad_request, "The connection closed in the middle of a frame.")
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
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
        self.max_payload_bytes = int(health.get("max_payload_bytes") or 0) or None
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
            raise unavailable(self.host, self.port, exc, self.unreachable_hint) from None
        finally:
            conn.close()
        data = _parse_json(body)
        if response.status != 200:
            fallback = {"code": "internal", "message": body.decode(errors="replace")}
            raise SemanticError.from_dict(data.get("error", fallback))
        return data

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
                data = _parse_json(response.read())
                raise SemanticError.from_dict(data.get("error", {"code": "internal",
                                                                 "message": f"HTTP {response.status}"}))
            for frame in iter_frames(response):
                if frame.kind == "accepted":
                    job_id = frame.header.get("job", "")
                elif frame.kind == "progress":
                    if on_progress:
                        on_progress(float(frame.header.get("fraction", 0.0)), str(frame.header.get("text", "")))
                    if should_cancel and should_cancel():
                        self.cancel(job_id)
                elif frame.kind == "result":
                    return frame
                elif frame.kind == "error":
                    raise SemanticError.from_dict(frame.header)
            raise SemanticError(ErrorCode.internal, "The daemon ended the job without a result.")
        except (OSError, http.client.HTTPException) as exc:  # e.g. IncompleteRead: the link dropped mid-job
            raise unavailable(self.host, self.port, exc, self.unreachable_hint) from None
        finally:
            conn.close()


def iter_frames(response) -> Iterator[Frame]:
    while (frame := read_frame(response.read, eof_ok=True)) is not None:
        yield frame


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
        data = json.loads(text)
        return cls(str(data["address"]), int(data["port"]), str(data["token_file"]),
                   int(data["pid"]), str(data["version"]), int(data.get("protocol", -1)))

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
