//! A simulated Modbus TCP fridge controller for `outpost simulate` and demos: a real Modbus
//! TCP server (tokio-modbus' server) that Outpost's own Modbus source polls like hardware.
//!
//! # Register map (unit id: any)
//! | table | address | type | name | meaning |
//! |---|---|---|---|---|
//! | input registers | 0–1 | f32, big-endian (ABCD) | `temperature` | cabinet air, °C |
//! | input registers | 2–3 | u32 | `energy` | energy meter, Wh since install |
//! | holding register | 0 | i16, tenths | `setpoint` | 4.0 °C, stored as 40 |
//! | coil | 0 | bool | `door_open` | the door is open |
//! | discrete input | 0 | bool | `compressor` | the compressor runs |
//!
//! [`device`] returns the matching `[[modbus.devices]]` entry; [`start`] serves it on a free
//! loopback port.
//!
//! # The model
//! The temperature drifts slowly around the 4 °C setpoint (a ten-minute swing of ±0.6 °C plus a
//! little noise). Every 90-second cycle the door may open (about two cycles in five, chosen by a
//! fixed hash so runs are reproducible) for 8 to 20 seconds: the air warms by 0.15 °C per second
//! while it is open, then cools back with a one-minute time constant. The compressor runs while
//! the air is above the setpoint; the energy meter counts 8 W of electronics plus the
//! compressor's 102 W at its long-run duty cycle of 55 %. The model is a pure function of the
//! seconds since the server started ([`fridge_at`]), so tests can check it without a clock.

use std::future::{ready, Ready};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::ingest::modbus::{DeviceConfig, PointConfig, RegisterKind, ValueType};

/// The setpoint in °C.
pub const SETPOINT_C: f32 = 4.0;
const CYCLE_S: f64 = 90.0;
const WARMING_C_PER_S: f64 = 0.15;
const COOLING_TAU_S: f64 = 60.0;
const ENERGY_START_WH: f64 = 120_000.0;

/// What the fridge shows at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FridgeReading {
    /// Cabinet air temperature, °C.
    pub temperature_c: f32,
    /// Energy meter, Wh.
    pub energy_wh: u32,
    /// The door is open.
    pub door_open: bool,
    /// The compressor runs.
    pub compressor: bool,
}

/// A small integer hash (SplitMix64's finaliser): reproducible noise without a random crate.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The door opening of cycle `n`, if any: (start, duration) in seconds since the start.
fn door_episode(n: u64) -> Option<(f64, f64)> {
    let h = mix(n);
    if h % 5 >= 2 {
        return None;
    }
    let offset = ((h >> 8) % 50) as f64; // opens within the first 50 s of the cycle
    let duration = 8.0 + ((h >> 16) % 13) as f64; // 8 to 20 s
    Some((n as f64 * CYCLE_S + offset, duration))
}

/// The door-related warming at `t`: the latest episode's, as the earlier ones have cooled off.
fn excursion(t: f64) -> (f64, bool) {
    let cycle = (t / CYCLE_S).floor() as u64;
    for n in [cycle, cycle.saturating_sub(1)] {
        if let Some((start, duration)) = door_episode(n) {
            if t >= start {
                if t < start + duration {
                    return (WARMING_C_PER_S * (t - start), true);
                }
                let peak = WARMING_C_PER_S * duration;
                return (
                    peak * (-(t - start - duration) / COOLING_TAU_S).exp(),
                    false,
                );
            }
        }
        if n == 0 {
            break;
        }
    }
    (0.0, false)
}

fn air_temperature(t: f64) -> f64 {
    let swing = 0.6 * (t * std::f64::consts::TAU / 600.0).sin();
    let noise = ((mix(t as u64 ^ 0x5eed) % 1000) as f64 / 1000.0 - 0.5) * 0.1;
    f64::from(SETPOINT_C) + swing + noise + excursion(t).0
}

/// The fridge `t_s` seconds after the simulation started.
pub fn fridge_at(t_s: f64) -> FridgeReading {
    let t = t_s.max(0.0);
    let temperature = air_temperature(t);
    let (_, door_open) = excursion(t);
    // Energy: 8 W idle plus 102 W for the compressor at its long-run duty cycle of 55 %,
    // counted per whole second so the meter never runs backwards.
    let whole = t.floor();
    let energy = ENERGY_START_WH + whole * (8.0 + 0.55 * 102.0) / 3600.0;
    FridgeReading {
        temperature_c: temperature as f32,
        energy_wh: energy as u32,
        door_open,
        compressor: temperature > f64::from(SETPOINT_C),
    }
}

/// Answers Modbus requests from the model.
#[derive(Debug, Clone)]
struct FridgeService {
    started: Arc<Instant>,
}

