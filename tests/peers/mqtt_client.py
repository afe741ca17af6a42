#!/usr/bin/env python3
"""An MQTT device for Outpost's integration tests, built on paho-mqtt 2.

Two modes, each printing one line per event on stdout, flushed at once:

publish: publishes `--count` messages to `--topic` at `--rate`
    messages/s and prints `ACK <i>` when message i is acknowledged by the broker (PUBACK for
    QoS 1, PUBCOMP for QoS 2; QoS 0 messages print nothing), then `DONE <acked>` once every
    message is acknowledged, or `TIMEOUT <acked>` after `--timeout` seconds. `CONNECTED` is
    printed on every (re)connection. The client reconnects by itself after the broker goes
    away and sends unacknowledged messages again. `--payload` is a text in which `{i}` is
    replaced by the message number.

subscribe: subscribes to `--filter` (repeatable) and prints `READY` once the broker granted
    the subscription, then `MSG <topic> <payload>` per message (payload as UTF-8 text), and
    exits after `--count` messages or `--timeout` seconds.

Common options: --host, --port, --protocol 311|5, --client-id, --qos, --clean-session 0|1,
--ca/--cert/--key for TLS with a client certificate, --will-topic/--will-payload for a last
will (QoS 1) that the broker publishes if the connection ends without a DISCONNECT; with
--protocol 5, --will-delay S (Will Delay Interval), --session-expiry S (Session Expiry
Interval) and --clean-session 0|1 (Clean Start).
"""

import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def make_client(args):
    protocol = mqtt.MQTTv5 if args.protocol == "5" else mqtt.MQTTv311
    kwargs = {}
    if protocol == mqtt.MQTTv311:
        kwargs["clean_session"] = args.clean_session == "1"
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=protocol,
        **kwargs,
    )
    if args.username:
        c.username_pw_set(args.username, args.password)
    if args.ca:
        c.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key)
    if args.will_topic:
        will_props = None
        if protocol == mqtt.MQTTv5 and args.will_delay:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = args.will_delay
        c.will_set(args.will_topic, args.will_payload, qos=1, properties=will_props)
    c.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
    c.max_inflight_messages_set(args.inflight)
    c.max_queued_messages_set(0)
    return c


def connect_async(c, args):
    if args.protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = args.session_expiry
        c.connect_async(args.host, args.port, keepalive=10,
                        clean_start=args.clean_session == "1", properties=props)
    else:
        c.connect_async(args.host, args.port, keepalive=10)


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def publish(args):
    c = make_client(args)
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            connected.set()
            say("CONNECTED")

    c.on_connect = on_connect
    connect_async(c, args)
    c.loop_start()
    # QoS 0 messages published before the first connection would be dropped by paho.
    if not connected.wait(args.timeout):
        say("TIMEOUT 0")
        sys.exit(1)

    pending = []  # (i, MQTTMessageInfo), not yet acknowledged
    pending_lock = threading.Lock()
    acked = [0]
    finished_publishing = threading.Event()

    def watch_acks():
        # A message is published once its PUBACK/PUBCOMP arrived. Polling the flag avoids taking
        # locks inside paho's callbacks; is_published() itself raises for messages that were
        # queued while disconnected (they are still sent after the reconnect), so the flag is
        # read directly.
        while True:
            with pending_lock:
                still = []
                for i, info in pending:
                    if info._published:
                        say(f"ACK {i}")
                        acked[0] += 1
                    else:
                        still.append((i, info))
                pending[:] = still
                empty = not pending
            if empty and finished_publishing.is_set():
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=watch_acks, daemon=True)
    watcher.start()

    start = time.monotonic()
    i = 0
    while i < args.count:
        due = start + i / args.rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        payload = args.payload.replace("{i}", str(i))
        info = c.publish(args.topic, payload.encode(), qos=args.qos)
        if args.qos > 0:
            with pending_lock:
                pending.append((i, info))
        i += 1
    finished_publishing.set()
    deadline = time.monotonic() + args.timeout
    while watcher.is_alive() and time.monotonic() < deadline:
        watcher.join(0.05)
    if watcher.is_alive():
        say(f"TIMEOUT {acked[0]}")
        c.loop_stop()
        sys.exit(1)
    say(f"DONE {acked[0]}")
    c.disconnect()
    c.loop_stop()


def subscribe(args):
    c = make_client(args)
    received = [0]
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe([(f, args.qos) for f in args.filter])

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        say("READY")

    def on_message(client, userdata, msg):
        say(f"MSG {msg.topic} {msg.payload.decode('utf-8', 'replace')}")
        received[0] += 1
        if args.count and received[0] >= args.count:
            done.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    connect_async(c, args)
    c.loop_start()
    done.wait(args.timeout)
    c.disconnect()
    c.loop_stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["publish", "subscribe"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--protocol", choices=["311", "5"], default="311")
    p.add_argument("--client-id", default="")
    p.add_argument("--clean-session", choices=["0", "1"], default="1")
    p.add_argument("--qos", type=int, default=1)
    p.add_argument("--inflight", type=int, default=20)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--topic")
    p.add_argument("--payload", default="{i}")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--filter", action="append", default=[])
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--will-topic")
    p.add_argument("--will-payload", default="")
    p.add_argument("--will-delay", type=int, default=0)
    p.add_argument("--session-expiry", type=int, default=0)
    args = p.parse_args()
    if args.mode == "publish":
        publish(args)
    else:
        subscribe(args)


if __name__ == "__main__":
    main()
