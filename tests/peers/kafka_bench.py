#!/usr/bin/env python3
"""The confluent-kafka side of `outpost bench forward`, and its broker helpers.

Subcommands (all print one JSON object on stdout, errors on stderr with exit status 1):

  create --brokers B --topics T,U
      Creates the topics (one partition each) with the admin client; an existing topic is fine.
      -> {"created": [...]}

  produce --brokers B --topic T --records N --record-bytes S --edge E --store ST
          --local-topic L --compression C --linger-ms M --batch-bytes X
      Produces the records the Outpost benchmark forwards, byte for byte: record i has no key,
      the value `bench_value(i, S)` below and the four headers outpost-edge, outpost-store,
      outpost-topic (L) and outpost-offset (i). The producer is configured as Outpost's
      forwarder: idempotent, acks=all, 5 requests in flight per connection, the given
      compression, linger and batch size. The values are built before the clock starts; the
      clock stops when every delivery report arrived (flush).
      The CPU time of this process (all threads, librdkafka's too) on the same clock is
      reported as cpu_seconds.
      -> {"records": N, "seconds": s, "cpu_seconds": c, "failed": f}

  watermarks --brokers B --topics T,U
      The low and high watermark of partition 0 of each topic (ListOffsets).
      -> {"T": [low, high], ...}

  count --brokers B --topics T,U --expect N [--idle S]
      Reads partition 0 of each topic from the beginning (no group, nothing committed) until
      N records arrived or nothing came for S seconds (default 20), and counts the records, the
      distinct values of the `outpost-offset` header and the last broker offset. A check that
      does not rely on ListOffsets: tansu 0.6's memory engine answers it with the base offset
      of the last stored batch instead of the end.
      -> {"T": {"records": n, "distinct": d, "last_offset": o}, ...}

  index --db FILE
      Adds the index tansu 0.6's SQLite schema lacks: `header (topition, offset_id)`. tansu
      looks up each fetched record's headers with a join on those columns; without an index
      every record fetched scans the whole header table (all topics, every header), so a fetch
      costs records x headers-stored and stops answering in time once tens of thousands of
      records with headers are stored. Safe while tansu runs (SQLite locking, WAL journal).
      -> {"index": "header_topition_offset_id"}
"""

import argparse
import json
import sqlite3
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def bench_value(i, size):
    """The value of record i: its index, padded with a repeating pattern to `size` bytes."""
    head = b'{"i":%d,"pad":"' % i
    tail = b'"}'
    fill = size - len(head) - len(tail)
    pattern = b"outpost-forward-bench-"
    pad = (pattern * (fill // len(pattern) + 1))[:max(fill, 0)]
    return head + pad + tail


def create(args):
    admin = AdminClient({"bootstrap.servers": args.brokers})
    topics = [t for t in args.topics.split(",") if t]
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in topics], operation_timeout=30)
    created = []
    for t, f in futures.items():
        try:
            f.result(30)
            created.append(t)
        except Exception as e:  # an existing topic is fine
            if "TOPIC_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
                raise
    print(json.dumps({"created": created}), flush=True)


def produce(args):
    values = [bench_value(i, args.record_bytes) for i in range(args.records)]
    fixed = [
        ("outpost-edge", args.edge.encode()),
        ("outpost-store", args.store.encode()),
        ("outpost-topic", args.local_topic.encode()),
    ]
    # The clock includes creating the producer, connecting and learning the topic's leader, as
    # the forwarder's does: its producer is created (and connects) after its clock starts.
    start = time.monotonic()
    cpu_start = time.process_time()
    producer = Producer({
        "bootstrap.servers": args.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        "compression.type": args.compression,
        "linger.ms": args.linger_ms,
        "batch.size": args.batch_bytes,
        "message.timeout.ms": 120000,
        "queue.buffering.max.messages": 1000000,
        "queue.buffering.max.kbytes": 1048576,
    })
    failed = [0]

    def report(err, _msg):
        if err is not None:
            failed[0] += 1

    for i, value in enumerate(values):
        headers = fixed + [("outpost-offset", str(i).encode())]
        while True:
            try:
                producer.produce(args.topic, value=value, headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(300)
    seconds = time.monotonic() - start
    cpu_seconds = time.process_time() - cpu_start
    print(json.dumps({"records": args.records, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "failed": failed[0] + remaining}), flush=True)
    if failed[0] or remaining:
        sys.exit(1)


def watermarks(args):
    consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": "outpost-bench-check",
                         "enable.auto.commit": False})
    out = {}
    for t in [t for t in args.topics.split(",") if t]:
        low, high = consumer.get_watermark_offsets(TopicPartition(t, 0), timeout=30)
        out[t] = [low, high]
    consumer.close()
    print(json.dumps(out), flush=True)


def count(args):
    out = {}
    for t in [t for t in args.topics.split(",") if t]:
        consumer = Consumer({"bootstrap.servers": args.brokers, "group.id": "outpost-bench-count",
                             "enable.auto.commit": False, "enable.partition.eof": False})
        consumer.assign([TopicPartition(t, 0, OFFSET_BEGINNING)])
        n, last, seen = 0, -1, set()
        quiet = time.monotonic()
        while n < args.expect and time.monotonic() - quiet < args.idle:
            for m in consumer.consume(num_messages=10000, timeout=0.5):
                if m.error():
                    print(f"error: {m.error()}", file=sys.stderr)
                    continue
                n += 1
                last = max(last, m.offset())
                for k, v in m.headers() or []:
                    if k == "outpost-offset":
                        seen.add(v)
                quiet = time.monotonic()
        consumer.close()
        out[t] = {"records": n, "distinct": len(seen), "last_offset": last}
    print(json.dumps(out), flush=True)


def index(args):
    deadline = time.monotonic() + 30
    while True:
        try:
            db = sqlite3.connect(args.db, timeout=30)
            db.execute("create index if not exists header_topition_offset_id "
                       "on header (topition, offset_id)")
            db.commit()
            db.close()
            break
        except sqlite3.OperationalError as e:
            # The schema is created by tansu at start: wait for it.
            if time.monotonic() > deadline:
                raise
            print(f"waiting for tansu's schema: {e}", file=sys.stderr)
            time.sleep(0.2)
    print(json.dumps({"index": "header_topition_offset_id"}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create")
    c.add_argument("--brokers", required=True)
    c.add_argument("--topics", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--record-bytes", type=int, required=True)
    p.add_argument("--edge", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--local-topic", required=True)
    p.add_argument("--compression", required=True)
    p.add_argument("--linger-ms", type=int, required=True)
    p.add_argument("--batch-bytes", type=int, required=True)
    w = sub.add_parser("watermarks")
    w.add_argument("--brokers", required=True)
    w.add_argument("--topics", required=True)
    n = sub.add_parser("count")
    n.add_argument("--brokers", required=True)
    n.add_argument("--topics", required=True)
    n.add_argument("--expect", type=int, required=True)
    n.add_argument("--idle", type=float, default=20.0)
    i = sub.add_parser("index")
    i.add_argument("--db", required=True)
    args = ap.parse_args()
    try:
        {"create": create, "produce": produce, "watermarks": watermarks,
         "count": count, "index": index}[args.command](args)
    except Exception as e:  # reported to the benchmark, which shows it
        print(f"{args.command} failed: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
