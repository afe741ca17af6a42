//! Signed plugin bundles (`.opb` files) and the ed25519 keys that sign them.
//!
//! A bundle is one file holding a plugin's `plugin.toml`, its wasm module, a SHA-256 digest
//! of both and, when signed, an ed25519 signature over that digest with the id of the key that
//! made it. `outpost plugin sign` writes bundles; the box installs them (`outpost plugin
//! install`) only when [`TrustPolicy::check`] accepts the signature.
//!
//! # Byte layout (format version 1; all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `OUTPOSTB` |
//! | 8 | 2 | format version, `u16` = 1 |
//! | 10 | 2 | flags, `u16`: bit 0 = signed; every other bit must be 0 |
//! | 12 | 4 | `manifest_len`, `u32` |
//! | 16 | 4 | `wasm_len`, `u32` |
//! | 20 | `manifest_len` | the manifest, UTF-8 TOML, exactly as signed |
//! | … | `wasm_len` | the wasm module: a binary (starts with `\0asm`) or WAT text (`(module …`) |
//! | … | 32 | `digest` = SHA-256 of the canonical encoding below |
//! | … | 8 | signed only: key id (first 8 bytes of SHA-256 of the 32-byte public key) |
//! | … | 64 | signed only: ed25519 signature of the 32 `digest` bytes |
//!
//! The file ends right there; trailing bytes are refused. The **canonical encoding** that the
//! digest covers is `"outpost-bundle-v1\n"` (18 bytes), `manifest_len` as `u64`, the manifest
//! bytes, `wasm_len` as `u64`, the wasm bytes. The header's version and flags are not covered:
//! changing them either makes the file unreadable or strips the signature, and an unsigned
//! bundle is refused unless the box allows unsigned plugins. The digest is checked on every
//! read, so an unsigned bundle still detects corruption. A new format gets a new version
//! number; readers refuse versions they do not know.
//!
//! # Keys
//! `outpost plugin keygen --out DIR` writes `DIR/outpost-plugin.key` (mode 0600; one line
//! `ed25519-secret:<base64 of the 32-byte seed>`) and `DIR/outpost-plugin.pub` (one line
//! `ed25519:<base64 of the 32-byte public key>`). The public line is what goes into the box's
//! `[plugins] trusted_keys`; its key id (16 hex digits) is printed with it and recorded as the
//! signer of every plugin it signed. Seeds come from `/dev/urandom`.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::manifest::{Manifest, ManifestError};

/// The first 8 bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"OUTPOSTB";
/// The bundle format version this binary writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Prefix of the canonical encoding the digest covers.
const DOMAIN: &[u8] = b"outpost-bundle-v1\n";
const HEADER_LEN: usize = 20;
const DIGEST_LEN: usize = 32;
const KEY_ID_LEN: usize = 8;
const SIGNATURE_LEN: usize = 64;
const FLAG_SIGNED: u16 = 1;
/// The wasm binary magic.
const WASM_MAGIC: &[u8] = b"\0asm";
/// Longest manifest in a bundle.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// File name of the secret key `keygen` writes.
pub const SECRET_KEY_FILE: &str = "outpost-plugin.key";
/// File name of the public key `keygen` writes.
pub const PUBLIC_KEY_FILE: &str = "outpost-plugin.pub";
const SECRET_PREFIX: &str = "ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519:";

