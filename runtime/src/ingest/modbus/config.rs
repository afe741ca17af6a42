//! The `[modbus]` section: devices, how to reach them, how to poll them and their register maps.
//!
//! Every key is documented in `runtime/config/outpost.example.toml`. [`ModbusConfig::validate`]
//! turns a nonsense value into an error naming the dotted key (`modbus.devices[0].port`) and
//! the fix.

use serde::{Deserialize, Serialize};

/// The most registers one read may ask for (Modbus function codes 0x03 and 0x04).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// The most coils or discrete inputs one read may ask for (function codes 0x01 and 0x02).
pub const MAX_BITS_PER_READ: u16 = 2000;

/// The `[modbus]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// The devices to poll (`[[modbus.devices]]`); none by default.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

/// How a device is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Modbus TCP (`host`, `port`).
    Tcp,
    /// Modbus RTU over a serial line (`serial_path`, `baud_rate`, `parity`, `data_bits`,
    /// `stop_bits`).
    Rtu,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity (the Modbus default).
    Even,
    /// Odd parity.
    Odd,
}

/// One `[[modbus.devices]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device name: the record key, the `device` field and part of the default topic.
    /// 1-64 of `[a-z0-9._-]`, unique among the devices.
    pub name: String,
    /// `"tcp"` or `"rtu"`.
    pub transport: Transport,
    /// TCP: host name or IP address of the device or gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// TCP: port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// RTU: the serial device, e.g. `/dev/ttyUSB0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_path: Option<String>,
    /// RTU: line speed in bit/s.
    #[serde(default = "default_baud_rate")]
    pub baud_rate: u32,
    /// RTU: `"none"`, `"even"` or `"odd"`.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// RTU: data bits, 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// RTU: stop bits, 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Modbus unit id (slave address), 0-255.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Time between the starts of two polls, in ms.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Log topic of the records; unset: `sensors.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Store a record only when a value or the quality changed since the last stored one.
    #[serde(default)]
    pub on_change: bool,
    /// With `on_change`: store a record anyway after this many polls without one; 0 = never.
    #[serde(default)]
    pub heartbeat_polls: u32,
    /// How long to wait for the answer to one request, in ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long to wait for a TCP connection (or the serial port) to open, in ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Pause after connecting before the first request, in ms (slow gateways).
    #[serde(default)]
    pub delay_after_connect_ms: u64,
    /// Pause between two requests, in ms (RS-485 bus turnaround).
    #[serde(default)]
    pub delay_between_requests_ms: u64,
    /// Retries of a request answered with exception 0x06 "server device busy" or
    /// 0x05 "acknowledge".
    #[serde(default = "default_busy_retries")]
    pub busy_retries: u32,
    /// Pause before such a retry, in ms.
    #[serde(default = "default_busy_retry_delay_ms")]
    pub busy_retry_delay_ms: u64,
    /// Wait after the first failed poll before the next attempt, in ms; doubles with every
    /// further failure...
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// ...up to this, in ms. The wait is never shorter than `poll_interval_ms`.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Registers of one kind closer than this many unused registers are read in one request.
    #[serde(default)]
    pub max_gap_registers: u16,
    /// Coils or discrete inputs closer than this many unused bits are read in one request.
    #[serde(default)]
    pub max_gap_bits: u16,
    /// The most registers one request reads (1-125).
    #[serde(default = "default_max_registers_per_read")]
    pub max_registers_per_read: u16,
    /// The most coils or discrete inputs one request reads (1-2000).
    #[serde(default = "default_max_bits_per_read")]
    pub max_bits_per_read: u16,
    /// The register map: one entry per value (`[[modbus.devices.points]]`).
    #[serde(default)]
    pub points: Vec<PointConfig>,
}

