//! Container root filesystems: an overlay of the image's unpacked layers with a private upper
//! directory per container instance.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::host::{Host, HostError, LinuxHost};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("overlay options for {target} exceed one page ({layers} layers)")]
    OptionsTooLong { target: PathBuf, layers: usize },
    #[error(transparent)]
    Host(#[from] HostError),
}

/// mount(2) takes at most one page of options.
const MAX_OPTIONS: usize = 4096;

/// Mounts `lowers` (topmost first) with a fresh upper and work dir at `target`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    mount_overlay_on(&LinuxHost, lowers, upper, work, target)
}

/// [`mount_overlay`] through `host`.
pub fn mount_overlay_on(
    host: &dyn Host,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    for d in [upper, work, target] {
        host.create_dir_all(d)?;
    }
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if data.len() >= MAX_OPTIONS {
        return Err(RootfsError::OptionsTooLong {
            target: target.to_path_buf(),
            layers: lowers.len(),
        });
    }
    host.mount("overlay", target, "overlay", MsFlags::empty(), Some(&data))?;
    Ok(())
}

/// Mounts `lowers` like [`mount_overlay`], with every lower layer seen through an idmapped mount
/// of the user namespace at `userns` (`/proc/<pid>/ns/user`), so the image's root-owned files
/// belong to the namespace's root; the upper layer is owned by `owner` (that root on the host).
/// The shifted lowers are attached below `scratch` only while the overlay is mounted, which
/// keeps private references to them.
pub fn mount_overlay_idmapped(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    userns: &Path,
    owner: (u32, u32),
    scratch: &Path,
) -> Result<(), RootfsError> {
    mount_overlay_idmapped_on(
        &LinuxHost, lowers, upper, work, target, userns, owner, scratch,
    )
}

/// [`mount_overlay_idmapped`] through `host`.
#[allow(clippy::too_many_arguments)]
pub fn mount_overlay_idmapped_on(
    host: &dyn Host,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    userns: &Path,
    owner: (u32, u32),
    scratch: &Path,
) -> Result<(), RootfsError> {
    let mut shifted = Vec::with_capacity(lowers.len());
    let result = (|| {
        for (i, lower) in lowers.iter().enumerate() {
            let at = scratch.join(i.to_string());
            host.create_dir_all(&at)?;
            host.mount_idmapped(lower, &at, userns)?;
            shifted.push(at);
        }
        host.create_dir_all(upper)?;
        host.chown(upper, owner.0, owner.1)?;
        mount_overlay_on(host, &shifted, upper, work, target)
    })();
    // rmdir, never a recursive removal: a mount left by a failed unmount is an image layer.
    for at in &shifted {
        let _ = unmount_on(host, at);
    }
    for i in 0..lowers.len() {
        let _ = host.remove_dir(&scratch.join(i.to_string()));
    }
    let _ = host.remove_dir(scratch);
    result
}

/// Unmounts `target` if something is mounted there (lazily, as a container may still hold it).
pub fn unmount(target: &Path) -> Result<(), HostError> {
    unmount_on(&LinuxHost, target)
}

/// [`unmount`] through `host`.
pub fn unmount_on(host: &dyn Host, target: &Path) -> Result<(), HostError> {
    loop {
        match host.unmount(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue, // stacked mounts: keep going until nothing is left
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
    }
}

/// Mount points at or below `dir` in `mountinfo` (deepest first).
pub fn mounts_below(mountinfo: &Path, dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(mountinfo).unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() + 1 && i + 3 <= b.len() - 1 + 1 {
            if let Ok(v) = u8::from_str_radix(
                std::str::from_utf8(&b[i + 1..(i + 4).min(b.len())]).unwrap_or(""),
                8,
            ) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A directory on the way to a path that some host user cannot search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untraversable {
    pub dir: PathBuf,
    pub mode: u32,
    pub owner: (u32, u32),
}

impl std::fmt::Display for Untraversable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (mode {:04o}, owner {}:{}) cannot be searched",
            self.dir.display(),
            self.mode & 0o7777,
            self.owner.0,
            self.owner.1
        )
    }
}

