//! Just enough of the MQTT wire format (3.1, 3.1.1 and 5) for the device-facing listener: find
//! where one control packet ends, read a CONNECT's protocol level, client id and last will,
//! (with the MQTT 5 session expiry and will delay intervals), read a PUBLISH's topic, QoS,
//! packet id and payload (resolving MQTT 5 topic aliases), and tell whether a DISCONNECT asks
//! for the will to be published.
//!
//! Every control packet starts with a fixed header: one byte (packet type in the high nibble,
//! flags in the low one) and the *remaining length*, a variable byte integer of one to four
//! bytes (7 bits each, least significant first, high bit = more bytes follow). The listener
//! forwards packets byte for byte, with three exceptions written here: a device's CONNECT gets
//! the embedded broker's private login in place of its own ([`with_login`]), and the listener's
//! own refusals — an MQTT 5 DISCONNECT with a reason code ([`disconnect`]) and the CONNACK that
//! turns a device away when the listener is at its connection budget ([`connack_refused`]).

/// Packet type of CONNECT (high nibble of the first byte).
pub const CONNECT: u8 = 1;
/// Packet type of PUBLISH.
pub const PUBLISH: u8 = 3;
/// Packet type of DISCONNECT.
pub const DISCONNECT: u8 = 14;

/// MQTT 5 reason code "Unspecified error".
pub const REASON_UNSPECIFIED: u8 = 0x80;
/// MQTT 5 reason code "Topic Name invalid": well formed, but not accepted by this server.
pub const REASON_TOPIC_NAME_INVALID: u8 = 0x90;
/// MQTT 5 reason code "Packet too large".
pub const REASON_PACKET_TOO_LARGE: u8 = 0x95;
/// MQTT 5 reason code "Quota exceeded".
pub const REASON_QUOTA_EXCEEDED: u8 = 0x97;
/// MQTT 5 reason code "Payload format invalid": the payload is not what the topic takes.
pub const REASON_PAYLOAD_FORMAT_INVALID: u8 = 0x99;
/// MQTT 5 property id of a Reason String.
const PROP_REASON_STRING: u8 = 0x1F;

/// MQTT 5 DISCONNECT reason code "Disconnect with Will Message".
const REASON_DISCONNECT_WITH_WILL: u8 = 0x04;

/// The MQTT 5 property id of a topic alias (a two-byte integer).
const PROP_TOPIC_ALIAS: u8 = 0x23;
/// MQTT 5 property id of the Session Expiry Interval (CONNECT).
const PROP_SESSION_EXPIRY: u8 = 0x11;
/// MQTT 5 property id of the Will Delay Interval (will properties).
const PROP_WILL_DELAY: u8 = 0x18;

/// Malformed or unsupported packets. Any of them ends the device's connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The remaining length uses more than four bytes.
    #[error("the remaining length field is longer than four bytes")]
    BadRemainingLength,
    /// A packet larger than the listener accepts.
    #[error("a packet of {size} bytes is larger than the limit of {limit} bytes (`mqtt.broker.max_payload_bytes`)")]
    TooLarge { size: usize, limit: usize },
    /// The first packet of a connection was not a CONNECT.
    #[error("the first packet has type {0}, not CONNECT")]
    NotConnect(u8),
    /// A field runs past the end of its packet.
    #[error("the {0} runs past the end of the packet")]
    Truncated(&'static str),
    /// A string that must be UTF-8 is not.
    #[error("the {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// The protocol name is neither `MQTT` nor `MQIsdp`.
    #[error("unknown protocol name {0:?}")]
    UnknownProtocol(String),
    /// A PUBLISH with QoS 3.
    #[error("a PUBLISH has the invalid QoS 3")]
    BadQos,
    /// An MQTT 5 property this parser does not know (it cannot skip it safely).
    #[error("unknown MQTT 5 property id {0:#04x}")]
    UnknownProperty(u8),
    /// An MQTT 5 PUBLISH with an empty topic and a topic alias never set on this connection.
    #[error("topic alias {0} was never set on this connection")]
    UnknownAlias(u16),
}

