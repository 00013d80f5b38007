#!/usr/bin/env python3
"""Raw-frame HTTP/2 abuse client for turnpike (catalogue section D).

Each attack runs on its own cleartext HTTP/2 connection (h2c, prior knowledge) built
from hand-made frames, while a "victim" client on a separate connection keeps sending
ordinary `GET /api/victim` requests through the `h2` library. One JSON line per attack
is printed on stdout; the exit code is 0 only if every attack met its expectation.

    python3 tests/h2/abuse.py --target 127.0.0.1:PORT [--attack NAME ...] [--pid PID]

Needs `pip install h2==4.*` (h2 brings hpack). Every socket operation has a timeout,
every attack is bounded in count and time, and a watchdog stops any attack that
outlives ATTACK_HARD_LIMIT. See README.md beside this file.
"""

import argparse
import json
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter, namedtuple

import h2
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack

# --- HTTP/2 constants (RFC 9113) ------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
FRAME_NAMES = {
    DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
    SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
    WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION",
}

FLAG_END_STREAM = 0x1  # DATA, HEADERS
FLAG_ACK = 0x1  # SETTINGS, PING
FLAG_END_HEADERS = 0x4  # HEADERS, CONTINUATION
FLAG_PADDED = 0x8  # DATA, HEADERS
FLAG_PRIORITY = 0x20  # HEADERS

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
SETTINGS_NAMES = {
    SETTINGS_HEADER_TABLE_SIZE: "HEADER_TABLE_SIZE",
    SETTINGS_ENABLE_PUSH: "ENABLE_PUSH",
    SETTINGS_MAX_CONCURRENT_STREAMS: "MAX_CONCURRENT_STREAMS",
    SETTINGS_INITIAL_WINDOW_SIZE: "INITIAL_WINDOW_SIZE",
    SETTINGS_MAX_FRAME_SIZE: "MAX_FRAME_SIZE",
    SETTINGS_MAX_HEADER_LIST_SIZE: "MAX_HEADER_LIST_SIZE",
}

NO_ERROR, PROTOCOL_ERROR, CANCEL, REFUSED_STREAM = 0x0, 0x1, 0x8, 0x7
ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

DEFAULT_MAX_FRAME_SIZE = 16384  # SETTINGS_MAX_FRAME_SIZE until the peer says otherwise
HPACK_STATIC_ENTRIES = 61  # the first dynamic-table entry is index 62

# --- Run limits -----------------------------------------------------------------------

IO_TIMEOUT = 2.0  # every blocking socket call
ATTACK_HARD_LIMIT = 10.0  # watchdog per attack (seconds)
RUN_BUDGET = 58.0  # whole run; attacks that would not fit are reported as skipped
VICTIM_INTERVAL = 0.01  # pause between two victim requests
VICTIM_TIMEOUT = 2.0  # a victim request slower than this is a failure
VICTIM_WARMUP = 3.0  # the victim must succeed once within this before the attack starts
VICTIM_TAIL = 0.3  # the victim keeps going this long after the attack
VICTIM_REQUESTS_PER_CONN = 500  # below the gateway's per-connection request cap (1000)
RSS_GROWTH_LIMIT_KB = 10 * 1024  # --pid: allowed VmRSS growth for the floods

# hpack_bomb: one dynamic-table entry; name + value + 32 (its RFC 7541 §4.1 size, which
# is also what it adds to the header list size) must fit the default 4096-byte table.
BOMB_NAME = "x-bomb"
BOMB_VALUE_LEN = 4000
BOMB_ENTRY_SIZE = len(BOMB_NAME) + BOMB_VALUE_LEN + 32

VICTIM_PATH = "/api/victim"
ATTACK_PATH = "/api/x"
AUTHORITY = "t"


# --- Frame and HPACK building ---------------------------------------------------------


def frame(ftype, flags, stream_id, payload=b""):
    """One frame: 9-byte header (length:24, type:8, flags:8, R:1 + stream:31), then payload."""
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream_id & 0x7FFFFFFF)
    return header + payload


def settings_frame(settings=(), ack=False):
    payload = b"".join(struct.pack(">HI", ident, value) for ident, value in settings)
    return frame(SETTINGS, FLAG_ACK if ack else 0, 0, payload)


def rst_frame(stream_id, code):
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def window_update_frame(stream_id, increment):
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def ping_frame(counter, ack=False):
    return frame(PING, FLAG_ACK if ack else 0, 0, struct.pack(">Q", counter))


