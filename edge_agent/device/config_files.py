"""Files a config names, read or probed safely: never blindly (``/dev/zero``, a FIFO, a
2 GB file), never with a traceback.

:func:`read_small` reads a regular file of at most ``limit`` bytes; :func:`pem_problem` says
why a TLS file is unusable; :func:`dir_problem` / :func:`file_target_problem` say why a folder or
file could not be created or written by the current user. Each ``*_problem`` returns ``None``
when all is well, else one sentence.
"""

from __future__ import annotations

import errno
import os
import stat

CONFIG_LIMIT = 1024 * 1024  # bytes: a config file is a few KiB
SECRET_LIMIT = 64 * 1024  # bytes: a password file holds one line
PEM_LIMIT = 1024 * 1024  # bytes: a CA bundle is ~200 KiB


class FileProblem(OSError):
    """A file that cannot be used; ``str()`` is the whole sentence (without the path)."""

    def __str__(self) -> str:
        return self.args[0]


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_small(path: str, limit: int, what: str = "file") -> bytes:
    """The bytes of regular file ``path`` (at most ``limit`` bytes; symlinks followed).

    Raises:
        FileProblem: missing, unreadable, a directory/device/FIFO/socket, or larger than
            ``limit``; the message names ``what`` it should be.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise FileProblem("file not found") from None
    except PermissionError:
        raise FileProblem(f"permission denied (the {what} must be readable by user {_user()})") from None
    except IsADirectoryError:
        raise FileProblem(f"is a directory, not a {what}") from None
    except OSError as exc:
        raise FileProblem(f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem(f"is {_kind(st.st_mode)}, not a {what}")
        if st.st_size > limit:
            raise FileProblem(f"is {st.st_size} bytes; a {what} is at most {limit // 1024} KiB")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileProblem(f"is more than {limit // 1024} KiB; a {what} is smaller")
        return b"".join(chunks)
    except FileProblem:
        raise
    except OSError as exc:
        raise FileProblem(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def pem_problem(path: str, what: str) -> str | None:
    """Why ``path`` is no PEM file of ``what`` (``"certificate"`` or ``"private key"``), or None."""
    try:
        data = read_small(path, PEM_LIMIT, f"PEM {what} file")
    except FileProblem as exc:
        return str(exc)
    if b"-----BEGIN " not in data:
        return f"is not PEM (no '-----BEGIN' line): a {what} in PEM form is expected" + (
            " (convert DER with openssl x509 -inform der -in FILE -out FILE.pem)" if what == "certificate" else "")
    label = b"PRIVATE KEY-----" if what == "private key" else b"CERTIFICATE-----"
    if label not in data:
        return f"is PEM but holds no {what} ('-----BEGIN ...{label.decode()}' missing)"
    return None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def _first_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def dir_problem(path: str) -> str | None:
    """Why the current user could not create (``makedirs``) or write in folder ``path``, or None."""
    existing = _first_existing(path)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder" if os.path.exists(existing) else f"{existing} is a broken link"
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "write in" if existing == os.path.abspath(path) else f"create {os.path.abspath(path)} in"
        why = "it is on a read-only file system" if _read_only(existing) else f"user {_user()} has no write permission"
        return f"cannot {verb} {existing}: {why}"
    return None


def file_target_problem(path: str) -> str | None:
    """Why the current user could not create or write file ``path`` (e.g. the SQLite store), or None."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return f"{path} is a directory; give a file path"
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not writable by user {_user()}"
        return None
    return dir_problem(os.path.dirname(path))


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as exc:
        return exc.errno == errno.EROFS
