//! The wasm side of ABI v1 (compiled only for `target_arch = "wasm32"`): the `outpost` host
//! imports, [`HostContext`] (the `Context` over them), and the entry points `export_plugin!`
//! wires to the module's exports.
//!
//! The guest keeps one "inbox" buffer: `outpost_alloc` sizes it and returns its address, the
//! host writes the config or record there, and the next `outpost_init` / `outpost_on_record`
//! reads it in place and checks that the pointer and length are the ones it handed out. So a
//! record costs no allocation to receive, and a confused host gets an error, not memory
//! corruption.

use std::cell::RefCell;
use std::ptr;
use std::sync::Once;

use crate::abi::{self, status};
use crate::config::Config;
use crate::context::{Context, Level};
use crate::error::{Error, ErrorKind};
use crate::plugin::Plugin;

#[cfg(target_feature = "atomics")]
compile_error!(
    "outpost-sdk guests are single-threaded (wasm32-wasi / wasm32-wasip1 without atomics)"
);

/// The raw host imports, exactly as ABI.md lists them. Pointers are 32-bit addresses in this
/// module's memory; lengths are u32 values passed as i32.
mod sys {
    #[link(wasm_import_module = "outpost")]
    extern "C" {
        #[link_name = "emit"]
        pub fn emit(
            topic_ptr: *const u8,
            topic_len: i32,
            key_ptr: *const u8,
            key_len: i32,
            value_ptr: *const u8,
            value_len: i32,
            headers_ptr: *const u8,
            headers_len: i32,
        ) -> i32;
        #[link_name = "state_get"]
        pub fn state_get(key_ptr: *const u8, key_len: i32, out_ptr: *mut u8, out_cap: i32) -> i32;
        #[link_name = "state_put"]
        pub fn state_put(
            key_ptr: *const u8,
            key_len: i32,
            value_ptr: *const u8,
            value_len: i32,
        ) -> i32;
        #[link_name = "state_delete"]
        pub fn state_delete(key_ptr: *const u8, key_len: i32) -> i32;
        #[link_name = "log"]
        pub fn log(level: i32, msg_ptr: *const u8, msg_len: i32);
        #[link_name = "now_ms"]
        pub fn now_ms() -> i64;
        #[link_name = "set_error"]
        pub fn set_error(msg_ptr: *const u8, msg_len: i32);
    }
}

/// A length as the ABI passes it: a u32 in an i32. wasm32 slices never exceed u32::MAX bytes.
fn abi_len(len: usize) -> i32 {
    len as u32 as i32
}

/// The inbox stops being reused above this capacity when a much smaller buffer is requested,
/// so one huge record does not pin its memory for the life of the instance.
const INBOX_KEEP_BYTES: usize = 4 << 20;

/// First buffer size `state_get` tries, so most values arrive in one host call.
const STATE_GET_FIRST_CAP: usize = 256;

/// The `Context` backed by the `outpost` host imports.
#[derive(Debug)]
pub struct HostContext {
    /// Reused buffer for encoding emitted headers.
    headers: Vec<u8>,
}

impl HostContext {
    const fn new() -> Self {
        HostContext {
            headers: Vec::new(),
        }
    }
}

impl Context for HostContext {
    fn emit_with_headers(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), Error> {
        let (headers_ptr, headers_len) = if headers.is_empty() {
            (ptr::null(), 0)
        } else {
            self.headers.clear();
            abi::encode_headers_into(&mut self.headers, headers.iter().copied());
            (self.headers.as_ptr(), abi_len(self.headers.len()))
        };
        let (key_ptr, key_len) = match key {
            Some(key) => (key.as_ptr(), abi_len(key.len())),
            None => (ptr::null(), -1),
        };
        // SAFETY: every pointer/length pair describes a live slice of this module's memory; the
        // host only reads them during the call.
        let rc = unsafe {
            sys::emit(
                topic.as_ptr(),
                abi_len(topic.len()),
                key_ptr,
                key_len,
                value.as_ptr(),
                abi_len(value.len()),
                headers_ptr,
                headers_len,
            )
        };
        if rc < 0 {
            return Err(Error::from_status(&format!("emit to {topic}"), rc));
        }
        Ok(())
    }

