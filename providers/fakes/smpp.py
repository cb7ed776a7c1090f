"""A loopback SMSC speaking enough SMPP 3.4 to test an ESME end to end.

``with FakeSMSC(system_id="loa", password="secret") as smsc:`` listens on
127.0.0.1 (a free port: ``smsc.host``, ``smsc.port``) and serves each client
connection from its own thread:

* ``bind_transceiver`` checks system_id (ESME_RINVSYSID 0x0F) and password
  (ESME_RINVPASWD 0x0E); other binds get generic_nack.
* ``submit_sm`` is answered with a ``message_id`` (or a programmed
  ``command_status``) and recorded as a :class:`Submit` (addresses,
  data_coding, esm_class, short_message bytes, UDH).  For every accepted part
  that asks for one (``registered_delivery``), a delivery receipt follows
  after ``receipt_delay`` seconds: ``deliver_sm`` with esm_class 0x04, the
  text "id:... sub:001 dlvrd:001 submit date:... done date:... stat:DELIVRD
  err:000 text:" and the TLVs receipted_message_id + message_state.
* ``enquire_link`` and ``unbind`` are answered (unbind then closes).
* :meth:`send_mo` plays a subscriber: a mobile-originated SMS as ``deliver_sm``
  (esm_class without the receipt bit), GSM-7 or UCS-2, optionally in
  concatenated parts (a UDH, or the ``sar_*`` TLVs).

Test controls: :meth:`queue_status` (e.g. throttle the next N submits with
0x58, optionally for one destination), :meth:`drop_after` (close the
connection at the N-th submit, answering it or not), ``silent`` (never answer
submit_sm), :meth:`hold` / :meth:`release` (keep answers back), the receipt
``receipt_stat`` rule, :meth:`send_enquire_link`, :meth:`send_unbind`,
:meth:`wait_for` (block on a condition instead of sleeping), and what was
observed: ``submits``, ``binds``, ``unbinds``, ``enquire_links``,
``receipts_sent``, ``mo_sent``, ``receipt_acks`` (every deliver_sm_resp,
receipt or inbound SMS), ``max_outstanding``.

PDUs are encoded and decoded with smpplib (``smpplib.smpp``), independently
of the provider's own reader.

Run one with ``python -m providers.fakes.smpp --port 2775``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from smpplib import smpp as smpp_pdu

from providers.fakes import stop_on_ctrl_c

__all__ = ["FakeSMSC", "Submit", "gsm7_decode", "gsm7_encode"]

ESME_ROK = 0x00
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RTHROTTLED = 0x58

MESSAGE_STATES = {"DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5,
                  "ACCEPTD": 6, "UNKNOWN": 7, "REJECTD": 8, "ENROUTE": 1}

# GSM 03.38 default alphabet and extension table (decoding side, kept separate
# from the provider's encoder on purpose).
_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[",
            0x3D: "~", 0x3E: "]", 0x40: "|", 0x65: "€"}


_GSM_CODES = {**{ch: bytes([i]) for i, ch in enumerate(_GSM_BASIC) if i != 0x1B},
              **{ch: bytes([0x1B, code]) for code, ch in _GSM_EXT.items()}}


def gsm7_encode(text: str) -> bytes | None:
    """Unpacked GSM 03.38 septets for ``text``, or None if the alphabet cannot carry it."""
    try:
        return b"".join(_GSM_CODES[ch] for ch in text)
    except KeyError:
        return None


def gsm7_decode(data: bytes) -> str:
    """Unpacked GSM 03.38 septets (one per octet) to text."""
    out: list[str] = []
    it = iter(data)
    for b in it:
        if b > 0x7F:
            raise ValueError(f"octet 0x{b:02X} is not a septet")
        if b == 0x1B:
            nxt = next(it, None)
            if nxt is None or nxt not in _GSM_EXT:
                raise ValueError(f"bad GSM-7 escape sequence 1B {nxt!r}")
            out.append(_GSM_EXT[nxt])
        else:
            out.append(_GSM_BASIC[b])
    return "".join(out)


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Submit:
    """One submit_sm as it reached the fake SMSC."""

    connection: int
    sequence: int
    source_addr: str
    source_addr_ton: int
    source_addr_npi: int
    destination_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes
    udh: bytes                   # the user data header, without its length octet
    payload: bytes               # short_message without the UDH
    status: int                  # command_status we answered (or will answer)
    message_id: str | None       # None unless accepted

    @property
    def concat(self) -> tuple[int, int, int] | None:
        """(reference, total, seq) from an 8- or 16-bit concatenation IE."""
        pos = 0
        while pos + 2 <= len(self.udh):
            iei, length = self.udh[pos], self.udh[pos + 1]
            value = self.udh[pos + 2:pos + 2 + length]
            if iei == 0x00 and length == 3:
                return value[0], value[1], value[2]
            if iei == 0x08 and length == 4:
                return (value[0] << 8) | value[1], value[2], value[3]
            pos += 2 + length
        return None

    def decode(self, payload: bytes | None = None) -> str:
        data = self.payload if payload is None else payload
        if self.data_coding == 0x08:
            return data.decode("utf-16-be")
        if self.data_coding == 0x00:
            return gsm7_decode(data)
        if self.data_coding == 0x03:
            return data.decode("latin-1")
        return data.decode("ascii")


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A whole SMS, reassembled from its parts."""

    destination_addr: str
    data_coding: int
    payload: bytes
    text: str
    parts: tuple[Submit, ...]


