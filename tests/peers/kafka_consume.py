#!/usr/bin/env python3
"""Reads what arrived in a Kafka cluster, for Outpost's forwarding tests (confluent-kafka).

Reads every partition of the given topics from the beginning (assigned, no consumer group,
so nothing is committed) and prints one JSON line per record, flushed at once:
    {"topic": T, "partition": P, "offset": O, "key": K, "value": V, "headers": {name: value}}
keys, values and header values decoded as UTF-8 (replacement characters for other bytes).
It stops after --expect records in total, or when nothing new arrived for --idle seconds,
and then prints `DONE <count>`.

Options:
    --brokers B     bootstrap servers (host:port)
    --topics T,U    topics to read
    --expect N      stop after N records (0 = only the idle timeout)
    --idle S        stop when nothing arrived for S seconds (default 10)
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topics", required=True)
    ap.add_argument("--expect", type=int, default=0)
    ap.add_argument("--idle", type=float, default=10.0)
    args = ap.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": "outpost-test-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    topics = [t for t in args.topics.split(",") if t]
    parts = []
    meta = consumer.list_topics(timeout=30)
    for t in topics:
        tm = meta.topics.get(t)
        if tm is None or tm.error is not None:
            print(f"topic {t} is missing: {tm.error if tm else 'unknown'}", file=sys.stderr)
            sys.exit(2)
        for p in tm.partitions:
            parts.append(TopicPartition(t, p, OFFSET_BEGINNING))
    consumer.assign(parts)

    count = 0
    last = time.monotonic()
    out = sys.stdout
    while True:
        if args.expect and count >= args.expect:
            break
        if time.monotonic() - last > args.idle:
            break
        msgs = consumer.consume(num_messages=1000, timeout=0.5)
        for m in msgs:
            if m.error():
                print(f"error: {m.error()}", file=sys.stderr)
                continue
            headers = {k: text(v) for k, v in (m.headers() or [])}
            out.write(json.dumps({
                "topic": m.topic(),
                "partition": m.partition(),
                "offset": m.offset(),
                "key": text(m.key()),
                "value": text(m.value()),
                "headers": headers,
            }) + "\n")
            count += 1
            last = time.monotonic()
        out.flush()
    print(f"DONE {count}", flush=True)
    consumer.close()


if __name__ == "__main__":
    main()
