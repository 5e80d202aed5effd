#!/usr/bin/env python3
"""Example reject gate: how a PLC or line controller should consume inspector's decisions over MQTT 5.

This is documentation you can run, not part of inspector. It shows the rules a controls engineer should
implement in the PLC (or in a gateway in front of it), whatever the language:

1. DEFAULT TO REJECT. The gate diverts a part unless a valid, on-time `pass` for it arrived. No message,
   a malformed message, an unknown schema, a late message or a lost broker all end the same way: reject.
2. A pass counts only if `late` is false AND the clock still reads at or before `deadline_at`.
   `late: true` means the station published it after the deadline (e.g. resent after a broker outage);
   checking `deadline_at` yourself also covers a message that sat in a queue on the way to you.
   Both clocks must be synchronised (NTP/PTP): skew between station and PLC eats into the deadline.
3. Act on each decision once. A decision can arrive twice (QoS 1 is "at least once", and the station
   resends what the broker had not acknowledged before an outage). `seq` numbers the station's decisions;
   with `session` it identifies one decision, so remember the pairs you acted on (a bounded memory) and
   ignore repeats.
4. Acknowledge what you acted on: publish {"seq": N, "part_id": "..."} at QoS 1 to the topic in the
   message's ResponseTopic property (inspector sets <prefix>/decision/ack). The station records the
   acknowledgement in its journal, so "decided but never acted on" can be found afterwards.
5. Keep a session on the broker: a fixed client id, clean start false and a session expiry interval. A
   decision published while the gate is briefly away (a network blip, a broker restart with the station
   reconnecting first) then waits for it until its MessageExpiryInterval runs out, instead of being lost
   and its part rejected by default. Whatever comes back late is rejected by rule 2 all the same. The
   client id must be unique per gate (a second client with it takes the session over), and the memory of
   rule 3 should outlive a restart of the gate, which the broker may redeliver to; this example keeps it
   in memory only.

Topics (prefix inspector/v1/<line>/<station>): `decision` carries one JSON object per part, e.g.

    {"schema": "inspector.decision/1", "seq": 1042, "session": "9f2c...", "frame_id": "P-1042.png",
     "part_id": "P-1042", "verdict": "pass", "gate": "pass", "reason": null, "score": 0.0312, "threshold": 0.5,
     "deadline_at": "2026-11-23T08:15:03.123Z", "late": false, ...}

with MQTT 5 properties ContentType application/json, UserProperty schema=inspector.decision/1,
CorrelationData = the part id, ResponseTopic = <prefix>/decision/ack and a MessageExpiryInterval (the broker
drops a decision nobody received before its deadline). Timestamps are ISO 8601 UTC.

Run (paho-mqtt >= 2.0):

    python3 plc_subscriber.py --host 127.0.0.1 --prefix inspector/v1/line1/station1 --username plc --password-file /etc/plc/mqtt-password

One line per decision on stdout, e.g.

    seq=1042 part=P-1042 OPEN    pass, 412 ms before the deadline
    seq=1043 part=P-1043 REJECT  verdict reject (score)
    seq=1043 part=P-1043 IGNORE  duplicate: already acted on

The decision logic is the pure function `gate(payload, now, seen)`; everything MQTT is in `main()`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any

SCHEMA = "inspector.decision/1"
OPEN, REJECT, IGNORE = "OPEN", "REJECT", "IGNORE"


class Seen:
    """The decisions already acted on, as (session, seq) pairs; forgets the oldest beyond `limit`.

    A duplicate normally arrives within seconds of the original, so a few thousand entries are plenty;
    the bound keeps memory constant on a gateway that runs for years.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._keys: OrderedDict[tuple[str, int], None] = OrderedDict()

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: tuple[str, int]) -> None:
        self._keys[key] = None
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)


def parse_time(text: str) -> float:
    """ISO 8601 UTC ("2026-11-23T08:15:02.123Z") to Unix seconds; ValueError on anything else."""
    # Before Python 3.11 fromisoformat() rejects a trailing "Z"; spelling it +00:00 works everywhere.
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: FURB162
    if parsed.tzinfo is None:
        raise ValueError(f"no time zone in {text!r}")
    return parsed.timestamp()


