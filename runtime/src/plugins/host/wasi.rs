//! A minimal WASI preview 1 (`wasi_snapshot_preview1`), written for Outpost: every function of
//! the preview 1 specification is defined, so any module built against wasi-libc or Rust's std
//! links, but nothing is granted (`sdk/ABI.md`, section 9).
//!
//! | function | behaviour |
//! |---|---|
//! | `fd_write` on fd 1 / 2 | lines go to the plugin's log (stdout info, stderr warn; rate-limited, see `guest_log`); at most [`MAX_IOVS`] iovecs per call (`EINVAL` beyond, like Linux's `IOV_MAX`) and at most [`MAX_WRITE_BYTES`] bytes taken per call (a short write: `nwritten` says how many) |
//! | `fd_read` on fd 0 | end of file (0 bytes read) |
//! | `fd_fdstat_get` on fd 0 / 1 / 2 | a character device with the `fd_read` / `fd_write` right |
//! | `fd_prestat_get` | `EBADF`: there are no preopened directories, so every path operation fails |
//! | `args_sizes_get`, `environ_sizes_get` | 0 entries, 0 bytes; `args_get`/`environ_get` write nothing |
//! | `clock_time_get` | realtime (id 0): the wall clock; monotonic (1) and the CPU-time ids (2, 3): a monotonic clock |
//! | `clock_res_get` | 1 ns |
//! | `poll_oneoff` | clock subscriptions only (others: `ENOTSUP`); sleeps, but never past the call's CPU deadline: a sleep that would end after it ends the call as a deadline failure |
//! | `random_get` | bytes from the kernel's CSPRNG (`getrandom(2)`) |
//! | `proc_exit` | traps; the record fails with the exit code in the error |
//! | `sched_yield` | success |
//! | other `fd_*`, all `path_*` | `EBADF` (no such descriptor) |
//! | `sock_*` | `ENOTSUP` |
//! | `proc_raise` | `ENOSYS` |
//!
//! Every function does a bounded amount of work per call — no argument can make one run for
//! long — and the time spent in it counts against the call's CPU deadline: the deadline is an
//! epoch that advances with the wall clock, so a guest that returns from a host call past its
//! deadline is stopped at its next instruction. A pointer outside the guest's memory gets
//! `EFAULT`. Errno values and struct layouts are those
//! of the preview 1 specification (`typenames.witx`, as in wasi-libc's `wasi/api.h`).

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmtime::{Caller, Linker, Trap};

use super::store::{guest_slice, read_u32, write_bytes, StoreData};
use super::EPOCH_TICK_MS;

/// The import module name.
pub(crate) const MODULE: &str = "wasi_snapshot_preview1";

/// `errno::success`.
const SUCCESS: i32 = 0;
/// `errno::badf`: bad file descriptor.
const EBADF: i32 = 8;
/// `errno::fault`: bad address.
const EFAULT: i32 = 21;
/// `errno::inval`: invalid argument.
const EINVAL: i32 = 28;
/// `errno::io`: I/O error.
const EIO: i32 = 29;
/// `errno::nosys`: function not supported.
const ENOSYS: i32 = 52;
/// `errno::notsup`: not supported.
const ENOTSUP: i32 = 58;

/// `filetype::character_device`.
const FILETYPE_CHARACTER_DEVICE: u8 = 2;
/// `rights::fd_read` (bit 1).
const RIGHTS_FD_READ: u64 = 1 << 1;
/// `rights::fd_write` (bit 6).
const RIGHTS_FD_WRITE: u64 = 1 << 6;

/// Iovecs one `fd_write` call may pass (Linux's `IOV_MAX`).
pub(crate) const MAX_IOVS: u32 = 1024;
/// Bytes one `fd_write` call takes at most; the rest is a short write the guest repeats.
pub(crate) const MAX_WRITE_BYTES: u32 = 64 * 1024;

/// `clockid::realtime` … `clockid::thread_cputime_id`.
const CLOCK_REALTIME: i32 = 0;
const CLOCK_THREAD_CPUTIME: i32 = 3;

/// `subscription`: 48 bytes; `userdata` u64 @0, tag u8 @8 (`eventtype`), then for a clock
/// subscription: `id` u32 @16, `timeout` u64 @24, `precision` u64 @32, `flags` u16 @40.
const SUBSCRIPTION_LEN: usize = 48;
/// `event`: 32 bytes; `userdata` u64 @0, `error` u16 @8, `type` u8 @10.
const EVENT_LEN: usize = 32;
/// `eventtype::clock`.
const EVENTTYPE_CLOCK: u8 = 0;
/// `subclockflags::subscription_clock_abstime` (bit 0).
const SUBSCRIPTION_CLOCK_ABSTIME: u16 = 1;