def header_block_frames(stream_id, block, end_stream, max_frame=DEFAULT_MAX_FRAME_SIZE):
    """A complete header block as HEADERS (+ CONTINUATION) frames, END_HEADERS on the last."""
    chunks = [block[i : i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        flags = FLAG_END_HEADERS if i == len(chunks) - 1 else 0
        if i == 0:
            out.append(frame(HEADERS, flags | (FLAG_END_STREAM if end_stream else 0), stream_id, chunk))
        else:
            out.append(frame(CONTINUATION, flags, stream_id, chunk))
    return b"".join(out)


def hpack_int(value, prefix_bits, first_byte=0):
    """HPACK integer (RFC 7541 §5.1) with an N-bit prefix; `first_byte` holds the high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = bytearray([first_byte | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(data):
    """HPACK string literal without Huffman coding."""
    data = data.encode() if isinstance(data, str) else data
    return hpack_int(len(data), 7) + data


def hpack_indexed(index):
    """Indexed header field (RFC 7541 §6.1)."""
    return hpack_int(index, 7, 0x80)


def hpack_literal(name, value, incremental=False):
    """Literal header field with a literal name, with or without incremental indexing."""
    return (b"\x40" if incremental else b"\x00") + hpack_str(name) + hpack_str(value)


def hpack_literal_indexed_name(name_index, value):
    """Literal header field without indexing, name taken from the static table."""
    return hpack_int(name_index, 4, 0x00) + hpack_str(value)


def request_headers(method="GET", path=ATTACK_PATH, authority=AUTHORITY, extra=()):
    return [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path), *extra]


def error_name(code):
    return None if code is None else ERROR_NAMES.get(code, f"0x{code:x}")


# --- A raw HTTP/2 client connection ---------------------------------------------------


class NoHandshake(Exception):
    """The server did not answer the connection preface with SETTINGS."""


class RawConn:
    """A cleartext HTTP/2 client connection that writes hand-built frames.

    It parses every frame the server sends and keeps what the attacks judge by: the
    server's SETTINGS, per-stream :status and RST_STREAM codes, GOAWAY and how the TCP
    connection ended. It answers the server's SETTINGS and PINGs (when it reads at all).
    Nothing here validates what is sent: that is the point.
    """

    def __init__(self, host, port, timeout=IO_TIMEOUT, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:  # set before connect, so the advertised TCP window is small too
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            self.sock.close()
            raise
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 24  # the server's answers are not under test
        self.inbuf = bytearray()
        self.pending_block = None  # (stream id, bytearray) while a header block is split
        self.tcp_closed = None  # None while readable, else how reading ended ("eof", "reset", ...)
        self.send_error = None  # why writing failed (the server closed: EPIPE, ECONNRESET)
        self.stalled = False  # a send timed out: the server stopped reading
        self.goaways = []  # (error code, last stream id, debug data)
        self.server_settings = None  # first non-ACK SETTINGS from the server, as a dict
        self.settings_acked = 0  # SETTINGS ACKs the server sent for ours
        self.statuses = {}  # stream id -> :status
        self.resets = {}  # stream id -> RST_STREAM error code
        self.received = Counter()  # frame type name -> count
        self.http1_reply = None  # first line, if the server answered in HTTP/1.x
        self.decode_error = None  # if the server's HPACK could not be decoded

    # -- lifecycle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def open(self, settings=((SETTINGS_ENABLE_PUSH, 0),), window=1 << 24):
        """Sends the preface, our SETTINGS and a connection WINDOW_UPDATE."""
        data = PREFACE + settings_frame(settings)
        if window:
            data += window_update_frame(0, window)
        return self.send(data) == len(data)

    def handshake(self):
        """open(), then waits for the server's SETTINGS: raises NoHandshake without them."""
        self.open()
        if not self.pump(lambda: self.server_settings is not None, IO_TIMEOUT):
            raise NoHandshake(f"no SETTINGS from the server within {IO_TIMEOUT} s ({describe_end(self)})")

    @property
    def goaway(self):
        """The GOAWAY that matters: the first with an error code, else the first one."""
        for g in self.goaways:
            if g[0] != NO_ERROR:
                return g
        return self.goaways[0] if self.goaways else None

    @property
    def goaway_code(self):
        return self.goaway[0] if self.goaway else None

    @property
    def closed_by_server(self):
        """The server sent GOAWAY or closed the TCP connection."""
        return bool(self.goaways) or self.tcp_closed is not None or self.send_error is not None

    @property
    def dead(self):
        """Nothing more can be done on this connection."""
        return self.closed_by_server and (
            self.goaway_code != NO_ERROR or self.tcp_closed is not None or self.send_error is not None)

    # -- writing

    def send(self, data):
        """Writes `data`; returns how many bytes the kernel took. Stops early (and says
        so in `stalled` / `send_error`) when the server stops reading or goes away."""
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                sent += self.sock.send(view[sent:])
            except socket.timeout:
                self.stalled = True
                break
            except OSError as e:
                # Keep reading: a GOAWAY sent before the close may still be in our buffer.
                self.send_error = self.send_error or type(e).__name__
                break
        return sent

    def headers(self, stream_id, headers, end_stream=True):
        """HEADERS (+ CONTINUATION) bytes for `headers`, encoded by this connection's
        HPACK encoder (which keeps its dynamic table in step with the server's)."""
        return header_block_frames(stream_id, self.encoder.encode(headers), end_stream)

    # -- reading

    def _closed(self, how):
        if self.tcp_closed is None:
            self.tcp_closed = how if isinstance(how, str) else type(how).__name__

    def finish(self, timeout=IO_TIMEOUT):
        """After the attack: reads until the server closes (or `timeout`), so that its
        GOAWAY and other last frames are seen even when a write already failed."""
        self.pump(lambda: self.tcp_closed is not None, timeout)

    def poll(self, timeout):
        """Reads what arrives within `timeout` (one recv) and handles the frames in it.
        Returns False once nothing more can be read."""
        if self.tcp_closed is not None:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], max(timeout, 0))
            if not readable:
                return True
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return True
        except OSError as e:
            self._closed("reset" if isinstance(e, ConnectionResetError) else e)
            return False
        if not data:
            self._closed("eof")
            return False
        self.inbuf += data
        self._parse()
        return True

    def pump(self, until=lambda: False, timeout=IO_TIMEOUT):
        """Reads and handles frames until `until()` holds, the connection ends or time is up."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0 or not self.poll(min(left, 0.1)):
                break
        return until()

    def drain_idle(self, idle=0.3, timeout=IO_TIMEOUT):
        """Reads until the server has been quiet for `idle` seconds (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.tcp_closed is None:
            before = len(self.inbuf), sum(self.received.values())
            if not self.poll(idle):
                break
            if (len(self.inbuf), sum(self.received.values())) == before:
                break

    def _parse(self):
        if self.http1_reply is None and not self.received and self.inbuf.startswith(b"HTTP/1."):
            self.http1_reply = bytes(self.inbuf.split(b"\r\n", 1)[0]).decode("latin-1")
            return
        if self.http1_reply is not None:
            return
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[0:3], "big")
            if len(self.inbuf) < 9 + length:
                return
            ftype, flags, stream_id = struct.unpack(">BBI", self.inbuf[3:9])
            stream_id &= 0x7FFFFFFF
            payload = bytes(self.inbuf[9 : 9 + length])
            del self.inbuf[: 9 + length]
            self._handle(ftype, flags, stream_id, payload)

    def _handle(self, ftype, flags, stream_id, payload):
        self.received[FRAME_NAMES.get(ftype, f"type-{ftype}")] += 1
        if ftype == SETTINGS:
            if flags & FLAG_ACK:
                self.settings_acked += 1
            else:
                pairs = [struct.unpack(">HI", payload[i : i + 6]) for i in range(0, len(payload) - 5, 6)]
                if self.server_settings is None:
                    self.server_settings = {SETTINGS_NAMES.get(k, str(k)): v for k, v in pairs}
                self.send(settings_frame(ack=True))
        elif ftype == PING:
            if not flags & FLAG_ACK:
                self.send(frame(PING, FLAG_ACK, 0, payload))
        elif ftype == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaways.append((code, last & 0x7FFFFFFF, payload[8:200].decode("latin-1")))
        elif ftype == RST_STREAM:
            self.resets.setdefault(stream_id, struct.unpack(">I", payload[:4])[0])
        elif ftype == HEADERS:
            start, end = 0, len(payload)
            if flags & FLAG_PADDED:
                start, end = 1, len(payload) - payload[0]
            if flags & FLAG_PRIORITY:
                start += 5
            self.pending_block = (stream_id, bytearray(payload[start:end]))
            if flags & FLAG_END_HEADERS:
                self._header_block_done()
        elif ftype == CONTINUATION and self.pending_block:
            self.pending_block[1].extend(payload)
            if flags & FLAG_END_HEADERS:
                self._header_block_done()

    def _header_block_done(self):
        stream_id, block = self.pending_block
        self.pending_block = None
        try:
            fields = self.decoder.decode(bytes(block), raw=True)
        except Exception as e:  # noqa: BLE001 - any HPACK failure just gets recorded
            self.decode_error = f"{type(e).__name__}: {e}"
            return
        for name, value in fields:
            if name == b":status" and stream_id not in self.statuses:
                self.statuses[stream_id] = int(value)

    # -- per-stream outcome

    def outcome(self, stream_id):
        """What happened to `stream_id` so far, or None while nothing did."""
        if stream_id in self.statuses or stream_id in self.resets:
            out = {}
            if stream_id in self.statuses:
                out["status"] = self.statuses[stream_id]
            if stream_id in self.resets:
                out["reset"] = error_name(self.resets[stream_id])
            return out
        if self.http1_reply is not None:
            return {"http1_reply": self.http1_reply}
        g = self.goaway
        if g and (g[1] < stream_id or self.dead):
            return {"goaway": error_name(g[0]), "tcp_closed": self.tcp_closed or self.send_error}
        if self.tcp_closed is not None or self.send_error is not None:
            return {"tcp_closed": self.tcp_closed or self.send_error}
        return None

    def wait_outcome(self, stream_id, timeout=IO_TIMEOUT, linger=0.15):
        """Waits for the stream's first outcome, then briefly for more (a response is often
        followed by RST_STREAM). Returns {"timeout": True} when nothing happened."""
        if not self.pump(lambda: self.outcome(stream_id) is not None, timeout):
            return {"timeout": True}
        self.pump(lambda: stream_id in self.resets and stream_id in self.statuses, linger)
        return self.outcome(stream_id)