    fn state_get_into(&mut self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool, Error> {
        buf.clear();
        // The value cannot change during a call, so the second attempt always fits; the third
        // guards against a misbehaving host without looping forever.
        for _ in 0..3 {
            let cap = buf.capacity();
            // SAFETY: `buf` has `cap` writable bytes at its pointer; the host writes at most
            // `cap` bytes there and returns the value's full length.
            let rc = unsafe {
                sys::state_get(
                    key.as_ptr(),
                    abi_len(key.len()),
                    buf.as_mut_ptr(),
                    abi_len(cap),
                )
            };
            if rc == status::NOT_FOUND {
                return Ok(false);
            }
            if rc < 0 {
                return Err(Error::from_status("state_get", rc));
            }
            let len = rc as usize;
            if len <= cap {
                // SAFETY: the host initialised the first `len` (<= capacity) bytes.
                unsafe { buf.set_len(len) };
                return Ok(true);
            }
            buf.reserve(len);
        }
        Err(Error::with_kind(
            ErrorKind::Host,
            "state_get failed: the value's length kept changing between calls",
        ))
    }

    fn state_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let mut buf = Vec::with_capacity(STATE_GET_FIRST_CAP);
        if self.state_get_into(key, &mut buf)? {
            Ok(Some(buf))
        } else {
            Ok(None)
        }
    }

    fn state_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        // SAFETY: both slices are live for the call; the host only reads them.
        let rc = unsafe {
            sys::state_put(
                key.as_ptr(),
                abi_len(key.len()),
                value.as_ptr(),
                abi_len(value.len()),
            )
        };
        if rc < 0 {
            return Err(Error::from_status("state_put", rc));
        }
        Ok(())
    }

    fn state_delete(&mut self, key: &[u8]) -> Result<(), Error> {
        // SAFETY: the key slice is live for the call; the host only reads it.
        let rc = unsafe { sys::state_delete(key.as_ptr(), abi_len(key.len())) };
        if rc < 0 {
            return Err(Error::from_status("state_delete", rc));
        }
        Ok(())
    }

    fn log(&mut self, level: Level, message: &str) {
        host_log(level, message);
    }

    fn now_ms(&self) -> u64 {
        // SAFETY: no arguments.
        let now = unsafe { sys::now_ms() };
        if now < 0 {
            0
        } else {
            now as u64
        }
    }
}

fn host_log(level: Level, message: &str) {
    // SAFETY: the message slice is live for the call; the host only reads it.
    unsafe { sys::log(level.as_i32(), message.as_ptr(), abi_len(message.len())) }
}

fn set_error(message: &str) {
    // SAFETY: the message slice is live for the call; the host only reads it.
    unsafe { sys::set_error(message.as_ptr(), abi_len(message.len())) }
}

/// Reports `error` through `set_error` and returns the failure code for the export.
fn fail(error: &Error) -> i32 {
    set_error(&error.to_string());
    1
}

/// Routes panic messages to `set_error` (so the host can name the cause of the trap that
/// follows, with `panic = "abort"`) and to the host log.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = format!("plugin panicked: {info}");
            set_error(&message);
            host_log(Level::Error, &message);
        }));
    });
}

/// Everything the guest keeps between calls.
#[derive(Debug)]
pub struct Guest<P> {
    plugin: Option<P>,
    /// Set when `init` failed; later records fail with this message.
    init_error: Option<Error>,
    ctx: HostContext,
    inbox: Vec<u8>,
}

/// The guest's single global, defined by `export_plugin!`.
#[derive(Debug)]
pub struct GuestCell<P>(RefCell<Guest<P>>);

// SAFETY: wasm32 guests without the `atomics` feature (checked above) run on one thread, so the
// cell is never touched concurrently; re-entrant use is caught by the RefCell.
unsafe impl<P> Sync for GuestCell<P> {}

