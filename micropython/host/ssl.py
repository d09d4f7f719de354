# MicroPython's ``ssl`` API (1.27: micropython-lib ssl.py over extmod/modtls_mbedtls.c) for the
# host harness, backed by Node's TLS (node:tls in board.mjs): the WebAssembly port has no TLS.
# What is faithful: a context verifies nothing until told (``verify_mode`` starts as
# ``CERT_NONE``, as micropython-lib's does, for every protocol); with ``CERT_REQUIRED`` it
# verifies the server against the CA given to ``load_verify_locations`` (a file on the board's
# filesystem, or ``cadata``) and the name given as ``server_hostname``; no CA loaded or a
# certificate that does not chain to it or name the host, or whose dates do not include the
# board's clock (hostio.open_connection): the connection fails. What is not:
# the handshake runs in Node (OpenSSL), not mbedTLS, so the heap it costs on a board (mbedTLS
# buffers, outside the Python heap on an ESP32) is not seen here; streams are opened through
# ``asyncio.open_connection(host, port, ssl=context, server_hostname=...)`` only
# (``wrap_socket`` of a raw socket is not offered: the port has no sockets).
PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1
CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2


class SSLContext:
    def __init__(self, protocol):
        self.protocol = protocol
        self.verify_mode = CERT_NONE  # as micropython-lib's ssl.py, for every protocol: set it
        self.cadata = None

    def load_verify_locations(self, cafile=None, cadata=None):
        if cafile:
            with open(cafile, "rb") as f:
                cadata = f.read()
        self.cadata = bytes(cadata)

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None):
        raise OSError("host shim: open TLS streams with asyncio.open_connection(ssl=context)")