def outcome_refuses(out):
    """True if a request was refused: reset, 4xx, or connection error. Never 2xx/3xx/5xx."""
    if out.get("timeout"):
        return False
    if "status" in out:
        return 400 <= out["status"] < 500
    return True


# --- The victim -----------------------------------------------------------------------


class VictimError(Exception):
    """A victim request failed."""


class VictimGoaway(Exception):
    """The server closed the victim's connection gracefully (GOAWAY NO_ERROR): not a
    failure, but counted and reported, since a well-behaved client should not see it."""


class Victim(threading.Thread):
    """Sends `GET /api/victim` through the h2 library on its own connection, one request
    after another, until stopped; counts successes (200) and failures, with latencies.
    A failed connection is replaced by a new one, and so is one that served
    VICTIM_REQUESTS_PER_CONN requests."""

    def __init__(self, host, port):
        super().__init__(daemon=True, name="victim")
        self.host, self.port = host, port
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.latencies = []  # seconds, successful requests
        self.failures = Counter()  # reason -> count
        self.goaways = 0  # graceful GOAWAYs on the victim's connections
        self.connections = 0

    def snapshot(self):
        with self.lock:
            return self.ok, self.failed, len(self.latencies), self.failures.copy(), self.goaways

    def run(self):
        conn = None
        served = 0  # requests on the current connection
        while not self.stop_event.is_set():
            started = time.monotonic()
            reason = None
            try:
                if conn is None:
                    conn, served = self._connect(), 0
                status = self._request(*conn)
                served += 1
                reason = None if status == 200 else f"status {status}"
            except VictimGoaway:
                with self.lock:
                    self.goaways += 1
                conn[0].close()
                conn = None
                continue  # the request is neither a success nor a failure: send another
            except (OSError, VictimError, h2.exceptions.H2Error) as e:
                reason = f"{type(e).__name__}: {e}"
                if conn:
                    conn[0].close()
                conn = None
            with self.lock:
                if reason is None:
                    self.ok += 1
                    self.latencies.append(time.monotonic() - started)
                else:
                    self.failed += 1
                    self.failures[reason] += 1
            if conn and served >= VICTIM_REQUESTS_PER_CONN:
                conn[0].close()
                conn = None
            self.stop_event.wait(VICTIM_INTERVAL)
        if conn:
            conn[0].close()

    def _connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=VICTIM_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        h2conn.initiate_connection()
        sock.sendall(h2conn.data_to_send())
        with self.lock:
            self.connections += 1
        return sock, h2conn

    def _request(self, sock, h2conn):
        stream_id = h2conn.get_next_available_stream_id()
        h2conn.send_headers(stream_id, request_headers(path=VICTIM_PATH), end_stream=True)
        sock.sendall(h2conn.data_to_send())
        deadline = time.monotonic() + VICTIM_TIMEOUT
        status = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VictimError("timeout")
            sock.settimeout(left)
            try:
                data = sock.recv(1 << 16)
            except socket.timeout:
                raise VictimError("timeout") from None
            if not data:
                raise VictimError("connection closed by server")
            for ev in h2conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == stream_id:
                    status = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    h2conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == stream_id:
                    raise VictimError(f"stream reset {error_name(int(ev.error_code))}")
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    # h2 treats the connection as closed from here on, even for a graceful
                    # GOAWAY whose last stream id covers this request.
                    if int(ev.error_code) == NO_ERROR:
                        raise VictimGoaway()
                    raise VictimError(f"GOAWAY {error_name(int(ev.error_code))}")
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == stream_id:
                    sock.sendall(h2conn.data_to_send())
                    return status
            sock.sendall(h2conn.data_to_send())


# --- Gateway memory (--pid) -----------------------------------------------------------


def read_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples the gateway's VmRSS every 50 ms, to report before / peak / after."""

    def __init__(self, pid):
        super().__init__(daemon=True, name="rss")
        self.pid = pid
        self.stop_event = threading.Event()
        self.before = read_rss_kb(pid)
        self.peak = self.before

    def run(self):
        while not self.stop_event.wait(0.05):
            rss = read_rss_kb(self.pid)
            if rss is not None and (self.peak is None or rss > self.peak):
                self.peak = rss

    def finish(self):
        self.stop_event.set()
        self.join(1)
        after = read_rss_kb(self.pid)
        return {"rss_before_kb": self.before, "rss_peak_kb": self.peak, "rss_after_kb": after}


# --- Attacks --------------------------------------------------------------------------
# Each takes (host, port, opts: Options) and returns a dict with at least "ok" (the
# attack's own part of the expectation; run_attack adds the victim's part), "detail",
# "closed_by_server" (GOAWAY received or TCP closed by the server) and "goaway_error".