/// Where a complete packet sits at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The first byte: type and flags.
    pub first: u8,
    /// Bytes of the fixed header (1 + length of the remaining length field).
    pub header_len: usize,
    /// Bytes of the whole packet.
    pub total_len: usize,
}

impl Frame {
    /// The packet type (1 = CONNECT, 3 = PUBLISH, …).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// Finds the packet at the start of `buf`: `Ok(None)` when more bytes are needed.
/// `max_len` caps the size of a whole packet.
pub fn frame(buf: &[u8], max_len: usize) -> Result<Option<Frame>, PacketError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            let header_len = 2 + i;
            let total_len = header_len + remaining;
            if total_len > max_len {
                return Err(PacketError::TooLarge {
                    size: total_len,
                    limit: max_len,
                });
            }
            if buf.len() < total_len {
                return Ok(None);
            }
            return Ok(Some(Frame {
                first,
                header_len,
                total_len,
            }));
        }
    }
    Err(PacketError::BadRemainingLength)
}

/// What the listener needs from a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub level: u8,
    /// The client identifier (may be empty).
    pub client_id: String,
    /// Clean Start (MQTT 5) / Clean Session (3.1.1): any earlier session of this client ends.
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval in seconds: how long the session outlives the connection
    /// (0, also in MQTT 3.1.1: it ends with the connection).
    pub session_expiry_s: u32,
    /// The last will the broker publishes when the connection ends without a DISCONNECT.
    pub will: Option<Will>,
}

impl Connect {
    /// How long after the connection ended its will is due (MQTT 5 §3.1.3.2.2): the Will
    /// Delay Interval, or the end of the session if that comes first; 0 in MQTT 3.1.1.
    pub fn will_delay_s(&self) -> u32 {
        self.will
            .as_ref()
            .map_or(0, |w| w.delay_s.min(self.session_expiry_s))
    }
}

/// A CONNECT's last will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    /// 0, 1 or 2.
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 Will Delay Interval in seconds (0 in MQTT 3.1.1).
    pub delay_s: u32,
}

/// A cursor over one packet's variable header and payload.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PacketError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(PacketError::Truncated(what))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(PacketError::Truncated(what))?;
        self.pos = end;
        Ok(bytes)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, PacketError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, PacketError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn binary(&mut self, what: &'static str) -> Result<&'a [u8], PacketError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    fn string(&mut self, what: &'static str) -> Result<&'a str, PacketError> {
        std::str::from_utf8(self.binary(what)?).map_err(|_| PacketError::NotUtf8(what))
    }
    fn varint(&mut self, what: &'static str) -> Result<usize, PacketError> {
        let mut value = 0usize;
        for i in 0..4 {
            let byte = self.u8(what)?;
            value |= ((byte & 0x7f) as usize) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(PacketError::BadRemainingLength)
    }
}

/// Reads a CONNECT packet (the whole packet, fixed header included).
pub fn parse_connect(packet: &[u8], frame: &Frame) -> Result<Connect, PacketError> {
    parse_connect_at(packet, frame).map(|(connect, _)| connect)
}

/// Where a CONNECT's fields sit, for [`with_login`].
#[derive(Debug, Clone, Copy)]
struct ConnectLayout {
    /// Position of the connect flags byte.
    flags_at: usize,
    /// Position right after the last field before the user name (client id or will payload).
    login_at: usize,
}

fn parse_connect_at(packet: &[u8], frame: &Frame) -> Result<(Connect, ConnectLayout), PacketError> {
    if frame.kind() != CONNECT {
        return Err(PacketError::NotConnect(frame.kind()));
    }
    let mut r = Reader {
        buf: &packet[..frame.total_len],
        pos: frame.header_len,
    };
    let name = r.string("protocol name")?;
    if name != "MQTT" && name != "MQIsdp" {
        return Err(PacketError::UnknownProtocol(name.to_string()));
    }
    let level = r.u8("protocol level")?;
    let flags_at = r.pos;
    let flags = r.u8("connect flags")?;

    let _keep_alive = r.u16("keep alive")?;
    let mut session_expiry_s = 0;
    if level == 5 {
        let len = r.varint("connect properties")?;
        let props = r.take(len, "connect properties")?;
        session_expiry_s = four_byte_property(props, PROP_SESSION_EXPIRY)?.unwrap_or(0);
    }
    let client_id = r.string("client id")?.to_string();
    let will = if flags & 0x04 != 0 {
        let mut delay_s = 0;
        if level == 5 {
            let len = r.varint("will properties")?;
            let props = r.take(len, "will properties")?;
            delay_s = four_byte_property(props, PROP_WILL_DELAY)?.unwrap_or(0);
        }
        let topic = r.string("will topic")?.to_string();
        let payload = r.binary("will payload")?.to_vec();
        let qos = (flags >> 3) & 0x03;
        if qos > 2 {
            return Err(PacketError::BadQos);
        }
        Some(Will {
            topic,
            payload,
            qos,
            retain: flags & 0x20 != 0,
            delay_s,
        })
    } else {
        None
    };
    let layout = ConnectLayout {
        flags_at,
        login_at: r.pos,
    };
    if flags & 0x80 != 0 {
        r.string("user name")?;
    }
    if flags & 0x40 != 0 {
        r.binary("password")?;
    }
    let connect = Connect {
        level,
        client_id,
        clean_start: flags & 0x02 != 0,
        session_expiry_s,
        will,
    };
    Ok((connect, layout))
}

/// Appends `n` as a variable byte integer (the remaining length's encoding).
fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
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

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let len = s.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&s[..len]);
}

