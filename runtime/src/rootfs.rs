//! Container root filesystems: an overlay of the image's unpacked layers with a private upper
//! directory per container instance.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mounts `lowers` (topmost first) with a fresh upper and work dir at `target`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    for d in [upper, work, target] {
        std::fs::create_dir_all(d)?;
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
    if data.len() >= 4096 {
        return Err(io::Error::other(format!(
            "overlay options for {} exceed one page ({} layers)",
            target.display(),
            lowers.len()
        )));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mounting overlay at {}: {e}", target.display())))
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
) -> io::Result<()> {
    use std::os::fd::AsFd;
    let ns = std::fs::File::open(userns)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", userns.display())))?;
    let mut shifted = Vec::with_capacity(lowers.len());
    let result = (|| {
        for (i, lower) in lowers.iter().enumerate() {
            let at = scratch.join(i.to_string());
            std::fs::create_dir_all(&at)?;
            let tree = crate::sys::idmapped_clone(lower, ns.as_fd()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("idmapped mount of {}: {e}", lower.display()),
                )
            })?;
            crate::sys::attach_mount(tree.as_fd(), &at)?;
            shifted.push(at);
        }
        std::fs::create_dir_all(upper)?;
        std::os::unix::fs::chown(upper, Some(owner.0), Some(owner.1))?;
        mount_overlay(&shifted, upper, work, target)
    })();
    // rmdir, never a recursive removal: a mount left by a failed unmount is an image layer.
    for at in &shifted {
        let _ = unmount(at);
    }
    for i in 0..lowers.len() {
        let _ = std::fs::remove_dir(scratch.join(i.to_string()));
    }
    let _ = std::fs::remove_dir(scratch);
    result
}

/// Unmounts `target` if something is mounted there (lazily, as a container may still hold it).
pub fn unmount(target: &Path) -> io::Result<()> {
    loop {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue, // stacked mounts: keep going until nothing is left
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(io::Error::other(format!(
                    "unmounting {}: {e}",
                    target.display()
                )))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
