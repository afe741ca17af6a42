#!/usr/bin/env python3
"""A Kafka client (confluent-kafka, librdkafka 2.x) against Outpost's own Kafka listener.

    kafka_client.py produce --brokers B --topic T --count N [--start S] [--compression C]
                            [--acks A] [--linger-ms L]
        Produces N records, key "k<i>", value {"i": i}, header "n: <i>", with the given
        compression (none, gzip, snappy, lz4, zstd) and acks (0, 1, all). Prints one line
        `ACK <i> <offset>` per acknowledged record, then `DONE <count>`; exits 1 if any failed.

    kafka_client.py group --brokers B --topics T,U --group G --name N --max M [--idle S]
        A member of group G subscribed to the topics (roundrobin assignment, 6 s session):
        prints `{"assigned": [...]}` at each assignment and one JSON line per record
        {"topic", "offset", "value"}, committing each synchronously; leaves the group (close)
        after M records or when nothing arrived for --idle seconds, then prints `DONE <count>`.

    kafka_client.py admin --brokers B --topic T
        With the AdminClient: creates T (1 partition), tries T.wide (3 partitions) and T again,
        describes T's configs, lists and describes the consumer groups, tries to delete T;
        prints one JSON object of what happened and `DONE 1`.

    kafka_client.py consume --brokers B --topic T --group G --max N [--idle S]
        A consumer of group G that assigns partition 0 itself (no group membership), starts
        at the group's committed offset (the beginning when none), reads at most N records,
        commits the offset after the last one synchronously, and prints one JSON line per
        record {"offset", "key", "value", "headers", "timestamp"} and then `DONE <count>`.
        Stops early when nothing arrived for --idle seconds (default 10).
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def produce(args):
    conf = {
        "bootstrap.servers": args.brokers,
        "acks": args.acks,
        "compression.type": args.compression,
        "linger.ms": args.linger_ms,
        "enable.idempotence": False,
    }
    p = Producer(conf)
    failed = []
    acked = []

    def report(err, msg):
        i = int(msg.key().decode()[1:])
        if err is not None:
            failed.append((i, str(err)))
        else:
            acked.append((i, msg.offset()))

    for i in range(args.start, args.start + args.count):
        p.produce(
            args.topic,
            key=f"k{i}",
            value=json.dumps({"i": i}),
            headers=[("n", str(i).encode())],
            on_delivery=report,
        )
        p.poll(0)
    left = p.flush(60)
    for i, offset in sorted(acked):
        print(f"ACK {i} {offset}", flush=True)
    if failed or left:
        print(f"FAILED {failed[:5]} unflushed={left}", flush=True)
        sys.exit(1)
    print(f"DONE {len(acked)}", flush=True)


def consume(args):
    c = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    committed = c.committed([TopicPartition(args.topic, 0)], timeout=30)[0].offset
    start = committed if committed >= 0 else OFFSET_BEGINNING
    c.assign([TopicPartition(args.topic, 0, start)])
    got = 0
    last = None
    quiet_since = time.monotonic()
    while got < args.max and time.monotonic() - quiet_since < args.idle:
        msg = c.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            print(f"ERROR {msg.error()}", flush=True)
            continue
        quiet_since = time.monotonic()
        got += 1
        last = msg.offset()
        headers = {k: text(v) for k, v in (msg.headers() or [])}
        print(
            json.dumps(
                {
                    "offset": msg.offset(),
                    "key": text(msg.key()),
                    "value": text(msg.value()),
                    "headers": headers,
                    "timestamp": msg.timestamp()[1],
                }
            ),
            flush=True,
        )
    if last is not None:
        c.commit(offsets=[TopicPartition(args.topic, 0, last + 1)], asynchronous=False)
    c.close()
    print(f"DONE {got}", flush=True)


def group(args):
    c = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": args.group,
            "client.id": args.name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "roundrobin",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    assigned = []

    def on_assign(consumer, partitions):
        assigned[:] = [p.topic for p in partitions]
        print(json.dumps({"assigned": sorted(assigned)}), flush=True)

    c.subscribe(args.topics.split(","), on_assign=on_assign)
    got = 0
    quiet_since = time.monotonic()
    while got < args.max and time.monotonic() - quiet_since < args.idle:
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            print(json.dumps({"error": str(msg.error())}), flush=True)
            continue
        quiet_since = time.monotonic()
        got += 1
        print(
            json.dumps({"topic": msg.topic(), "offset": msg.offset(), "value": text(msg.value())}),
            flush=True,
        )
        c.commit(message=msg, asynchronous=False)
    c.close()
    print(f"DONE {got}", flush=True)


def admin(args):
    from confluent_kafka.admin import AdminClient, NewTopic, ConfigResource, ResourceType

    a = AdminClient({"bootstrap.servers": args.brokers})
    out = {}
    for name, partitions in [(args.topic, 1), (args.topic + ".wide", 3), (args.topic, 1)]:
        f = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name]
        try:
            f.result(30)
            out.setdefault("created", []).append(name)
        except Exception as e:  # the KafkaException carries the broker's error
            out.setdefault("refused", []).append([name, e.args[0].name()])
    res = ConfigResource(ResourceType.TOPIC, args.topic)
    configs = a.describe_configs([res])[res].result(30)
    out["configs"] = {k: v.value for k, v in configs.items()}
    out["groups"] = sorted(g.group_id for g in a.list_consumer_groups().result(30).valid)
    described = a.describe_consumer_groups(out["groups"])
    out["described"] = {g: str(f.result(30).state) for g, f in described.items()}
    try:
        a.delete_topics([args.topic])[args.topic].result(30)
        out["deleted"] = True
    except Exception as e:
        out["deleted"] = e.args[0].name()
    print(json.dumps(out), flush=True)
    print("DONE 1", flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--compression", default="none")
    p.add_argument("--acks", default="all")
    p.add_argument("--linger-ms", type=int, default=5)
    c = sub.add_parser("consume")
    c.add_argument("--brokers", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--group", required=True)
    c.add_argument("--max", type=int, required=True)
    c.add_argument("--idle", type=float, default=10)
    g = sub.add_parser("group")
    g.add_argument("--brokers", required=True)
    g.add_argument("--topics", required=True)
    g.add_argument("--group", required=True)
    g.add_argument("--name", required=True)
    g.add_argument("--max", type=int, required=True)
    g.add_argument("--idle", type=float, default=10)
    a = sub.add_parser("admin")
    a.add_argument("--brokers", required=True)
    a.add_argument("--topic", required=True)
    args = ap.parse_args()
    if args.command == "admin":
        admin(args)
    elif args.command == "produce":
        produce(args)
    elif args.command == "group":
        group(args)
    else:
        consume(args)


if __name__ == "__main__":
    main()