fn default_port() -> u16 {
    502
}
fn default_baud_rate() -> u32 {
    9600
}
fn default_parity() -> Parity {
    Parity::Even
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_unit_id() -> u8 {
    1
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_request_timeout_ms() -> u64 {
    1000
}
fn default_connect_timeout_ms() -> u64 {
    3000
}
fn default_busy_retries() -> u32 {
    3
}
fn default_busy_retry_delay_ms() -> u64 {
    100
}
fn default_backoff_initial_ms() -> u64 {
    1000
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_max_registers_per_read() -> u16 {
    MAX_REGISTERS_PER_READ
}
fn default_max_bits_per_read() -> u16 {
    MAX_BITS_PER_READ
}

impl DeviceConfig {
    /// A TCP device with every optional key at its default and no points.
    pub fn tcp(name: &str, host: &str, port: u16) -> DeviceConfig {
        DeviceConfig {
            name: name.to_string(),
            transport: Transport::Tcp,
            host: Some(host.to_string()),
            port,
            serial_path: None,
            baud_rate: default_baud_rate(),
            parity: default_parity(),
            data_bits: default_data_bits(),
            stop_bits: default_stop_bits(),
            unit_id: default_unit_id(),
            poll_interval_ms: default_poll_interval_ms(),
            topic: None,
            on_change: false,
            heartbeat_polls: 0,
            request_timeout_ms: default_request_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            delay_after_connect_ms: 0,
            delay_between_requests_ms: 0,
            busy_retries: default_busy_retries(),
            busy_retry_delay_ms: default_busy_retry_delay_ms(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            max_gap_registers: 0,
            max_gap_bits: 0,
            max_registers_per_read: default_max_registers_per_read(),
            max_bits_per_read: default_max_bits_per_read(),
            points: Vec::new(),
        }
    }

    /// The log topic records go to.
    pub fn topic_name(&self) -> String {
        match &self.topic {
            Some(topic) => topic.clone(),
            None => format!("sensors.{}", self.name),
        }
    }

    /// Where the device is, for status and logs (`tcp 10.0.0.5:502`, `rtu /dev/ttyUSB0 9600 8E1`).
    pub fn address_label(&self) -> String {
        match self.transport {
            Transport::Tcp => format!("tcp {}:{}", self.host.as_deref().unwrap_or("?"), self.port),
            Transport::Rtu => {
                let parity = match self.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                };
                format!(
                    "rtu {} {} {}{}{}",
                    self.serial_path.as_deref().unwrap_or("?"),
                    self.baud_rate,
                    self.data_bits,
                    parity,
                    self.stop_bits
                )
            }
        }
    }
}

/// Which Modbus table a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// Coils (read with function 0x01); one bit each.
    Coil,
    /// Discrete inputs (0x02); one bit each.
    DiscreteInput,
    /// Holding registers (0x03); 16 bits each.
    Holding,
    /// Input registers (0x04); 16 bits each.
    Input,
}

impl RegisterKind {
    /// Coils and discrete inputs are bits; the others are 16-bit registers.
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::DiscreteInput)
    }

    /// The name used in logs and status.
    pub fn label(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::DiscreteInput => "discrete_input",
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
        }
    }
}

/// How the registers of a point are read as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Unsigned 16 bits, one register.
    U16,
    /// Signed 16 bits, one register.
    I16,
    /// Unsigned 32 bits, two registers.
    U32,
    /// Signed 32 bits, two registers.
    I32,
    /// Unsigned 64 bits, four registers.
    U64,
    /// Signed 64 bits, four registers.
    I64,
    /// IEEE 754 single precision, two registers.
    F32,
    /// IEEE 754 double precision, four registers.
    F64,
    /// A coil or discrete input, or one bit (`bit`) of a register (any bit set without `bit`).
    Bool,
    /// `length` registers of text, two bytes each; trailing NULs and spaces are dropped.
    String,
}

impl ValueType {
    /// Registers one value of this type spans (strings: their `length`).
    pub fn registers(self, length: u16) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 | ValueType::Bool => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
            ValueType::String => length,
        }
    }

    fn is_numeric(self) -> bool {
        !matches!(self, ValueType::Bool | ValueType::String)
    }
}

/// Byte or word order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Most significant first (the Modbus standard).
    Big,
    /// Least significant first.
    Little,
}

/// One value of a device's register map (`[[modbus.devices.points]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Name of the value in the record's `values` object; unique per device.
    pub name: String,
    /// `"coil"`, `"discrete_input"`, `"holding"` or `"input"`.
    pub kind: RegisterKind,
    /// Address of the (first) register or bit, 0-based as on the wire.
    pub address: u16,
    /// Value type; unset: `"bool"` for coils and discrete inputs, `"u16"` for registers.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    /// Order of the two bytes inside each register.
    #[serde(default = "default_order")]
    pub byte_order: Order,
    /// Order of the registers of a 32/64-bit value (`"little"`: lowest word first).
    #[serde(default = "default_order")]
    pub word_order: Order,
    /// `"string"`: number of registers (two characters each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u16>,
    /// `"bool"` on a register: the bit (0 = least significant) that holds the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bit: Option<u8>,
    /// Numbers: the stored value is `raw * scale + offset`.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Numbers: added after `scale`.
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit, reported in the record's `units` object (e.g. `"°C"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

