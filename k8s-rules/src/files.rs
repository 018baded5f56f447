//! Writing files that hold secrets (private keys, kubeconfigs with credentials): readable by
//! their owner only from the first byte, and replaced atomically, so a crash or a concurrent
//! reader never sees a torn or empty key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
/// The cause is the source, not part of the message, so chains print it once.
#[error("writing {path}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `data` to `path` (mode 0600), creating its directory: a temporary file beside it,
/// synced, renamed over `path`, and the directory synced so the rename survives a crash.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| WriteError { path: p, source }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path)(e));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_replace_atomically_and_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_private(&path, b"one").unwrap();
        // An existing world-readable file is replaced, not rewritten in place.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        let err = write_private(Path::new("/proc/version/key"), b"x").unwrap_err();
        assert!(
            err.to_string().starts_with("writing /proc/version"),
            "{err}"
        );
    }
}