def conn_fields(conn):
    return {
        "closed_by_server": conn.closed_by_server,
        "goaway_error": conn.goaway_code,
        "goaway_error_name": error_name(conn.goaway_code),
        "tcp_closed": conn.tcp_closed,
        "send_error": conn.send_error,
    }


def describe_end(conn):
    parts = [f"GOAWAY {error_name(code)} last_stream_id={last}" + (f" debug={debug!r}" if debug else "")
             for code, last, debug in conn.goaways[:3]]
    if conn.tcp_closed:
        parts.append(f"TCP closed ({conn.tcp_closed})")
    if conn.send_error:
        parts.append(f"write failed ({conn.send_error})")
    if conn.decode_error:
        parts.append(f"could not decode the server's HPACK ({conn.decode_error})")
    return ", ".join(parts) or "connection left open"


def rapid_reset_connection(host, port, batch, pause, max_streams, budget):
    """One connection of HEADERS (GET, END_STREAM) + RST_STREAM(CANCEL) pairs, `batch`
    pairs per write with `pause` seconds of reading between writes, until the server
    reacts, `max_streams` or `budget` seconds. Returns the phase's record."""
    with RawConn(host, port) as conn:
        conn.handshake()
        deadline = time.monotonic() + budget
        sent = 0
        while sent < max_streams and not conn.closed_by_server and time.monotonic() < deadline:
            data = b""
            for k in range(batch):
                stream_id = 2 * (sent + k) + 1
                data += conn.headers(stream_id, request_headers()) + rst_frame(stream_id, CANCEL)
            if conn.send(data) < len(data):
                break
            sent += batch
            conn.poll(pause)
        conn.finish(1.0)  # read the server's reaction through to the close
        # The last GOAWAY's last stream id says how many streams the server took in.
        processed = (min(g[1] for g in conn.goaways) + 1) // 2 if conn.goaways else None
        debug = conn.goaway[2] if conn.goaway else ""
        if conn.goaway_code not in (None, NO_ERROR):
            reaction = f"GOAWAY {error_name(conn.goaway_code)} {debug!r}".strip()
        elif conn.goaways:
            reaction = "graceful GOAWAY NO_ERROR (the gateway's per-connection request cap?)"
        elif conn.closed_by_server:
            reaction = "TCP close without GOAWAY (the gateway's reset guard?)"
        else:
            reaction = "none"
        return {
            "closed": conn.closed_by_server and sent < max_streams,
            "streams_written": sent,
            "streams_taken_in": processed,
            "reaction": reaction,
            "end": describe_end(conn),
            "responses": len(conn.statuses),
            **conn_fields(conn),
        }


def attack_rapid_reset(host, port, opts, max_streams=5000):
    """CVE-2023-44487, two connections. Burst: 10 HEADERS+RST_STREAM(CANCEL) pairs per
    write, back to back, so reset streams pile up before the gateway accepts them. Paced:
    one pair per write, then 1 ms of reading, so the gateway accepts each reset stream
    before the next arrives. Each must end its connection before 5000 streams."""
    burst = rapid_reset_connection(host, port, batch=10, pause=0, max_streams=max_streams, budget=3.0)
    paced = rapid_reset_connection(host, port, batch=1, pause=0.001, max_streams=max_streams, budget=3.0)

    def summary(p):
        taken = f", {p['streams_taken_in']} taken in by the server" if p["streams_taken_in"] is not None else ""
        return (f"{p['streams_written']} streams written{taken}; reaction: {p['reaction']}; {p['end']}; "
                f"{p['responses']} responses seen")

    def judge(name, p):
        """Why a phase failed, or None. Catalogue D45: closed within 1000 streams, by a
        reset guard: a GOAWAY with an error code (h2's ENHANCE_YOUR_CALM), or a GOAWAY
        NO_ERROR followed by the server closing TCP (turnpike's own guard, which hyper
        lets send only NO_ERROR) before the listener's request cap could be the cause."""
        taken = p["streams_taken_in"] if p["streams_taken_in"] is not None else p["streams_written"]
        if not p["closed"]:
            return f"{name}: the connection survived {max_streams} streams or the time budget"
        if taken > 1000:
            return f"{name}: {taken} streams were taken in before the close (more than 1000)"
        if p["goaway_error"] in (None, NO_ERROR):
            if not p["tcp_closed"] and not p["send_error"]:
                return f"{name}: a graceful GOAWAY without a close"
            if taken >= opts.request_cap:
                return f"{name}: closed at the request cap ({opts.request_cap}), not by a reset guard"
        return None

    bad = [why for why in (judge("burst", burst), judge("paced", paced)) if why]
    return {
        "ok": not bad,
        "detail": f"burst: {summary(burst)} | paced: {summary(paced)}"
        + (f"; FAILED: {'; '.join(bad)}" if bad else ""),
        "streams_sent": burst["streams_written"],
        "phases": {"burst": burst, "paced": paced},
        "closed_by_server": burst["closed_by_server"],
        "goaway_error": burst["goaway_error"],
        "goaway_error_name": burst["goaway_error_name"],
    }


def attack_continuation_flood(host, port, opts, max_bytes=10 * 1024 * 1024, budget=7.0):
    """HEADERS without END_HEADERS, then CONTINUATION frames of 16 KiB of literal header
    fields each (never END_HEADERS), up to ~10 MB, built by hand."""
    with RawConn(host, port) as conn:
        conn.handshake()
        start = conn.encoder.encode(request_headers())
        first = frame(HEADERS, FLAG_END_STREAM, 1, start)  # no END_HEADERS
        sent_bytes = conn.send(first)
        frames = 0
        deadline = time.monotonic() + budget
        while sent_bytes < max_bytes and not conn.closed_by_server and time.monotonic() < deadline:
            # One literal header field (without indexing) filling a 16 KiB frame exactly.
            name = f"x-flood-{frames}"
            fixed = 1 + len(hpack_str(name))
            value_len = DEFAULT_MAX_FRAME_SIZE - fixed - 3  # 3 bytes of HPACK length prefix
            fragment = hpack_literal(name, b"a" * value_len)
            data = frame(CONTINUATION, 0, 1, fragment)
            n = conn.send(data)
            sent_bytes += n
            if n < len(data):
                break
            frames += 1
            conn.poll(0.002)  # pace a little, so the count reflects when the server reacted
        conn.finish()
        closed = conn.closed_by_server and sent_bytes < max_bytes
        return {
            "ok": closed,
            "detail": f"{frames} CONTINUATION frames ({sent_bytes} bytes) written before the server reacted: "
            f"{describe_end(conn)}" + ("" if closed else "; FAILED: the server took the whole flood")
            + (f"; stream 1 outcome {conn.outcome(1)}" if conn.outcome(1) else ""),
            "continuation_frames": frames,
            "bytes_sent": sent_bytes,
            "stalled": conn.stalled,
            **conn_fields(conn),
        }