/// The CONNECT in `packet` with its user name and password replaced by `user`/`password`
/// (added when it had none); every other byte is kept. The device's own credentials never
/// reach the embedded broker, which accepts only Outpost's private login.
pub fn with_login(
    packet: &[u8],
    frame: &Frame,
    user: &str,
    password: &str,
) -> Result<Vec<u8>, PacketError> {
    let (_, layout) = parse_connect_at(packet, frame)?;
    let mut body = Vec::with_capacity(frame.total_len + user.len() + password.len() + 4);
    body.extend_from_slice(&packet[frame.header_len..layout.login_at]);
    body[layout.flags_at - frame.header_len] |= 0xC0;
    put_string(&mut body, user.as_bytes());
    put_string(&mut body, password.as_bytes());
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(packet[0]);
    put_remaining_length(&mut out, body.len());
    out.extend(body);
    Ok(out)
}

/// An MQTT 5 DISCONNECT with `reason` and a Reason String `why` (cut to 200 bytes).
pub fn disconnect(reason: u8, why: &str) -> Vec<u8> {
    let mut cut = why.len().min(200);
    while !why.is_char_boundary(cut) {
        cut -= 1;
    }
    let why = &why.as_bytes()[..cut];
    let mut props = vec![PROP_REASON_STRING];
    put_string(&mut props, why);
    let mut body = vec![reason];
    put_remaining_length(&mut body, props.len());
    body.extend(props);
    let mut out = vec![DISCONNECT << 4];
    put_remaining_length(&mut out, body.len());
    out.extend(body);
    out
}

/// The CONNACK that refuses a connection because the server is at its limit: MQTT 5 reason
/// "Quota exceeded", MQTT 3.1/3.1.1 return code 3 "Server unavailable".
pub fn connack_refused(level: u8) -> Vec<u8> {
    if level == 5 {
        vec![0x20, 0x03, 0x00, REASON_QUOTA_EXCEEDED, 0x00]
    } else {
        vec![0x20, 0x02, 0x00, 0x03]
    }
}

/// Whether a DISCONNECT packet (the whole packet) still asks the broker to publish the will:
/// never in MQTT 3.1/3.1.1; in MQTT 5 with reason code 0x04 "Disconnect with Will Message".
pub fn disconnect_keeps_will(packet: &[u8], frame: &Frame, level: u8) -> bool {
    level == 5
        && frame.total_len > frame.header_len
        && packet.get(frame.header_len) == Some(&REASON_DISCONNECT_WITH_WILL)
}

