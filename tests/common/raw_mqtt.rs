//! A device speaking raw MQTT over a TCP socket, byte by byte, so a test sees every packet the
//! box sends back (a PUBACK, a DISCONNECT and its reason code, the close) — what client
//! libraries hide.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A device speaking raw MQTT (3.1.1 when `level` is 4, 5 when it is 5).
pub struct RawDevice {
    pub stream: TcpStream,
    level: u8,
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

/// A CONNECT of protocol `level` (4: 3.1.1, 5: MQTT 5): clean session, 60 s keep-alive.
pub fn connect_packet(level: u8, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.extend([level, 0x02, 0, 60]);
    if level == 5 {
        body.push(0);
    }
    string(client_id.as_bytes(), &mut body);
    packet(0x10, &body)
}

impl RawDevice {
    /// Connects without sending anything.
    pub fn open(port: u16, level: u8) -> RawDevice {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        RawDevice { stream, level }
    }

    /// Connects and completes the handshake; panics unless the CONNACK accepts.
    pub fn connect(port: u16, level: u8, client_id: &str) -> RawDevice {
        let mut d = RawDevice::open(port, level);
        let ack = d.send_connect(client_id);
        assert_eq!(ack.0, 0x20, "CONNACK expected, got {ack:02x?}");
        assert_eq!(ack.1[1], 0, "the CONNACK refused: {ack:02x?}");
        d
    }

    /// Sends a CONNECT and returns the answer.
    pub fn send_connect(&mut self, client_id: &str) -> (u8, Vec<u8>) {
        self.stream
            .write_all(&connect_packet(self.level, client_id))
            .unwrap();
        self.read_packet().expect("an answer to CONNECT")
    }

    /// Sends a QoS 1 PUBLISH with packet id `pkid` (no properties in MQTT 5).
    pub fn publish_qos1(&mut self, topic: &str, pkid: u16, payload: &[u8]) {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        body.extend_from_slice(&pkid.to_be_bytes());
        if self.level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        self.stream.write_all(&packet(0x32, &body)).unwrap();
    }

    /// Subscribes to `filter` at QoS 0 (packet id 1) and waits for the SUBACK; panics unless
    /// it grants the subscription.
    pub fn subscribe_qos0(&mut self, filter: &str) {
        let mut body = vec![0, 1];
        if self.level == 5 {
            body.push(0);
        }
        string(filter.as_bytes(), &mut body);
        body.push(0);
        self.stream.write_all(&packet(0x82, &body)).unwrap();
        let ack = self.read_packet().expect("a SUBACK");
        assert_eq!(ack.0, 0x90, "SUBACK expected, got {ack:02x?}");
        assert!(ack.1.last() < Some(&0x80), "the SUBACK refused: {ack:02x?}");
    }

    /// The payload of the next PUBLISH (QoS 0, as `subscribe_qos0` asks for; other packets are
    /// skipped), or `None` once the connection is closed or quiet for the read timeout.
    pub fn next_publish_payload(&mut self) -> Option<Vec<u8>> {
        loop {
            let (first, body) = self.read_packet()?;
            if first & 0xf0 != 0x30 {
                continue;
            }
            let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2 + topic_len;
            if first & 0x06 != 0 {
                at += 2; // packet id of QoS 1/2
            }
            if self.level == 5 {
                let mut props = 0usize;
                let mut shift = 0;
                loop {
                    let b = body[at];
                    at += 1;
                    props |= ((b & 0x7f) as usize) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                at += props;
            }
            return Some(body[at..].to_vec());
        }
    }

    /// The next packet (type byte, body), or `None` once the box closed the connection.
    pub fn read_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut first = [0u8; 1];
        match self.stream.read(&mut first) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            self.stream.read_exact(&mut b).ok()?;
            len |= ((b[0] & 0x7f) as usize) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).ok()?;
        Some((first[0], body))
    }

    /// Every packet until the box closes the connection.
    pub fn read_until_closed(&mut self) -> Vec<(u8, Vec<u8>)> {
        std::iter::from_fn(|| self.read_packet()).collect()
    }
}

/// Whether `p` is the PUBACK of packet id `pkid`.
pub fn is_puback_for(p: &(u8, Vec<u8>), pkid: u16) -> bool {
    p.0 == 0x40 && p.1.get(..2) == Some(&pkid.to_be_bytes()[..])
}
