//! Unpacks one layer tarball into a directory in overlayfs form: `.wh.NAME` entries become 0/0
//! character devices and `.wh..wh..opq` becomes the `trusted.overlay.opaque` xattr, so unpacked
//! layers stack directly as overlay lowerdirs.
//!
//! Nothing in a layer is trusted. Every entry path is resolved component by component inside the
//! target, refusing `..`, paths through symlinks, hardlinks to anything outside the layer and
//! device nodes. The caller unpacks into a private temporary directory and renames it into
//! place only on success, so a refused layer leaves nothing behind.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::host::{Host, HostError, LinuxHost};
use crate::sys;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer entry {path:?}: {reason}")]
    Refused { path: String, reason: &'static str },
    // Causes are part of the messages and not also a source(), so chains print them once.
    #[error("layer entry {path:?}: {error}")]
    Io { path: String, error: io::Error },
    #[error("reading layer archive: {0}")]
    Archive(io::Error),
}

fn refused(path: &Path, reason: &'static str) -> LayerError {
    LayerError::Refused {
        path: path.display().to_string(),
        reason,
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |error| LayerError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// A host operation's OS error, reported like the layer's own I/O errors.
fn host_err(path: &Path) -> impl FnOnce(HostError) -> LayerError + '_ {
    move |e| io_err(path)(e.into_io())
}

/// Turns an archive path into a relative path of normal components, refusing `..`.
fn clean(raw: &Path) -> Result<PathBuf, LayerError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err(refused(raw, "path contains '..'")),
            Component::Prefix(_) => return Err(refused(raw, "path has a prefix")),
        }
    }
    Ok(out)
}

/// Ensures every parent of `rel` inside `root` is a real directory (creating missing ones), so
/// that writing `rel` can never go through a symlink planted by an earlier entry.
fn prepare_parent(root: &Path, rel: &Path) -> Result<PathBuf, LayerError> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refused(rel, "path goes through a symlink"))
                }
                Ok(_) => return Err(refused(rel, "parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&cur)
                        .map_err(io_err(rel))?;
                }
                Err(e) => return Err(io_err(rel)(e)),
            }
        }
    }
    Ok(root.join(rel))
}

/// Removes whatever an earlier entry of the same layer left at `path` (tar allows overwrites).
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Summary of an unpacked layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks the (already decompressed) tar stream `input` into the empty directory `root`.
/// `preserve_owner` keeps uid/gid from the archive (needs root).
pub fn unpack(input: impl Read, root: &Path, preserve_owner: bool) -> Result<Unpacked, LayerError> {
    unpack_on(&LinuxHost, input, root, preserve_owner)
}

