"""A TCP port forward standing in for ``ssh -N -L PORT:127.0.0.1:TARGET host`` (no sshd here).

Like ssh's local forward it listens on loopback, opens a new connection to the target for every
client and copies bytes both ways; close() is the tunnel going down: the listener and every
forwarded connection close.
"""

from __future__ import annotations

import socket
import threading


class PortForward:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0  # how many clients came through; proves traffic took the tunnel
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="port-forward", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()  # what ssh does when the far end refuses: close the forwarded connection
                continue
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        _close(self.listener)  # shutdown() first: a bare close() leaves the blocked accept() listening
        with self._lock:
            for sock in self._sockets:
                _close(sock)
            self._sockets.clear()

    def __enter__(self) -> PortForward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