/// The trap `proc_exit` raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the plugin called proc_exit({0})")]
pub(crate) struct ProcExit(pub i32);

fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn realtime_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The time of clock `id` in ns, or `None` for an unknown clock.
fn clock_nanos(id: i32) -> Option<u64> {
    match id {
        CLOCK_REALTIME => Some(realtime_nanos()),
        1..=CLOCK_THREAD_CPUTIME => Some(monotonic_nanos()),
        _ => None,
    }
}

/// Defines a function that only returns an errno, with the given parameter types.
macro_rules! refuse {
    ($linker:expr, $name:literal, $errno:expr $(, $t:ty)*) => {
        $linker.func_wrap(MODULE, $name, |$(_: $t),*| -> i32 { $errno })?
    };
}

/// Runs `f` on the guest memory and store data; `EFAULT` without a memory.
fn with_memory(
    caller: &mut Caller<'_, StoreData>,
    f: impl FnOnce(&mut [u8], &mut StoreData) -> i32,
) -> i32 {
    match caller.data().memory {
        Some(memory) => {
            let (mem, data) = memory.data_and_store_mut(caller);
            f(mem, data)
        }
        None => EFAULT,
    }
}

/// Writes `bytes` at `ptr`: `SUCCESS`, or `EFAULT` when outside memory.
fn put(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> i32 {
    if write_bytes(mem, ptr, bytes) {
        SUCCESS
    } else {
        EFAULT
    }
}

/// Writes two u32 zeros (a count and a buffer size) at `a` and `b`.
fn write_zero_sizes(mut caller: Caller<'_, StoreData>, a: i32, b: i32) -> i32 {
    with_memory(&mut caller, |mem, _| match put(mem, a, &[0; 4]) {
        SUCCESS => put(mem, b, &[0; 4]),
        e => e,
    })
}

fn fd_write(
    mut caller: Caller<'_, StoreData>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> i32 {
    if fd != 1 && fd != 2 {
        return EBADF;
    }
    if iovs_len as u32 > MAX_IOVS {
        return EINVAL;
    }
    with_memory(&mut caller, |mem, data| {
        let mut total: u32 = 0;
        for i in 0..iovs_len as u32 {
            let entry = (iovs as u32).wrapping_add(i.wrapping_mul(8)) as i32;
            let (Some(ptr), Some(len)) =
                (read_u32(mem, entry), read_u32(mem, entry.wrapping_add(4)))
            else {
                return EFAULT;
            };
            let Some(bytes) = guest_slice(mem, ptr as i32, len as i32) else {
                return EFAULT;
            };
            let take = bytes.len().min((MAX_WRITE_BYTES - total) as usize);
            let out = if fd == 1 {
                &mut data.stdout
            } else {
                &mut data.stderr
            };
            out.write(&bytes[..take], &data.log);
            total += take as u32;
            if total == MAX_WRITE_BYTES {
                break;
            }
        }
        put(mem, nwritten, &total.to_le_bytes())
    })
}

fn fd_read(mut caller: Caller<'_, StoreData>, fd: i32, _iovs: i32, _len: i32, nread: i32) -> i32 {
    if fd != 0 {
        return EBADF;
    }
    // stdin is empty: end of file.
    with_memory(&mut caller, |mem, _| put(mem, nread, &[0; 4]))
}

fn fd_fdstat_get(mut caller: Caller<'_, StoreData>, fd: i32, out: i32) -> i32 {
    let rights = match fd {
        0 => RIGHTS_FD_READ,
        1 | 2 => RIGHTS_FD_WRITE,
        _ => return EBADF,
    };
    // fdstat: u8 filetype @0, u16 flags @2, u64 rights_base @8, u64 rights_inheriting @16.
    let mut stat = [0u8; 24];
    stat[0] = FILETYPE_CHARACTER_DEVICE;
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    with_memory(&mut caller, |mem, _| put(mem, out, &stat))
}

fn clock_time_get(mut caller: Caller<'_, StoreData>, id: i32, _precision: i64, out: i32) -> i32 {
    let Some(nanos) = clock_nanos(id) else {
        return EINVAL;
    };
    with_memory(&mut caller, |mem, _| put(mem, out, &nanos.to_le_bytes()))
}

fn clock_res_get(mut caller: Caller<'_, StoreData>, id: i32, out: i32) -> i32 {
    if clock_nanos(id).is_none() {
        return EINVAL;
    }
    with_memory(&mut caller, |mem, _| put(mem, out, &1u64.to_le_bytes()))
}

fn random_get(mut caller: Caller<'_, StoreData>, buf: i32, len: i32) -> i32 {
    with_memory(&mut caller, |mem, _| {
        let Some(dst) = super::store::guest_slice_mut(mem, buf, len as u32 as usize) else {
            return EFAULT;
        };
        let mut filled = 0;
        while filled < dst.len() {
            let rest = &mut dst[filled..];
            // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the call.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n > 0 {
                filled += n as usize;
            } else if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            } else {
                return EIO;
            }
        }
        SUCCESS
    })
}