/// What the listener needs from a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    /// The topic (resolved through the connection's topic aliases for MQTT 5).
    pub topic: std::borrow::Cow<'a, str>,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Set on a re-delivery attempt.
    pub dup: bool,
    /// The packet id (0 for QoS 0).
    pub pkid: u16,
    /// The application message.
    pub payload: &'a [u8],
}

/// The topic aliases a device set on its connection (MQTT 5, client to server direction).
#[derive(Debug, Default)]
pub struct Aliases {
    map: std::collections::HashMap<u16, String>,
}

/// Reads a PUBLISH packet. `level` is the connection's protocol level; `aliases` is updated
/// when an MQTT 5 publish sets an alias.
pub fn parse_publish<'a>(
    packet: &'a [u8],
    frame: &Frame,
    level: u8,
    aliases: &mut Aliases,
) -> Result<Publish<'a>, PacketError> {
    let flags = frame.first & 0x0f;
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err(PacketError::BadQos);
    }
    let mut r = Reader {
        buf: &packet[..frame.total_len],
        pos: frame.header_len,
    };
    let topic = r.string("topic")?;
    let pkid = if qos > 0 { r.u16("packet id")? } else { 0 };
    let mut alias = None;
    if level == 5 {
        let len = r.varint("publish properties")?;
        let props = r.take(len, "publish properties")?;
        alias = topic_alias(props)?;
    }
    let payload = &r.buf[r.pos..];
    let topic = match (topic.is_empty(), alias) {
        (false, Some(a)) => {
            aliases.map.insert(a, topic.to_string());
            std::borrow::Cow::Borrowed(topic)
        }
        (false, None) => std::borrow::Cow::Borrowed(topic),
        (true, Some(a)) => match aliases.map.get(&a) {
            Some(t) => std::borrow::Cow::Owned(t.clone()),
            None => return Err(PacketError::UnknownAlias(a)),
        },
        (true, None) => std::borrow::Cow::Borrowed(topic),
    };
    Ok(Publish {
        topic,
        qos,
        dup: flags & 0x08 != 0,
        pkid,
        payload,
    })
}

/// Walks MQTT 5 properties, calling `each` with every property's id and value bytes (for a
/// string pair: both strings with their length prefixes).
fn walk_properties(
    props: &[u8],
    mut each: impl FnMut(u8, &[u8]) -> Result<(), PacketError>,
) -> Result<(), PacketError> {
    let mut r = Reader { buf: props, pos: 0 };
    while r.pos < props.len() {
        let id = r.varint("property id")?;
        let id = u8::try_from(id).map_err(|_| PacketError::UnknownProperty(0xff))?;
        let start = r.pos;
        match id {
            // payload format, request problem/response information, maximum QoS, retain /
            // wildcard / subscription id / shared subscription available
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                r.take(1, "property")?;
            }
            // server keep alive, receive maximum, topic alias maximum, topic alias
            0x13 | 0x21 | 0x22 | 0x23 => {
                r.take(2, "property")?;
            }
            // message expiry, session expiry, will delay, maximum packet size
            0x02 | 0x11 | 0x18 | 0x27 => {
                r.take(4, "property")?;
            }
            // subscription identifier
            0x0b => {
                r.varint("property")?;
            }
            // content type, response topic, correlation data, assigned client id, auth
            // method, auth data, response information, server reference, reason string
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                r.binary("property")?;
            }
            // user property: a string pair
            0x26 => {
                r.binary("property")?;
                r.binary("property")?;
            }
            other => return Err(PacketError::UnknownProperty(other)),
        }
        each(id, &props[start..r.pos])?;
    }
    Ok(())
}

