//! The on-disk cache of compiled modules, so a restart does not recompile every plugin.
//!
//! # Layout
//! `<cache dir>/<sha256 of the wasm, hex>-<engine key>.cwasm`, where the engine key is the
//! first 16 bytes (hex) of a SHA-256 over wasmtime's `Engine::precompile_compatibility_hash`
//! (target, compiler flags, tunables, wasm features and wasmtime's module version). A file
//! holds:
//! ```text
//! 0   8   magic "OPCWASM1"
//! 8   32  SHA-256 of the payload
//! 40  …   payload: `Module::serialize` output
//! ```
//! Files are written to a temporary name in the same directory, fsynced, renamed into place
//! and the directory fsynced, so a reader sees a whole file or none.
//!
//! # Why loading is sound
//! `Module::deserialize` is `unsafe` because wasmtime trusts the payload to be machine code it
//! produced: a forged or damaged payload could execute anything. We only hand it bytes that
//! (1) come from a file in Outpost's own cache directory inside its data dir, which only
//! Outpost writes, (2) sit under the name derived from the SHA-256 of the very wasm we are
//! about to run and this engine's compatibility hash, so a file made for another module or
//! engine is never looked up, and (3) match the SHA-256 stored in the file's header, which we
//! computed when we wrote the payload: truncation or bit rot is detected and the file is
//! recompiled instead. wasmtime additionally checks its own version and configuration header.
//! We deliberately read the file into memory and use `Module::deserialize` rather than
//! `Module::deserialize_file`: the latter maps the file and requires it never to change while
//! the module lives, and it would execute the mapping without our checksum having covered the
//! bytes that end up mapped.

use std::fs::File;
use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

const MAGIC: &[u8; 8] = b"OPCWASM1";
const HEADER_LEN: usize = 8 + 32;

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Feeds whatever a `Hash` impl writes into SHA-256, giving a hash that is stable across
/// processes (unlike `DefaultHasher`'s random keys).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(b)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The engine part of cache file names.
pub(crate) fn engine_key(engine: &Engine) -> String {
    use std::hash::Hash;
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex(&hasher.0.finalize()[..16])
}

/// The compiled-module cache in one directory.
#[derive(Debug)]
pub(crate) struct ModuleCache {
    dir: PathBuf,
    engine_key: String,
}

impl ModuleCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> ModuleCache {
        ModuleCache {
            dir,
            engine_key: engine_key(engine),
        }
    }

    /// Where the compiled form of the wasm with this SHA-256 lives.
    pub(crate) fn path(&self, wasm_sha256: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", hex(wasm_sha256), self.engine_key))
    }

    /// The cached module, if a sound cache file exists. A damaged file is removed (and
    /// reported) so the caller recompiles and rewrites it.
    pub(crate) fn load(&self, engine: &Engine, wasm_sha256: &[u8; 32]) -> Option<Module> {
        let path = self.path(wasm_sha256);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Reading a compiled-module cache file failed; the module is recompiled.");
                return None;
            }
        };
        let problem = if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            Some("it has no valid header".to_string())
        } else if Sha256::digest(&bytes[HEADER_LEN..]).as_slice() != &bytes[8..HEADER_LEN] {
            Some("its checksum does not match".to_string())
        } else {
            // SAFETY: see the module doc: the payload is a `Module::serialize` output that this
            // host wrote under a name bound to this wasm and engine, and its SHA-256 matched.
            match unsafe { Module::deserialize(engine, &bytes[HEADER_LEN..]) } {
                Ok(module) => return Some(module),
                Err(e) => Some(format!("wasmtime refused it: {e}")),
            }
        };
        if let Some(problem) = problem {
            tracing::warn!(path = %path.display(), problem, "A compiled-module cache file is damaged; it is removed and the module recompiled.");
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "Removing a damaged cache file failed.");
            }
        }
        None
    }

    /// Writes `module`'s compiled form for the wasm with this SHA-256.
    pub(crate) fn store(
        &self,
        module: &Module,
        wasm_sha256: &[u8; 32],
    ) -> Result<PathBuf, CacheError> {
        let payload = module.serialize().map_err(CacheError::Serialize)?;
        let path = self.path(wasm_sha256);
        match write_atomically(&self.dir, &path, &payload) {
            Ok(()) => Ok(path),
            Err(source) => Err(CacheError::Write { path, source }),
        }
    }
}

/// Why a compiled module could not be cached (the module is compiled again on the next start).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error("serializing the compiled module failed: {0}")]
    Serialize(#[source] wasmtime::Error),
    #[error("writing {} failed: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn write_atomically(dir: &Path, path: &Path, payload: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}.cwasm",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&Sha256::digest(payload))?;
        f.write_all(payload)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn engine_key_is_stable_for_equal_configurations() {
        let config = || {
            let mut c = wasmtime::Config::new();
            c.epoch_interruption(true);
            c
        };
        let a = Engine::new(&config()).unwrap();
        let b = Engine::new(&config()).unwrap();
        assert_eq!(engine_key(&a), engine_key(&b));
        let mut other = config();
        other.epoch_interruption(false);
        let c = Engine::new(&other).unwrap();
        assert_ne!(engine_key(&a), engine_key(&c));
    }
}
