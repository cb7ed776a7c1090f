"""An SMPP 3.4 gateway: one persistent transceiver bind to an operator's SMSC.

How it works
============

* **One bind, shared by threads.**  The first :meth:`SMPPProvider.send` opens a
  TCP connection and sends ``bind_transceiver``.  Sending threads write their
  ``submit_sm`` PDUs under a write lock and wait for the matching
  ``submit_sm_resp`` by sequence number.  A *reader* thread reads every PDU
  (``submit_sm_resp`` -> the waiting sender, ``deliver_sm`` -> receipt or
  inbound queue + ``deliver_sm_resp``, ``enquire_link`` ->
  ``enquire_link_resp``, ``unbind`` -> ``unbind_resp`` and close) and a
  *keepalive* thread sends ``enquire_link``
  every ``enquire_link_interval`` seconds; no answer within ``timeout`` closes
  the bind.  At most ``window`` submits are outstanding at once (a semaphore).
  smpplib builds the outgoing PDUs (``smpplib.smpp.make_pdu``); the socket and
  the incoming byte stream are ours: smpplib's ``Client`` is synchronous, loses
  the stream position when a read times out mid-PDU, and its parser fails on
  TLVs a command does not declare, so a small buffered reader decodes the few
  PDUs an ESME receives.
* **Reconnect.**  A dropped bind is noticed by the reader; the next send binds
  again at once.  Failed connects or binds back off exponentially
  (``reconnect_initial`` doubling up to ``reconnect_max`` seconds); during the
  back-off sends fail fast with the last error and ``retry_after``.
* **Encoding.**  UCS-2 text goes as ``data_coding`` 8 (UTF-16-BE), 70 units in
  one part or 67 per part with a concatenation UDH (``esm_class`` 0x40), the
  same layout as ``smpplib.gsm.make_parts``.  GSM-7 text goes as
  ``data_coding`` 0 (SMSC default alphabet), *unpacked*: one septet per octet,
  extension characters as ESC + code, as smpplib does and as most SMSCs
  expect; the SMSC packs septets for the air interface.  The GSM table is our
  own (3GPP TS 23.038): smpplib's maps 0x5F to a backtick instead of "§" and
  its splitter may cut an escape sequence.  Parts are packed greedily without
  splitting an escape sequence or a surrogate pair, exactly like
  ``loa.text.split_parts``, so the part count matches what loa planned (160/153
  septets, 70/67 UTF-16 units).  A message marked GSM-7 whose text the GSM
  alphabet cannot carry is sent as UCS-2 (``raw["encoding"]`` says so) rather
  than with characters replaced.
* **Ids and receipts.**  ``provider_id`` is the ``message_id`` of the first
  part; every part's id is recorded (in memory, the newest 200 000 parts) so a
  receipt for any part maps to its message.  One receipt is reported per
  message, the first verdict wins: *undelivered* as soon as any part fails
  (UNDELIV, EXPIRED, REJECTD, DELETED; ``error_code`` is that stat), *delivered*
  when the first part is delivered (a later part failing after that is not
  reported: the ledger only moves forward; a message whose first part's
  receipt never comes stays "sent").  ACCEPTD, ENROUTE and UNKNOWN are not
  final and are not reported.  A receipt for an id this
  process does not know (sent before a restart, or by another process's bind:
  the SMSC may deliver receipts to any bind of the account) is reported as is,
  under its own id, which matches the ledger when it is a first part.  A
  receipt for a message whose send raised (timeout, lost connection, partial
  send) carries only our ``key`` so the ledger's "unknown" row can still learn
  its fate.  The id is taken from the ``receipted_message_id`` TLV, else from
  the text's ``id:``; an id given in decimal where ``submit_sm_resp`` gave hex
  (a known SMSC quirk), or the reverse, still matches.
* **Inbound SMS.**  A ``deliver_sm`` (or ``data_sm``) that is not a receipt is
  a subscriber's message ("TC", a reply).  It is answered at once like any
  other, decoded (GSM-7, UCS-2, else Latin-1), reassembled when it came in
  parts (a concatenation UDH or the ``sar_*`` TLVs; a message whose parts stop
  coming is handed over after ``PARTS_WAIT`` seconds if its first part came,
  since the first words decide an opt-out) and queued for
  :meth:`SMPPProvider.fetch_inbound`, which loa polls like the receipts; one
  loa could not record (its database failed) is handed back with
  :meth:`SMPPProvider.requeue_inbound` and fetched again, since the SMSC
  already has its ``deliver_sm_resp`` and will not send it again.  SMPP
  gives an MO no id, so its ``provider_id`` is a digest of sender, recipient,
  text and local day: an SMSC re-delivering the same message (its
  ``deliver_sm_resp`` was lost with the connection) is recognised as a
  repeat, as a re-sent webhook is.

Command status mapping (``submit_sm_resp`` / ``bind_transceiver_resp``)
=======================================================================

=================================  ============================================
status                             error
=================================  ============================================
0x00 ESME_ROK                      success
0x58 ESME_RTHROTTLED               ThrottledError
0x14 ESME_RMSGQFUL                 ThrottledError
0x08 ESME_RSYSERR                  RetryableError (not ambiguous: refused)
0x45 ESME_RSUBMITFAIL              RetryableError (not ambiguous: refused)
0x04 ESME_RINVBNDSTS               RetryableError; the bind is dropped and redone
0x0D ESME_RBINDFAIL                AuthError (bind refused: account, IP, binds)
0x0E ESME_RINVPASWD                AuthError
0x0F ESME_RINVSYSID                AuthError
0x53 ESME_RINVSYSTYP               ConfigError
0x0A ESME_RINVSRCADR               ConfigError (sender/brandname not allowed)
0x48/0x49 ESME_RINVSRCTON/NPI      ConfigError
0x50/0x51 ESME_RINVDSTTON/NPI      ConfigError (our dest_addr_ton/npi setting)
0x0B ESME_RINVDSTADR               PermanentError
anything else on submit            PermanentError, code "0xNN"
anything else on bind              AuthError, code "0xNN"
=================================  ============================================

Transport: no ``submit_sm_resp`` within ``timeout`` -> RetryableError(ambiguous);
connection lost after the PDU was written -> RetryableError(ambiguous); lost
before it was written (or connect/bind failed) -> RetryableError.  In a
multi-part message, a transient refusal of a later part is retried within the
``timeout`` budget (so the handset gets a whole message); if a later part still
fails, the message was partly sent and the error is RetryableError(ambiguous).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import logging
import re
import socket
import struct
import threading
import time
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from smpplib import consts as smpp_consts
from smpplib import smpp as smpp_pdu

from providers.base import (
    AuthError,
    ConfigError,
    DeliveryReceipt,
    InboundMessage,
    OutgoingMessage,
    PermanentError,
    Provider,
    ProviderError,
    RetryableError,
    SendResult,
    Setting,
    StateStore,
    ThrottledError,
)

__all__ = ["SMPPProvider", "encode_parts", "gsm7_encode", "parse_receipt_text"]

log = logging.getLogger(__name__)

# -- command ids and statuses ----------------------------------------------------
BIND_TRANSCEIVER = 0x00000009
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
ENQUIRE_LINK = 0x00000015
DATA_SM = 0x00000103
ALERT_NOTIFICATION = 0x00000102
GENERIC_NACK = 0x80000000
RESPONSE_BIT = 0x80000000

ESME_ROK = 0x00
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RSYSERR = 0x08

THROTTLING = frozenset({0x58, 0x14})
TRANSIENT = frozenset({0x08, 0x45})
AUTH = frozenset({0x0D, 0x0E, 0x0F})
CONFIG = frozenset({0x0A, 0x48, 0x49, 0x50, 0x51, 0x53})
INVALID_DEST = frozenset({0x0B})

STATUS_NAMES: dict[int, str] = {
    value: name[len("SMPP_"):]
    for name, value in vars(smpp_consts).items()
    if name.startswith("SMPP_ESME_R") and isinstance(value, int)
}

# TLV tags read from deliver_sm
TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_SAR_MSG_REF_NUM = 0x020C
TAG_SAR_TOTAL_SEGMENTS = 0x020E
TAG_SAR_SEGMENT_SEQNUM = 0x020F
TAG_NETWORK_ERROR_CODE = 0x0423
TAG_MESSAGE_PAYLOAD = 0x0424
TAG_MESSAGE_STATE = 0x0427

MAX_PDU = 64 * 1024
TRACKED_PARTS = 200_000
PARTS_WAIT = 300.0          # seconds an inbound message's missing parts are waited for
# An inbound SMS's id includes its day here: people text least around local midnight,
# so an SMSC's re-delivery rarely straddles the change of day.
MO_DAY_ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def status_text(status: int) -> str:
    name = STATUS_NAMES.get(status, "unknown status")
    desc = smpp_consts.DESCRIPTIONS.get(status)
    return f"{name}: {desc}" if desc else name


def status_code(status: int) -> str:
    return f"0x{status:02X}"


# -- GSM 03.38 / UCS-2 encoding -----------------------------------------------------

# The default alphabet in code order (0x1B is the escape, not a character).
GSM7_BASIC_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
assert len(GSM7_BASIC_TABLE) == 128
_GSM7_BASIC = {ch: code for code, ch in enumerate(GSM7_BASIC_TABLE) if code != 0x1B}
_GSM7_EXTENSION = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F,
                   "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65}
_GSM7_CODES: dict[str, bytes] = {
    **{ch: bytes([code]) for ch, code in _GSM7_BASIC.items()},
    **{ch: bytes([0x1B, code]) for ch, code in _GSM7_EXTENSION.items()},
}

GSM7, UCS2 = "GSM-7", "UCS-2"
DATA_CODING = {GSM7: 0x00, UCS2: 0x08}
_SINGLE = {GSM7: 160, UCS2: 140}    # octets of short_message: 160 septets / 70 units
_MULTI = {GSM7: 153, UCS2: 134}     # after the 6-octet UDH: 153 septets / 67 units
UDHI = 0x40


def gsm7_encode(text: str) -> bytes:
    """Unpacked GSM 03.38 septets, one per octet; raises UnicodeError if not GSM-7."""
    try:
        return b"".join(_GSM7_CODES[ch] for ch in text)
    except KeyError as exc:
        raise UnicodeError(f"not in the GSM-7 alphabet: {exc.args[0]!r}") from None


def _char_codes(text: str, encoding: str) -> list[bytes]:
    if encoding == GSM7:
        try:
            return [_GSM7_CODES[ch] for ch in text]
        except KeyError as exc:
            raise UnicodeError(f"not in the GSM-7 alphabet: {exc.args[0]!r}") from None
    return [ch.encode("utf-16-be") for ch in text]


def encode_parts(text: str, encoding: str, reference: int = 0) -> tuple[str, list[bytes]]:
    """``(encoding used, [short_message per part])`` for ``text``.

    Several parts each start with a concatenation UDH ``05 00 03 ref total
    seq``.  Parts never split an escape sequence or a surrogate pair.  GSM-7
    falls back to UCS-2 if a character has no GSM code.
    """
    text = unicodedata.normalize("NFC", text)
    if encoding not in DATA_CODING:
        raise ValueError(f"unknown SMS encoding {encoding!r}")
    try:
        codes = _char_codes(text, encoding)
    except UnicodeError:
        encoding = UCS2
        codes = _char_codes(text, encoding)
    if sum(len(c) for c in codes) <= _SINGLE[encoding]:
        return encoding, [b"".join(codes)]
    limit = _MULTI[encoding]
    chunks: list[bytes] = []
    current: list[bytes] = []
    used = 0
    for code in codes:
        if used + len(code) > limit:
            chunks.append(b"".join(current))
            current, used = [], 0
        current.append(code)
        used += len(code)
    chunks.append(b"".join(current))
    if len(chunks) > 255:
        raise ValueError(f"text needs {len(chunks)} parts; SMS concatenation allows 255")
    ref = reference & 0xFF
    return encoding, [
        bytes([0x05, 0x00, 0x03, ref, len(chunks), i]) + chunk
        for i, chunk in enumerate(chunks, start=1)
    ]


_GSM7_CHARS = {code: ch for ch, code in _GSM7_BASIC.items()}
_GSM7_EXTENDED_CHARS = {code: ch for ch, code in _GSM7_EXTENSION.items()}


def gsm7_decode(data: bytes) -> str:
    """Unpacked GSM 03.38 septets to text; raises UnicodeError if ``data`` is not that."""
    out: list[str] = []
    octets = iter(data)
    for octet in octets:
        table = _GSM7_CHARS
        if octet == 0x1B:
            table, octet = _GSM7_EXTENDED_CHARS, next(octets, -1)
        if octet not in table:
            raise UnicodeError(f"not a GSM-7 septet sequence at 0x{octet & 0xFF:02X}")
        out.append(table[octet])
    return "".join(out)


def _alphabet(data_coding: int) -> str | None:
    """GSM-7, UCS-2 or None (8-bit: read as Latin-1) for an SMPP ``data_coding``."""
    general = 0x10 <= data_coding < 0x40          # a GSM 03.38 coding group 00xx scheme
    if data_coding == 0x08 or (general and data_coding & 0x0C == 0x08):
        return UCS2
    if data_coding == 0x00 or (general and data_coding & 0x0C == 0) or data_coding & 0xF4 == 0xF0:
        return GSM7
    return None


def decode_text(data_coding: int, payload: bytes) -> str:
    """The NFC text of an inbound short message (without its UDH); never raises."""
    alphabet = _alphabet(data_coding)
    text = None
    if alphabet == UCS2:
        text = payload.decode("utf-16-be", errors="replace")
    elif alphabet == GSM7:
        try:
            text = gsm7_decode(payload)
        except UnicodeError:
            pass              # some SMSCs pass ASCII or Latin-1 on under the default alphabet
    return unicodedata.normalize("NFC", payload.decode("latin-1") if text is None else text)


# -- delivery receipts ------------------------------------------------------------

STATES = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV",
          6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD"}
_STAT_ALIASES = {"DELIVERED": "DELIVRD", "UNDELIVERABLE": "UNDELIV", "REJECTED": "REJECTD",
                 "ACCEPTED": "ACCEPTD", "EXPIRE": "EXPIRED"}
DELIVERED_STATS = frozenset({"DELIVRD"})
FAILED_STATS = frozenset({"UNDELIV", "EXPIRED", "REJECTD", "DELETED"})
_FIELD = re.compile(r"(?:^|\s)(id|sub|dlvrd|submit date|done date|stat|err):(\S*)", re.I)
_TEXT = re.compile(r"(?:^|\s)text:", re.I)


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedReceipt:
    message_id: str
    stat: str                  # canonical 7-letter stat, e.g. "DELIVRD"
    err: str | None = None
    done: str | None = None    # "YYMMDDhhmm[ss]" as the SMSC wrote it
    network_error: str | None = None

    @property
    def status(self) -> str | None:
        if self.stat in DELIVERED_STATS:
            return "delivered"
        if self.stat in FAILED_STATS:
            return "undelivered"
        return None            # ENROUTE, ACCEPTD, UNKNOWN: not final, not reported


def parse_receipt_text(text: str) -> dict[str, str]:
    """The fields of "id:... sub:... dlvrd:... submit date:... done date:... stat:... err:... text:...".

    Only what precedes ``text:`` is read: the message excerpt may contain anything.
    """
    head = _TEXT.split(text, maxsplit=1)[0]
    return {m.group(1).lower(): m.group(2) for m in _FIELD.finditer(head)}


def _canonical_stat(stat: str) -> str:
    stat = stat.strip().upper()
    return _STAT_ALIASES.get(stat, stat)


def _receipt_from(short_message: bytes, tlvs: Mapping[int, bytes]) -> ParsedReceipt | None:
    fields = parse_receipt_text(short_message.decode("latin-1"))
    message_id = _cstr_value(tlvs.get(TAG_RECEIPTED_MESSAGE_ID)) or fields.get("id", "")
    state = tlvs.get(TAG_MESSAGE_STATE)
    if state:
        stat = STATES.get(state[0], "UNKNOWN")
    else:
        stat = _canonical_stat(fields.get("stat", ""))
    if not message_id or not stat:
        return None
    network = tlvs.get(TAG_NETWORK_ERROR_CODE)
    return ParsedReceipt(
        message_id=message_id, stat=stat, err=fields.get("err") or None,
        done=fields.get("done date") or None,
        network_error=network.hex() if network else None,
    )


def _cstr_value(raw: bytes | None) -> str:
    if not raw:
        return ""
    return raw.split(b"\x00", 1)[0].decode("latin-1").strip()


def _id_forms(message_id: str) -> list[str]:
    """Spellings under which an SMSC may repeat an id: hex vs decimal, zero padding, case."""
    norm = message_id.strip().lower()
    forms = [norm]
    stripped = norm.lstrip("0") or "0"
    if stripped != norm:
        forms.append(stripped)
    if norm.isdigit():
        forms.append(format(int(norm), "x"))
    if norm and all(c in "0123456789abcdef" for c in norm) and len(norm) <= 32:
        forms.append(str(int(norm, 16)))
    return list(dict.fromkeys(forms))


@dataclasses.dataclass(slots=True)
class _Track:
    """One message's parts, for mapping receipts."""

    key: str
    total: int
    provider_id: str | None = None       # first part's id, once known
    finished: bool = False               # send() returned or raised
    succeeded: bool = False              # ... and returned a SendResult
    verdict: DeliveryReceipt | None = None
    reported: bool = False


