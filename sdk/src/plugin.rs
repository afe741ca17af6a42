//! The `Plugin` trait a plugin author implements, and the `export_plugin!` macro that turns a
//! `Plugin + Default` type into the wasm exports of ABI v1.

use crate::config::Config;
use crate::context::Context;
use crate::error::Error;
use crate::record::Record;

/// A plugin: one instance lives for the life of the wasm instance and sees every input record
/// in order. Both methods default to doing nothing.
///
/// Keep anything that must survive a restart, an upgrade or a trap in state (`ctx.state_*`):
/// the host may drop the instance and create a fresh one (calling `init` again) at any time
/// between two records. Fields of `self` are a cache, not storage.
pub trait Plugin {
    /// Called once after the instance is created, with the manifest's `[config]` table. Return
    /// an error to refuse a bad config: the host marks the plugin failed and shows the message.
    /// State reads, `log` and `now_ms` work here; emits and state writes are denied.
    fn init(&mut self, ctx: &mut dyn Context, config: &Config) -> Result<(), Error> {
        let _ = (ctx, config);
        Ok(())
    }

    /// Called for every input record. Returning an error discards this call's emits and state
    /// writes and sends the record to the plugin's dead-letter topic with the error message.
    fn on_record(&mut self, ctx: &mut dyn Context, record: &Record<'_>) -> Result<(), Error> {
        let _ = (ctx, record);
        Ok(())
    }
}

/// Exports a `Plugin + Default` type as an Outpost wasm plugin.
///
/// On `target_arch = "wasm32"` this defines the ABI v1 exports (`outpost_abi_version`,
/// `outpost_alloc`, `outpost_init`, `outpost_on_record`); on other targets it only checks that the
/// type qualifies, so the same crate builds natively for tests. Use it once per crate.
///
/// ```
/// #[derive(Default)]
/// struct Quiet;
/// impl outpost_sdk::Plugin for Quiet {}
/// outpost_sdk::export_plugin!(Quiet);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            fn __outpost_requires_plugin_and_default<
                T: $crate::Plugin + ::core::default::Default,
            >() {
            }
            #[allow(dead_code)]
            fn __outpost_check() {
                __outpost_requires_plugin_and_default::<$plugin>();
            }
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static __OUTPOST_GUEST: $crate::__private::GuestCell<$plugin> =
                $crate::__private::GuestCell::new();

            // Makes the module a WASI *reactor*: the host calls `_initialize` once after
            // instantiation (running static constructors), and the exports below are plain
            // functions. Without a reference to `__wasm_call_ctors` the linker would treat the
            // module as a command and wrap every export in constructor/destructor calls.
            #[no_mangle]
            pub extern "C" fn _initialize() {
                extern "C" {
                    fn __wasm_call_ctors();
                }
                // SAFETY: the linker synthesises `__wasm_call_ctors`; the host calls
                // `_initialize` once, before any other export, as WASI reactors require.
                unsafe { __wasm_call_ctors() }
            }

            #[no_mangle]
            pub extern "C" fn outpost_abi_version() -> i32 {
                $crate::abi::ABI_VERSION
            }

            #[no_mangle]
            pub extern "C" fn outpost_alloc(size: i32) -> i32 {
                $crate::__private::alloc(&__OUTPOST_GUEST, size)
            }

            #[no_mangle]
            pub extern "C" fn outpost_init(ptr: i32, len: i32) -> i32 {
                $crate::__private::init(&__OUTPOST_GUEST, ptr, len)
            }

            #[no_mangle]
            pub extern "C" fn outpost_on_record(ptr: i32, len: i32) -> i32 {
                $crate::__private::on_record(&__OUTPOST_GUEST, ptr, len)
            }
        };
    };
}
