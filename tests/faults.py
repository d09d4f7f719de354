"""Fault injection for link tests: a TCP proxy that can silently stop forwarding (a half-open
link: no RST, no FIN, packets just vanish) and resume, on 127.0.0.1 only."""

from __future__ import annotations

import selectors
import socket
import threading


class BlackholeProxy:
    """Forwards 127.0.0.1:<port> to ``target_port``. ``blackhole()`` drops every byte both ways
    (connections stay open, new ones are accepted and then starve); ``restore()`` forwards
    again and closes the starved connections so clients reconnect cleanly."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropping = threading.Event()
        self._stop = threading.Event()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        self.dropping.set()

    def restore(self) -> None:
        with self._lock:
            for s in list(self._pairs):
                self._close(s)
        self.dropping.clear()

    def _close(self, s: socket.socket) -> None:
        other = self._pairs.pop(s, None)
        for sock in (s, other):
            if sock is None:
                continue
            self._pairs.pop(sock, None)
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                s = key.fileobj
                with self._lock:
                    if s is self.listener:
                        client, _ = self.listener.accept()
                        try:
                            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                        except OSError:
                            client.close()
                            continue
                        self._pairs[client], self._pairs[upstream] = upstream, client
                        self._sel.register(client, selectors.EVENT_READ)
                        self._sel.register(upstream, selectors.EVENT_READ)
                        continue
                    if s not in self._pairs:
                        continue
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._close(s)
                        continue
                    if not self.dropping.is_set():
                        try:
                            self._pairs[s].sendall(data)
                        except OSError:
                            self._close(s)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        with self._lock:
            for s in list(self._pairs):
                self._close(s)
        self.listener.close()


class CuttableProxy:
    """A TCP proxy 127.0.0.1:<port> -> ``target_port`` that can cut every link at once
    (``cut()``: the client sees its connection closed, as on a flaky network), or each link
    ``hold`` seconds after it was accepted (an outage per connection). ``accepted`` counts the
    connections made."""

    def __init__(self, target_port: int, hold: float | None = None):
        self.target_port = target_port
        self.hold = hold
        self.accepted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                down.close()
                continue
            self.socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
            if self.hold is not None:
                threading.Timer(self.hold, self._close, args=(down, up)).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        self._close(*self.socks)

    def close(self) -> None:
        self.server.close()
        self.cut()
