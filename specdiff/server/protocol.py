"""A header timeout for uvicorn's HTTP/1.1 protocol (as nginx's ``client_header_timeout``).

uvicorn closes a connection that stays idle after a response (``timeout_keep_alive``), but not one
that opens and sends its request headers slowly, or half of them and then nothing: 300 such
connections held the server's sockets for as long as their clients liked. This protocol closes a
connection whose next request's headers are not complete ``seconds`` after it opened or after its
previous response ended. A request being handled (an upload, a progress stream) is never cut.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Seconds a client has to send a request's headers.
DEFAULT_HEADER_TIMEOUT = 10.0


def header_timeout_protocol(seconds: float = DEFAULT_HEADER_TIMEOUT) -> type:
    """uvicorn's h11 protocol class with a header timeout, for ``uvicorn.Config(http=...)``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if not seconds > 0:
        raise ValueError(f"the header timeout must be > 0 seconds, got {seconds}")

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            if not self.transport.is_closing():
                self._header_timer = self.loop.call_later(seconds, self._header_deadline)

        def _header_deadline(self) -> None:
            # IDLE: no complete request head since the timer was armed (a request in progress has
            # moved the client's state on, and its response re-arms the timer when it ends).
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol
