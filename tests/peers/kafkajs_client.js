#!/usr/bin/env node
// kafkajs (a third implementation of the Kafka protocol, in JavaScript, independent of
// librdkafka and kafka-python) against Outpost's Kafka listener.
//
//     NODE_PATH=<dir>/node_modules node kafkajs_client.js BROKERS TOPIC COUNT GROUP
//
// Produces COUNT records (key "k<i>", value "v<i>", header n=<i>, acks all, gzip), then
// consumes the topic as a member of GROUP (subscribe from the beginning) until it read COUNT
// records, and prints one JSON line per record {"offset", "key", "value", "n"} and then
// `DONE <count>`. Exits 1 on any error or when nothing arrived for 30 s.

const { Kafka, CompressionTypes, logLevel } = require("kafkajs");

async function main() {
  const [brokers, topic, countText, group] = process.argv.slice(2);
  const count = Number(countText);
  const kafka = new Kafka({ clientId: "kafkajs-test", brokers: brokers.split(","), logLevel: logLevel.WARN });

  const producer = kafka.producer({ allowAutoTopicCreation: true });
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) {
    messages.push({ key: `k${i}`, value: `v${i}`, headers: { n: `${i}` } });
  }
  await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: group, sessionTimeout: 10000 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let got = 0;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got} of ${count} records in 30 s`)), 30000);
    consumer
      .run({
        eachMessage: async ({ message }) => {
          got += 1;
          console.log(
            JSON.stringify({
              offset: Number(message.offset),
              key: message.key.toString(),
              value: message.value.toString(),
              n: message.headers.n.toString(),
            })
          );
          if (got >= count) {
            clearTimeout(timer);
            resolve();
          }
        },
      })
      .catch(reject);
  });
  await consumer.disconnect();
  console.log(`DONE ${got}`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  }
);