def attack_too_many_streams(host, port, opts, streams=300, budget=4.0):
    """300 concurrent POST streams (HEADERS without END_STREAM, no content-length), never
    finished. Our SETTINGS_INITIAL_WINDOW_SIZE is 0 so the gateway cannot finish its
    responses either: each stream keeps its slot (otherwise the static route answers at
    once, the stream closes, and whether the limit is reached is a race). Expected: the
    server advertises MAX_CONCURRENT_STREAMS <= 100 and refuses the streams over it."""
    with RawConn(host, port) as conn:
        conn.open(settings=((SETTINGS_ENABLE_PUSH, 0), (SETTINGS_INITIAL_WINDOW_SIZE, 0)), window=0)
        conn.pump(lambda: conn.server_settings is not None and conn.settings_acked > 0, IO_TIMEOUT)
        advertised = (conn.server_settings or {}).get("MAX_CONCURRENT_STREAMS")
        ids = [2 * i + 1 for i in range(streams)]
        data = b"".join(conn.headers(s, request_headers(method="POST"), end_stream=False) for s in ids)
        written = conn.send(data)
        conn.pump(lambda: all(conn.outcome(s) is not None for s in ids), budget)
        codes = Counter(error_name(conn.resets[s]) for s in ids if s in conn.resets)
        statuses = Counter(conn.statuses[s] for s in ids if s in conn.statuses)
        # RFC 9113 §5.1.2: a stream over the limit is a stream error REFUSED_STREAM or
        # PROTOCOL_ERROR; a connection error PROTOCOL_ERROR is allowed too (§5.4.1).
        refusals = (REFUSED_STREAM, PROTOCOL_ERROR)
        refused = sum(1 for s in ids if conn.resets.get(s) in refusals)
        open_streams = sum(1 for s in ids if s not in conn.resets and not conn.dead)
        goaway_protocol = conn.goaway_code == PROTOCOL_ERROR
        limit_ok = advertised is not None and advertised <= 100
        ok = limit_ok and (refused > 0 or goaway_protocol)
        how = ("RST_STREAM " + "/".join(c for c in codes if c in ("REFUSED_STREAM", "PROTOCOL_ERROR"))
               if refused else "") + (" GOAWAY PROTOCOL_ERROR" if goaway_protocol else "")
        first_refused = min((s for s in ids if conn.resets.get(s) in refusals), default=None)
        return {
            "ok": ok,
            "detail": f"server advertises MAX_CONCURRENT_STREAMS={advertised}; wrote {written}/{len(data)} bytes "
            f"of {streams} HEADERS; resets {dict(codes)}, responses {dict(statuses)}, "
            f"{open_streams} streams still open; {describe_end(conn)}"
            + (f"; refused via {how.strip()}" if ok else "; FAILED: no stream beyond the limit was refused"
               if limit_ok else "; FAILED: MAX_CONCURRENT_STREAMS not advertised or > 100"),
            "advertised_max_concurrent_streams": advertised,
            "refused_streams": refused,
            "first_refused_stream_index": None if first_refused is None else (first_refused - 1) // 2,
            "reset_codes": dict(codes),
            "responses": {str(k): v for k, v in statuses.items()},
            "streams_open_at_end": open_streams,
            **conn_fields(conn),
        }


def bomb_block(refs, insert):
    """A request header block, built by hand: GET /api/x, :authority t, then (if `insert`)
    one ~4 KiB literal added to the dynamic table, then `refs` references to it (one
    byte each: the entry is index 62, the first dynamic one, as nothing else is added)."""
    block = hpack_indexed(2) + hpack_indexed(6)  # :method GET, :scheme http
    block += hpack_literal_indexed_name(4, ATTACK_PATH) + hpack_literal_indexed_name(1, AUTHORITY)
    if insert:
        block += hpack_literal(BOMB_NAME, b"A" * BOMB_VALUE_LEN, incremental=True)
    return block + hpack_indexed(HPACK_STATIC_ENTRIES + 1) * refs


def bomb_connection(host, port, refs):
    """One connection: stream 1 inserts the entry and references it `refs` times, stream 3
    (if the connection survives) references it `refs` times more. Returns the outcomes."""
    with RawConn(host, port) as conn:
        conn.handshake()
        streams = {}
        for stream_id, insert in ((1, True), (3, False)):
            if conn.dead:
                streams[str(stream_id)] = {"skipped": "connection already closed"}
                continue
            block = bomb_block(refs, insert)
            conn.send(header_block_frames(stream_id, block, end_stream=True))
            out = conn.wait_outcome(stream_id, timeout=1.5)
            streams[str(stream_id)] = dict(out, encoded_bytes=len(block), decoded_bytes=refs * BOMB_ENTRY_SIZE,
                                           ok=out.get("status") != 200 and not out.get("timeout"))
        conn.finish(0.5)
        return {"refs": refs, "streams": streams, "end": describe_end(conn), **conn_fields(conn),
                "server_max_header_list_size": (conn.server_settings or {}).get("MAX_HEADER_LIST_SIZE")}


def attack_hpack_bomb(host, port, opts, huge_refs=12000):
    """HPACK amplification. Connection 1: one 4000-byte header inserted into the dynamic
    table and referenced 12,000 times (~16 KiB on the wire, ~48 MB decoded), then 12,000
    more references on stream 3. Connection 2: the same with just enough references to
    decode to ~1.5x the server's MAX_HEADER_LIST_SIZE, below h2's 4x abuse cut-off, so the
    polite path (431 / stream reset) is exercised too."""
    huge = bomb_connection(host, port, huge_refs)
    limit = huge["server_max_header_list_size"] or 65536
    modest = bomb_connection(host, port, int(1.5 * limit / BOMB_ENTRY_SIZE) + 1)
    bad = [f"{label} stream {s}" for label, c in (("huge", huge), ("modest", modest))
           for s, o in c["streams"].items() if not o.get("ok", True)]

    def summary(c):
        streams = "; ".join(f"stream {s}: {short_outcome(o)}" for s, o in c["streams"].items())
        return f"{c['refs']} refs ({c['refs'] * BOMB_ENTRY_SIZE / 1e6:.2f} MB decoded): {streams}; {c['end']}"

    return {
        "ok": not bad,
        "detail": f"huge: {summary(huge)} | modest: {summary(modest)}"
        + (f"; FAILED (200 or no answer): {bad}" if bad else ""),
        "connections": {"huge": huge, "modest": modest},
        "closed_by_server": huge["closed_by_server"],
        "goaway_error": huge["goaway_error"],
        "goaway_error_name": huge["goaway_error_name"],
    }


