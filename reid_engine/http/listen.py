"""Whether ``reid-engine serve`` can listen where it was asked to, checked before the server starts."""
from __future__ import annotations

import socket

from ..errors import InvalidInputError


def check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go (as uvicorn will bind it); InvalidInputError naming what failed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInputError(f"--host {host!r}: not an address or host name this machine resolves ({exc})"
                                ) from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind(addr)
    except OSError as exc:
        raise InvalidInputError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    finally:
        sock.close()
