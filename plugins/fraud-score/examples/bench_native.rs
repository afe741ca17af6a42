//! The native half of `outpost bench plugins`: runs fraud-score's logic natively through the
//! SDK's test harness (`outpost_sdk::testing::Harness`, an in-memory context with per-call
//! transactions, like the host's) on a workload written by the benchmark, and prints one JSON
//! line per repeat.
//!
//! ```text
//! bench_native WORKLOAD CONFIG_JSON REPEATS
//! ```
//!
//! `WORKLOAD` is a file of records, each a little-endian `u32` length followed by the record in
//! the ABI v1 encoding (exactly the bytes `outpost_on_record` gets in wasm); each is fed with
//! `Harness::feed_encoded`, so the native side decodes the record just as the guest does.
//! `CONFIG_JSON` is a file holding the plugin config as JSON (what `outpost_init` gets).
//! Every repeat starts from a fresh plugin with empty state; only the loop over the records is
//! timed, in wall-clock time and in the thread's CPU time. Output per repeat:
//! `{"repeat":R,"records":N,"nanos":T,"cpu_nanos":C,"emitted":E,"failed":F,"state_keys":K}`.

use std::time::Instant;

use fraud_score::{FraudScore, ALERTS_TOPIC, SCORES_TOPIC};
use outpost_sdk::testing::Harness;

/// CPU time of the calling thread.
fn thread_cpu_nanos() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn fail(message: String) -> ! {
    eprintln!("bench_native: {message}");
    std::process::exit(2);
}

/// Splits the workload file into its encoded records.
fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 4 {
            fail(format!(
                "the workload ends in a cut-off length ({} bytes)",
                rest.len()
            ));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() - 4 < len {
            fail(format!(
                "a record of {len} bytes is cut off after record {}",
                records.len()
            ));
        }
        records.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    records
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        fail("usage: bench_native WORKLOAD CONFIG_JSON REPEATS".to_owned());
    }
    let data = std::fs::read(&args[1])
        .unwrap_or_else(|e| fail(format!("cannot read the workload {}: {e}", args[1])));
    let config = std::fs::read_to_string(&args[2])
        .unwrap_or_else(|e| fail(format!("cannot read the config {}: {e}", args[2])));
    let repeats: u32 = args[3]
        .parse()
        .unwrap_or_else(|e| fail(format!("REPEATS must be a number: {e}")));
    let records = split(&data);
    for repeat in 0..repeats {
        let mut harness = Harness::<FraudScore>::start(&config)
            .unwrap_or_else(|e| fail(format!("init failed: {e}")))
            .allow_outputs(&[SCORES_TOPIC, ALERTS_TOPIC])
            // As on the wasm side of `outpost bench plugins`: speed, not quotas, is measured,
            // and a workload of many cards may hold more state than the default quota.
            .state_quota(u64::MAX, u64::MAX);
        harness.keep_emitted(false);
        let mut failed = 0u64;
        let started = Instant::now();
        let cpu_started = thread_cpu_nanos();
        for record in &records {
            if harness.feed_encoded(record).is_err() {
                failed += 1;
            }
        }
        let cpu_nanos = thread_cpu_nanos().saturating_sub(cpu_started);
        let nanos = started.elapsed().as_nanos();
        println!(
            "{{\"repeat\":{repeat},\"records\":{},\"nanos\":{nanos},\"cpu_nanos\":{cpu_nanos},\"emitted\":{},\"failed\":{failed},\"state_keys\":{}}}",
            records.len(),
            harness.emitted_count(),
            harness.state_len()
        );
    }
}