/// [`unpack`] with whiteouts, the opaque marker and ownership applied through `host`.
pub fn unpack_on(
    host: &dyn Host,
    input: impl Read,
    root: &Path,
    preserve_owner: bool,
) -> Result<Unpacked, LayerError> {
    let mut archive = tar::Archive::new(input);
    let mut stats = Unpacked::default();
    let mut dirs: Vec<(PathBuf, u32, i64)> = Vec::new();
    for entry in archive.entries().map_err(LayerError::Archive)? {
        let mut entry = entry.map_err(LayerError::Archive)?;
        let raw = entry.path().map_err(LayerError::Archive)?.into_owned();
        let rel = clean(&raw)?;
        if rel.as_os_str().is_empty() {
            continue; // the root directory itself
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let kind = header.entry_type();
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = prepare_parent(root, &rel)?;
        stats.entries += 1;

        if name == OPAQUE_MARKER {
            let dir = target.parent().unwrap_or(root);
            host.set_xattr(dir, "trusted.overlay.opaque", b"y")
                .map_err(host_err(&rel))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(refused(&rel, "malformed whiteout"));
            }
            let wh = target.with_file_name(hidden);
            if let Ok(m) = fs::symlink_metadata(&wh) {
                if m.is_dir() {
                    fs::remove_dir_all(&wh).map_err(io_err(&rel))?;
                } else {
                    fs::remove_file(&wh).map_err(io_err(&rel))?;
                }
            }
            host.mknod_whiteout(&wh).map_err(host_err(&rel))?;
            continue;
        }

        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&target).map_err(io_err(&rel))?;
                        fs::create_dir(&target).map_err(io_err(&rel))?;
                    }
                    Err(_) => fs::create_dir(&target).map_err(io_err(&rel))?,
                }
                if preserve_owner {
                    host.lchown(&target, uid, gid).map_err(host_err(&rel))?;
                }
                // Permissions and times of directories are applied last: later entries write
                // into them, which would otherwise fail (read-only dirs) or reset mtime.
                dirs.push((target, mode, mtime));
                continue;
            }
            EntryType::Regular | EntryType::Continuous => {
                clear(&target).map_err(io_err(&rel))?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err(&rel))?;
                stats.bytes += io::copy(&mut entry, &mut f).map_err(io_err(&rel))?;
                drop(f);
                if preserve_owner {
                    host.lchown(&target, uid, gid).map_err(host_err(&rel))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&rel))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(LayerError::Archive)?
                    .ok_or_else(|| refused(&rel, "symlink without a target"))?
                    .into_owned();
                // The target is stored verbatim: it is only ever resolved inside the container's
                // root, and no later entry may be written through it (see prepare_parent).
                clear(&target).map_err(io_err(&rel))?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_err(&rel))?;
                if preserve_owner {
                    host.lchown(&target, uid, gid).map_err(host_err(&rel))?;
                }
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(LayerError::Archive)?
                    .ok_or_else(|| refused(&rel, "hardlink without a target"))?
                    .into_owned();
                let link_rel =
                    clean(&link).map_err(|_| refused(&rel, "hardlink leaves the layer"))?;
                let source = prepare_parent(root, &link_rel)
                    .map_err(|_| refused(&rel, "hardlink target goes through a symlink"))?;
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return Err(refused(&rel, "hardlink target is not a regular file")),
                    Err(_) => return Err(refused(&rel, "hardlink target is not in this layer")),
                }
                clear(&target).map_err(io_err(&rel))?;
                fs::hard_link(&source, &target).map_err(io_err(&rel))?;
                continue;
            }
            EntryType::Fifo => {
                clear(&target).map_err(io_err(&rel))?;
                nix::unistd::mkfifo(
                    &target,
                    nix::sys::stat::Mode::from_bits_truncate(mode as libc::mode_t),
                )
                .map_err(|e| io_err(&rel)(e.into()))?;
                if preserve_owner {
                    host.lchown(&target, uid, gid).map_err(host_err(&rel))?;
                }
            }
            EntryType::Char | EntryType::Block => {
                return Err(refused(
                    &rel,
                    "device nodes are not allowed in image layers",
                ))
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            _ => return Err(refused(&rel, "unsupported entry type")),
        }
        sys::lutimes(&target, mtime).map_err(io_err(&rel))?;
    }
    for (dir, mode, mtime) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io_err(&dir))?;
        sys::lutimes(&dir, mtime).map_err(io_err(&dir))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Op, RecordingHost};

    fn raw_tar(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
        // Writes names into the header bytes directly: the tar crate's builder refuses `..`,
        // which is exactly what a hostile layer contains.
        let mut out = Vec::new();
        for (name, kind, link, data) in entries {
            let mut h = tar::Header::new_old();
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            out.extend(std::iter::repeat_n(0u8, pad));
        }
        out.extend([0u8; 1024]);
        out
    }

    fn unpack_into(tar: &[u8]) -> (tempfile::TempDir, Result<Unpacked, LayerError>) {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(tar, dir.path(), false);
        (dir, r)
    }

    #[test]
    fn plain_layer_unpacks() {
        let t = raw_tar(&[
            ("bin/", EntryType::Directory, "", b""),
            ("bin/busybox", EntryType::Regular, "", b"ELF"),
            ("bin/sh", EntryType::Symlink, "/bin/busybox", b""),
            ("bin/ash", EntryType::Link, "bin/busybox", b""),
        ]);
        let (dir, r) = unpack_into(&t);
        let stats = r.unwrap();
        assert_eq!(stats.entries, 4);
        assert_eq!(fs::read(dir.path().join("bin/ash")).unwrap(), b"ELF");
        assert_eq!(
            fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
    }

    #[test]
    fn dot_dot_is_refused() {
        let (_d, r) = unpack_into(&raw_tar(&[("../escape", EntryType::Regular, "", b"x")]));
        assert!(matches!(r, Err(LayerError::Refused { reason, .. }) if reason.contains("..")));
    }

    #[test]
    fn writing_through_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_string();
        let t = raw_tar(&[
            ("evil", EntryType::Symlink, &target, b""),
            ("evil/passwd", EntryType::Regular, "", b"pwned"),
        ]);
        let (_d, r) = unpack_into(&t);
        assert!(matches!(r, Err(LayerError::Refused { reason, .. }) if reason.contains("symlink")));
        assert!(!outside.path().join("passwd").exists());
    }

    #[test]
    fn hardlink_outside_is_refused() {
        let t = raw_tar(&[("shadow", EntryType::Link, "../../etc/shadow", b"")]);
        let (_d, r) = unpack_into(&t);
        assert!(matches!(r, Err(LayerError::Refused { .. })));
        let t = raw_tar(&[("shadow", EntryType::Link, "/etc/shadow", b"")]);
        let (_d, r) = unpack_into(&t);
        assert!(
            matches!(r, Err(LayerError::Refused { reason, .. }) if reason.contains("not in this layer"))
        );
    }

    #[test]
    fn device_nodes_are_refused() {
        let (_d, r) = unpack_into(&raw_tar(&[("dev/sda", EntryType::Block, "", b"")]));
        assert!(matches!(r, Err(LayerError::Refused { reason, .. }) if reason.contains("device")));
    }

    /// Entries (name, kind, link target, uid, gid); regular files hold one byte.
    fn owned_tar(entries: &[(&str, EntryType, &str, u64, u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, uid, gid) in entries {
            let data: &[u8] = if *kind == EntryType::Regular {
                b"x"
            } else {
                b""
            };
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_uid(*uid);
            h.set_gid(*gid);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            b.append_data(&mut h, name, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_opaque_dirs_and_owners_go_through_the_host() {
        let t = owned_tar(&[
            ("etc/", EntryType::Directory, "", 0, 0),
            ("etc/.wh..wh..opq", EntryType::Regular, "", 0, 0),
            ("etc/passwd", EntryType::Regular, "", 1000, 1001),
            ("old", EntryType::Regular, "", 0, 0),
            (".wh.old", EntryType::Regular, "", 0, 0),
            ("bin/sh", EntryType::Symlink, "busybox", 2, 3),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let h = RecordingHost::new();
        let stats = unpack_on(&h, &t[..], d, true).unwrap();
        assert_eq!(stats.entries, 6);
        let owner = |p: &str, uid, gid| Op::Lchown {
            path: d.join(p),
            uid,
            gid,
        };
        assert_eq!(
            h.ops(),
            [
                owner("etc", 0, 0),
                Op::SetXattr {
                    path: d.join("etc"),
                    name: "trusted.overlay.opaque".into(),
                    value: b"y".to_vec(),
                },
                owner("etc/passwd", 1000, 1001),
                owner("old", 0, 0),
                Op::MknodWhiteout(d.join("old")),
                owner("bin/sh", 2, 3),
            ]
        );
        // The file the whiteout hides is gone from the layer, so the node can take its place.
        assert!(fs::symlink_metadata(d.join("old")).is_err());
        assert!(!d.join(".wh.old").exists() && !d.join("etc/.wh..wh..opq").exists());

        let unowned = RecordingHost::new();
        let again = tempfile::tempdir().unwrap();
        unpack_on(&unowned, &t[..], again.path(), false).unwrap();
        assert!(!unowned
            .ops()
            .iter()
            .any(|op| matches!(op, Op::Lchown { .. })));
    }
}
