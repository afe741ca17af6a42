//! The on-disk store of installed plugins: the layout under `<data dir>/plugins/`, writing a
//! plugin directory so that a crash leaves the old or the new version and never a mix, finishing
//! or rolling back what a crash interrupted, `meta.json` and `registry.json`.
//!
//! # On disk (`<data dir>/plugins/`)
//! ```text
//! installed/<name>/bundle.opb   the bundle as installed (signature kept, re-checked on start)
//! installed/<name>/plugin.toml  a copy of its manifest, for operators to read
//! installed/<name>/meta.json    {"name","version","source","signer","sha256","installed_at_ms","updated_at_ms"}
//! installed/.staging-<name>/    a new version being written (deleted on open)
//! installed/.retired-<name>/    the old version during an upgrade's swap (restored on open
//!                               when `<name>/` is missing, else deleted)
//! installed/.removed-<name>/    a plugin being deleted (deleted on open)
//! registry.json                 {"format":1,"removed_bundled":[…]}: bundled plugins the operator
//!                               removed, so they are not installed again
//! cache/                        compiled modules (the host's cache)
//! ```
//! Every file is written to a temporary name, fsynced and renamed; a plugin directory is
//! complete before it is renamed into place, and the parent directory is fsynced after each
//! rename, so a crash leaves either the old or the new version, never a mix.
//!
//! Everything here blocks; the registry calls it from `spawn_blocking`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RegistryError;
use crate::plugins::bundle::{self, Bundle};
use crate::plugins::manifest::name_problem;

pub(super) const INSTALLED_DIR: &str = "installed";
pub(super) const BUNDLE_FILE: &str = "bundle.opb";
pub(super) const MANIFEST_FILE: &str = "plugin.toml";
pub(super) const META_FILE: &str = "meta.json";
const REGISTRY_FILE: &str = "registry.json";
const STAGING: &str = ".staging-";
const RETIRED: &str = ".retired-";
const REMOVED: &str = ".removed-";

/// Where an installed plugin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Embedded in the binary.
    Bundled,
    /// Installed by an operator.
    Operator,
}

/// `meta.json` of an installed plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledMeta {
    /// Plugin name.
    pub name: String,
    /// Version of the manifest.
    pub version: String,
    /// Where it came from.
    pub source: Source,
    /// Key id of the signer, `unsigned` or `bundled`.
    pub signer: String,
    /// Hex SHA-256 digest of the bundle content (see `bundle`).
    pub sha256: String,
    /// When the plugin was first installed (epoch ms); kept across upgrades.
    pub installed_at_ms: u64,
    /// When the current version was installed (epoch ms).
    pub updated_at_ms: u64,
}

/// `registry.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    format: u32,
    removed_bundled: BTreeSet<String>,
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let context = context.into();
    move |source| RegistryError::Io { context, source }
}

/// The files of one plugin directory, encoded and ready to write.
#[derive(Debug)]
pub(super) struct PluginFiles {
    name: String,
    bundle: Vec<u8>,
    manifest: String,
    meta: Vec<u8>,
}

impl PluginFiles {
    /// Encodes `bundle` and `meta` (so the blocking write owns what it writes).
    pub(super) fn new(bundle: &Bundle, meta: &InstalledMeta) -> Result<PluginFiles, RegistryError> {
        Ok(PluginFiles {
            name: meta.name.clone(),
            bundle: bundle.encode(),
            manifest: bundle.manifest_text().to_string(),
            meta: serde_json::to_vec_pretty(meta).map_err(|source| RegistryError::Encode {
                file: META_FILE,
                source,
            })?,
        })
    }
}