/// What `poll_oneoff` decided after reading the subscriptions.
enum Poll {
    /// Sleep this long, then report these subscriptions (index, userdata) as events.
    Sleep(Duration, Vec<(usize, u64)>),
    /// Return this errno.
    Errno(i32),
}

fn read_u64(mem: &[u8], ptr: usize) -> Option<u64> {
    let b = mem.get(ptr..ptr.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// Reads the clock subscriptions and finds the earliest wake-up.
fn plan_poll(mem: &[u8], subs: i32, n: i32) -> Poll {
    let n = n as u32 as usize;
    if n == 0 {
        return Poll::Errno(EINVAL);
    }
    let base = subs as u32 as usize;
    let mut wakeups = Vec::with_capacity(n.min(64));
    for i in 0..n {
        let Some(at) = i
            .checked_mul(SUBSCRIPTION_LEN)
            .and_then(|o| base.checked_add(o))
        else {
            return Poll::Errno(EFAULT);
        };
        let Some(sub) = at
            .checked_add(SUBSCRIPTION_LEN)
            .and_then(|end| mem.get(at..end))
        else {
            return Poll::Errno(EFAULT);
        };
        if sub[8] != EVENTTYPE_CLOCK {
            return Poll::Errno(ENOTSUP);
        }
        let (Some(userdata), Some(timeout)) = (read_u64(sub, 0), read_u64(sub, 24)) else {
            return Poll::Errno(EFAULT);
        };
        let id = i32::from_le_bytes([sub[16], sub[17], sub[18], sub[19]]);
        let flags = u16::from_le_bytes([sub[40], sub[41]]);
        let Some(now) = clock_nanos(id) else {
            return Poll::Errno(EINVAL);
        };
        let wait = if flags & SUBSCRIPTION_CLOCK_ABSTIME != 0 {
            timeout.saturating_sub(now)
        } else {
            timeout
        };
        wakeups.push((i, userdata, wait));
    }
    let soonest = wakeups.iter().map(|w| w.2).min().unwrap_or(0);
    let ready = wakeups
        .iter()
        .filter(|w| w.2 <= soonest)
        .map(|w| (w.0, w.1))
        .collect();
    Poll::Sleep(Duration::from_nanos(soonest), ready)
}

fn poll_oneoff(
    mut caller: Caller<'_, StoreData>,
    subs: i32,
    events: i32,
    n: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    let (plan, remaining) = {
        let Some(memory) = caller.data().memory else {
            return Ok(EFAULT);
        };
        let (mem, data) = memory.data_and_store_mut(&mut caller);
        let elapsed_ticks = data
            .ticks
            .load(Ordering::Relaxed)
            .saturating_sub(data.call.start_tick);
        let remaining_ms = data
            .call
            .deadline_ms
            .saturating_sub(elapsed_ticks.saturating_mul(EPOCH_TICK_MS));
        (plan_poll(mem, subs, n), Duration::from_millis(remaining_ms))
    };
    let (sleep, ready) = match plan {
        Poll::Errno(e) => return Ok(e),
        Poll::Sleep(d, ready) => (d, ready),
    };
    if sleep > remaining {
        // Sleeping counts against the deadline: wait it out, then fail the call as a deadline.
        std::thread::sleep(remaining);
        return Err(wasmtime::Error::new(Trap::Interrupt));
    }
    if !sleep.is_zero() {
        std::thread::sleep(sleep);
    }
    Ok(with_memory(&mut caller, |mem, _| {
        let base = events as u32 as usize;
        for (k, (_, userdata)) in ready.iter().enumerate() {
            let mut event = [0u8; EVENT_LEN];
            event[..8].copy_from_slice(&userdata.to_le_bytes());
            event[10] = EVENTTYPE_CLOCK;
            let Some(at) = k.checked_mul(EVENT_LEN).and_then(|o| base.checked_add(o)) else {
                return EFAULT;
            };
            if at > u32::MAX as usize || !write_bytes(mem, at as u32 as i32, &event) {
                return EFAULT;
            }
        }
        put(mem, nevents, &(ready.len() as u32).to_le_bytes())
    }))
}

/// Adds every preview 1 function to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "args_get", |_: i32, _: i32| -> i32 { SUCCESS })?;
    linker.func_wrap(MODULE, "args_sizes_get", write_zero_sizes)?;
    linker.func_wrap(MODULE, "environ_get", |_: i32, _: i32| -> i32 { SUCCESS })?;
    linker.func_wrap(MODULE, "environ_sizes_get", write_zero_sizes)?;
    linker.func_wrap(MODULE, "clock_res_get", clock_res_get)?;
    linker.func_wrap(MODULE, "clock_time_get", clock_time_get)?;
    refuse!(linker, "fd_advise", EBADF, i32, i64, i64, i32);
    refuse!(linker, "fd_allocate", EBADF, i32, i64, i64);
    refuse!(linker, "fd_close", EBADF, i32);
    refuse!(linker, "fd_datasync", EBADF, i32);
    linker.func_wrap(MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    refuse!(linker, "fd_fdstat_set_flags", EBADF, i32, i32);
    refuse!(linker, "fd_fdstat_set_rights", EBADF, i32, i64, i64);
    refuse!(linker, "fd_filestat_get", EBADF, i32, i32);
    refuse!(linker, "fd_filestat_set_size", EBADF, i32, i64);
    refuse!(linker, "fd_filestat_set_times", EBADF, i32, i64, i64, i32);
    refuse!(linker, "fd_pread", EBADF, i32, i32, i32, i64, i32);
    refuse!(linker, "fd_prestat_get", EBADF, i32, i32);
    refuse!(linker, "fd_prestat_dir_name", EBADF, i32, i32, i32);
    refuse!(linker, "fd_pwrite", EBADF, i32, i32, i32, i64, i32);
    linker.func_wrap(MODULE, "fd_read", fd_read)?;
    refuse!(linker, "fd_readdir", EBADF, i32, i32, i32, i64, i32);
    refuse!(linker, "fd_renumber", EBADF, i32, i32);
    refuse!(linker, "fd_seek", EBADF, i32, i64, i32, i32);
    refuse!(linker, "fd_sync", EBADF, i32);
    refuse!(linker, "fd_tell", EBADF, i32, i32);
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    refuse!(linker, "path_create_directory", EBADF, i32, i32, i32);
    refuse!(linker, "path_filestat_get", EBADF, i32, i32, i32, i32, i32);
    refuse!(
        linker,
        "path_filestat_set_times",
        EBADF,
        i32,
        i32,
        i32,
        i32,
        i64,
        i64,
        i32
    );
    refuse!(
        linker,
        "path_link",
        EBADF,
        i32,
        i32,
        i32,
        i32,
        i32,
        i32,
        i32
    );
    refuse!(
        linker,
        "path_open",
        EBADF,
        i32,
        i32,
        i32,
        i32,
        i32,
        i64,
        i64,
        i32,
        i32
    );
    refuse!(linker, "path_readlink", EBADF, i32, i32, i32, i32, i32, i32);
    refuse!(linker, "path_remove_directory", EBADF, i32, i32, i32);
    refuse!(linker, "path_rename", EBADF, i32, i32, i32, i32, i32, i32);
    refuse!(linker, "path_symlink", EBADF, i32, i32, i32, i32, i32);
    refuse!(linker, "path_unlink_file", EBADF, i32, i32, i32);
    linker.func_wrap(MODULE, "poll_oneoff", poll_oneoff)?;
    linker.func_wrap(MODULE, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(ProcExit(code)))
    })?;
    refuse!(linker, "proc_raise", ENOSYS, i32);
    linker.func_wrap(MODULE, "sched_yield", || -> i32 { SUCCESS })?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    refuse!(linker, "sock_accept", ENOTSUP, i32, i32, i32);
    refuse!(linker, "sock_recv", ENOTSUP, i32, i32, i32, i32, i32, i32);
    refuse!(linker, "sock_send", ENOTSUP, i32, i32, i32, i32, i32);
    refuse!(linker, "sock_shutdown", ENOTSUP, i32, i32);
    Ok(())
}

/// Every preview 1 function name, for the test that checks the linker defines them all.
#[cfg(test)]
pub(crate) const ALL_FUNCTIONS: [&str; 46] = [
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];