def attack_h2_cl_mismatch(host, port, opts):
    """POST /api/cl with content-length: 5 and 50 bytes of DATA; and content-length: 50
    with 5 bytes then END_STREAM. Each on its own connection, HEADERS and DATA in one
    write. Expected (RFC 9113 §8.1.1): RST_STREAM PROTOCOL_ERROR (or GOAWAY PROTOCOL_ERROR,
    or a 400); never a 200."""
    cases = {}
    first_goaway = None
    closed = False
    for name, declared, body in (("cl5_data50", 5, 50), ("cl50_data5", 50, 5)):
        with RawConn(host, port) as conn:
            conn.handshake()
            hdrs = request_headers(method="POST", path="/api/cl", extra=[("content-length", str(declared))])
            data = conn.headers(1, hdrs, end_stream=False) + frame(DATA, FLAG_END_STREAM, 1, b"x" * body)
            conn.send(data)
            out = conn.wait_outcome(1, linger=0.3)
            refused = out.get("reset") == "PROTOCOL_ERROR" or out.get("goaway") == "PROTOCOL_ERROR"
            cases[name] = dict(out, ok=out.get("status") == 400 or ("status" not in out and refused))
            first_goaway = first_goaway if first_goaway is not None else conn.goaway_code
            closed = closed or conn.closed_by_server
    bad = [n for n, c in cases.items() if not c["ok"]]
    return {
        "ok": not bad,
        "detail": "; ".join(f"{n}: {c}" for n, c in cases.items()) + (f"; FAILED: {bad}" if bad else ""),
        "cases": cases,
        "closed_by_server": closed,
        "goaway_error": first_goaway,
        "goaway_error_name": error_name(first_goaway),
    }


FORBIDDEN_CASES = (
    # (case name, headers replacing / added to GET /api/x)
    ("transfer-encoding", {"extra": [("transfer-encoding", "chunked")]}),
    ("connection", {"extra": [("connection", "keep-alive")]}),
    ("keep-alive", {"extra": [("keep-alive", "5")]}),
    ("upgrade", {"extra": [("upgrade", "websocket")]}),
    ("proxy-connection", {"extra": [("proxy-connection", "x")]}),
    ("te-gzip", {"extra": [("te", "gzip")]}),
    ("uppercase-name", {"extra": [("X-Upper", "1")]}),
    ("value-crlf", {"extra": [("x-inject", "a\r\nx-evil: 1")]}),
    ("value-nul", {"extra": [("x-nul", "a\x00b")]}),
    ("name-colon", {"extra": [("x-a:b", "1")]}),
    ("method-request-line", {"method": "GET /admin HTTP/1.1"}),
    ("path-no-slash", {"path": "hello-world"}),
    ("path-asterisk-get", {"path": "*"}),
    ("path-absolute-uri", {"path": "http://evil/admin"}),
    # Extra: the same two path shapes aimed at /api, where acceptance would show as 200
    # (the cases above would get 404 / 403 from routing even if the gateway let them in).
    ("path-no-slash-api", {"path": "api/x"}),
    ("path-absolute-uri-api", {"path": "http://evil/api/x"}),
)


def attack_forbidden_headers(host, port, opts, budget=8.0):
    """One request per forbidden header / malformed pseudo-header, each on its own
    connection, encoded with hpack.Encoder (no validation) into hand-made HEADERS frames."""
    deadline = time.monotonic() + budget
    cases = {}
    first_goaway = None
    closed = False
    for name, spec in FORBIDDEN_CASES:
        left = deadline - time.monotonic()
        if left <= 0.2:
            cases[name] = {"skipped": "attack budget exhausted", "ok": False}
            continue
        with RawConn(host, port) as conn:
            conn.open()
            hdrs = request_headers(method=spec.get("method", "GET"), path=spec.get("path", ATTACK_PATH),
                                   extra=spec.get("extra", ()))
            conn.send(conn.headers(1, hdrs))
            out = conn.wait_outcome(1, timeout=min(IO_TIMEOUT, left))
            cases[name] = dict(out, ok=outcome_refuses(out))
            if first_goaway is None:
                first_goaway = conn.goaway_code
            closed = closed or conn.closed_by_server
    bad = [n for n, c in cases.items() if not c["ok"]]
    summary = ", ".join(f"{n}={short_outcome(c)}" for n, c in cases.items())
    return {
        "ok": not bad,
        "detail": summary + (f"; FAILED (accepted or no answer): {bad}" if bad else ""),
        "cases": cases,
        "closed_by_server": closed,
        "goaway_error": first_goaway,
        "goaway_error_name": error_name(first_goaway),
    }


def short_outcome(out):
    keys = ("status", "reset", "goaway", "tcp_closed", "http1_reply", "timeout", "skipped")
    return "/".join(f"{k}:{out[k]}" for k in keys if out.get(k) not in (None, False)) or "left open"


def attack_authority_mismatch(host, port, opts):
    """GET /api/x with :authority a.example and host: b.example."""
    with RawConn(host, port) as conn:
        conn.open()
        conn.send(conn.headers(1, request_headers(authority="a.example", extra=[("host", "b.example")])))
        out = conn.wait_outcome(1)
        ok = out.get("status") == 400 or ("status" not in out and not out.get("timeout"))
        return {
            "ok": ok,
            "detail": f"stream 1: {out}" + ("" if ok else "; FAILED: expected 400 (or a reset)"),
            "outcome": out,
            **conn_fields(conn),
        }


def flood(conn, make_frame, total, deadline, chunk_frames=1000, read_between=False):
    """Writes up to `total` frames (`make_frame(i)`, all the same length) in chunks of
    `chunk_frames`, until `deadline` or the server closes; reads between chunks only if
    `read_between`. Returns (whole frames the kernel took, bytes still owed to end the
    last frame cleanly); the caller sends those before any further frame."""
    frame_len = len(make_frame(0))
    queued = 0  # frames handed to `pending` so far
    pending = b""
    taken = 0  # bytes the kernel took
    while time.monotonic() < deadline and not conn.dead:
        if not pending:
            if queued >= total:
                break
            n = min(chunk_frames, total - queued)
            pending = b"".join(make_frame(queued + i) for i in range(n))
            queued += n
        sent = conn.send(pending)
        taken += sent
        pending = pending[sent:]
        if read_between:
            conn.poll(0.001)
    frames, partial = divmod(taken, frame_len)
    return frames, (make_frame(frames)[partial:] if partial else b"")


