# TLS to the broker with the server verified: imported only when ``ca_file`` is configured.
def context(cafile):
    """An ``ssl.SSLContext`` for a client (``PROTOCOL_TLS_CLIENT``: the server's certificate
    must chain to the CA in ``cafile``, a PEM or DER file on the board's flash, and name the
    broker's host). Raises OSError when the file cannot be read, ValueError for a bad CA."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=cafile)
    return ctx
