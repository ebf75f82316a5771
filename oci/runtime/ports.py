"""Published ports: a TCP listener on the host, connections made inside the container.

The container has its own network namespace with only loopback, so there is
no address to route to. Instead each accepted connection is served by a
thread that first joins the container's network namespace (``setns`` of
``CLONE_NEWNET`` applies to the calling thread only) and connects to the
port on the container's loopback, then copies bytes both ways.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Sequence

from ocikit.errors import ContainerError
from ocikit.oci.runtime import libc
from ocikit.oci.runtime.spec import PortMapping

_BUF = 1 << 16


class Forwarder:
    """Listeners bound at construction (so a busy port fails before the container starts)."""

    def __init__(self, ports: Sequence[PortMapping]) -> None:
        self._listeners: list[tuple[socket.socket, PortMapping]] = []
        self._netns = -1
        self._closed = threading.Event()
        try:
            for p in ports:
                if p.protocol != "tcp":
                    raise ContainerError(f"publishing {p.protocol} ports is not supported")
                s = socket.socket(socket.AF_INET6 if ":" in p.host_ip else socket.AF_INET,
                                  socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((p.host_ip or "0.0.0.0", p.host_port))
                    s.listen(128)
                except OSError as e:
                    s.close()
                    raise ContainerError(
                        f"cannot publish port {p.host_ip or '0.0.0.0'}:{p.host_port}: "
                        f"{e.strerror}") from None
                self._listeners.append((s, p))
        except BaseException:
            self.close()
            raise

    def start(self, container_pid: int) -> None:
        """Begin serving, connecting inside ``container_pid``'s network namespace."""
        if not self._listeners:
            return
        self._netns = os.open(f"/proc/{container_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        for listener, mapping in self._listeners:
            threading.Thread(target=self._accept_loop, args=(listener, mapping),
                             name=f"port-{mapping.host_port}", daemon=True).start()

    def _accept_loop(self, listener: socket.socket, mapping: PortMapping) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, mapping.container_port),
                             daemon=True).start()

    def _serve(self, client: socket.socket, port: int) -> None:
        try:
            libc.setns(self._netns, libc.CLONE_NEWNET)
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        try:
            _pump(client, upstream)
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._closed.set()
        for s, _ in self._listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._listeners = []
        if self._netns >= 0:
            os.close(self._netns)
            self._netns = -1


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have finished; half-closes pass through."""
    peers = {a.fileno(): b, b.fileno(): a}
    socks = {a.fileno(): a, b.fileno(): b}
    open_fds = [a.fileno(), b.fileno()]
    while open_fds:
        ready, _, _ = select.select(open_fds, [], [], 300)
        if not ready:
            return
        for fd in ready:
            try:
                data = socks[fd].recv(_BUF)
            except OSError:
                data = b""
            if data:
                try:
                    peers[fd].sendall(data)
                except OSError:
                    return
            else:
                open_fds.remove(fd)
                try:
                    peers[fd].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