/// The store in `<data dir>/plugins`. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates `dir/installed` if needed and finishes or rolls back what a crash interrupted.
    pub(super) fn open(dir: &Path) -> Result<Store, RegistryError> {
        let store = Store {
            dir: dir.to_path_buf(),
        };
        let installed = store.installed();
        std::fs::create_dir_all(&installed)
            .map_err(io_err(format!("cannot create {}", installed.display())))?;
        recover(&installed)?;
        Ok(store)
    }

    fn installed(&self) -> PathBuf {
        self.dir.join(INSTALLED_DIR)
    }

    /// The installed bundle of `name`.
    pub(super) fn bundle_path(&self, name: &str) -> PathBuf {
        self.installed().join(name).join(BUNDLE_FILE)
    }

    /// The names of the installed plugin directories, sorted.
    pub(super) fn installed_names(&self) -> Result<Vec<String>, RegistryError> {
        let installed = self.installed();
        let mut names = Vec::new();
        let entries = std::fs::read_dir(&installed)
            .map_err(io_err(format!("cannot list {}", installed.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("cannot list {}", installed.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && name_problem(&name).is_none() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// `meta.json` of the installed plugin `name`.
    pub(super) fn read_meta(&self, name: &str) -> Result<InstalledMeta, RegistryError> {
        read_meta(&self.installed().join(name))
    }

    /// Writes a complete plugin directory under a staging name; returns its path.
    pub(super) fn stage(&self, files: &PluginFiles) -> Result<PathBuf, RegistryError> {
        let dir = self.installed().join(format!("{STAGING}{}", files.name));
        let ctx = |what: &str| format!("cannot write {what} in {}", dir.display());
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(ctx("(clearing)")))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err(ctx("(creating)")))?;
        bundle::write_atomic(&dir.join(BUNDLE_FILE), &files.bundle)
            .map_err(io_err(ctx(BUNDLE_FILE)))?;
        bundle::write_atomic(&dir.join(MANIFEST_FILE), files.manifest.as_bytes())
            .map_err(io_err(ctx(MANIFEST_FILE)))?;
        bundle::write_atomic(&dir.join(META_FILE), &files.meta).map_err(io_err(ctx(META_FILE)))?;
        Ok(dir)
    }

    /// Writes a plugin's directory (new or replacing the old one) atomically.
    pub(super) fn write_plugin(&self, files: &PluginFiles) -> Result<(), RegistryError> {
        let staging = self.stage(files)?;
        self.swap_into_place(&staging, &files.name)
    }

    /// Moves a staged plugin directory to `<name>`, keeping the old one as `.retired-<name>`
    /// until the new one is in place.
    pub(super) fn swap_into_place(&self, staging: &Path, name: &str) -> Result<(), RegistryError> {
        let installed = self.installed();
        let target = installed.join(name);
        let retired = installed.join(format!("{RETIRED}{name}"));
        let sync = || {
            bundle::fsync_dir(&installed)
                .map_err(io_err(format!("cannot sync {}", installed.display())))
        };
        if target.exists() {
            if retired.exists() {
                std::fs::remove_dir_all(&retired)
                    .map_err(io_err(format!("cannot delete {}", retired.display())))?;
            }
            std::fs::rename(&target, &retired)
                .map_err(io_err(format!("cannot move {} aside", target.display())))?;
            sync()?;
        }
        std::fs::rename(staging, &target).map_err(io_err(format!(
            "cannot move the new version to {}",
            target.display()
        )))?;
        sync()?;
        if retired.exists() {
            std::fs::remove_dir_all(&retired)
                .map_err(io_err(format!("cannot delete {}", retired.display())))?;
        }
        Ok(())
    }

    /// Deletes the directory of `name` (renamed aside first, so a crash cannot leave half).
    pub(super) fn delete_plugin(&self, name: &str) -> Result<(), RegistryError> {
        let installed = self.installed();
        let dir = installed.join(name);
        if !dir.exists() {
            return Ok(());
        }
        let doomed = installed.join(format!("{REMOVED}{name}"));
        std::fs::rename(&dir, &doomed)
            .map_err(io_err(format!("cannot remove {}", dir.display())))?;
        bundle::fsync_dir(&installed)
            .map_err(io_err(format!("cannot sync {}", installed.display())))?;
        std::fs::remove_dir_all(&doomed)
            .map_err(io_err(format!("cannot delete {}", doomed.display())))
    }

    /// The bundled plugins the operator removed.
    pub(super) fn removed_bundled(&self) -> Result<BTreeSet<String>, RegistryError> {
        Ok(self.read_registry_file()?.removed_bundled)
    }

    /// Remembers that the operator removed the bundled plugin `name`.
    pub(super) fn remember_removal(&self, name: &str) -> Result<(), RegistryError> {
        let mut file = self.read_registry_file()?;
        if file.removed_bundled.insert(name.to_string()) {
            self.write_registry_file(&file)?;
        }
        Ok(())
    }

    /// Forgets a removal of `name` (it was installed again).
    pub(super) fn forget_removal(&self, name: &str) -> Result<(), RegistryError> {
        let mut file = self.read_registry_file()?;
        if file.removed_bundled.remove(name) {
            self.write_registry_file(&file)?;
        }
        Ok(())
    }

    fn read_registry_file(&self) -> Result<RegistryFile, RegistryError> {
        let path = self.dir.join(REGISTRY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                path,
                problem: format!("not a registry file ({e})"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryFile {
                format: 1,
                removed_bundled: BTreeSet::new(),
            }),
            Err(e) => Err(RegistryError::Io {
                context: format!("cannot read {}", path.display()),
                source: e,
            }),
        }
    }

    fn write_registry_file(&self, file: &RegistryFile) -> Result<(), RegistryError> {
        let path = self.dir.join(REGISTRY_FILE);
        let bytes = serde_json::to_vec_pretty(file).map_err(|source| RegistryError::Encode {
            file: REGISTRY_FILE,
            source,
        })?;
        bundle::write_atomic(&path, &bytes)
            .map_err(io_err(format!("cannot write {}", path.display())))
    }
}

/// Finishes or rolls back what a crash interrupted (see the module doc).
pub(super) fn recover(installed: &Path) -> Result<(), RegistryError> {
    let entries = std::fs::read_dir(installed)
        .map_err(io_err(format!("cannot list {}", installed.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("cannot list {}", installed.display())))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if file_name.starts_with(STAGING) || file_name.starts_with(REMOVED) {
            tracing::info!(path = %path.display(), "Deleting what an interrupted plugin operation left.");
            std::fs::remove_dir_all(&path)
                .map_err(io_err(format!("cannot delete {}", path.display())))?;
        } else if let Some(name) = file_name.strip_prefix(RETIRED) {
            let target = installed.join(name);
            if target.exists() {
                std::fs::remove_dir_all(&path)
                    .map_err(io_err(format!("cannot delete {}", path.display())))?;
            } else {
                tracing::warn!(
                    plugin = name,
                    "An upgrade was interrupted; restoring the previous version."
                );
                std::fs::rename(&path, &target)
                    .map_err(io_err(format!("cannot restore {}", path.display())))?;
            }
        }
    }
    bundle::fsync_dir(installed).map_err(io_err(format!("cannot sync {}", installed.display())))
}

/// `meta.json` in the plugin directory `dir`.
pub(super) fn read_meta(dir: &Path) -> Result<InstalledMeta, RegistryError> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
        path,
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_swap_is_rolled_back_or_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let installed = dir.path().join(INSTALLED_DIR);
        for d in [".staging-a", ".retired-b", ".retired-c", "c", ".removed-d"] {
            std::fs::create_dir_all(installed.join(d)).unwrap();
            std::fs::write(installed.join(d).join("marker"), d).unwrap();
        }
        recover(&installed).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&installed)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(
            std::fs::read_to_string(installed.join("b/marker")).unwrap(),
            ".retired-b"
        );
        assert_eq!(
            std::fs::read_to_string(installed.join("c/marker")).unwrap(),
            "c"
        );
    }
}