def gate(payload: bytes | str | dict[str, Any], now: float, seen: Seen) -> tuple[str, str]:
    """What the gate does with one decision message: (OPEN | REJECT | IGNORE, why).

    `payload` is the message body (bytes, str, or already parsed), `now` the current Unix time, `seen` the
    decisions already acted on; a decision that gets OPEN or REJECT is added to it. IGNORE means "already
    acted on": do nothing, and do not acknowledge again.
    Every path that is not a proven on-time pass returns REJECT.
    """
    # Anything we cannot read is a reject. (Which part? The one at the gate: a real PLC tracks parts by
    # position or part id and rejects the part whose decision did not arrive in time.)
    if not isinstance(payload, dict):
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return REJECT, f"malformed decision: {exc}"
    if not isinstance(payload, dict):
        return REJECT, "malformed decision: not a JSON object"
    if payload.get("schema") != SCHEMA:
        return REJECT, f"unknown schema {payload.get('schema')!r} (this gate understands {SCHEMA})"
    seq = payload.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return REJECT, f"decision without a valid seq: {seq!r}"

    key = (str(payload.get("session")), seq)
    if key in seen:
        return IGNORE, "duplicate: already acted on"
    seen.add(key)

    verdict = payload.get("verdict")
    if verdict != "pass":
        reason = payload.get("reason")
        detail = payload.get("detail")
        why = f"verdict {verdict}" + (f" ({reason}: {detail})" if detail else f" ({reason})" if reason else "")
        return REJECT, why
    # A pass: it must be on time, by the station's judgement and by our clock.
    if payload.get("late") is not False:
        return REJECT, "pass arrived late (late=true): the station decided or sent it after the deadline"
    try:
        deadline = parse_time(payload["deadline_at"])
    except (KeyError, TypeError, ValueError) as exc:
        return REJECT, f"pass without a valid deadline_at: {exc}"
    if now > deadline:
        return REJECT, f"pass received {1000 * (now - deadline):.0f} ms after its deadline"
    return OPEN, f"pass, {1000 * (deadline - now):.0f} ms before the deadline"


