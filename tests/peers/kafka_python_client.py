#!/usr/bin/env python3
"""kafka-python (a pure-Python implementation of the Kafka protocol, independent of librdkafka)
against Outpost's Kafka listener.

    kafka_python_client.py --brokers B --topic T --count N --group G

Produces N records (key "k<i>", value "v<i>", gzip, acks=all), then consumes the topic as a
member of group G (subscribe, from the earliest offset) until it read N records, commits, and
prints one JSON line per record {"offset", "key", "value"} and `DONE <count>`.
"""

import argparse
import json
import sys

from kafka import KafkaConsumer, KafkaProducer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--group", required=True)
    args = ap.parse_args()

    producer = KafkaProducer(
        bootstrap_servers=args.brokers, acks="all", compression_type="gzip", linger_ms=5
    )
    futures = [
        producer.send(args.topic, key=f"k{i}".encode(), value=f"v{i}".encode())
        for i in range(args.count)
    ]
    producer.flush(30)
    for f in futures:
        f.get(timeout=30)
    producer.close()

    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.brokers,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15000,
    )
    got = 0
    for msg in consumer:
        got += 1
        print(
            json.dumps(
                {"offset": msg.offset, "key": msg.key.decode(), "value": msg.value.decode()}
            ),
            flush=True,
        )
        if got >= args.count:
            break
    consumer.commit()
    consumer.close()
    print(f"DONE {got}", flush=True)
    sys.exit(0 if got == args.count else 1)


if __name__ == "__main__":
    main()