fn default_order() -> Order {
    Order::Big
}
fn default_scale() -> f64 {
    1.0
}

impl PointConfig {
    /// A point with big-endian orders, no scaling and no unit.
    pub fn new(name: &str, kind: RegisterKind, address: u16, value_type: ValueType) -> Self {
        PointConfig {
            name: name.to_string(),
            kind,
            address,
            value_type: Some(value_type),
            byte_order: Order::Big,
            word_order: Order::Big,
            length: None,
            bit: None,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    /// The value type, with the default filled in.
    pub fn value_type(&self) -> ValueType {
        match self.value_type {
            Some(t) => t,
            None if self.kind.is_bit() => ValueType::Bool,
            None => ValueType::U16,
        }
    }

    /// How many registers (or bits) the point spans.
    pub fn width(&self) -> u16 {
        if self.kind.is_bit() {
            1
        } else {
            self.value_type().registers(self.length.unwrap_or(0))
        }
    }

    /// True when `scale` or `offset` change the raw value.
    pub fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }
}

type Problem = (String, String);

fn problem(key: String, text: impl Into<String>) -> Problem {
    (key, text.into())
}

fn range(key: String, value: u64, min: u64, max: u64) -> Result<(), Problem> {
    if value < min || value > max {
        return Err(problem(
            key,
            format!("{value} is out of range; set it between {min} and {max}"),
        ));
    }
    Ok(())
}

impl ModbusConfig {
    /// Checks every device; the error is `(dotted key, problem and fix)`.
    pub fn validate(&self) -> Result<(), Problem> {
        let mut names = std::collections::BTreeSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            let key = |k: &str| format!("modbus.devices[{i}].{k}");
            device.validate(i)?;
            if !names.insert(device.name.as_str()) {
                return Err(problem(
                    key("name"),
                    format!(
                        "{:?} is used by two devices; give each device its own name",
                        device.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl DeviceConfig {
    /// Checks one device (`index` is its position, for the key in the error).
    pub fn validate(&self, index: usize) -> Result<(), Problem> {
        let key = |k: &str| format!("modbus.devices[{index}].{k}");
        let name_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(name_ok) {
            return Err(problem(
                key("name"),
                format!(
                    "{:?} must be 1 to 64 characters of lower-case letters, digits, '.', '_' or '-'",
                    self.name
                ),
            ));
        }
        match self.transport {
            Transport::Tcp => {
                if self.host.as_deref().is_none_or(str::is_empty) {
                    return Err(problem(
                        key("host"),
                        "is missing; a \"tcp\" device needs `host` (and `port`, default 502)",
                    ));
                }
                range(key("port"), u64::from(self.port), 1, 65535)?;
                if self.serial_path.is_some() {
                    return Err(problem(
                        key("serial_path"),
                        "only applies to transport = \"rtu\"; remove it or change `transport`",
                    ));
                }
            }
            Transport::Rtu => {
                if self.serial_path.as_deref().is_none_or(str::is_empty) {
                    return Err(problem(
                        key("serial_path"),
                        "is missing; an \"rtu\" device needs e.g. serial_path = \"/dev/ttyUSB0\"",
                    ));
                }
                if self.host.is_some() {
                    return Err(problem(
                        key("host"),
                        "only applies to transport = \"tcp\"; remove it or change `transport`",
                    ));
                }
                if super::serial::baud_constant(self.baud_rate).is_none() {
                    return Err(problem(
                        key("baud_rate"),
                        format!(
                            "{} is not a supported speed; use one of {}",
                            self.baud_rate,
                            super::serial::SUPPORTED_BAUD_RATES
                                .iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                range(key("data_bits"), u64::from(self.data_bits), 7, 8)?;
                range(key("stop_bits"), u64::from(self.stop_bits), 1, 2)?;
            }
        }
        if let Some(topic) = &self.topic {
            crate::log::validate_topic_name(topic)
                .map_err(|e| problem(key("topic"), format!("{e}; use e.g. \"sensors.fridge\"")))?;
        } else {
            crate::log::validate_topic_name(&self.topic_name()).map_err(|e| {
                problem(key("name"), format!("makes the default topic invalid: {e}"))
            })?;
        }
        range(
            key("poll_interval_ms"),
            self.poll_interval_ms,
            10,
            86_400_000,
        )?;
        range(
            key("request_timeout_ms"),
            self.request_timeout_ms,
            1,
            600_000,
        )?;
        range(
            key("connect_timeout_ms"),
            self.connect_timeout_ms,
            1,
            600_000,
        )?;
        range(
            key("delay_after_connect_ms"),
            self.delay_after_connect_ms,
            0,
            60_000,
        )?;
        range(
            key("delay_between_requests_ms"),
            self.delay_between_requests_ms,
            0,
            60_000,
        )?;
        range(key("busy_retries"), u64::from(self.busy_retries), 0, 100)?;
        range(
            key("busy_retry_delay_ms"),
            self.busy_retry_delay_ms,
            0,
            60_000,
        )?;
        range(
            key("backoff_initial_ms"),
            self.backoff_initial_ms,
            1,
            3_600_000,
        )?;
        range(
            key("backoff_max_ms"),
            self.backoff_max_ms,
            self.backoff_initial_ms,
            3_600_000,
        )?;
        range(
            key("max_registers_per_read"),
            u64::from(self.max_registers_per_read),
            1,
            u64::from(MAX_REGISTERS_PER_READ),
        )?;
        range(
            key("max_bits_per_read"),
            u64::from(self.max_bits_per_read),
            1,
            u64::from(MAX_BITS_PER_READ),
        )?;
        range(
            key("max_gap_registers"),
            u64::from(self.max_gap_registers),
            0,
            u64::from(MAX_REGISTERS_PER_READ),
        )?;
        range(
            key("max_gap_bits"),
            u64::from(self.max_gap_bits),
            0,
            u64::from(MAX_BITS_PER_READ),
        )?;
        if self.points.is_empty() {
            return Err(problem(
                key("points"),
                "is empty; add at least one [[modbus.devices.points]] entry",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (j, point) in self.points.iter().enumerate() {
            point.validate(&format!("modbus.devices[{index}].points[{j}]"), self)?;
            if !names.insert(point.name.as_str()) {
                return Err(problem(
                    format!("modbus.devices[{index}].points[{j}].name"),
                    format!("{:?} is used twice on this device", point.name),
                ));
            }
        }
        Ok(())
    }
}

impl PointConfig {
    fn validate(&self, prefix: &str, device: &DeviceConfig) -> Result<(), Problem> {
        let key = |k: &str| format!("{prefix}.{k}");
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(problem(key("name"), "must be 1 to 128 characters"));
        }
        if self.kind.is_bit() {
            if self.value_type() != ValueType::Bool {
                return Err(problem(
                    key("type"),
                    format!(
                        "a {} is one bit; use type = \"bool\" (or leave `type` out)",
                        self.kind.label()
                    ),
                ));
            }
            if self.bit.is_some() {
                return Err(problem(
                    key("bit"),
                    "only applies to a \"bool\" read from a register; remove it",
                ));
            }
        }
        if self.value_type() == ValueType::String {
            match self.length {
                Some(n) if (1..=device.max_registers_per_read).contains(&n) => {}
                _ => {
                    return Err(problem(
                        key("length"),
                        format!(
                            "a \"string\" needs `length` = number of registers, 1 to {}",
                            device.max_registers_per_read
                        ),
                    ))
                }
            }
        } else if self.length.is_some() {
            return Err(problem(key("length"), "only applies to type = \"string\""));
        }
        if let Some(bit) = self.bit {
            if self.value_type() != ValueType::Bool {
                return Err(problem(key("bit"), "only applies to type = \"bool\""));
            }
            range(key("bit"), u64::from(bit), 0, 15)?;
        }
        if !self.value_type().is_numeric() && self.is_scaled() {
            return Err(problem(
                key("scale"),
                "`scale` and `offset` only apply to numbers; remove them",
            ));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(problem(
                key("scale"),
                "must be a finite number other than 0",
            ));
        }
        if !self.offset.is_finite() {
            return Err(problem(key("offset"), "must be a finite number"));
        }
        let width = self.width();
        let limit = if self.kind.is_bit() {
            device.max_bits_per_read
        } else {
            device.max_registers_per_read
        };
        if width > limit {
            return Err(problem(
                key("type"),
                format!(
                    "spans {width} registers, more than one read may ask for ({limit}); \
                     raise `max_registers_per_read` or shorten the value"
                ),
            ));
        }
        if u32::from(self.address) + u32::from(width) > 65536 {
            return Err(problem(
                key("address"),
                format!(
                    "{} + {width} registers runs past address 65535",
                    self.address
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_toml(extra: &str) -> String {
        format!(
            "[[devices]]\nname = \"fridge-1\"\ntransport = \"tcp\"\nhost = \"127.0.0.1\"\n{extra}\n\
             [[devices.points]]\nname = \"temp\"\nkind = \"input\"\naddress = 0\ntype = \"f32\"\n"
        )
    }

    fn parse(text: &str) -> ModbusConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_minimal_tcp_device_parses_with_defaults() {
        let config = parse(&device_toml(""));
        config.validate().unwrap();
        let device = &config.devices[0];
        assert_eq!(device.port, 502);
        assert_eq!(device.unit_id, 1);
        assert_eq!(device.topic_name(), "sensors.fridge-1");
        assert_eq!(device.points[0].value_type(), ValueType::F32);
        assert_eq!(device.points[0].width(), 2);
        assert_eq!(device.address_label(), "tcp 127.0.0.1:502");
    }

    #[test]
    fn unknown_keys_in_a_point_are_rejected() {
        let text = device_toml("") + "scael = 2.0\n";
        let err = toml::from_str::<ModbusConfig>(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("scael"), "{err}");
    }

    #[test]
    fn an_rtu_device_without_a_serial_path_names_the_key() {
        let text = device_toml("").replace(
            "transport = \"tcp\"\nhost = \"127.0.0.1\"",
            "transport = \"rtu\"",
        );
        let (key, text) = parse(&text).validate().unwrap_err();
        assert_eq!(key, "modbus.devices[0].serial_path");
        assert!(text.contains("/dev/ttyUSB0"), "{text}");
    }

    #[test]
    fn an_unsupported_baud_rate_lists_the_supported_ones() {
        let text = device_toml("baud_rate = 12345").replace(
            "transport = \"tcp\"\nhost = \"127.0.0.1\"",
            "transport = \"rtu\"\nserial_path = \"/dev/ttyS0\"",
        );
        let (key, text) = parse(&text).validate().unwrap_err();
        assert_eq!(key, "modbus.devices[0].baud_rate");
        assert!(text.contains("9600"), "{text}");
    }

    #[test]
    fn duplicate_device_and_point_names_are_rejected() {
        let one = device_toml("");
        let (key, _) = parse(&format!("{one}{one}")).validate().unwrap_err();
        assert_eq!(key, "modbus.devices[1].name");
        let text = device_toml("")
            + "[[devices.points]]\nname = \"temp\"\nkind = \"holding\"\naddress = 9\n";
        let (key, _) = parse(&text).validate().unwrap_err();
        assert_eq!(key, "modbus.devices[0].points[1].name");
    }

    #[test]
    fn a_string_needs_a_length_and_a_coil_must_be_bool() {
        let text = device_toml("").replace("type = \"f32\"", "type = \"string\"");
        let (key, _) = parse(&text).validate().unwrap_err();
        assert_eq!(key, "modbus.devices[0].points[0].length");
        let text = device_toml("").replace("kind = \"input\"", "kind = \"coil\"");
        let (key, _) = parse(&text).validate().unwrap_err();
        assert_eq!(key, "modbus.devices[0].points[0].type");
        let text = text.replace("type = \"f32\"\n", "");
        let config = parse(&text);
        config.validate().unwrap();
        assert_eq!(config.devices[0].points[0].value_type(), ValueType::Bool);
    }

    #[test]
    fn a_value_running_past_the_last_address_is_rejected() {
        let text = device_toml("").replace("address = 0", "address = 65535");
        let (key, _) = parse(&text).validate().unwrap_err();
        assert_eq!(key, "modbus.devices[0].points[0].address");
    }

    #[test]
    fn read_sizes_are_capped_at_the_protocol_limits() {
        let (key, _) = parse(&device_toml("max_registers_per_read = 126"))
            .validate()
            .unwrap_err();
        assert_eq!(key, "modbus.devices[0].max_registers_per_read");
        let (key, _) = parse(&device_toml("max_bits_per_read = 2001"))
            .validate()
            .unwrap_err();
        assert_eq!(key, "modbus.devices[0].max_bits_per_read");
    }

    #[test]
    fn scaling_a_bool_is_rejected() {
        let text = device_toml("").replace("type = \"f32\"", "type = \"bool\"\nscale = 0.1");
        let (key, _) = parse(&text).validate().unwrap_err();
        assert_eq!(key, "modbus.devices[0].points[0].scale");
    }
}