/// Errors of reading, writing, signing and checking bundles and keys.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bytes do not start with the bundle magic.
    #[error("not an Outpost plugin bundle (it does not start with \"OUTPOSTB\"); make one with `outpost plugin sign`")]
    NotABundle,
    /// A format version this binary does not read.
    #[error(
        "bundle format version {0} is not supported (this Outpost reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    /// Unknown flag bits.
    #[error("the bundle header has unknown flags {0:#06x}")]
    UnknownFlags(u16),
    /// The file is shorter than its header says.
    #[error("the bundle is truncated: {0}")]
    Truncated(&'static str),
    /// The file is longer than its header says.
    #[error("the bundle has {0} unexpected bytes after its end")]
    TrailingBytes(usize),
    /// A part is over a limit; `key` names the setting.
    #[error("the {what} is {size} bytes, more than the limit of {limit} bytes (`{key}`)")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
        key: &'static str,
    },
    /// The digest does not match the content: the file was damaged or altered.
    #[error("the bundle is damaged or was altered: its SHA-256 digest does not match the manifest and module")]
    DigestMismatch,
    /// The manifest is not UTF-8.
    #[error("the bundle's manifest is not UTF-8")]
    ManifestNotUtf8,
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The module is not wasm.
    #[error("the plugin module is neither a WebAssembly binary (starting with \"\\0asm\") nor WAT text (starting with \"(module\")")]
    NotWasm,
    /// Unsigned and the box does not allow unsigned plugins.
    #[error("the bundle is unsigned; sign it with `outpost plugin sign` using a key listed in `plugins.trusted_keys` (for development only, `plugins.allow_unsigned = true` accepts unsigned bundles)")]
    Unsigned,
    /// Signed by a key the box does not trust.
    #[error("the bundle is signed by key {key_id}, which is not in `plugins.trusted_keys`")]
    UnknownKey { key_id: KeyId },
    /// The signature does not verify.
    #[error("the bundle's signature by key {key_id} is not valid: the bundle was altered or signed with a different key")]
    BadSignature { key_id: KeyId },
    /// A key (file or config entry) is malformed.
    #[error("{origin}: {problem}")]
    BadKey { origin: String, problem: String },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
    let context = context.into();
    move |source| BundleError::Io { context, source }
}

/// A key id: the first 8 bytes of SHA-256 of a public key, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A public key the box may trust.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// Parses `ed25519:<base64>` (the prefix may be left out); `origin` names the source in
    /// errors (a file or `plugins.trusted_keys[0]`).
    pub fn parse(text: &str, origin: &str) -> Result<PublicKey, BundleError> {
        let text = text.trim();
        let encoded = text.strip_prefix(PUBLIC_PREFIX).unwrap_or(text);
        let bad = |problem: String| BundleError::BadKey {
            origin: origin.to_string(),
            problem,
        };
        if text.starts_with(SECRET_PREFIX) {
            return Err(bad(
                "this is a secret key; use the public key (`ed25519:…`, the .pub file)".into(),
            ));
        }
        let bytes = decode_key_bytes(encoded).map_err(|p| {
            bad(format!(
                "{p}; expected `ed25519:` and the base64 of 32 bytes"
            ))
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| bad("the bytes are not a valid ed25519 public key".into()))
    }

    /// `ed25519:<base64>`, the form `trusted_keys` and the .pub file use.
    pub fn to_text(&self) -> String {
        format!(
            "{PUBLIC_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(self.0.as_bytes())
        )
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        let hash = Sha256::digest(self.0.as_bytes());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&hash[..KEY_ID_LEN]);
        KeyId(id)
    }
}

/// A secret signing key. Its `Debug` shows only the key id.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public().key_id())
    }
}

impl SecretKey {
    /// A new key from 32 bytes of `/dev/urandom`.
    pub fn generate() -> Result<SecretKey, BundleError> {
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(io("reading /dev/urandom for a new key"))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Parses `ed25519-secret:<base64>`.
    pub fn parse(text: &str, origin: &str) -> Result<SecretKey, BundleError> {
        let bad = |problem: String| BundleError::BadKey {
            origin: origin.to_string(),
            problem,
        };
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            bad(format!(
                "not a secret key file (it does not start with `{SECRET_PREFIX}`); \
                 make one with `outpost plugin keygen`"
            ))
        })?;
        let seed = decode_key_bytes(encoded).map_err(|e| bad(e.to_string()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<SecretKey, BundleError> {
        let text = std::fs::read_to_string(path)
            .map_err(io(format!("cannot read the key file {}", path.display())))?;
        SecretKey::parse(&text, &path.display().to_string())
    }

    fn to_text(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.0.to_bytes())
        )
    }
}