impl FridgeService {
    fn answer(&self, request: Request<'_>) -> Result<Response, ExceptionCode> {
        let reading = fridge_at(self.started.elapsed().as_secs_f64());
        let [t_hi, t_lo] = split(reading.temperature_c.to_bits());
        let [e_hi, e_lo] = split(reading.energy_wh);
        let setpoint = ((SETPOINT_C * 10.0).round() as i16) as u16;
        let inputs = [t_hi, t_lo, e_hi, e_lo];
        let holding = [setpoint];
        match request {
            Request::ReadInputRegisters(addr, count) => {
                slice(&inputs, addr, count).map(Response::ReadInputRegisters)
            }
            Request::ReadHoldingRegisters(addr, count) => {
                slice(&holding, addr, count).map(Response::ReadHoldingRegisters)
            }
            Request::ReadCoils(addr, count) => {
                slice(&[reading.door_open], addr, count).map(Response::ReadCoils)
            }
            Request::ReadDiscreteInputs(addr, count) => {
                slice(&[reading.compressor], addr, count).map(Response::ReadDiscreteInputs)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

fn split(v: u32) -> [u16; 2] {
    [(v >> 16) as u16, v as u16]
}

fn slice<T: Copy>(table: &[T], addr: u16, count: u16) -> Result<Vec<T>, ExceptionCode> {
    let start = usize::from(addr);
    let end = start + usize::from(count);
    if count == 0 || end > table.len() {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(table[start..end].to_vec())
}

impl Service for FridgeService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        ready(self.answer(request.request))
    }
}

/// Serves the simulated fridge on `listener` until the returned future is dropped (or the
/// listener fails). Each connection is served on its own task.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    let service = FridgeService {
        started: Arc::new(Instant::now()),
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "The simulated Modbus fridge is serving.");
    }
    let server = Server::new(listener);
    let new_service = move |_peer: SocketAddr| Ok(Some(service.clone()));
    let on_connected = |stream, peer| {
        let accepted = accept_tcp_connection(stream, peer, &new_service);
        async move { accepted }
    };
    let on_process_error = |e: io::Error| {
        tracing::debug!(error = %e, "A connection to the simulated fridge ended with an error.");
    };
    server.serve(&on_connected, on_process_error).await
}

/// Serves the simulated fridge on a free loopback port, in the background for as long as the
/// runtime runs, and returns its address.
pub async fn start() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener).await {
            tracing::warn!(error = %e, "The simulated fridge stopped serving.");
        }
    });
    Ok(addr)
}

/// The `[[modbus.devices]]` entry that polls the simulated fridge at `addr` every second.
pub fn device(name: &str, addr: SocketAddr) -> DeviceConfig {
    let mut device = DeviceConfig::tcp(name, &addr.ip().to_string(), addr.port());
    device.poll_interval_ms = 1000;
    device.request_timeout_ms = 500;
    device.backoff_max_ms = 10_000;
    let mut temperature = PointConfig::new("temperature", RegisterKind::Input, 0, ValueType::F32);
    temperature.unit = Some("°C".into());
    let mut energy = PointConfig::new("energy", RegisterKind::Input, 2, ValueType::U32);
    energy.unit = Some("Wh".into());
    let mut setpoint = PointConfig::new("setpoint", RegisterKind::Holding, 0, ValueType::I16);
    setpoint.scale = 0.1;
    setpoint.unit = Some("°C".into());
    let door = PointConfig::new("door_open", RegisterKind::Coil, 0, ValueType::Bool);
    let compressor = PointConfig::new(
        "compressor",
        RegisterKind::DiscreteInput,
        0,
        ValueType::Bool,
    );
    device.points = vec![temperature, energy, setpoint, door, compressor];
    device
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temperature_stays_near_the_setpoint_with_door_excursions() {
        let readings: Vec<FridgeReading> = (0..3600).map(|s| fridge_at(f64::from(s))).collect();
        let min = readings
            .iter()
            .map(|r| r.temperature_c)
            .fold(f32::MAX, f32::min);
        let max = readings
            .iter()
            .map(|r| r.temperature_c)
            .fold(f32::MIN, f32::max);
        assert!(min > 3.0 && min < 3.6, "min {min}");
        assert!(max > 5.5 && max < 8.0, "max {max}");
        let open_seconds = readings.iter().filter(|r| r.door_open).count();
        assert!(
            (100..900).contains(&open_seconds),
            "door open {open_seconds} s in an hour"
        );
        // While the door is open the air only warms.
        for pair in readings.windows(2) {
            if pair[0].door_open && pair[1].door_open {
                assert!(pair[1].temperature_c > pair[0].temperature_c - 0.15);
            }
        }
    }

    #[test]
    fn the_energy_meter_never_runs_backwards() {
        let mut last = 0;
        for s in 0..10_000 {
            let e = fridge_at(f64::from(s) * 0.7).energy_wh;
            assert!(e >= last);
            last = e;
        }
        assert!(last > ENERGY_START_WH as u32, "{last}");
    }

    #[test]
    fn the_register_map_answers_and_refuses_unmapped_addresses() {
        let service = FridgeService {
            started: Arc::new(Instant::now()),
        };
        let Ok(Response::ReadInputRegisters(words)) =
            service.answer(Request::ReadInputRegisters(0, 4))
        else {
            panic!("input registers");
        };
        let t = f32::from_bits((u32::from(words[0]) << 16) | u32::from(words[1]));
        assert!((3.0..8.0).contains(&t), "{t}");
        assert_eq!(
            service.answer(Request::ReadHoldingRegisters(0, 1)).unwrap(),
            Response::ReadHoldingRegisters(vec![40])
        );
        assert_eq!(
            service
                .answer(Request::ReadInputRegisters(3, 2))
                .unwrap_err(),
            ExceptionCode::IllegalDataAddress
        );
        assert_eq!(
            service
                .answer(Request::WriteSingleCoil(0, true))
                .unwrap_err(),
            ExceptionCode::IllegalFunction
        );
    }

    #[test]
    fn the_matching_device_config_validates() {
        let device = device("fridge-sim", "127.0.0.1:1502".parse().unwrap());
        device.validate(0).unwrap();
        assert_eq!(device.topic_name(), "sensors.fridge-sim");
    }
}