# -- PDU decoding -----------------------------------------------------------------

class ProtocolError(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class RawPDU:
    command_id: int
    status: int
    sequence: int
    body: bytes

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)


def _cstring(body: bytes, pos: int) -> tuple[bytes, int]:
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ProtocolError("unterminated C-string")
    return body[pos:end], end + 1


def _tlvs(body: bytes, pos: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while pos + 4 <= len(body):
        tag, length = struct.unpack_from(">HH", body, pos)
        pos += 4
        if pos + length > len(body):
            raise ProtocolError(f"TLV 0x{tag:04X} runs past the PDU")
        out[tag] = body[pos:pos + length]
        pos += length
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class DeliverSM:
    """What loa reads from a deliver_sm or data_sm: a receipt or a subscriber's SMS."""

    esm_class: int
    short_message: bytes            # message_payload when short_message is empty
    tlvs: Mapping[int, bytes]
    source: str
    source_ton: int = 0
    destination: str = ""
    data_coding: int = 0

    @property
    def is_receipt(self) -> bool:
        return bool(self.esm_class & 0x04) or TAG_RECEIPTED_MESSAGE_ID in self.tlvs


def _addresses(body: bytes) -> tuple[int, str, str, int]:
    """``(source_addr_ton, source_addr, destination_addr, position after them)``."""
    _, pos = _cstring(body, 0)                      # service_type
    if pos + 2 > len(body):
        raise ProtocolError("PDU too short")
    source_ton = body[pos]
    source, pos = _cstring(body, pos + 2)           # after source_addr_ton, npi
    destination, pos = _cstring(body, pos + 2)      # after dest_addr_ton, npi
    return source_ton, source.decode("latin-1"), destination.decode("latin-1"), pos


def decode_deliver_sm(body: bytes) -> DeliverSM:
    """The fields of a deliver_sm body; the text from message_payload if short_message is empty."""
    source_ton, source, destination, pos = _addresses(body)
    if pos + 3 > len(body):
        raise ProtocolError("deliver_sm too short")
    esm_class = body[pos]
    pos += 3                                        # esm_class, protocol_id, priority_flag
    _, pos = _cstring(body, pos)                    # schedule_delivery_time
    _, pos = _cstring(body, pos)                    # validity_period
    if pos + 5 > len(body):
        raise ProtocolError("deliver_sm too short")
    data_coding = body[pos + 2]                     # after registered_delivery, replace_if_present
    pos += 4                                        # registered_delivery .. sm_default_msg_id
    sm_length = body[pos]
    pos += 1
    if pos + sm_length > len(body):
        raise ProtocolError("short_message runs past the PDU")
    short_message = body[pos:pos + sm_length]
    tlvs = _tlvs(body, pos + sm_length)
    if not short_message and TAG_MESSAGE_PAYLOAD in tlvs:
        short_message = tlvs[TAG_MESSAGE_PAYLOAD]
    return DeliverSM(esm_class, short_message, tlvs, source, source_ton, destination, data_coding)


def _decode_data_sm(body: bytes) -> DeliverSM:
    source_ton, source, destination, pos = _addresses(body)
    if pos + 3 > len(body):
        raise ProtocolError("data_sm too short")
    tlvs = _tlvs(body, pos + 3)                     # after esm_class, registered_delivery, data_coding
    return DeliverSM(body[pos], tlvs.get(TAG_MESSAGE_PAYLOAD, b""), tlvs, source, source_ton,
                     destination, body[pos + 2])


# -- inbound SMS --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class _Segment:
    """A part's place in a concatenated inbound SMS."""

    reference: int
    total: int
    number: int


@dataclasses.dataclass(slots=True)
class _Partial:
    """The parts of one concatenated inbound SMS received so far."""

    since: float                    # time.monotonic() of its first arrival
    deliver: DeliverSM              # a part, for its sender, recipient and data_coding
    parts: dict[int, bytes] = dataclasses.field(default_factory=dict)

    def complete(self, total: int) -> bool:
        return all(n in self.parts for n in range(1, total + 1))

    def octets(self) -> bytes:
        # joined before decoding: a handset may split a UCS-2 surrogate pair or a GSM escape
        return b"".join(self.parts[n] for n in sorted(self.parts))


def _user_data(deliver: DeliverSM) -> tuple[bytes, _Segment | None]:
    """The text octets of an inbound SMS (without its UDH) and its place if it is a part."""
    data = deliver.short_message
    segment = _sar_segment(deliver.tlvs)
    if deliver.esm_class & UDHI and data:
        header, data = data[1:1 + data[0]], data[1 + data[0]:]
        segment = _udh_segment(header) or segment
    return data, segment if segment is not None and segment.total > 1 else None


def _udh_segment(header: bytes) -> _Segment | None:
    """The concatenation element (8- or 16-bit reference) of a user data header."""
    pos = 0
    while pos + 2 <= len(header):
        iei, length = header[pos], header[pos + 1]
        value = header[pos + 2:pos + 2 + length]
        if iei == 0x00 and length == 3:
            return _Segment(value[0], value[1], value[2])
        if iei == 0x08 and length == 4:
            return _Segment(int.from_bytes(value[:2], "big"), value[2], value[3])
        pos += 2 + length
    return None


def _sar_segment(tlvs: Mapping[int, bytes]) -> _Segment | None:
    """Concatenation told by the sar_* TLVs, which some SMSCs use instead of a UDH."""
    try:
        return _Segment(int.from_bytes(tlvs[TAG_SAR_MSG_REF_NUM], "big"),
                        tlvs[TAG_SAR_TOTAL_SEGMENTS][0], tlvs[TAG_SAR_SEGMENT_SEQNUM][0])
    except (KeyError, IndexError):
        return None


def _sender(deliver: DeliverSM) -> str:
    international = deliver.source_ton == 1 and deliver.source.isdigit()
    return f"+{deliver.source}" if international else deliver.source


def _mo_id(deliver: DeliverSM, text: str, at: datetime) -> str:
    """An id for an SMS that SMPP gives none: a re-delivery of it the same day gets the same one."""
    day = at.astimezone(MO_DAY_ZONE).strftime("%Y%m%d")
    digest = hashlib.sha256(f"{deliver.source}\x00{deliver.destination}\x00{text}".encode())
    return f"mo-{day}-{digest.hexdigest()[:20]}"


# -- one bind -----------------------------------------------------------------------

class _NotWritten(Exception):
    """The PDU did not reach the wire: safe to send again."""


class _Sequence:
    """Thread-safe sequence numbers for smpplib's PDU factory (1 .. 0x7FFFFFFF)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self.sequence = 0

    def next_sequence(self) -> int:
        with self._lock:
            self.sequence = (next(self._counter) - 1) % 0x7FFFFFFF + 1
            return self.sequence


class _Waiter:
    __slots__ = ("event", "pdu", "lost", "track", "part", "abandoned_at")

    def __init__(self, track: _Track | None = None, part: int = 0) -> None:
        self.event = threading.Event()
        self.pdu: RawPDU | None = None
        self.lost: str | None = None
        self.track = track
        self.part = part
        self.abandoned_at: float | None = None


class _Session:
    """A bound transceiver connection with its reader and keepalive threads."""

    def __init__(self, provider: SMPPProvider, sock: socket.socket) -> None:
        self.provider = provider
        self.sock = sock
        self.seq = _Sequence()
        self.closed = threading.Event()
        self.reason = ""
        self._buf = bytearray()
        self._write_lock = threading.Lock()
        self._pending: dict[int, _Waiter] = {}
        self._pending_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- PDUs ----------------------------------------------------------------
    def make(self, command: str, **fields: Any) -> Any:
        return smpp_pdu.make_pdu(command, client=self.seq, **fields)

    def answer(self, command: str, request: RawPDU, status: int = ESME_ROK) -> None:
        pdu = smpp_pdu.make_pdu(command, client=self.seq, status=status)
        pdu.sequence = request.sequence
        self.write(pdu.generate())

    def write(self, data: bytes) -> None:
        with self._write_lock:
            if self.closed.is_set():
                raise _NotWritten(self.reason or "connection closed")
            try:
                self.sock.sendall(data)
            except OSError as exc:
                # sendall raises only if a PDU did not go out whole; an SMSC
                # cannot act on half a PDU.
                self.shutdown(f"write failed: {exc}")
                raise _NotWritten(self.reason) from exc

    def read_pdu(self) -> RawPDU:
        """The next PDU; socket.timeout keeps partial data in the buffer."""
        while True:
            if len(self._buf) >= 4:
                (length,) = struct.unpack_from(">L", self._buf, 0)
                if length < 16 or length > MAX_PDU:
                    raise ProtocolError(f"bad command_length {length}")
                if len(self._buf) >= length:
                    raw = bytes(self._buf[:length])
                    del self._buf[:length]
                    command_id, status, sequence = struct.unpack_from(">LLL", raw, 4)
                    return RawPDU(command_id, status, sequence, raw[16:])
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("connection closed by the SMSC")
            self._buf += chunk

    # -- requests --------------------------------------------------------------
    def request(self, pdu: Any, waiter: _Waiter) -> None:
        """Register ``waiter`` for the answer to ``pdu`` and write it."""
        with self._pending_lock:
            if self.closed.is_set():
                raise _NotWritten(self.reason or "connection closed")
            if len(self._pending) > 4096:
                self._prune_locked(max(60.0, 10 * self.provider.timeout))
            self._pending[pdu.sequence] = waiter
        try:
            self.write(pdu.generate())
        except _NotWritten:
            with self._pending_lock:
                self._pending.pop(pdu.sequence, None)
            raise

    @staticmethod
    def abandon(waiter: _Waiter) -> None:
        """Stop waiting but keep the waiter registered: a late submit_sm_resp still
        records the part, so its receipt can settle the ambiguous message by key.
        The keepalive prunes abandoned waiters."""
        waiter.abandoned_at = time.monotonic()

    def call(self, pdu: Any, timeout: float) -> RawPDU | None:
        """Write and wait for the answer; None if none came."""
        waiter = _Waiter()
        self.request(pdu, waiter)
        if not waiter.event.wait(timeout) or waiter.pdu is None:
            with self._pending_lock:
                self._pending.pop(pdu.sequence, None)
            return None
        return waiter.pdu

    def _take_waiter(self, sequence: int) -> _Waiter | None:
        with self._pending_lock:
            return self._pending.pop(sequence, None)

    def prune(self, older_than: float) -> None:
        with self._pending_lock:
            self._prune_locked(older_than)

    def _prune_locked(self, older_than: float) -> None:
        limit = time.monotonic() - older_than
        for seq in [s for s, w in self._pending.items()
                    if w.abandoned_at is not None and w.abandoned_at < limit]:
            del self._pending[seq]

    # -- bind ----------------------------------------------------------------
    def bind(self, timeout: float) -> None:
        p = self.provider
        pdu = self.make("bind_transceiver", system_id=p.system_id, password=p.password,
                        system_type=p.system_type, addr_ton=0, addr_npi=0, address_range="")
        self.write(pdu.generate())
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = self.read_pdu()
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                continue
            if resp.sequence == pdu.sequence and resp.command_id in (
                    BIND_TRANSCEIVER | RESPONSE_BIT, GENERIC_NACK):
                if resp.status != ESME_ROK:
                    raise p.bind_error(resp.status)
                return
            if resp.command_id == ENQUIRE_LINK:
                self.answer("enquire_link_resp", resp)
            if time.monotonic() >= deadline:
                raise TimeoutError("no bind_transceiver_resp")

    def start(self) -> None:
        reader = threading.Thread(target=self._read_loop, name=f"smpp-{self.provider.name}-reader",
                                  daemon=True)
        self._threads.append(reader)
        if self.provider.enquire_link_interval > 0:
            self._threads.append(threading.Thread(
                target=self._keepalive, name=f"smpp-{self.provider.name}-keepalive", daemon=True))
        for t in self._threads:
            t.start()

    # -- reader thread -------------------------------------------------------
    def _read_loop(self) -> None:
        reason = "connection closed"
        try:
            while not self.closed.is_set():
                try:
                    pdu = self.read_pdu()
                except TimeoutError:
                    continue
                if not self._handle(pdu):
                    reason = "unbound by the SMSC"
                    break
        except (OSError, ProtocolError, _NotWritten) as exc:
            reason = str(exc) or type(exc).__name__
        except Exception as exc:  # a bug must not leave senders waiting forever
            log.exception("gateway %s: SMPP reader failed", self.provider.name)
            reason = f"reader failed: {exc!r}"
        self.shutdown(self.reason or reason)

    def _handle(self, pdu: RawPDU) -> bool:
        """Act on one PDU; False when the bind is over."""
        cid = pdu.command_id
        if pdu.is_response:
            waiter = self._take_waiter(pdu.sequence)
            if waiter is None:
                log.info("gateway %s: answer 0x%08X to unknown sequence %d ignored",
                         self.provider.name, cid, pdu.sequence)
                return True
            waiter.pdu = pdu
            if cid == SUBMIT_SM | RESPONSE_BIT and pdu.status == ESME_ROK and waiter.track:
                # Before any later deliver_sm is read: a receipt can follow at once.
                self.provider.track_part(_message_id(pdu), waiter.track, waiter.part)
            waiter.event.set()
            if cid == SUBMIT_SM | RESPONSE_BIT and pdu.status == ESME_RINVBNDSTS:
                self.reason = "the SMSC says the bind is gone (ESME_RINVBNDSTS)"
                return False
            return True
        if cid in (DELIVER_SM, DATA_SM):
            try:
                self._take_delivery(pdu)
            finally:        # answered whatever became of it: the SMSC would re-send it
                self.answer("deliver_sm_resp" if cid == DELIVER_SM else "data_sm_resp", pdu)
            return True
        if cid == ENQUIRE_LINK:
            self.answer("enquire_link_resp", pdu)
            return True
        if cid == UNBIND:
            self.reason = "unbound by the SMSC"
            self.answer("unbind_resp", pdu)
            return False
        if cid == ALERT_NOTIFICATION:
            return True
        nack = smpp_pdu.make_pdu("generic_nack", client=self.seq, status=ESME_RINVCMDID)
        nack.sequence = pdu.sequence
        self.write(nack.generate())
        return True

    def _take_delivery(self, pdu: RawPDU) -> None:
        """A receipt goes to the provider's receipts, a subscriber's SMS to its inbound queue."""
        try:
            deliver = decode_deliver_sm(pdu.body) if pdu.command_id == DELIVER_SM \
                else _decode_data_sm(pdu.body)
        except ProtocolError as exc:
            log.warning("gateway %s: malformed deliver_sm acknowledged and dropped: %s",
                        self.provider.name, exc)
            return
        if not deliver.is_receipt:
            self.provider.on_inbound(deliver)
            return
        receipt = _receipt_from(deliver.short_message, deliver.tlvs)
        if receipt is None:
            log.warning("gateway %s: unreadable receipt %r", self.provider.name,
                        deliver.short_message[:120])
        else:
            self.provider.on_receipt(receipt)

    # -- keepalive thread ------------------------------------------------------
    def _keepalive(self) -> None:
        p = self.provider
        while not self.closed.wait(p.enquire_link_interval):
            self.prune(max(60.0, 10 * p.timeout))
            try:
                resp = self.call(self.make("enquire_link"), p.timeout)
            except _NotWritten:
                return
            if resp is None and not self.closed.is_set():
                self.shutdown(f"no enquire_link_resp within {p.timeout:g} s")
                return

    # -- closing -------------------------------------------------------------
    def unbind(self, timeout: float) -> None:
        if self.closed.is_set():
            return
        self.reason = "unbound"   # the SMSC hangs up after unbind_resp: not news
        try:
            self.call(self.make("unbind"), timeout)
        except _NotWritten:
            pass
        self.shutdown("unbound")

    def shutdown(self, reason: str) -> None:
        """Close the socket and fail every waiter (their PDUs were written)."""
        with self._pending_lock:
            if self.closed.is_set():
                return
            self.reason = self.reason or reason
            self.closed.set()
            pending, self._pending = self._pending, {}
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for waiter in pending.values():
            waiter.lost = self.reason
            waiter.event.set()
        if self.reason not in ("unbound", "check done"):
            log.info("gateway %s: SMPP bind closed: %s", self.provider.name, self.reason)

    def join(self, timeout: float = 2.0) -> None:
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)


def _message_id(pdu: RawPDU) -> str:
    if not pdu.body:
        return ""
    end = pdu.body.find(b"\x00")
    raw = pdu.body if end < 0 else pdu.body[:end]
    return raw.decode("latin-1").strip()


def _drain(queue: collections.deque[Any]) -> list[Any]:
    """Everything queued so far, taken while the reader may still be appending."""
    out = []
    while True:
        try:
            out.append(queue.popleft())
        except IndexError:
            return out


def _mask(phone: str) -> str:
    return "****" if len(phone) <= 8 else f"{phone[:5]}****{phone[-3:]}"


# -- the provider -----------------------------------------------------------------

class SMPPProvider(Provider):
    """SMS over one persistent SMPP 3.4 transceiver bind (see the module docstring)."""

    type = "smpp"
    channels = ("sms",)
    rate = 50.0
    dedupes_by_key = False  # a re-sent submit_sm is a second SMS
    settings = (
        Setting("host", required=True, kind=str, help="SMSC host name or address"),
        Setting("port", required=False, default=2775, kind=int, ge=1, le=65535, help="SMSC TCP port"),
        Setting("system_id", required=True, kind=str, help="SMPP account (system_id), at most 15 characters"),
        Setting("password", required=True, secret=True, help="SMPP password, at most 8 characters"),
        Setting("system_type", required=False, default="", kind=str,
                help="system_type of the bind, if the SMSC wants one"),
        Setting("service_type", required=False, default="", kind=str, help="service_type of submit_sm, usually empty"),
        Setting("source_addr", required=True, kind=str, help="sender: registered brandname or number"),
        Setting("source_addr_ton", required=False, default=5, kind=int, ge=0, le=6,
                help="sender TON: 5 alphanumeric (brandname), 1 international, 3 short code"),
        Setting("source_addr_npi", required=False, default=0, kind=int, ge=0, le=18,
                help="sender NPI: 0 for brandnames, 1 ISDN"),
        Setting("dest_addr_ton", required=False, default=1, kind=int, ge=0, le=6,
                help="recipient TON: 1 international (84...)"),
        Setting("dest_addr_npi", required=False, default=1, kind=int, ge=0, le=18, help="recipient NPI: 1 ISDN/E.164"),
        Setting("window", required=False, default=10, kind=int, ge=1, le=10_000,
                help="most submit_sm awaiting their response"),
        Setting("enquire_link_interval", required=False, default=30.0, kind=float, ge=0,
                help="seconds between enquire_link keepalives; 0 disables them"),
        Setting("timeout", required=False, default=10.0, kind=float, gt=0,
                help="seconds to wait for connect, bind and each submit_sm_resp"),
        Setting("reconnect_initial", required=False, default=1.0, kind=float, ge=0,
                help="first pause after a failed connect or bind, seconds; doubles per failure"),
        Setting("reconnect_max", required=False, default=60.0, kind=float, ge=0,
                help="longest reconnect pause, seconds"),
        Setting("receipt_timezone", required=False, default="", kind=str,
                help="timezone of the SMSC's receipt 'done date' (e.g. Asia/Ho_Chi_Minh); "
                     "empty: receipts are dated when they arrive"),
    )

    def __init__(self, name: str, options: Mapping[str, Any], state: StateStore | None = None) -> None:
        super().__init__(name, options, state)
        o = self.options
        self.host = str(o.get("host") or "").strip()
        if not self.host:
            raise self.error(ConfigError, "setting 'host' is required")
        self.port = self._int("port", 2775, 1, 65535)
        self.system_id = self._text("system_id", 15, required=True)
        self.password = self._text("password", 8, required=True)
        self.system_type = self._text("system_type", 12)
        self.service_type = self._text("service_type", 5)
        self.source_addr_ton = self._int("source_addr_ton", 5, 0, 6)
        self.source_addr_npi = self._int("source_addr_npi", 0, 0, 18)
        self.dest_addr_ton = self._int("dest_addr_ton", 1, 0, 6)
        self.dest_addr_npi = self._int("dest_addr_npi", 1, 0, 18)
        self.source_addr = self._text("source_addr", 11 if self.source_addr_ton == 5 else 20,
                                      required=True)
        self.window = self._int("window", 10, 1, 10_000)
        self.enquire_link_interval = self._float("enquire_link_interval", 30.0, allow_zero=True)
        self.timeout = self._float("timeout", 10.0)
        self.reconnect_initial = self._float("reconnect_initial", 1.0, allow_zero=True)
        self.reconnect_max = max(self._float("reconnect_max", 60.0, allow_zero=True),
                                 self.reconnect_initial)
        self.receipt_tz: tzinfo | None = None
        tz_name = str(o.get("receipt_timezone") or "").strip()
        if tz_name:
            try:
                self.receipt_tz = ZoneInfo(tz_name)
            except (ZoneInfoNotFoundError, ValueError):
                raise self.error(ConfigError, f"setting 'receipt_timezone': unknown timezone {tz_name!r}") from None

        self._session: _Session | None = None
        self._conn_lock = threading.Lock()
        self._window = threading.BoundedSemaphore(self.window)
        self._failures = 0
        self._next_attempt = 0.0
        self._last_error: ProviderError | None = None
        self._refs = itertools.count(int(time.time()) & 0xFF)
        self._ref_lock = threading.Lock()
        self._track_lock = threading.Lock()
        self._tracked: collections.OrderedDict[str, tuple[_Track, int]] = collections.OrderedDict()
        self._receipts: collections.deque[DeliveryReceipt] = collections.deque()
        self._inbound: collections.deque[InboundMessage] = collections.deque()
        self._partial: dict[tuple[str, str, int, int], _Partial] = {}
        self._inbound_lock = threading.Lock()

    # -- option parsing ----------------------------------------------------------
    def _text(self, name: str, limit: int, required: bool = False) -> str:
        value = self.options.get(name)
        text = "" if value is None else str(value)
        if required and not text:
            raise self.error(ConfigError, f"setting {name!r} is required")
        if len(text) > limit:
            raise self.error(ConfigError, f"setting {name!r} is longer than the {limit} characters "
                                          f"SMPP 3.4 allows here")
        try:
            text.encode("ascii")
        except UnicodeEncodeError:
            raise self.error(ConfigError, f"setting {name!r} must be ASCII") from None
        return text

    def _int(self, name: str, default: int, low: int, high: int) -> int:
        value = self.options.get(name, default)
        try:
            number = int(value if value not in (None, "") else default)
        except (TypeError, ValueError):
            raise self.error(ConfigError, f"setting {name!r} must be an integer, got {value!r}") from None
        if not low <= number <= high:
            raise self.error(ConfigError, f"setting {name!r} must be between {low} and {high}")
        return number

    def _float(self, name: str, default: float, allow_zero: bool = False) -> float:
        value = self.options.get(name, default)
        try:
            number = float(value if value not in (None, "") else default)
        except (TypeError, ValueError):
            raise self.error(ConfigError, f"setting {name!r} must be a number, got {value!r}") from None
        if number < 0 or (number == 0 and not allow_zero):
            raise self.error(ConfigError, f"setting {name!r} must be positive")
        return number

    # -- status mapping ----------------------------------------------------------
    def submit_error(self, status: int) -> ProviderError:
        detail = f"submit_sm refused: {status_text(status)}"
        code = status_code(status)
        if status in THROTTLING:
            return self.error(ThrottledError, detail, code=code)
        if status in TRANSIENT or status == ESME_RINVBNDSTS:
            return self.error(RetryableError, detail, code=code)
        if status in AUTH:
            return self.error(AuthError, detail, code=code)
        if status in CONFIG:
            return self.error(ConfigError, detail, code=code)
        return self.error(PermanentError, detail, code=code)

    def bind_error(self, status: int) -> ProviderError:
        detail = f"bind_transceiver as {self.system_id} refused: {status_text(status)}"
        code = status_code(status)
        if status in THROTTLING:
            return self.error(ThrottledError, detail, code=code)
        if status in TRANSIENT:
            return self.error(RetryableError, detail, code=code)
        if status in CONFIG:
            return self.error(ConfigError, detail, code=code)
        return self.error(AuthError, detail, code=code)

    # -- connection --------------------------------------------------------------
    @property
    def bound(self) -> bool:
        s = self._session
        return s is not None and not s.closed.is_set()

    def _open(self) -> _Session:
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise self.error(RetryableError, f"cannot connect to SMSC at {where}: {exc}") from exc
        sock.settimeout(self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        session = _Session(self, sock)
        try:
            session.bind(self.timeout)
        except ProviderError:
            session.shutdown("bind refused")
            raise
        except (OSError, ProtocolError, _NotWritten) as exc:
            session.shutdown("bind failed")
            text = "no bind_transceiver_resp" if isinstance(exc, TimeoutError) else str(exc)
            raise self.error(RetryableError, f"bind to {where} failed: {text}") from exc
        session.start()
        log.info("gateway %s: bound as %s to %s", self.name, self.system_id, where)
        return session

    def _connected(self) -> _Session:
        """The live bind, opening one if needed (with back-off after failures)."""
        with self._conn_lock:
            s = self._session
            if s is not None and not s.closed.is_set():
                return s
            if s is not None:
                s.join(0.5)
                self._session = None
            wait = self._next_attempt - time.monotonic()
            if wait > 0 and self._last_error is not None:
                last = self._last_error
                raise self.error(type(last), f"{last.message}; next bind attempt in {wait:.1f} s",
                                 code=last.code, retry_after=wait)
            try:
                s = self._open()
            except ProviderError as exc:
                self._failures += 1
                delay = min(self.reconnect_initial * 2 ** (self._failures - 1), self.reconnect_max)
                self._next_attempt = time.monotonic() + delay
                self._last_error = exc
                if exc.retry_after is None:
                    exc.retry_after = delay
                raise
            self._failures = 0
            self._next_attempt = 0.0
            self._last_error = None
            self._session = s
            return s

    # -- sending -------------------------------------------------------------------
    def send(self, message: OutgoingMessage) -> SendResult:
        destination = self._destination(message.to)
        with self._ref_lock:
            reference = next(self._refs) & 0xFF
        try:
            encoding, parts = encode_parts(message.text, message.encoding, reference)
        except ValueError as exc:
            raise self.error(PermanentError, f"cannot encode the message: {exc}") from exc
        coding = DATA_CODING[encoding]
        esm_class = UDHI if len(parts) > 1 else 0
        track = _Track(key=message.key, total=len(parts))
        ids: list[str] = []
        try:
            for index, short_message in enumerate(parts):
                try:
                    ids.append(self._submit(destination, coding, esm_class, short_message,
                                            track, index))
                except ProviderError as exc:
                    if index == 0:
                        raise
                    raise self.error(
                        RetryableError,
                        f"partly sent: {index} of {len(parts)} parts accepted "
                        f"({', '.join(ids)}); part {index + 1}: {exc.message}",
                        code=exc.code, ambiguous=True) from exc
        except BaseException:
            self._finish(track, succeeded=False)
            raise
        provider_id = ids[0] or f"smpp:{message.key}"
        track.provider_id = provider_id
        self._finish(track, succeeded=True)
        return SendResult(provider_id=provider_id, status="sent", parts=len(parts),
                          raw={"message_ids": ids, "encoding": encoding, "data_coding": coding,
                               "encoding_fallback": encoding != message.encoding})

    def _destination(self, to: str) -> str:
        digits = to.strip().replace(" ", "")
        if digits.startswith("+"):
            digits = digits[1:]
        if not digits.isdigit() or not 3 <= len(digits) <= 20:
            raise self.error(PermanentError, f"not a phone number: {_mask(to)!r}")
        return digits

    def _submit(self, destination: str, coding: int, esm_class: int, short_message: bytes,
                track: _Track, index: int) -> str:
        """Submit one part and return its message_id.

        A PDU that never reached the wire is re-sent on a fresh bind.  For
        parts after the first, transient refusals are retried within the
        timeout budget so the handset receives the whole message.
        """
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        not_written = 0
        while True:
            session = self._connected()
            pdu = session.make(
                "submit_sm", service_type=self.service_type,
                source_addr_ton=self.source_addr_ton, source_addr_npi=self.source_addr_npi,
                source_addr=self.source_addr, dest_addr_ton=self.dest_addr_ton,
                dest_addr_npi=self.dest_addr_npi, destination_addr=destination,
                esm_class=esm_class, protocol_id=0, priority_flag=0, registered_delivery=1,
                data_coding=coding, short_message=short_message,
            )
            remaining = max(deadline - time.monotonic(), 0.0)
            if not self._window.acquire(timeout=remaining):
                raise self.error(RetryableError, f"window of {self.window} outstanding submits "
                                                 f"still full after {self.timeout:g} s")
            try:
                waiter = _Waiter(track, index)
                try:
                    session.request(pdu, waiter)
                except _NotWritten as exc:
                    not_written += 1
                    if not_written >= 3 or time.monotonic() >= deadline:
                        raise self.error(RetryableError, f"submit_sm not sent: {exc}") from None
                    continue
                if not waiter.event.wait(self.timeout):
                    session.abandon(waiter)
                    raise self.error(RetryableError,
                                     f"no submit_sm_resp within {self.timeout:g} s; "
                                     "the SMSC may have accepted the message", ambiguous=True)
            finally:
                self._window.release()
            if waiter.pdu is None:
                raise self.error(RetryableError, f"connection lost after submit_sm was written "
                                                 f"({waiter.lost}); the SMSC may have accepted it",
                                 ambiguous=True)
            status = waiter.pdu.status
            if status == ESME_ROK:
                return _message_id(waiter.pdu) or f"smpp:{track.key}:{index + 1}"
            error = self.submit_error(status)
            retry = (index > 0 and type(error) in (ThrottledError, RetryableError)
                     and time.monotonic() + pause < deadline)
            if not retry:
                raise error
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    # -- receipts --------------------------------------------------------------------
    def track_part(self, message_id: str, track: _Track, index: int) -> None:
        """Called by the reader for every accepted part, before later PDUs are read."""
        if not message_id:
            return
        with self._track_lock:
            if index == 0 and track.provider_id is None:
                track.provider_id = message_id
            self._tracked[message_id.strip().lower()] = (track, index)
            while len(self._tracked) > TRACKED_PARTS:
                self._tracked.popitem(last=False)

    def _lookup(self, message_id: str) -> tuple[_Track, int] | None:
        for form in _id_forms(message_id):
            hit = self._tracked.get(form)
            if hit is not None:
                return hit
        return None

    def on_receipt(self, receipt: ParsedReceipt) -> None:
        status = receipt.status
        if status is None:
            return
        at = self._receipt_time(receipt.done)
        failed = status == "undelivered"
        code = receipt.stat if failed else None
        text = None
        if failed:
            bits = [f"stat:{receipt.stat}"]
            if receipt.err:
                bits.append(f"err:{receipt.err}")
            if receipt.network_error:
                bits.append(f"network_error_code:{receipt.network_error}")
            text = "SMSC receipt " + " ".join(bits)
        with self._track_lock:
            hit = self._lookup(receipt.message_id)
            if hit is None:
                self._receipts.append(DeliveryReceipt(status=status, provider_id=receipt.message_id,
                                                      at=at, error_code=code, error_text=text))
                return
            track, index = hit
            if track.reported or track.verdict is not None:
                return
            if not failed and index != 0:
                return                # delivered is the first part's word
            track.verdict = DeliveryReceipt(status=status, at=at, error_code=code, error_text=text)
            if track.finished:
                self._report(track)

    def _finish(self, track: _Track, *, succeeded: bool) -> None:
        with self._track_lock:
            track.finished = True
            track.succeeded = succeeded
            if track.verdict is not None:
                self._report(track)

    def _report(self, track: _Track) -> None:
        # Caller holds _track_lock.  A message whose send raised has no id in
        # the ledger: report it by key so its "unknown" row can learn its fate.
        assert track.verdict is not None
        self._receipts.append(dataclasses.replace(
            track.verdict, key=track.key,
            provider_id=track.provider_id if track.succeeded else None))
        track.reported = True

    def _receipt_time(self, done: str | None) -> datetime:
        if self.receipt_tz is not None and done and done.isdigit() and len(done) in (10, 12):
            try:
                fmt = "%y%m%d%H%M%S" if len(done) == 12 else "%y%m%d%H%M"
                local = datetime.strptime(done, fmt).replace(tzinfo=self.receipt_tz)
                return local.astimezone(UTC)
            except ValueError:
                pass
        return datetime.now(UTC)

    def fetch_receipts(self) -> list[DeliveryReceipt]:
        return _drain(self._receipts)

    # -- inbound SMS -----------------------------------------------------------------
    def on_inbound(self, deliver: DeliverSM) -> None:
        """Called by the reader for a subscriber's SMS; queued whole for fetch_inbound."""
        data, segment = _user_data(deliver)
        if segment is None:
            self._queue_inbound(deliver, data)
            return
        key = (deliver.source, deliver.destination, segment.reference, segment.total)
        with self._inbound_lock:
            waiting = self._partial.setdefault(key, _Partial(time.monotonic(), deliver))
            waiting.parts[segment.number] = data
            if not waiting.complete(segment.total):
                return
            del self._partial[key]
        self._queue_inbound(deliver, waiting.octets())

    def _queue_inbound(self, deliver: DeliverSM, data: bytes) -> None:
        text = decode_text(deliver.data_coding, data)
        at = datetime.now(UTC)
        self._inbound.append(InboundMessage(phone=_sender(deliver), text=text, at=at,
                                            provider_id=_mo_id(deliver, text, at)))
        log.info("gateway %s: inbound SMS from %s", self.name, _mask(deliver.source))

    def _flush_partial(self) -> None:
        """Hand over messages whose parts stopped coming, if their first part came: the
        first words decide an opt-out, and a refusal must not wait for a lost part."""
        limit = time.monotonic() - PARTS_WAIT
        with self._inbound_lock:
            stale = [self._partial.pop(k) for k, w in list(self._partial.items()) if w.since < limit]
        for waiting in stale:
            if 1 in waiting.parts:
                self._queue_inbound(waiting.deliver, waiting.octets())
            else:
                log.warning("gateway %s: inbound SMS from %s dropped: its first part never came",
                            self.name, _mask(waiting.deliver.source))

    def fetch_inbound(self) -> list[InboundMessage]:
        self._flush_partial()
        return _drain(self._inbound)

    def requeue_inbound(self, messages: Sequence[InboundMessage]) -> None:
        # ahead of what the reader queued meanwhile: a refusal keeps its place in line
        self._inbound.extendleft(reversed(messages))

    # -- check and close --------------------------------------------------------------
    def check(self) -> str:
        session = self._open()
        try:
            session.unbind(min(self.timeout, 5.0))
        finally:
            session.shutdown("check done")
            session.join()
        return f"bound as {self.system_id} to {self.host}:{self.port}"

    def close(self) -> None:
        with self._conn_lock:
            session, self._session = self._session, None
        if session is not None:
            session.unbind(min(self.timeout, 5.0))
            session.join()