/// Why the base64 part of a key is not a key.
#[derive(Debug, thiserror::Error)]
enum KeyBytesError {
    #[error("not base64 ({0})")]
    NotBase64(#[source] base64::DecodeError),
    #[error("the key is {0} bytes, not 32")]
    Length(usize),
}

fn decode_key_bytes(encoded: &str) -> Result<[u8; 32], KeyBytesError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(KeyBytesError::NotBase64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyBytesError::Length(bytes.len()))
}

/// Files written by [`keygen`].
#[derive(Debug)]
pub struct GeneratedKey {
    /// The secret key file (mode 0600).
    pub secret_path: PathBuf,
    /// The public key file.
    pub public_path: PathBuf,
    /// The public key.
    pub public: PublicKey,
}

/// Writes a new key pair into `dir` (created if missing); refuses to overwrite a key.
pub fn keygen(dir: &Path) -> Result<GeneratedKey, BundleError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let secret_path = dir.join(SECRET_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    for path in [&secret_path, &public_path] {
        if path.exists() {
            return Err(BundleError::Io {
                context: format!("{} exists", path.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "refusing to overwrite a key; choose another --out directory",
                ),
            });
        }
    }
    let key = SecretKey::generate()?;
    let public = key.public();
    let write = |path: &Path, mode: u32, text: &str| -> Result<(), BundleError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io(format!("cannot create {}", path.display())))?;
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(io(format!("cannot write {}", path.display())))
    };
    write(&secret_path, 0o600, &key.to_text())?;
    write(&public_path, 0o644, &format!("{}\n", public.to_text()))?;
    fsync_dir(dir).map_err(io(format!("cannot sync {}", dir.display())))?;
    Ok(GeneratedKey {
        secret_path,
        public_path,
        public,
    })
}

/// Who vouches for a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// Signed by this trusted key.
    Key(KeyId),
    /// Accepted unsigned (development flag).
    Unsigned,
    /// Embedded in the binary.
    Bundled,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signer::Key(id) => write!(f, "{id}"),
            Signer::Unsigned => f.write_str("unsigned"),
            Signer::Bundled => f.write_str("bundled"),
        }
    }
}

/// Which signatures the box accepts: `[plugins] trusted_keys` and `allow_unsigned`.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    allow_unsigned: bool,
}

impl TrustPolicy {
    /// A policy trusting `keys`, and unsigned bundles when `allow_unsigned`.
    pub fn new(keys: Vec<PublicKey>, allow_unsigned: bool) -> TrustPolicy {
        TrustPolicy {
            keys,
            allow_unsigned,
        }
    }

    /// Parses the config's `trusted_keys` entries.
    pub fn from_config(
        trusted_keys: &[String],
        allow_unsigned: bool,
    ) -> Result<TrustPolicy, BundleError> {
        let keys = trusted_keys
            .iter()
            .enumerate()
            .map(|(i, k)| PublicKey::parse(k, &format!("plugins.trusted_keys[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustPolicy::new(keys, allow_unsigned))
    }

    /// Accepts a bundle signed by a trusted key (or unsigned, when allowed) and says by whom.
    /// A bundle signed by an unknown key or with a bad signature is refused even when
    /// unsigned bundles are allowed: a signature that does not verify is never ignored.
    pub fn check(&self, bundle: &Bundle) -> Result<Signer, BundleError> {
        let Some(sig) = &bundle.signature else {
            return if self.allow_unsigned {
                Ok(Signer::Unsigned)
            } else {
                Err(BundleError::Unsigned)
            };
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.key_id() == sig.key_id)
            .ok_or(BundleError::UnknownKey { key_id: sig.key_id })?;
        let signature = Signature::from_bytes(&sig.signature);
        key.0
            .verify_strict(&bundle.digest, &signature)
            .map_err(|_| BundleError::BadSignature { key_id: sig.key_id })?;
        Ok(Signer::Key(sig.key_id))
    }
}

/// The signature part of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSignature {
    /// Id of the signing key.
    pub key_id: KeyId,
    /// ed25519 signature of the digest.
    pub signature: [u8; SIGNATURE_LEN],
}

/// A plugin bundle: manifest, module, digest and optional signature.
#[derive(Clone, PartialEq)]
pub struct Bundle {
    manifest_text: String,
    manifest: Manifest,
    wasm: Vec<u8>,
    digest: [u8; DIGEST_LEN],
    signature: Option<BundleSignature>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("wasm_bytes", &self.wasm.len())
            .field("digest", &self.digest_hex())
            .field("signed_by", &self.signature.as_ref().map(|s| s.key_id))
            .finish()
    }
}

/// SHA-256 of the canonical encoding of manifest + module.
fn content_digest(manifest: &[u8], wasm: &[u8]) -> [u8; DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update((manifest.len() as u64).to_le_bytes());
    h.update(manifest);
    h.update((wasm.len() as u64).to_le_bytes());
    h.update(wasm);
    h.finalize().into()
}

/// Hex of bytes, lower case.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_module(wasm: &[u8], max_module_bytes: usize) -> Result<(), BundleError> {
    if wasm.len() > max_module_bytes {
        return Err(BundleError::TooLarge {
            what: "wasm module",
            size: wasm.len(),
            limit: max_module_bytes,
            key: "plugins.max_module_bytes",
        });
    }
    if wasm.starts_with(WASM_MAGIC) || is_wat(wasm) {
        Ok(())
    } else {
        Err(BundleError::NotWasm)
    }
}

