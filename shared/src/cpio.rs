//! The newc cpio format (what the kernel unpacks as an initramfs, and the format of node root
//! images): a writer that gives the same bytes for the same entries, and a reader.

use std::collections::BTreeMap;

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its permission bits.
    Dir(u32),
    File {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
    /// A character device (major, minor).
    Char(u32, u32),
}

/// `data` gzip-compressed at `level` (0-9), without a file name or time stamp, so that the same
/// archive always gives the same bytes. A compressed archive in an initramfs needs no alignment:
/// Linux finds one at any offset after the archive before it, a plain newc archive only at a
/// multiple of 4.
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::new(level.min(9)));
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// A newc archive of `entries` (paths without a leading `/`), in path order, with every time
/// stamp, owner and inode number fixed.
pub fn write(entries: &BTreeMap<String, Entry>) -> Vec<u8> {
    let mut out = Vec::new();
    let put = |out: &mut Vec<u8>, name: &str, mode: u32, nlink: u32, data: &[u8], rdev: (u32, u32), ino: u32| {
        let name_c = format!("{name}\0");
        let header = format!(
            "070701{ino:08X}{mode:08X}{z:08X}{z:08X}{nlink:08X}{z:08X}{size:08X}{z:08X}{z:08X}{rmaj:08X}{rmin:08X}{nsize:08X}{z:08X}",
            z = 0,
            size = data.len(),
            rmaj = rdev.0,
            rmin = rdev.1,
            nsize = name_c.len(),
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name_c.as_bytes());
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, (path, e)) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir(mode) => put(&mut out, path, 0o040000 | (mode & 0o7777), 2, &[], (0, 0), ino),
            Entry::File { data, mode } => put(&mut out, path, 0o100000 | (mode & 0o7777), 1, data, (0, 0), ino),
            Entry::Symlink(target) => put(&mut out, path, 0o120777, 1, target.as_bytes(), (0, 0), ino),
            Entry::Char(ma, mi) => put(&mut out, path, 0o020600, 1, &[], (*ma, *mi), ino),
        }
    }
    put(&mut out, "TRAILER!!!", 0, 1, &[], (0, 0), 0);
    out
}

/// One entry read back: path (no leading `/`), full mode, data (a symlink's target), device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
    pub rdev: (u32, u32),
}

/// [`read`] of a newc archive or of a gzip-compressed one.
pub fn read_any(b: &[u8]) -> Result<Vec<Read>, String> {
    if !b.starts_with(&[0x1f, 0x8b]) {
        return read(b);
    }
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(b), &mut raw)
        .map_err(|e| format!("not valid gzip: {e}"))?;
    read(&raw)
}

/// Reads a newc archive. Names with `..` components or a leading `/` are refused.
pub fn read(b: &[u8]) -> Result<Vec<Read>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let field = |at: usize, i: usize| -> Result<usize, String> {
        let s = b.get(at + 6 + i * 8..at + 14 + i * 8).ok_or("truncated header")?;
        let s = std::str::from_utf8(s).map_err(|_| "bad header")?;
        usize::from_str_radix(s, 16).map_err(|_| "bad header".to_string())
    };
    loop {
        if b.get(pos..pos + 6) != Some(b"070701") {
            return Err(format!("no newc header at byte {pos}"));
        }
        let mode = field(pos, 1)? as u32;
        let size = field(pos, 6)?;
        let (rmaj, rmin) = (field(pos, 9)? as u32, field(pos, 10)? as u32);
        let nsize = field(pos, 11)?;
        if nsize == 0 || nsize > 4096 {
            return Err("bad name length".into());
        }
        let name_start = pos + 110;
        let raw = b.get(name_start..name_start + nsize - 1).ok_or("truncated name")?;
        let name = std::str::from_utf8(raw).map_err(|_| "a name is not UTF-8")?.to_string();
        let data_start = (name_start + nsize).div_ceil(4) * 4;
        let data = b.get(data_start..data_start + size).ok_or("truncated data")?.to_vec();
        pos = (data_start + size).div_ceil(4) * 4;
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        let path = name.trim_start_matches("./").to_string();
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(format!("{name:?} leaves the archive's root"));
        }
        if path.is_empty() || path == "." {
            continue;
        }
        out.push(Read { path, mode, data, rdev: (rmaj, rmin) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = BTreeMap::new();
        e.insert("bin".to_string(), Entry::Dir(0o755));
        e.insert("bin/sh".to_string(), Entry::Symlink("busybox".into()));
        e.insert("bin/busybox".to_string(), Entry::File { data: b"elf".to_vec(), mode: 0o755 });
        e.insert("dev/console".to_string(), Entry::Char(5, 1));
        let a = write(&e);
        assert_eq!(a, write(&e));
        let r = read(&a).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r.iter().find(|x| x.path == "bin/sh").unwrap().data, b"busybox");
        assert_eq!(r.iter().find(|x| x.path == "dev/console").unwrap().rdev, (5, 1));
        assert!(read(b"junk").is_err());
        assert!(read(&a[..a.len() - 20]).is_err());
        let mut bad = BTreeMap::new();
        bad.insert("../x".to_string(), Entry::Dir(0o755));
        assert!(read(&write(&bad)).is_err());
    }
}
