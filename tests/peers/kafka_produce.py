#!/usr/bin/env python3
"""Produces records to a Kafka cluster for Outpost's mirroring tests (confluent-kafka).

Record i (from --start) has key "k<i>" and the JSON value {"i": i, "card_id": "c<i>"},
header "source: cloud". The producer is idempotent with acks=all; it prints `DONE <count>`
once every record was acknowledged, and exits 1 if any failed.

Options:
    --brokers B     bootstrap servers (host:port)
    --topic T       topic to produce to
    --count N       number of records
    --start S       first index (default 0)
    --value V       a value template instead, `{i}` replaced by the index
    --rate R        produce at most R records per second (default: as fast as possible)
                    (e.g. '{"card_id": "c{i}", "action": "add", "reason": "stolen"}')
"""

import argparse
import json
import sys
import time

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--value")
    ap.add_argument("--rate", type=float, default=0)
    args = ap.parse_args()

    producer = Producer({
        "bootstrap.servers": args.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "zstd",
    })
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(str(err))

    began = time.monotonic()
    for i in range(args.start, args.start + args.count):
        if args.rate > 0:
            due = began + (i - args.start) / args.rate
            while time.monotonic() < due:
                producer.poll(min(0.05, max(0.0, due - time.monotonic())))
        if args.value is not None:
            value = args.value.replace("{i}", str(i))
        else:
            value = json.dumps({"i": i, "card_id": f"c{i}"})
        while True:
            try:
                producer.produce(args.topic, key=f"k{i}", value=value,
                                 headers=[("source", b"cloud")], on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    if failed or remaining:
        print(f"failed: {failed[:5]} remaining: {remaining}", file=sys.stderr)
        sys.exit(1)
    print(f"DONE {args.count}", flush=True)


if __name__ == "__main__":
    main()