def control_flood(host, port, make_frame, total, pid, flood_time=3.0):
    """Writes `total` control frames without reading (4 KiB receive buffer) for at most
    `flood_time` seconds, then reads what came back and checks the connection still
    serves a request. Returns the connection and the fields ping_flood /
    settings_flood share."""
    sampler = RssSampler(pid) if pid else None
    if sampler:
        sampler.start()
    with RawConn(host, port, timeout=0.25, rcvbuf=4096) as conn:
        conn.open()
        started = time.monotonic()
        written, owed = flood(conn, make_frame, total, started + flood_time)
        flood_secs = time.monotonic() - started
        backpressure = written < total and not conn.dead
        rss = sampler.finish() if sampler else {}
        conn.sock.settimeout(0.5)  # a server still busy with the flood must not block us long
        conn.drain_idle(idle=0.3, timeout=2.0)  # lets a stalled server write its ACKs
        alive = None
        if not conn.dead and conn.send(owed) == len(owed):
            conn.send(conn.headers(1, request_headers()))
            alive = conn.wait_outcome(1, timeout=1.5)
        return conn, {
            "frames_written": written,
            "flood_seconds": round(flood_secs, 2),
            "backpressure": backpressure,
            "frames_received": dict(conn.received),
            "request_after_flood": alive,
            **rss,
        }


def judge_flood(kind, conn, info, pid):
    growth = None
    ok = True
    if pid:
        if info.get("rss_before_kb") is None or info.get("rss_after_kb") is None:
            ok = False
        else:
            growth = info["rss_after_kb"] - info["rss_before_kb"]
            ok = growth < RSS_GROWTH_LIMIT_KB
    after = info["request_after_flood"] or {}
    if conn.closed_by_server:
        what = f"server closed the connection: {describe_end(conn)}"
    elif "status" in after:
        what = f"server kept going; request after the flood: {after}"
    else:
        what = (f"connection left open, but the request after the flood got {after or 'nothing'} "
                "(the server may still be working through the flood)")
    detail = (f"{info['frames_written']} {kind} frames written in {info['flood_seconds']} s"
              f"{' (server applied back-pressure)' if info['backpressure'] else ''}; "
              f"received {info['frames_received']}; {what}")
    if pid:
        detail += (f"; VmRSS {info.get('rss_before_kb')} -> {info.get('rss_after_kb')} kB "
                   f"(peak {info.get('rss_peak_kb')})" + ("" if ok else "; FAILED: RSS grew >= 10 MB"))
    return {"ok": ok, "detail": detail, "rss_growth_kb": growth, **info, **conn_fields(conn)}


def attack_ping_flood(host, port, opts):
    """100,000 PING frames (--flood-frames), never reading the PING ACKs (small receive
    buffer), for at most ~3 s."""
    conn, info = control_flood(host, port, ping_frame, opts.flood_frames, opts.pid)
    return judge_flood("PING", conn, info, opts.pid)


def attack_settings_flood(host, port, opts):
    """100,000 SETTINGS frames (ENABLE_PUSH=0; --flood-frames), never reading the ACKs,
    for at most ~3 s."""
    frame_bytes = settings_frame(((SETTINGS_ENABLE_PUSH, 0),))
    conn, info = control_flood(host, port, lambda i: frame_bytes, opts.flood_frames, opts.pid)
    return judge_flood("SETTINGS", conn, info, opts.pid)


def attack_empty_data_flood(host, port, opts, count=10_000, budget=5.0):
    """POST /api/x (no END_STREAM), then 10,000 empty DATA frames without END_STREAM,
    written right behind the HEADERS so most of them reach a stream still open."""
    with RawConn(host, port, timeout=0.25) as conn:
        conn.handshake()
        conn.send(conn.headers(1, request_headers(method="POST"), end_stream=False))
        written, owed = flood(conn, lambda i: frame(DATA, 0, 1), count, time.monotonic() + budget,
                              chunk_frames=20, read_between=True)
        conn.sock.settimeout(0.5)  # a server still busy with the flood must not block us long
        conn.drain_idle(idle=0.5, timeout=2.0)
        stream1 = conn.outcome(1)
        after = None
        if not conn.dead and conn.send(owed) == len(owed):
            conn.send(conn.headers(3, request_headers()))
            after = conn.wait_outcome(3, timeout=1.5)
        # Catalogue D49: GOAWAY with an error code (h2 counts empty DATA frames and
        # answers ENHANCE_YOUR_CALM "too_many_data_frames").
        refused = conn.goaway_code not in (None, NO_ERROR)
        return {
            "ok": refused,
            "detail": f"{written} empty DATA frames written; stream 1: {stream1}; {describe_end(conn)}; "
            f"request after the flood: {after}"
            + ("" if refused else "; FAILED: no GOAWAY with an error code"),
            "frames_written": written,
            "frames_received": dict(conn.received),
            "stream_outcome": stream1,
            "request_after_flood": after,
            **conn_fields(conn),
        }


def attack_invalid_preface(host, port, opts):
    """Connection-level errors, each on a fresh connection; each must end it (GOAWAY
    with an error code, or TCP close)."""
    cases = (
        # The preface, then "X" and frames: the first frame header is garbage.
        ("preface-then-garbage", lambda c: c.send(PREFACE + b"X" + settings_frame() + ping_frame(1))),
        # A mangled preface: hyper falls back to HTTP/1.1, which must reject "PRI * HTTP/2.0".
        ("mangled-preface", lambda c: c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + settings_frame())),
        # DATA on idle stream 5: RFC 9113 §5.1, connection error PROTOCOL_ERROR.
        ("data-on-idle-stream-5", lambda c: c.open() and c.send(frame(DATA, 0, 5, b"hello"))),
        # WINDOW_UPDATE on idle stream 7: RFC 9113 §5.1, connection error PROTOCOL_ERROR.
        ("window-update-idle-stream-7", lambda c: c.open() and c.send(window_update_frame(7, 1000))),
        # A 20,000-byte HEADERS frame (> SETTINGS_MAX_FRAME_SIZE 16384): §4.2, a frame
        # carrying a field block that is too large is a connection error FRAME_SIZE_ERROR.
        ("oversized-frame", lambda c: c.open() and c.send(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1,
                                                                 b"\x00" * 20000))),
    )
    results = {}
    first_goaway = None
    for name, act in cases:
        with RawConn(host, port) as conn:
            act(conn)
            conn.finish(1.5)
            closed = bool(conn.dead)
            results[name] = {
                "ok": closed,
                "goaway": error_name(conn.goaway_code),
                "tcp_closed": conn.tcp_closed or conn.send_error,
                **({"http1_reply": conn.http1_reply} if conn.http1_reply else {}),
            }
            if first_goaway is None:
                first_goaway = conn.goaway_code
    bad = [n for n, r in results.items() if not r["ok"]]
    return {
        "ok": not bad,
        "detail": ", ".join(f"{n}={short_outcome(r)}" for n, r in results.items())
        + (f"; FAILED (left open): {bad}" if bad else ""),
        "cases": results,
        "closed_by_server": all(r["ok"] for r in results.values()),
        "goaway_error": first_goaway,
        "goaway_error_name": error_name(first_goaway),
    }