/// Whether `bytes` look like WAT text: UTF-8 whose first token, after whitespace and `;;` line
/// comments, is `(module`. The host compiles WAT as it does binaries; hand-written plugins
/// (and authors without a binary toolchain) can ship it as is.
fn is_wat(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let mut rest = text.trim_start();
    while let Some(comment) = rest.strip_prefix(";;") {
        rest = comment
            .split_once('\n')
            .map_or("", |(_, after)| after)
            .trim_start();
    }
    rest.starts_with("(module")
}

impl Bundle {
    /// An unsigned bundle from a manifest text and a module; checks both.
    pub fn new(
        manifest_text: &str,
        wasm: Vec<u8>,
        max_module_bytes: usize,
    ) -> Result<Bundle, BundleError> {
        if manifest_text.len() > MAX_MANIFEST_BYTES {
            return Err(BundleError::TooLarge {
                what: "manifest",
                size: manifest_text.len(),
                limit: MAX_MANIFEST_BYTES,
                key: "plugin.toml",
            });
        }
        check_module(&wasm, max_module_bytes)?;
        let manifest = Manifest::parse(manifest_text)?;
        Ok(Bundle {
            digest: content_digest(manifest_text.as_bytes(), &wasm),
            manifest_text: manifest_text.to_string(),
            manifest,
            wasm,
            signature: None,
        })
    }