def ack_body(payload: bytes | str | dict[str, Any]) -> bytes | None:
    """The acknowledgement for a decision: {"seq": N, "part_id": "..."}; None when it has no usable seq."""
    try:
        body = payload if isinstance(payload, dict) else json.loads(payload)
        seq = body["seq"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return json.dumps({"seq": seq, "part_id": body.get("part_id")}, separators=(",", ":")).encode()


def main(argv: list[str] | None = None) -> int:
    """Subscribe to <prefix>/decision, gate each part, acknowledge; runs until Ctrl-C or SIGTERM."""
    import signal

    ap = argparse.ArgumentParser(description="Example PLC-side reject gate for inspector decisions (MQTT 5).")
    ap.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    ap.add_argument("--prefix", default="inspector/v1/line1/station1", help="the station's topic prefix, no trailing slash")
    ap.add_argument("--username", help="broker user name (the ACL's `plc` user)")
    ap.add_argument("--password-file", type=Path, help="file holding the broker password")
    ap.add_argument("--client-id", help="client id, fixed so the broker keeps this gate's session, and unique: a second gate with "
                    "the same id takes the session over (default: plc-gate-<host name>-<prefix>)")
    ap.add_argument("--session-expiry", type=int, default=300, metavar="S",
                    help="seconds the broker keeps the session (and queued decisions) while the gate is away; 0: none (default 300)")
    args = ap.parse_args(argv)
    if not 1 <= args.port <= 65535:
        ap.error(f"--port: expected a TCP port from 1 to 65535, got {args.port}")
    if not 0 <= args.session_expiry <= 2**32 - 1:
        ap.error(f"--session-expiry: expected seconds from 0 to 4294967295, got {args.session_expiry}")
    try:  # after the arguments: --help and usage errors need no paho
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
    except ImportError as exc:  # paho 1.x has no paho.mqtt.enums
        sys.exit(f"plc_subscriber.py needs paho-mqtt 2.0 or later ({exc}): pip install 'paho-mqtt>=2'")
    client_id = args.client_id or f"plc-gate-{socket.gethostname()}-{args.prefix.replace('/', '-')}"
    if args.password_file is not None and not args.username:
        # The broker gets a password only with a user name: the file would be read for nothing.
        ap.error("--password-file needs --username (the broker user the password belongs to)")
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = "is a folder" if isinstance(exc, IsADirectoryError) else getattr(exc, "strerror", None) or str(exc)
            ap.error(f"--password-file {args.password_file}: {why}; expected a file holding the broker password")

    decision_topic = f"{args.prefix}/decision"
    fallback_ack = f"{args.prefix}/decision/ack"
    seen = Seen()

    # A session the broker keeps (rule 5): decisions published during a short absence wait for the gate until
    # their own expiry (the deadline), so a blip costs no false rejects; `gate` still refuses what comes late.
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    if args.username:
        client.username_pw_set(args.username, password)
    client.reconnect_delay_set(min_delay=1, max_delay=10)

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            print(f"broker refused the connection: {reason}", file=sys.stderr, flush=True)
            return
        # Subscribe in on_connect so that a reconnect subscribes again. QoS 1: at least once (duplicates
        # are handled by `seen`); QoS 0 could lose a pass, which would only cost a false reject.
        c.subscribe(decision_topic, qos=1)
        last_failure.clear()
        print(f"connected to {args.host}:{args.port}, waiting for decisions on {decision_topic}", file=sys.stderr, flush=True)

    last_failure: list[str] = []  # the reason last printed, so that retries every few seconds print one line per new reason

    def on_connect_fail(c: paho.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` around the connect, and passes no reason: the exception is current.
        exc = sys.exc_info()[1]
        reason = (getattr(exc, "strerror", None) or str(exc)) if exc else "connection failed"
        if last_failure != [reason]:
            last_failure[:] = [reason]
            print(f"cannot connect to {args.host}:{args.port}: {reason}; rejecting everything, retrying", file=sys.stderr, flush=True)

    def on_disconnect(c: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        # While disconnected no pass can arrive: every part at the gate is rejected by default.
        print(f"disconnected ({reason}); rejecting everything until reconnected", file=sys.stderr, flush=True)

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        action, why = gate(msg.payload, time.time(), seen)
        body = ack_body(msg.payload)
        try:
            part = json.loads(msg.payload).get("part_id")
        except (ValueError, AttributeError):
            part = None
        seq = json.loads(body)["seq"] if body else None
        print(f"seq={seq} part={part} {action:<7} {why}", flush=True)
        # Here a real gate would drive the diverter: OPEN lets the part pass, REJECT (and no message at
        # all) diverts it, IGNORE changes nothing.
        if action == IGNORE or body is None:
            return
        # Reply where the message asks. The broker's ACL lets the `plc` user write only */decision/ack,
        # so a forged ResponseTopic cannot make this gate publish anywhere else.
        props = msg.properties
        response_topic = getattr(props, "ResponseTopic", None) or fallback_ack
        ack_props = Properties(PacketTypes.PUBLISH)
        ack_props.ContentType = "application/json"
        if getattr(props, "CorrelationData", None) is not None:
            ack_props.CorrelationData = props.CorrelationData  # MQTT 5 request/response: echo it back
        # Never block in a callback: publish() queues the message and returns.
        c.publish(response_topic, body, qos=1, properties=ack_props)

    client.on_connect = on_connect
    client.on_connect_fail = on_connect_fail
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    connect_props = Properties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = args.session_expiry
    client.connect_async(args.host, args.port, keepalive=5, clean_start=args.session_expiry == 0, properties=connect_props)
    try:
        client.loop_forever(retry_first_connection=True)
    except KeyboardInterrupt:
        client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