ATTACKS = {
    "rapid_reset": attack_rapid_reset,
    "continuation_flood": attack_continuation_flood,
    "too_many_streams": attack_too_many_streams,
    "hpack_bomb": attack_hpack_bomb,
    "h2_cl_mismatch": attack_h2_cl_mismatch,
    "forbidden_headers": attack_forbidden_headers,
    "authority_mismatch": attack_authority_mismatch,
    "ping_flood": attack_ping_flood,
    "settings_flood": attack_settings_flood,
    "empty_data_flood": attack_empty_data_flood,
    "invalid_preface": attack_invalid_preface,
}

# What the command line passes to every attack: the gateway's PID (or None) and the
# number of frames of the PING / SETTINGS floods.
Options = namedtuple("Options", "pid flood_frames request_cap")


# --- Running --------------------------------------------------------------------------


class AttackTimeout(Exception):
    pass


def _watchdog(signum, frame_):
    raise AttackTimeout(f"attack exceeded the {ATTACK_HARD_LIMIT:.0f} s hard limit")


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)


def run_attack(name, host, port, opts):
    """Runs one attack with a victim beside it; returns the attack's JSON record."""
    victim = Victim(host, port)
    victim.start()
    warm_deadline = time.monotonic() + VICTIM_WARMUP
    while victim.snapshot()[0] == 0 and time.monotonic() < warm_deadline:
        time.sleep(0.01)
    ok0, failed0, lat0, failures0, goaways0 = victim.snapshot()
    started = time.monotonic()
    if ok0 == 0:
        # The gateway does not serve even the victim: an attack would tell nothing.
        result = {"ok": False, "detail": "attack not run", "closed_by_server": None, "goaway_error": None}
    else:
        signal.signal(signal.SIGALRM, _watchdog)
        signal.setitimer(signal.ITIMER_REAL, ATTACK_HARD_LIMIT)
        try:
            result = ATTACKS[name](host, port, opts)
        except Exception as e:  # noqa: BLE001 - the watchdog, a refused connection, or a bug: report it
            result = {"ok": False, "detail": f"attack aborted: {type(e).__name__}: {e}",
                      "closed_by_server": None, "goaway_error": None}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    duration = time.monotonic() - started
    time.sleep(VICTIM_TAIL)
    victim.stop_event.set()
    victim.join(VICTIM_TIMEOUT + 1)
    ok1, failed1, _, failures1, goaways1 = victim.snapshot()
    with victim.lock:
        latencies = victim.latencies[lat0:]
    v_ok, v_failed = ok1 - ok0, failed1 - failed0
    victim_fine = ok0 > 0 and v_ok > 0 and v_failed == 0
    detail = result.pop("detail")
    if ok0 == 0:
        detail += f"; FAILED: the victim never succeeded before the attack ({dict(failures0)})"
    elif not victim_fine:
        detail += f"; FAILED: victim affected ({v_ok} ok, {v_failed} failed: {dict(failures1 - failures0)})"
    if goaways1 > goaways0:
        detail += f"; note: the victim got {goaways1 - goaways0} graceful GOAWAY(s)"
    attack_ok = bool(result.pop("ok"))
    return {
        "attack": name,
        "ok": attack_ok and victim_fine,
        "detail": detail,
        "victim_ok": v_ok,
        "victim_failed": v_failed,
        "victim_failures": dict(failures1 - failures0),
        "victim_goaways": goaways1 - goaways0,
        "victim_p50_ms": percentile(latencies, 50),
        "victim_p99_ms": percentile(latencies, 99),
        "victim_max_ms": round(1000 * max(latencies), 2) if latencies else None,
        "closed_by_server": result.pop("closed_by_server", None),
        "goaway_error": result.pop("goaway_error", None),
        "duration_s": round(duration, 2),
        **result,
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description="HTTP/2 (h2c) abuse client for turnpike.")
    p.add_argument("--target", required=True, help="HOST:PORT of an h2c (prior knowledge) listener")
    p.add_argument("--attack", action="append", choices=sorted(ATTACKS), metavar="NAME",
                   help=f"attack to run (repeatable; default all): {', '.join(ATTACKS)}")
    p.add_argument("--pid", type=int, help="gateway PID: check its VmRSS around the PING/SETTINGS floods")
    p.add_argument("--request-cap", type=int, default=1000, metavar="N",
                   help="the listener's max_requests_per_connection (default 1000): a rapid-reset "
                        "connection closed only at this cap was not stopped by a reset guard")
    p.add_argument("--flood-frames", type=int, default=100_000, metavar="N",
                   help="frames per PING / SETTINGS flood (default 100000; each flood also stops after ~3 s)")
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        p.error("--target must be HOST:PORT")
    return host, int(port), args.attack or list(ATTACKS), Options(args.pid, args.flood_frames, args.request_cap)


def main(argv=None):
    host, port, attacks, opts = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        socket.create_connection((host, port), timeout=IO_TIMEOUT).close()
    except OSError as e:
        print(f"abuse.py: cannot reach {host}:{port}: {e}", file=sys.stderr)
        return 2
    run_started = time.monotonic()
    all_ok = True
    for name in attacks:
        if time.monotonic() - run_started + ATTACK_HARD_LIMIT + VICTIM_WARMUP > RUN_BUDGET:
            record = {"attack": name, "ok": False, "detail": "skipped: the run's time budget is spent",
                      "victim_ok": 0, "victim_failed": 0, "closed_by_server": None, "goaway_error": None}
        else:
            record = run_attack(name, host, port, opts)
        all_ok = all_ok and record["ok"]
        print(json.dumps(record), flush=True)
    print(f"h2 {h2.__version__}, hpack {hpack.__version__}: "
          f"{'all attacks met their expectations' if all_ok else 'some attacks FAILED'} "
          f"in {time.monotonic() - run_started:.1f} s", file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