impl<P> GuestCell<P> {
    /// An empty guest: no plugin instance yet, empty inbox.
    pub const fn new() -> Self {
        GuestCell(RefCell::new(Guest {
            plugin: None,
            init_error: None,
            ctx: HostContext::new(),
            inbox: Vec::new(),
        }))
    }
}

fn reentered() -> Error {
    Error::with_kind(
        ErrorKind::Host,
        "the host re-entered the guest while a call was running",
    )
}

/// `outpost_alloc`: makes the inbox `size` bytes long and returns its address (0 on failure).
pub fn alloc<P>(cell: &GuestCell<P>, size: i32) -> i32 {
    let mut guest = match cell.0.try_borrow_mut() {
        Ok(guest) => guest,
        Err(_) => return 0,
    };
    let size = size as u32 as usize;
    let inbox = &mut guest.inbox;
    if inbox.capacity() > INBOX_KEEP_BYTES && size < inbox.capacity() / 4 {
        *inbox = Vec::new();
    }
    inbox.clear();
    if inbox.try_reserve(size).is_err() {
        return 0;
    }
    inbox.resize(size, 0);
    inbox.as_mut_ptr() as usize as i32
}

/// The inbox bytes the host says it wrote, after checking they are the ones handed out.
fn inbox_input(inbox: &[u8], ptr: i32, len: i32) -> Result<&[u8], Error> {
    let len = len as u32 as usize;
    if len == 0 {
        return Ok(&[]);
    }
    if ptr as u32 as usize != inbox.as_ptr() as usize || len > inbox.len() {
        return Err(Error::with_kind(
            ErrorKind::InvalidArgument,
            format!(
                "input at {ptr:#x}+{len} is not the buffer outpost_alloc returned ({:#x}+{})",
                inbox.as_ptr() as usize,
                inbox.len()
            ),
        ));
    }
    Ok(&inbox[..len])
}

/// `outpost_init`: creates a fresh plugin instance and calls its `init` with the config JSON.
pub fn init<P: Plugin + Default>(cell: &GuestCell<P>, ptr: i32, len: i32) -> i32 {
    install_panic_hook();
    let mut guard = match cell.0.try_borrow_mut() {
        Ok(guard) => guard,
        Err(_) => return fail(&reentered()),
    };
    let guest = &mut *guard;
    let config = match inbox_input(&guest.inbox, ptr, len) {
        Ok(bytes) => Config::new(bytes),
        Err(e) => return fail(&e),
    };
    let mut plugin = P::default();
    match plugin.init(&mut guest.ctx, &config) {
        Ok(()) => {
            guest.plugin = Some(plugin);
            guest.init_error = None;
            0
        }
        Err(e) => {
            guest.plugin = None;
            let rc = fail(&e);
            guest.init_error = Some(e);
            rc
        }
    }
}

/// `outpost_on_record`: decodes the record in the inbox and hands it to the plugin.
pub fn on_record<P: Plugin + Default>(cell: &GuestCell<P>, ptr: i32, len: i32) -> i32 {
    install_panic_hook();
    let mut guard = match cell.0.try_borrow_mut() {
        Ok(guard) => guard,
        Err(_) => return fail(&reentered()),
    };
    let Guest {
        plugin,
        init_error,
        ctx,
        inbox,
    } = &mut *guard;
    if let Some(e) = init_error {
        return fail(&e.clone().context("the plugin's init failed"));
    }
    if plugin.is_none() {
        // The host did not call outpost_init: behave as if it passed an empty config.
        let mut fresh = P::default();
        if let Err(e) = fresh.init(ctx, &Config::default()) {
            let rc = fail(&e);
            *init_error = Some(e);
            return rc;
        }
        *plugin = Some(fresh);
    }
    let plugin = match plugin {
        Some(plugin) => plugin,
        None => return fail(&Error::with_kind(ErrorKind::Host, "no plugin instance")),
    };
    let record = match inbox_input(inbox, ptr, len).and_then(abi::decode_record) {
        Ok(record) => record,
        Err(e) => return fail(&e.context("cannot decode the input record")),
    };
    match plugin.on_record(ctx, &record) {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}