/// The value of the four-byte-integer property `wanted`, if present.
fn four_byte_property(props: &[u8], wanted: u8) -> Result<Option<u32>, PacketError> {
    let mut found = None;
    walk_properties(props, |id, v| {
        if id == wanted {
            found = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        }
        Ok(())
    })?;
    Ok(found)
}

/// Walks MQTT 5 PUBLISH properties and returns the topic alias, if any.
fn topic_alias(props: &[u8]) -> Result<Option<u16>, PacketError> {
    let mut alias = None;
    walk_properties(props, |id, v| {
        if id == PROP_TOPIC_ALIAS {
            alias = Some(u16::from_be_bytes([v[0], v[1]]));
        }
        Ok(())
    })?;
    Ok(alias)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remaining_length(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        put_remaining_length(&mut out, n);
        out
    }

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![first];
        p.extend(remaining_length(body.len()));
        p.extend_from_slice(body);
        p
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn frames_are_found_only_when_complete() {
        let body = vec![7u8; 300];
        let p = packet(0x30, &body);
        assert_eq!(p[1..3], [0xac, 0x02]);
        for cut in 0..p.len() {
            assert_eq!(frame(&p[..cut], 1 << 20).unwrap(), None, "cut at {cut}");
        }
        let mut two = p.clone();
        two.extend_from_slice(&p);
        let f = frame(&two, 1 << 20).unwrap().unwrap();
        assert_eq!((f.kind(), f.header_len, f.total_len), (3, 3, 303));
    }

    #[test]
    fn oversized_and_malformed_lengths_are_refused() {
        let p = packet(0x30, &[0u8; 100]);
        assert!(matches!(
            frame(&p, 50),
            Err(PacketError::TooLarge {
                size: 102,
                limit: 50
            })
        ));
        assert_eq!(
            frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
            Err(PacketError::BadRemainingLength)
        );
    }

    #[test]
    fn connect_of_each_version_yields_level_and_client_id() {
        for (name, level) in [("MQIsdp", 3u8), ("MQTT", 4), ("MQTT", 5)] {
            let mut body = string(name);
            body.extend([level, 0x02, 0, 60]);
            if level == 5 {
                // properties: receive maximum = 10
                body.extend([3, 0x21, 0, 10]);
            }
            body.extend(string("till-7"));
            let p = packet(0x10, &body);
            let f = frame(&p, 1 << 20).unwrap().unwrap();
            let c = parse_connect(&p, &f).unwrap();
            assert_eq!(
                c,
                Connect {
                    level,
                    client_id: "till-7".into(),
                    clean_start: true,
                    session_expiry_s: 0,
                    will: None,
                }
            );
        }
        let p = packet(0x30, &string("x"));
        let f = frame(&p, 1 << 20).unwrap().unwrap();
        assert_eq!(parse_connect(&p, &f), Err(PacketError::NotConnect(3)));
    }

    #[test]
    fn a_connect_with_a_last_will_yields_its_topic_payload_qos_and_retain() {
        for level in [4u8, 5] {
            let mut body = string("MQTT");
            // will flag, will QoS 1, will retain, clean start
            body.extend([level, 0x04 | 0x08 | 0x20 | 0x02, 0, 60]);
            if level == 5 {
                body.push(0); // no connect properties
            }
            body.extend(string("till-7"));
            if level == 5 {
                body.extend([5, 0x18, 0, 0, 0, 10]); // will delay interval = 10 s
            }
            body.extend(string("devices/till-7/status"));
            body.extend(string("offline"));
            let p = packet(0x10, &body);
            let f = frame(&p, 1 << 20).unwrap().unwrap();
            let c = parse_connect(&p, &f).unwrap();
            assert_eq!(
                c.will,
                Some(Will {
                    topic: "devices/till-7/status".into(),
                    payload: b"offline".to_vec(),
                    qos: 1,
                    retain: true,
                    delay_s: if level == 5 { 10 } else { 0 },
                }),
                "level {level}"
            );
            // No session outlives the connection: the will is due at once.
            assert_eq!(c.will_delay_s(), 0);
        }
    }

    #[test]
    fn a_connect_gets_the_private_login_and_keeps_every_other_field() {
        for (level, device_login) in [(4u8, false), (4, true), (5, false), (5, true)] {
            let mut body = string("MQTT");
            let login_flags = if device_login { 0xC0 } else { 0 };
            body.extend([level, 0x04 | 0x08 | 0x02 | login_flags, 0, 60]);
            if level == 5 {
                body.extend([5, 0x11, 0, 0, 0, 30]); // session expiry 30 s
            }
            body.extend(string("till-7"));
            if level == 5 {
                body.push(0); // no will properties
            }
            body.extend(string("devices/till-7/status"));
            body.extend(string("offline"));
            if device_login {
                body.extend(string("device-user"));
                body.extend(string("device-password"));
            }
            let p = packet(0x10, &body);
            let f = frame(&p, 1 << 20).unwrap().unwrap();
            let rewritten = with_login(&p, &f, "outpost-internal", "s3cret").unwrap();
            let g = frame(&rewritten, 1 << 20).unwrap().unwrap();
            assert_eq!(g.total_len, rewritten.len());
            assert_eq!(
                parse_connect(&rewritten, &g).unwrap(),
                parse_connect(&p, &f).unwrap(),
                "level {level}: everything but the login is kept"
            );
            let text = String::from_utf8_lossy(&rewritten).to_string();
            assert!(text.ends_with("outpost-internal\0\x06s3cret"), "{text:?}");
            assert!(
                !text.contains("device-"),
                "the device's own login is dropped"
            );
        }
    }

    #[test]
    fn an_mqtt5_disconnect_carries_its_reason_code_and_string() {
        let d = disconnect(REASON_TOPIC_NAME_INVALID, "no log topic for this name");
        let f = frame(&d, 1 << 20).unwrap().unwrap();
        assert_eq!((f.kind(), f.total_len), (DISCONNECT, d.len()));
        assert_eq!(d[f.header_len], 0x90);
        assert_eq!(d[f.header_len + 1] as usize, d.len() - f.header_len - 2);
        assert_eq!(d[f.header_len + 2], 0x1F);
        assert!(d.ends_with(b"no log topic for this name"));
        let long = disconnect(REASON_UNSPECIFIED, &"\u{e9}".repeat(300));
        assert!(
            frame(&long, 1 << 20).unwrap().is_some(),
            "a long reason is cut"
        );
    }

    #[test]
    fn an_mqtt5_will_is_due_after_its_delay_or_when_the_session_ends_whichever_is_first() {
        let connect = |session_expiry: u32, will_delay: u32| {
            let mut body = string("MQTT");
            // will flag, will QoS 1, resume the session (no clean start)
            body.extend([5, 0x04 | 0x08, 0, 60]);
            // connect properties: session expiry, then a user property to walk past
            let mut props = vec![PROP_SESSION_EXPIRY];
            props.extend(session_expiry.to_be_bytes());
            props.push(0x26);
            props.extend(string("k"));
            props.extend(string("v"));
            body.push(props.len() as u8);
            body.extend(props);
            body.extend(string("till-7"));
            let mut will_props = vec![0x01, 1, PROP_WILL_DELAY];
            will_props.extend(will_delay.to_be_bytes());
            body.push(will_props.len() as u8);
            body.extend(will_props);
            body.extend(string("devices/status"));
            body.extend(string("offline"));
            let p = packet(0x10, &body);
            let f = frame(&p, 1 << 20).unwrap().unwrap();
            parse_connect(&p, &f).unwrap()
        };
        let c = connect(3600, 30);
        assert!(!c.clean_start);
        assert_eq!(
            (c.session_expiry_s, c.will.as_ref().unwrap().delay_s),
            (3600, 30)
        );
        assert_eq!(c.will_delay_s(), 30);
        assert_eq!(connect(5, 30).will_delay_s(), 5);
        assert_eq!(connect(0, 30).will_delay_s(), 0);
    }

    #[test]
    fn only_an_mqtt5_disconnect_with_reason_4_keeps_the_will() {
        let plain = [0xe0, 0x00];
        let f = frame(&plain, 1 << 20).unwrap().unwrap();
        assert!(!disconnect_keeps_will(&plain, &f, 4));
        assert!(!disconnect_keeps_will(&plain, &f, 5));
        let with_will = [0xe0, 0x01, 0x04];
        let f = frame(&with_will, 1 << 20).unwrap().unwrap();
        assert!(disconnect_keeps_will(&with_will, &f, 5));
        assert!(!disconnect_keeps_will(&with_will, &f, 4));
        let normal = [0xe0, 0x01, 0x00];
        let f = frame(&normal, 1 << 20).unwrap().unwrap();
        assert!(!disconnect_keeps_will(&normal, &f, 5));
    }

    #[test]
    fn publish_fields_are_read_for_each_qos() {
        let mut aliases = Aliases::default();
        let mut body = string("pos/payments");
        body.extend_from_slice(b"{\"a\":1}");
        let p = packet(0x31, &body);
        let f = frame(&p, 1 << 20).unwrap().unwrap();
        let pb = parse_publish(&p, &f, 4, &mut aliases).unwrap();
        assert_eq!(
            (pb.topic.as_ref(), pb.qos, pb.pkid, pb.dup, pb.payload),
            ("pos/payments", 0, 0, false, &b"{\"a\":1}"[..])
        );

        let mut body = string("a/b");
        body.extend([0x01, 0x02]);
        body.extend_from_slice(b"xyz");
        let p = packet(0x3a, &body); // dup, qos 1
        let f = frame(&p, 1 << 20).unwrap().unwrap();
        let pb = parse_publish(&p, &f, 4, &mut aliases).unwrap();
        assert_eq!(
            (pb.qos, pb.pkid, pb.dup, pb.payload),
            (1, 258, true, &b"xyz"[..])
        );

        let p = packet(0x36, &string("a"));
        let f = frame(&p, 1 << 20).unwrap().unwrap();
        assert_eq!(
            parse_publish(&p, &f, 4, &mut aliases),
            Err(PacketError::BadQos)
        );
    }

    #[test]
    fn mqtt5_topic_aliases_resolve_across_publishes() {
        let mut aliases = Aliases::default();
        // topic set + alias 4, with a user property and a content type before it
        let mut body = string("sensors/fridge");
        body.extend([0, 9]);
        let mut props = vec![0x26];
        props.extend(string("k"));
        props.extend(string("v"));
        props.push(0x03);
        props.extend(string("json"));
        props.extend([PROP_TOPIC_ALIAS, 0, 4]);
        body.push(props.len() as u8);
        body.extend(&props);
        body.extend_from_slice(b"1");
        let p = packet(0x32, &body);
        let f = frame(&p, 1 << 20).unwrap().unwrap();
        let pb = parse_publish(&p, &f, 5, &mut aliases).unwrap();
        assert_eq!(
            (pb.topic.as_ref(), pb.pkid, pb.payload),
            ("sensors/fridge", 9, &b"1"[..])
        );

        // empty topic + alias 4
        let mut body = string("");
        body.extend([0, 10, 3, PROP_TOPIC_ALIAS, 0, 4]);
        body.extend_from_slice(b"2");
        let p = packet(0x32, &body);
        let f = frame(&p, 1 << 20).unwrap().unwrap();
        let pb = parse_publish(&p, &f, 5, &mut aliases).unwrap();
        assert_eq!(
            (pb.topic.as_ref(), pb.payload),
            ("sensors/fridge", &b"2"[..])
        );

        // an alias never set
        let mut body = string("");
        body.extend([0, 11, 3, PROP_TOPIC_ALIAS, 0, 5]);
        let p = packet(0x32, &body);
        let f = frame(&p, 1 << 20).unwrap().unwrap();
        assert_eq!(
            parse_publish(&p, &f, 5, &mut aliases),
            Err(PacketError::UnknownAlias(5))
        );
    }
}