class _Seq:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = itertools.count(1)
        self.sequence = 0

    def next_sequence(self) -> int:
        with self._lock:
            self.sequence = next(self._count)
            return self.sequence


class _Conn:
    def __init__(self, number: int, sock: socket.socket) -> None:
        self.number = number
        self.sock = sock
        self.write_lock = threading.Lock()
        self.bound = False
        self.closed = False
        self.outstanding = 0
        self.held: list[Callable[[], None]] = []

    def send(self, pdu: Any) -> bool:
        data = pdu.generate()
        with self.write_lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True

    def close(self) -> None:
        with self.write_lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    smsc: FakeSMSC

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up is part of the tests


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.smsc._serve(self.request)


class FakeSMSC:
    """See the module docstring."""

    def __init__(
        self,
        *,
        system_id: str = "loa",
        password: str = "secret",
        host: str = "127.0.0.1",
        port: int = 0,
        receipts: bool = True,
        receipt_delay: float = 0.0,
    ) -> None:
        self.system_id = system_id
        self.password = password
        self.receipts = receipts
        self.receipt_delay = float(receipt_delay)
        # receipt stat per accepted part: a stat string, or a function of the
        # Submit returning one (None: send no receipt for that part)
        self.receipt_stat: str | Callable[[Submit], str | None] = "DELIVRD"
        self.receipt_tlvs = True           # add receipted_message_id + message_state
        self.receipt_id_decimal = False    # write the text's id: in decimal (SMSC quirk)
        self.silent = False                # never answer submit_sm

        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self.submits: list[Submit] = []
        self.binds: list[dict[str, Any]] = []
        self.unbinds = 0
        self.enquire_links = 0             # enquire_link PDUs received from clients
        self.enquire_link_resps = 0        # answers to ours
        self.unbind_resps = 0              # answers to our unbind
        self.receipts_sent: list[tuple[str, str]] = []   # (message_id, stat)
        self.receipt_acks: list[int] = []  # command_status of each deliver_sm_resp
        self._acked: set[int] = set()      # the sequence number each deliver_sm_resp answered
        self.mo_sent: list[tuple[str, str]] = []   # (source_addr, text) of each send_mo
        self.nacks: list[int] = []
        self.connections_opened = 0
        self.max_outstanding = 0
        self.dropped = threading.Event()

        self._statuses: dict[str | None, collections.deque[int]] = {}
        self._drop: list[Any] | None = None
        self._holding = False
        self._conns: dict[int, _Conn] = {}
        self._conn_numbers = itertools.count(1)
        self._ids = itertools.count(0xA0000001)
        self._seq = _Seq()
        self._timers: list[threading.Timer] = []

        self._server = _Server((host, port), _Handler, bind_and_activate=True)
        self._server.smsc = self
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def provider_options(self, **extra: Any) -> dict[str, Any]:
        """Options for providers.smpp.SMPPProvider pointing at this fake."""
        return {"host": self.host, "port": self.port, "system_id": self.system_id,
                "password": self.password, "source_addr": "LOA", **extra}

    def start(self) -> FakeSMSC:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05},
                                            name=f"fake-smsc-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        with self._lock:
            conns = list(self._conns.values())
            timers, self._timers = self._timers, []
        for t in timers:
            t.cancel()
        for c in conns:
            c.close()

    def __enter__(self) -> FakeSMSC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -------------------------------------------------------------
    def queue_status(self, status: int, count: int = 1, destination: str | None = None) -> None:
        """Answer the next ``count`` submits (to ``destination``, or any) with ``status``.

        Queue 0 to let a submit through before a failing one."""
        with self._lock:
            q = self._statuses.setdefault(_digits(destination) if destination else None,
                                          collections.deque())
            q.extend([status] * count)

    def drop_after(self, submits: int, *, answer: bool = True) -> None:
        """Close the connection when the ``submits``-th submit_sm from now arrives,
        after answering it (``answer``) or without."""
        with self._lock:
            self._drop = [submits, answer]
            self.dropped.clear()

    def hold(self) -> None:
        """Keep submit_sm answers (and their receipts) back until release()."""
        with self._lock:
            self._holding = True

    def release(self) -> None:
        with self._lock:
            self._holding = False
            pending = [(c, c.held) for c in self._conns.values()]
            for c in self._conns.values():
                c.held = []
        for _conn, actions in pending:
            for action in actions:
                action()

    def outstanding(self) -> int:
        with self._lock:
            return sum(c.outstanding for c in self._conns.values())

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def send_enquire_link(self, timeout: float = 5.0) -> bool:
        """Send enquire_link on every bound connection; True once all are answered."""
        with self._lock:
            conns = [c for c in self._conns.values() if c.bound and not c.closed]
            want = self.enquire_link_resps + len(conns)
        for c in conns:
            c.send(smpp_pdu.make_pdu("enquire_link", client=self._seq))
        return bool(conns) and self.wait_for(lambda: self.enquire_link_resps >= want, timeout)

    def send_unbind(self, timeout: float = 5.0) -> bool:
        """Ask every bound client to unbind; True once all answered (then close)."""
        with self._lock:
            conns = [c for c in self._conns.values() if c.bound and not c.closed]
            want = self.unbind_resps + len(conns)
        for c in conns:
            c.send(smpp_pdu.make_pdu("unbind", client=self._seq))
        ok = bool(conns) and self.wait_for(lambda: self.unbind_resps >= want, timeout)
        for c in conns:
            c.close()
        return ok

    def send_mo(self, source: str, text: str, *, destination: str = "1234",
                part_size: int | None = None, concat: str = "udh", timeout: float = 5.0) -> bool:
        """A subscriber at ``source`` texts ``text`` to ``destination``: deliver_sm on the
        newest bound connection, GSM-7 if the alphabet can carry it, else UCS-2; in parts of
        ``part_size`` characters joined by a UDH (``concat="udh"``) or the sar_* TLVs
        (``"sar"``) when given.  True once every part's deliver_sm_resp came back."""
        with self._lock:
            conns = [c for c in self._conns.values() if c.bound and not c.closed]
        if not conns:
            return False
        pdus = self._mo_pdus(source, text, destination, part_size, concat)
        for pdu in pdus:
            if not conns[-1].send(pdu):
                return False
        with self._lock:
            self.mo_sent.append((source, text))
            self.changed.notify_all()
        # these PDUs' own answers: a receipt's deliver_sm_resp may come back meanwhile
        sequences = {int(pdu.sequence) for pdu in pdus}
        return self.wait_for(lambda: sequences <= self._acked, timeout)

    def _mo_pdus(self, source: str, text: str, destination: str, part_size: int | None,
                 concat: str) -> list[Any]:
        gsm = gsm7_encode(text)
        coding = 0x00 if gsm is not None else 0x08
        size = part_size or len(text) or 1
        chunks = [text[i:i + size] for i in range(0, len(text), size)] or [""]
        ref = next(self._ids) & 0xFF
        pdus = []
        for seq, chunk in enumerate(chunks, start=1):
            data = gsm7_encode(chunk) if coding == 0x00 else chunk.encode("utf-16-be")
            fields: dict[str, Any] = {"esm_class": 0, "short_message": data}
            if len(chunks) > 1 and concat == "udh":
                fields = {"esm_class": 0x40,
                          "short_message": bytes([5, 0, 3, ref, len(chunks), seq]) + (data or b"")}
            elif len(chunks) > 1:
                fields |= {"sar_msg_ref_num": ref, "sar_total_segments": len(chunks),
                           "sar_segment_seqnum": seq}
            pdus.append(smpp_pdu.make_pdu(
                "deliver_sm", client=self._seq, service_type="", source_addr_ton=1,
                source_addr_npi=1, source_addr=_digits(source), dest_addr_ton=0, dest_addr_npi=1,
                destination_addr=destination, data_coding=coding, **fields))
        return pdus

    def close_connections(self) -> None:
        """Hang up on every client without a word."""
        with self._lock:
            conns = list(self._conns.values())
        for c in conns:
            c.close()

    # -- what arrived ----------------------------------------------------------------
    def accepted(self, destination: str | None = None) -> list[Submit]:
        with self._lock:
            return [s for s in self.submits if s.message_id is not None
                    and (destination is None or s.destination_addr == _digits(destination))]

    def messages(self, destination: str | None = None) -> list[Message]:
        """Accepted submits reassembled into whole messages, in order of completion."""
        out: list[Message] = []
        groups: dict[tuple[str, int, int, int], dict[int, Submit]] = {}
        for s in self.accepted(destination):
            concat = s.concat if s.esm_class & 0x40 else None
            if concat is None:
                out.append(Message(s.destination_addr, s.data_coding, s.payload, s.decode(), (s,)))
                continue
            ref, total, seq = concat
            group = groups.setdefault((s.destination_addr, s.data_coding, ref, total), {})
            group[seq] = s
            if len(group) == total and set(group) == set(range(1, total + 1)):
                parts = tuple(group[i] for i in range(1, total + 1))
                payload = b"".join(p.payload for p in parts)
                out.append(Message(s.destination_addr, s.data_coding, payload,
                                   s.decode(payload), parts))
                del groups[(s.destination_addr, s.data_coding, ref, total)]
        return out

    # -- serving ---------------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(None)
        with self._lock:
            conn = _Conn(next(self._conn_numbers), sock)
            self._conns[conn.number] = conn
            self.connections_opened += 1
            self.changed.notify_all()
        try:
            while not conn.closed:
                raw = _read_pdu(sock)
                if raw is None:
                    break
                pdu = smpp_pdu.parse_pdu(raw, client=self._seq, allow_unknown_opt_params=True)
                self._dispatch(conn, pdu)
        except (OSError, ValueError, struct.error):
            pass
        finally:
            conn.close()
            with self._lock:
                self._conns.pop(conn.number, None)
                self.changed.notify_all()

    def _respond(self, conn: _Conn, command: str, request: Any, status: int = ESME_ROK,
                 **fields: Any) -> None:
        resp = smpp_pdu.make_pdu(command, client=self._seq, status=status, **fields)
        resp.sequence = request.sequence
        conn.send(resp)

    def _dispatch(self, conn: _Conn, pdu: Any) -> None:
        command = pdu.command
        if command == "bind_transceiver":
            self._bind(conn, pdu)
        elif command in ("bind_transmitter", "bind_receiver"):
            nack = smpp_pdu.make_pdu("generic_nack", client=self._seq, status=ESME_RINVCMDID)
            nack.sequence = pdu.sequence
            conn.send(nack)
        elif command == "submit_sm":
            self._submit(conn, pdu)
        elif command == "enquire_link":
            with self._lock:            # count first: the client may look as soon as it has the answer
                self.enquire_links += 1
                self.changed.notify_all()
            self._respond(conn, "enquire_link_resp", pdu)
        elif command == "enquire_link_resp":
            with self._lock:
                self.enquire_link_resps += 1
                self.changed.notify_all()
        elif command == "unbind":
            with self._lock:
                self.unbinds += 1
                conn.bound = False
                self.changed.notify_all()
            self._respond(conn, "unbind_resp", pdu)
            conn.close()
        elif command == "unbind_resp":
            with self._lock:
                self.unbind_resps += 1
                self.changed.notify_all()
        elif command == "deliver_sm_resp":
            with self._lock:
                self.receipt_acks.append(int(pdu.status))
                self._acked.add(int(pdu.sequence))
                self.changed.notify_all()
        elif command == "generic_nack":
            with self._lock:
                self.nacks.append(int(pdu.status))
                self.changed.notify_all()
        else:
            nack = smpp_pdu.make_pdu("generic_nack", client=self._seq, status=ESME_RINVCMDID)
            nack.sequence = pdu.sequence
            conn.send(nack)

    def _bind(self, conn: _Conn, pdu: Any) -> None:
        system_id, password = _s(pdu.system_id), _s(pdu.password)
        if system_id != self.system_id:
            status = ESME_RINVSYSID
        elif password != self.password:
            status = ESME_RINVPASWD
        else:
            status = ESME_ROK
        with self._lock:
            self.binds.append({"connection": conn.number, "system_id": system_id,
                               "password": password, "system_type": _s(pdu.system_type),
                               "status": status})
            conn.bound = status == ESME_ROK
            self.changed.notify_all()
        self._respond(conn, "bind_transceiver_resp", pdu, status,
                      system_id="FAKESMSC" if status == ESME_ROK else None)

    def _submit(self, conn: _Conn, pdu: Any) -> None:
        short_message = pdu.short_message or b""
        esm_class = int(pdu.esm_class or 0)
        udh, payload = b"", short_message
        if esm_class & 0x40 and short_message:
            udhl = short_message[0]
            udh, payload = short_message[1:1 + udhl], short_message[1 + udhl:]
        destination = _s(pdu.destination_addr)
        with self._lock:
            if not conn.bound:
                status = ESME_RINVBNDSTS
            else:
                q = self._statuses.get(destination) or self._statuses.get(None)
                status = q.popleft() if q else ESME_ROK
            message_id = f"{next(self._ids):X}" if status == ESME_ROK else None
            submit = Submit(
                connection=conn.number, sequence=pdu.sequence,
                source_addr=_s(pdu.source_addr), source_addr_ton=int(pdu.source_addr_ton or 0),
                source_addr_npi=int(pdu.source_addr_npi or 0), destination_addr=destination,
                dest_addr_ton=int(pdu.dest_addr_ton or 0), dest_addr_npi=int(pdu.dest_addr_npi or 0),
                esm_class=esm_class, data_coding=int(pdu.data_coding or 0),
                registered_delivery=int(pdu.registered_delivery or 0),
                short_message=short_message, udh=udh, payload=payload,
                status=status, message_id=message_id,
            )
            self.submits.append(submit)
            conn.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding())
            drop = False
            if self._drop is not None:
                self._drop[0] -= 1
                if self._drop[0] <= 0:
                    drop, answer = True, self._drop[1]
                    self._drop = None
            self.changed.notify_all()
            if drop:
                if answer:
                    self._answer(conn, pdu, submit, receipts=False)
                conn.close()
                self.dropped.set()
                return
            if self.silent:
                return
            if self._holding:
                conn.held.append(lambda: self._answer(conn, pdu, submit))
                return
        self._answer(conn, pdu, submit)

    def _answer(self, conn: _Conn, pdu: Any, submit: Submit, receipts: bool = True) -> None:
        with self._lock:
            conn.outstanding -= 1
            self.changed.notify_all()
        self._respond(conn, "submit_sm_resp", pdu, submit.status, message_id=submit.message_id)
        if not (receipts and self.receipts and submit.message_id and submit.registered_delivery & 1):
            return
        rule = self.receipt_stat
        stat = rule(submit) if callable(rule) else rule
        if stat is None:
            return
        if self.receipt_delay > 0:
            timer = threading.Timer(self.receipt_delay, self._receipt, (conn, submit, stat))
            timer.daemon = True
            with self._lock:
                self._timers.append(timer)
            timer.start()
        else:
            self._receipt(conn, submit, stat)

    def _receipt(self, conn: _Conn, submit: Submit, stat: str) -> None:
        assert submit.message_id is not None
        now = datetime.now(UTC).strftime("%y%m%d%H%M")
        ok = stat == "DELIVRD"
        text_id = str(int(submit.message_id, 16)) if self.receipt_id_decimal else submit.message_id
        text = (f"id:{text_id} sub:001 dlvrd:{'001' if ok else '000'} submit date:{now} "
                f"done date:{now} stat:{stat} err:{'000' if ok else '001'} text:")
        fields: dict[str, Any] = {}
        if self.receipt_tlvs:
            fields = {"receipted_message_id": submit.message_id,
                      "message_state": MESSAGE_STATES.get(stat, 7)}
        pdu = smpp_pdu.make_pdu(
            "deliver_sm", client=self._seq, service_type="",
            source_addr_ton=1, source_addr_npi=1, source_addr=submit.destination_addr,
            dest_addr_ton=submit.source_addr_ton, dest_addr_npi=submit.source_addr_npi,
            destination_addr=submit.source_addr, esm_class=0x04, data_coding=0,
            short_message=text.encode("ascii"), **fields,
        )
        if conn.send(pdu):
            with self._lock:
                self.receipts_sent.append((submit.message_id, stat))
                self.changed.notify_all()