/// The first directory from `/` down to `path` that host user `uid` (group `gid`) may not
/// search. A user namespace's root is an ordinary user on the host, so a root-only directory
/// above the state dir (as `mktemp -d` makes) hides every root filesystem from it; containerd
/// keeps its root 0711 for this reason.
pub fn untraversable_by(path: &Path, uid: u32, gid: u32) -> Option<Untraversable> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .filter_map(|dir| Some((dir, std::fs::metadata(dir).ok()?)))
        .filter(|(_, m)| m.is_dir())
        .find(|(_, m)| {
            let bit = if m.uid() == uid {
                0o100
            } else if m.gid() == gid {
                0o010
            } else {
                0o001
            };
            m.mode() & bit == 0
        })
        .map(|(dir, m)| Untraversable {
            dir: dir.to_path_buf(),
            mode: m.mode(),
            owner: (m.uid(), m.gid()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Op, RecordingHost};
    use nix::errno::Errno;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn overlay(target: &str, data: &str) -> Op {
        Op::Mount {
            source: "overlay".into(),
            target: p(target),
            fstype: "overlay".into(),
            flags: MsFlags::empty(),
            data: Some(data.into()),
        }
    }

    fn detach(target: &str) -> Op {
        Op::Unmount {
            target: p(target),
            flags: MntFlags::MNT_DETACH,
        }
    }

    #[test]
    fn overlay_stacks_the_lowers_topmost_first() {
        let h = RecordingHost::new();
        mount_overlay_on(
            &h,
            &[p("/layers/top"), p("/layers/base")],
            Path::new("/i/upper"),
            Path::new("/i/work"),
            Path::new("/i/rootfs"),
        )
        .unwrap();
        assert_eq!(
            h.ops(),
            [
                Op::CreateDirAll(p("/i/upper")),
                Op::CreateDirAll(p("/i/work")),
                Op::CreateDirAll(p("/i/rootfs")),
                overlay(
                    "/i/rootfs",
                    "lowerdir=/layers/top:/layers/base,upperdir=/i/upper,workdir=/i/work"
                ),
            ]
        );
        assert_eq!(h.mounted(), [p("/i/rootfs")]);
    }

    #[test]
    fn overlay_options_must_fit_in_a_page() {
        // "lowerdir=" + lower + ",upperdir=/u,workdir=/w" is 32 bytes more than the lower.
        let lower = |len: usize| format!("/{}", "x".repeat(len - 1));
        let fits = RecordingHost::new();
        mount_overlay_on(
            &fits,
            &[p(&lower(4095 - 32))],
            Path::new("/u"),
            Path::new("/w"),
            Path::new("/r"),
        )
        .unwrap();
        assert_eq!(fits.mounted(), [p("/r")]);

        let too_long = RecordingHost::new();
        let e = mount_overlay_on(
            &too_long,
            &[p(&lower(4096 - 32))],
            Path::new("/u"),
            Path::new("/w"),
            Path::new("/r"),
        )
        .unwrap_err();
        assert!(
            matches!(&e, RootfsError::OptionsTooLong { target, layers: 1 } if target == Path::new("/r")),
            "{e}"
        );
        assert!(!too_long
            .ops()
            .iter()
            .any(|op| matches!(op, Op::Mount { .. })));
    }

    #[test]
    fn idmapped_lowers_are_shifted_for_the_mount_then_released() {
        let h = RecordingHost::new();
        mount_overlay_idmapped_on(
            &h,
            &[p("/layers/top"), p("/layers/base")],
            Path::new("/i/upper"),
            Path::new("/i/work"),
            Path::new("/i/rootfs"),
            Path::new("/proc/42/ns/user"),
            (100_000, 100_000),
            Path::new("/i/idmapped"),
        )
        .unwrap();
        let shift = |lower: &str, at: &str| Op::MountIdmapped {
            source: p(lower),
            target: p(at),
            userns: p("/proc/42/ns/user"),
        };
        assert_eq!(
            h.ops(),
            [
                Op::CreateDirAll(p("/i/idmapped/0")),
                shift("/layers/top", "/i/idmapped/0"),
                Op::CreateDirAll(p("/i/idmapped/1")),
                shift("/layers/base", "/i/idmapped/1"),
                Op::CreateDirAll(p("/i/upper")),
                Op::Chown {
                    path: p("/i/upper"),
                    uid: 100_000,
                    gid: 100_000
                },
                Op::CreateDirAll(p("/i/upper")),
                Op::CreateDirAll(p("/i/work")),
                Op::CreateDirAll(p("/i/rootfs")),
                overlay(
                    "/i/rootfs",
                    "lowerdir=/i/idmapped/0:/i/idmapped/1,upperdir=/i/upper,workdir=/i/work"
                ),
                // The overlay holds its own references: the shifted trees go at once.
                detach("/i/idmapped/0"),
                detach("/i/idmapped/1"),
                Op::RemoveDir(p("/i/idmapped/0")),
                Op::RemoveDir(p("/i/idmapped/1")),
                Op::RemoveDir(p("/i/idmapped")),
            ]
        );
        assert_eq!(h.mounted(), [p("/i/rootfs")]);
    }

    #[test]
    fn a_failed_idmapped_lower_undoes_the_ones_before_it() {
        let h = RecordingHost::new().failing_when(
            |op| matches!(op, Op::MountIdmapped { source, .. } if source == Path::new("/layers/base")),
            Errno::EPERM,
            1,
        );
        let e = mount_overlay_idmapped_on(
            &h,
            &[p("/layers/top"), p("/layers/base")],
            Path::new("/i/upper"),
            Path::new("/i/work"),
            Path::new("/i/rootfs"),
            Path::new("/proc/42/ns/user"),
            (100_000, 100_000),
            Path::new("/i/idmapped"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "idmapped mount of /layers/base at /i/idmapped/1 through /proc/42/ns/user: \
             Operation not permitted (os error 1)"
        );
        assert_eq!(
            h.ops()[3..],
            [
                detach("/i/idmapped/0"),
                Op::RemoveDir(p("/i/idmapped/0")),
                Op::RemoveDir(p("/i/idmapped/1")),
                Op::RemoveDir(p("/i/idmapped")),
            ]
        );
        assert!(h.mounted().is_empty());
    }

    #[test]
    fn a_failed_overlay_still_releases_the_shifted_lowers() {
        let h = RecordingHost::new().failing_when(
            |op| matches!(op, Op::Mount { .. }),
            Errno::EINVAL,
            1,
        );
        let e = mount_overlay_idmapped_on(
            &h,
            &[p("/layers/only")],
            Path::new("/i/upper"),
            Path::new("/i/work"),
            Path::new("/i/rootfs"),
            Path::new("/proc/42/ns/user"),
            (100_000, 100_000),
            Path::new("/i/idmapped"),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("mounting overlay at /i/rootfs: "),
            "{e}"
        );
        let ops = h.ops();
        assert_eq!(
            ops[ops.len() - 3..],
            [
                detach("/i/idmapped/0"),
                Op::RemoveDir(p("/i/idmapped/0")),
                Op::RemoveDir(p("/i/idmapped")),
            ]
        );
        assert!(h.mounted().is_empty());
    }

    #[test]
    fn unmount_takes_off_stacked_mounts_and_accepts_none() {
        let h = RecordingHost::new().with_mount("/r").with_mount("/r");
        unmount_on(&h, Path::new("/r")).unwrap();
        unmount_on(&h, Path::new("/never-mounted")).unwrap();
        assert_eq!(h.ops(), [detach("/r"), detach("/r")]);
        assert!(h.mounted().is_empty());
    }

    #[test]
    fn unmount_reports_other_errors_with_the_path() {
        let h = RecordingHost::new()
            .with_mount("/r")
            .failing("/r", Errno::EPERM, 1);
        let e = unmount_on(&h, Path::new("/r")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(e.to_string().starts_with("unmounting /r: "), "{e}");
        assert_eq!(h.mounted(), [p("/r")]);
    }

    #[test]
    fn finds_mounts_below_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mi = dir.path().join("mountinfo");
        std::fs::write(
            &mi,
            "22 1 0:21 / /proc rw - proc proc rw\n\
             90 1 0:50 / /var/lib/podlet/pods/u/c/rootfs rw - overlay overlay rw\n\
             91 90 0:51 / /var/lib/podlet/pods/u/c/rootfs/dev rw - tmpfs tmpfs rw\n\
             92 1 0:52 / /var/lib/podlet/pods/u\\040x rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        let m = mounts_below(&mi, Path::new("/var/lib/podlet/pods/u"));
        assert_eq!(m[0], Path::new("/var/lib/podlet/pods/u/c/rootfs/dev"));
        assert_eq!(m.len(), 2);
        assert_eq!(
            mounts_below(&mi, Path::new("/var/lib/podlet/pods/u x")),
            vec![PathBuf::from("/var/lib/podlet/pods/u x")]
        );
    }

    #[test]
    fn the_first_directory_a_mapped_root_cannot_search_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().unwrap();
        let deep = top.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(top.path(), 0o755);
        set(&top.path().join("a"), 0o700);
        // Owned by this process's user: searchable by it, not by host uid 65536.
        let me = nix::unistd::getuid().as_raw();
        let found = untraversable_by(&deep, 65536, 65536).unwrap();
        assert_eq!(found.dir, top.path().join("a"));
        assert_eq!(found.mode & 0o777, 0o700);
        assert!(found.to_string().contains("(mode 0700, owner"), "{found}");
        assert_eq!(untraversable_by(&deep, me, me), None, "the owner may");
        set(&top.path().join("a"), 0o711);
        assert_eq!(
            untraversable_by(&deep, 65536, 65536),
            None,
            "0711 lets others through"
        );
        set(&top.path().join("a"), 0o750);
        let gid = nix::unistd::getgid().as_raw();
        assert_eq!(untraversable_by(&deep, 65536, gid), None, "the group may");
    }
}