    /// Signs the bundle (replacing any signature).
    pub fn sign(&mut self, key: &SecretKey) {
        self.signature = Some(BundleSignature {
            key_id: key.public().key_id(),
            signature: key.0.sign(&self.digest).to_bytes(),
        });
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest exactly as signed.
    pub fn manifest_text(&self) -> &str {
        &self.manifest_text
    }

    /// The wasm module.
    pub fn wasm(&self) -> &[u8] {
        &self.wasm
    }

    /// The content digest (SHA-256 of the canonical encoding).
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The content digest as hex; what the registry reports as a plugin's `sha256`.
    pub fn digest_hex(&self) -> String {
        hex(&self.digest)
    }

    /// The signature, if signed.
    pub fn signature(&self) -> Option<&BundleSignature> {
        self.signature.as_ref()
    }

    /// The file bytes (layout in the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let manifest = self.manifest_text.as_bytes();
        let mut out = Vec::with_capacity(
            HEADER_LEN + manifest.len() + self.wasm.len() + DIGEST_LEN + KEY_ID_LEN + SIGNATURE_LEN,
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.signature.is_some() {
            FLAG_SIGNED
        } else {
            0
        };
        out.extend_from_slice(&flags.to_le_bytes());
        // Both lengths fit: `new` and `decode` cap them far below 4 GiB.
        out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.wasm.len() as u32).to_le_bytes());
        out.extend_from_slice(manifest);
        out.extend_from_slice(&self.wasm);
        out.extend_from_slice(&self.digest);
        if let Some(sig) = &self.signature {
            out.extend_from_slice(&sig.key_id.0);
            out.extend_from_slice(&sig.signature);
        }
        out
    }

    /// Reads a bundle: checks the layout, the limits, the digest and the manifest. Does not
    /// check the signature; that is [`TrustPolicy::check`].
    pub fn decode(bytes: &[u8], max_module_bytes: usize) -> Result<Bundle, BundleError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len(), "header")? != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let version = r.u16("header")?;
        if version != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion(version));
        }
        let flags = r.u16("header")?;
        if flags & !FLAG_SIGNED != 0 {
            return Err(BundleError::UnknownFlags(flags));
        }
        let manifest_len = r.u32("header")? as usize;
        let wasm_len = r.u32("header")? as usize;
        if manifest_len > MAX_MANIFEST_BYTES {
            return Err(BundleError::TooLarge {
                what: "manifest",
                size: manifest_len,
                limit: MAX_MANIFEST_BYTES,
                key: "plugin.toml",
            });
        }
        if wasm_len > max_module_bytes {
            return Err(BundleError::TooLarge {
                what: "wasm module",
                size: wasm_len,
                limit: max_module_bytes,
                key: "plugins.max_module_bytes",
            });
        }
        let manifest = r.take(manifest_len, "manifest")?;
        let wasm = r.take(wasm_len, "wasm module")?;
        let digest: [u8; DIGEST_LEN] = r
            .take(DIGEST_LEN, "digest")?
            .try_into()
            .map_err(|_| BundleError::Truncated("digest"))?;
        let signature = if flags & FLAG_SIGNED != 0 {
            let key_id: [u8; KEY_ID_LEN] = r
                .take(KEY_ID_LEN, "signature")?
                .try_into()
                .map_err(|_| BundleError::Truncated("signature"))?;
            let signature: [u8; SIGNATURE_LEN] = r
                .take(SIGNATURE_LEN, "signature")?
                .try_into()
                .map_err(|_| BundleError::Truncated("signature"))?;
            Some(BundleSignature {
                key_id: KeyId(key_id),
                signature,
            })
        } else {
            None
        };
        if !r.0.is_empty() {
            return Err(BundleError::TrailingBytes(r.0.len()));
        }
        if content_digest(manifest, wasm) != digest {
            return Err(BundleError::DigestMismatch);
        }
        let manifest_text =
            std::str::from_utf8(manifest).map_err(|_| BundleError::ManifestNotUtf8)?;
        let mut bundle = Bundle::new(manifest_text, wasm.to_vec(), max_module_bytes)?;
        bundle.signature = signature;
        Ok(bundle)
    }

    /// Reads the parts `outpost plugin sign` takes: a directory holding `plugin.toml` and
    /// `plugin.wasm`, or the two files.
    pub fn from_files(
        manifest: &Path,
        wasm: &Path,
        max_module_bytes: usize,
    ) -> Result<Bundle, BundleError> {
        let text = std::fs::read_to_string(manifest).map_err(io(format!(
            "cannot read the manifest {}",
            manifest.display()
        )))?;
        let module = std::fs::read(wasm)
            .map_err(io(format!("cannot read the module {}", wasm.display())))?;
        Bundle::new(&text, module, max_module_bytes)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, part: &'static str) -> Result<&'a [u8], BundleError> {
        if self.0.len() < n {
            return Err(BundleError::Truncated(part));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self, part: &'static str) -> Result<u16, BundleError> {
        let b = self.take(2, part)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, part: &'static str) -> Result<u32, BundleError> {
        let b = self.take(4, part)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Fsyncs a directory so a rename or new file in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "name = \"echo\"\nversion = \"1.0.0\"\ninputs = [\"echo.in\"]\noutputs = [\"echo.out\"]\n";
    const LIMIT: usize = 1 << 20;

    fn wasm() -> Vec<u8> {
        let mut w = b"\0asm\x01\0\0\0".to_vec();
        w.extend_from_slice(&[7u8; 100]);
        w
    }

    fn signed(key: &SecretKey) -> Bundle {
        let mut b = Bundle::new(MANIFEST, wasm(), LIMIT).unwrap();
        b.sign(key);
        b
    }

    fn trusting(key: &SecretKey) -> TrustPolicy {
        TrustPolicy::new(vec![key.public()], false)
    }

    #[test]
    fn a_signed_bundle_round_trips_and_verifies() {
        let key = SecretKey::generate().unwrap();
        let bundle = signed(&key);
        let bytes = bundle.encode();
        assert_eq!(&bytes[..8], b"OUTPOSTB");
        let back = Bundle::decode(&bytes, LIMIT).unwrap();
        assert_eq!(back, bundle);
        assert_eq!(back.manifest().name, "echo");
        assert_eq!(back.wasm(), wasm().as_slice());
        assert_eq!(
            trusting(&key).check(&back).unwrap(),
            Signer::Key(key.public().key_id())
        );
    }

    #[test]
    fn an_unsigned_bundle_round_trips_and_is_refused_unless_allowed() {
        let bundle = Bundle::new(MANIFEST, wasm(), LIMIT).unwrap();
        let back = Bundle::decode(&bundle.encode(), LIMIT).unwrap();
        assert!(back.signature().is_none());
        let key = SecretKey::generate().unwrap();
        let err = trusting(&key).check(&back).unwrap_err();
        assert!(matches!(err, BundleError::Unsigned), "{err}");
        assert!(err.to_string().contains("allow_unsigned"), "{err}");
        let lenient = TrustPolicy::new(vec![], true);
        assert_eq!(lenient.check(&back).unwrap(), Signer::Unsigned);
    }

    /// Re-signs nothing: flips one byte of the content and fixes the digest, as an attacker
    /// who does not hold the key would have to.
    fn tamper(bytes: &[u8], at: usize) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[at] ^= 0x01;
        let manifest_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
        let wasm_len = u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
        let m = &b[HEADER_LEN..HEADER_LEN + manifest_len];
        let w = &b[HEADER_LEN + manifest_len..HEADER_LEN + manifest_len + wasm_len];
        let digest = content_digest(m, w);
        let at = HEADER_LEN + manifest_len + wasm_len;
        b[at..at + DIGEST_LEN].copy_from_slice(&digest);
        b
    }

    #[test]
    fn tampered_wasm_or_manifest_fails_the_signature_check() {
        let key = SecretKey::generate().unwrap();
        let bytes = signed(&key).encode();
        // A byte of the wasm body, and the `1` of the manifest's version "1.0.0" → "0.0.0".
        let wasm_byte = HEADER_LEN + MANIFEST.len() + 20;
        let version_byte = HEADER_LEN + MANIFEST.find("1.0.0").unwrap();
        for at in [wasm_byte, version_byte] {
            let tampered = tamper(&bytes, at);
            let bundle = Bundle::decode(&tampered, LIMIT).unwrap();
            let err = trusting(&key).check(&bundle).unwrap_err();
            assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");
            // Even a box that allows unsigned plugins refuses a signature that does not verify.
            let lenient = TrustPolicy::new(vec![key.public()], true);
            assert!(lenient.check(&bundle).is_err());
        }
        // Without fixing the digest, the damage is caught before any signature check.
        let mut damaged = bytes.clone();
        damaged[wasm_byte] ^= 0x01;
        assert!(matches!(
            Bundle::decode(&damaged, LIMIT),
            Err(BundleError::DigestMismatch)
        ));
    }

    #[test]
    fn a_bundle_signed_by_an_unknown_key_is_refused_naming_the_key() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let bundle = signed(&other);
        let err = trusting(&key).check(&bundle).unwrap_err();
        let BundleError::UnknownKey { key_id } = &err else {
            panic!("{err}")
        };
        assert_eq!(*key_id, other.public().key_id());
        assert!(err
            .to_string()
            .contains(&other.public().key_id().to_string()));
        assert!(err.to_string().contains("trusted_keys"));
    }

    #[test]
    fn a_signature_under_a_trusted_key_id_but_made_by_another_key_is_refused() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let mut bundle = signed(&other);
        if let Some(sig) = bundle.signature.as_mut() {
            sig.key_id = key.public().key_id();
        }
        let err = trusting(&key).check(&bundle).unwrap_err();
        assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn malformed_bundles_are_refused_with_the_reason() {
        let key = SecretKey::generate().unwrap();
        let bytes = signed(&key).encode();
        assert!(matches!(
            Bundle::decode(b"PK\x03\x04", LIMIT),
            Err(BundleError::Truncated(_))
        ));
        assert!(matches!(
            Bundle::decode(b"PK\x03\x04 definitely not a bundle", LIMIT),
            Err(BundleError::NotABundle)
        ));
        assert!(matches!(
            Bundle::decode(&bytes[..bytes.len() - 1], LIMIT),
            Err(BundleError::Truncated("signature"))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Bundle::decode(&longer, LIMIT),
            Err(BundleError::TrailingBytes(1))
        ));
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert!(matches!(
            Bundle::decode(&v2, LIMIT),
            Err(BundleError::UnsupportedVersion(2))
        ));
        let mut flags = bytes.clone();
        flags[10] |= 0x02;
        assert!(matches!(
            Bundle::decode(&flags, LIMIT),
            Err(BundleError::UnknownFlags(_))
        ));
        let err = Bundle::decode(&bytes, 50).unwrap_err();
        assert!(
            err.to_string().contains("plugins.max_module_bytes"),
            "{err}"
        );
        assert!(matches!(
            Bundle::new(MANIFEST, b"not wasm".to_vec(), LIMIT),
            Err(BundleError::NotWasm)
        ));
        assert!(matches!(
            Bundle::new(MANIFEST, b";; (module)\n(func)".to_vec(), LIMIT),
            Err(BundleError::NotWasm)
        ));
        let wat = b";; a hand-written plugin\n  (module (memory (export \"memory\") 1))".to_vec();
        assert!(Bundle::new(MANIFEST, wat, LIMIT).is_ok());
        assert!(matches!(
            Bundle::new(
                "name = \"Bad\"\nversion = \"1\"\ninputs = [\"a\"]\n",
                wasm(),
                LIMIT
            ),
            Err(BundleError::Manifest(_))
        ));
    }

    #[test]
    fn keygen_writes_a_private_secret_key_and_a_parsable_public_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let generated = keygen(&out).unwrap();
        let mode = std::fs::metadata(&generated.secret_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let secret = SecretKey::read(&generated.secret_path).unwrap();
        assert_eq!(secret.public(), generated.public);
        let public_text = std::fs::read_to_string(&generated.public_path).unwrap();
        assert!(public_text.starts_with("ed25519:"));
        let public = PublicKey::parse(&public_text, "pub").unwrap();
        assert_eq!(public, generated.public);
        assert_eq!(public.key_id().to_string().len(), 16);
        // A second keygen into the same directory does not overwrite the key.
        assert!(keygen(&out).is_err());
        assert_eq!(
            SecretKey::read(&generated.secret_path).unwrap().public(),
            generated.public
        );
    }

    #[test]
    fn trusted_key_entries_are_checked_and_name_their_position() {
        let key = SecretKey::generate().unwrap();
        let good = key.public().to_text();
        let bare = good.trim_start_matches("ed25519:").to_string();
        let policy = TrustPolicy::from_config(&[good.clone(), bare], false).unwrap();
        assert_eq!(policy.keys.len(), 2);
        let err = TrustPolicy::from_config(&[good, "ed25519:AAAA".into()], false).unwrap_err();
        assert!(err.to_string().contains("plugins.trusted_keys[1]"), "{err}");
        let err = PublicKey::parse(&key.to_text(), "x").unwrap_err();
        assert!(err.to_string().contains("secret key"), "{err}");
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
