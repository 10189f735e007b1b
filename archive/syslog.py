"""Audit messages to a syslog collector (IHE ATNA's transport): RFC 5424 over
UDP (RFC 5426) or TCP with octet counting (RFC 6587)."""

from __future__ import annotations

import datetime
import os
import re
import socket
from typing import TYPE_CHECKING

from archive.config import Syslog

if TYPE_CHECKING:
    from archive.audit import AuditEvent


def utc(moment: datetime.datetime) -> datetime.datetime:
    # SQLite keeps no UTC offset: the times written there are UTC.
    return moment.replace(tzinfo=datetime.UTC) if moment.tzinfo is None else moment.astimezone(datetime.UTC)


def timestamp(moment: datetime.datetime) -> str:
    """UTC with milliseconds and ``Z``: an xsd:dateTime (A.5.2.5) and an RFC 5424 TIMESTAMP (§6.2.3)."""
    return utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SyslogSender:
    """Sends audit messages to a syslog collector as RFC 5424 messages.

    UDP puts one message in each datagram (RFC 5426 §3.1); TCP frames each
    with its length in octets (RFC 6587 §3.4.1, the framing RFC 5425 uses
    over TLS). Facility 10 (security/authorization, "authpriv"); severity
    notice for a success, warning for a failure or refusal (RFC 5424 §6.2.1).
    """

    FACILITY = 10
    NOTICE, WARNING = 5, 4
    # IHE ITI TF-2 3.20 (ATNA): the MSGID of audit messages in syslog.
    MSGID = "IHE+RFC-3881"

    def __init__(self, syslog: Syslog) -> None:
        self.syslog = syslog
        self._socket: socket.socket | None = None
        # RFC 5424 §6.2.4: PRINTUSASCII without spaces, or the NILVALUE.
        name = socket.gethostname()
        self._hostname = name[:255] if name and re.fullmatch("[!-~]+", name) else "-"

    def send(self, event: AuditEvent, message: str) -> None:
        """Send `message`, the ATNA XML of `event`; reconnects once on a broken connection.

        Raises
        ------
        OSError
            If the collector cannot be reached.
        """
        frame = self.frame(event, message)
        if self.syslog.protocol == "tcp":
            frame = f"{len(frame)} ".encode("ascii") + frame
        try:
            self._connected().sendall(frame)
        except OSError:
            self.close()  # the collector restarted or dropped us: one fresh connection
            self._connected().sendall(frame)

    def frame(self, event: AuditEvent, message: str) -> bytes:
        """The RFC 5424 message (§6): header, no structured data, the XML as MSG."""
        severity = self.NOTICE if event.outcome == "success" else self.WARNING
        header = (f"<{self.FACILITY * 8 + severity}>1 {timestamp(event.at)} {self._hostname} "
                  f"huren {os.getpid()} {self.MSGID} -")
        # §6.4: a UTF-8 MSG starts with the byte order mark.
        return header.encode("ascii") + b" \xef\xbb\xbf" + message.encode("utf-8")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _connected(self) -> socket.socket:
        if self._socket is None:
            address = (self.syslog.host, self.syslog.port)
            if self.syslog.protocol == "tcp":
                self._socket = socket.create_connection(address, timeout=5)
            else:
                family, kind, proto, _name, target = socket.getaddrinfo(*address, type=socket.SOCK_DGRAM)[0]
                self._socket = socket.socket(family, kind, proto)
                self._socket.connect(target)
        return self._socket