def _digits(address: str) -> str:
    return address[1:] if address.startswith("+") else address


def _read_pdu(sock: socket.socket) -> bytes | None:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (length,) = struct.unpack(">L", head)
    if length < 16 or length > 64 * 1024:
        raise ValueError(f"bad command_length {length}")
    rest = _recv_exact(sock, length - 4)
    return None if rest is None else head + rest


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m providers.fakes.smpp",
                                description="Run a loopback fake SMSC speaking SMPP 3.4, with delivery receipts.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2775)
    p.add_argument("--system-id", default="loa")
    p.add_argument("--password", default="secret")
    p.add_argument("--receipt-delay", type=float, default=0.0, help="seconds before each deliver_sm receipt")
    args = p.parse_args(argv)
    stop_on_ctrl_c()
    # Ctrl-C may come as soon as the address is out, before print() has returned
    with FakeSMSC(host=args.host, port=args.port, system_id=args.system_id, password=args.password,
                  receipt_delay=args.receipt_delay) as smsc, contextlib.suppress(KeyboardInterrupt):
        print(f"fake SMSC (SMPP 3.4) at {smsc.host}:{smsc.port}\nsystem_id = {smsc.system_id}\n"
              f"password  = {smsc.password}   (export it; name it with password_env)", flush=True)
        threading.Event().wait()   # until Ctrl-C: the server answers from its own threads
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
