//! The human table `podlet image ls` prints.

use std::io::{self, Write};

use super::ImageRecord;

/// Writes to stdout a human table of images.
pub fn write_table(images: &[ImageRecord], out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{:<50} {:<14} {:>10}", "IMAGE", "ID", "SIZE")?;
    for i in images {
        let id = i.id.trim_start_matches("sha256:");
        writeln!(
            out,
            "{:<50} {:<14} {:>10}",
            i.name,
            &id[..12.min(id.len())],
            human_size(i.size)
        )?;
    }
    Ok(())
}

pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
