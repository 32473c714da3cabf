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
    let mut s = Stream::new(Collect::default());
    s.feed(b)?;
    Ok(s.finish()?.out)
}

/// [`read`]'s sink: every entry in memory.
#[derive(Default)]
struct Collect {
    out: Vec<Read>,
}

impl Sink for Collect {
    fn entry(&mut self, h: &Header) -> Result<(), String> {
        self.out.push(Read { path: h.path.clone(), mode: h.mode, data: Vec::new(), rdev: h.rdev });
        Ok(())
    }
    fn data(&mut self, chunk: &[u8]) -> Result<(), String> {
        if let Some(r) = self.out.last_mut() {
            r.data.extend_from_slice(chunk);
        }
        Ok(())
    }
    fn done(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// An entry's header, handed to a [`Sink`] before its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// No leading `/`, no `..` component, never empty.
    pub path: String,
    /// The full mode: type and permission bits.
    pub mode: u32,
    pub size: u64,
    pub rdev: (u32, u32),
}

impl Header {
    /// The type bits (`0o040000` directory, `0o100000` file, `0o120000` symlink, …).
    pub fn kind(&self) -> u32 {
        self.mode & 0o170000
    }
}

/// What a [`Stream`] hands its entries to: `entry`, then the entry's data in pieces, then
/// `done`. An error stops the stream.
pub trait Sink {
    fn entry(&mut self, h: &Header) -> Result<(), String>;
    fn data(&mut self, chunk: &[u8]) -> Result<(), String>;
    fn done(&mut self) -> Result<(), String>;
}

/// Longest name a header may give (with its NUL).
const MAX_NAME: usize = 4096;
const HEADER: usize = 110;

enum State {
    /// Collecting a header and name into `buf`.
    Header,
    /// Skipping `n` bytes of padding before the entry's data (`Some`) or the next header.
    Pad(usize, Option<(Header, bool)>),
    /// `left` bytes of the current entry's data; `pass`: the sink gets them.
    Data { left: u64, pass: bool },
    /// After the trailer: whatever follows (zero padding) is ignored.
    End,
}

/// A newc archive read as it arrives, in pieces of any size, with memory bounded by one header
/// (the data goes to the sink piece by piece). Paths are checked as in [`read`]; entries for the
/// root itself (`.`) are skipped.
pub struct Stream<S: Sink> {
    sink: S,
    state: State,
    buf: Vec<u8>,
    /// Bytes of the archive consumed so far (alignment is counted from the archive's start).
    pos: u64,
}

fn pad4(pos: u64) -> usize {
    ((4 - pos % 4) % 4) as usize
}

impl<S: Sink> Stream<S> {
    pub fn new(sink: S) -> Stream<S> {
        Stream { sink, state: State::Header, buf: Vec::with_capacity(HEADER), pos: 0 }
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The next piece of the archive.
    pub fn feed(&mut self, mut b: &[u8]) -> Result<(), String> {
        while !b.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Header => {
                    let want = if self.buf.len() < HEADER { HEADER } else { HEADER + self.name_len()? };
                    let take = (want - self.buf.len()).min(b.len());
                    self.buf.extend_from_slice(&b[..take]);
                    b = &b[take..];
                    self.pos += take as u64;
                    if self.buf.len() == HEADER {
                        self.name_len()?;
                    } else if self.buf.len() == want {
                        self.header_done()?;
                    }
                }
                State::Pad(n, _) => {
                    let take = (*n).min(b.len());
                    b = &b[take..];
                    self.pos += take as u64;
                    *n -= take;
                    if *n == 0 {
                        let State::Pad(_, next) = std::mem::replace(&mut self.state, State::Header) else {
                            unreachable!("matched above")
                        };
                        if let Some((h, pass)) = next {
                            self.start_data(h, pass)?;
                        }
                    }
                }
                State::Data { left, pass } => {
                    let take = (*left).min(b.len() as u64) as usize;
                    if *pass {
                        self.sink.data(&b[..take])?;
                    }
                    *left -= take as u64;
                    b = &b[take..];
                    self.pos += take as u64;
                    if *left == 0 {
                        let pass = *pass;
                        self.end_data(pass)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The archive has ended: its sink, or an error when the trailer never came.
    pub fn finish(self) -> Result<S, String> {
        match self.state {
            State::End => Ok(self.sink),
            _ => Err(format!("the archive ends without its trailer (truncated at byte {})", self.pos)),
        }
    }

    fn field(&self, i: usize) -> Result<u64, String> {
        let s = std::str::from_utf8(&self.buf[6 + i * 8..14 + i * 8]).map_err(|_| "bad header")?;
        u64::from_str_radix(s, 16).map_err(|_| format!("bad header at byte {}", self.header_start()))
    }

    fn header_start(&self) -> u64 {
        self.pos - self.buf.len() as u64
    }

    fn name_len(&self) -> Result<usize, String> {
        if &self.buf[..6] != b"070701" {
            return Err(format!("no newc header at byte {}", self.header_start()));
        }
        let n = self.field(11)? as usize;
        if n == 0 || n > MAX_NAME {
            return Err(format!("bad name length at byte {}", self.header_start()));
        }
        Ok(n)
    }

    fn header_done(&mut self) -> Result<(), String> {
        let (mode, size) = (self.field(1)? as u32, self.field(6)?);
        let rdev = (self.field(9)? as u32, self.field(10)? as u32);
        let raw = &self.buf[HEADER..self.buf.len() - 1];
        let name = std::str::from_utf8(raw).map_err(|_| "a name is not UTF-8")?.to_string();
        self.buf.clear();
        let pad = pad4(self.pos);
        if name == "TRAILER!!!" {
            self.state = State::End;
            return Ok(());
        }
        let path = name.trim_start_matches("./").to_string();
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(format!("{name:?} leaves the archive's root"));
        }
        let pass = !(path.is_empty() || path == ".");
        let h = Header { path, mode, size, rdev };
        if pass {
            self.sink.entry(&h)?;
        }
        if pad > 0 {
            self.state = State::Pad(pad, Some((h, pass)));
            Ok(())
        } else {
            self.start_data(h, pass)
        }
    }

    fn start_data(&mut self, h: Header, pass: bool) -> Result<(), String> {
        if h.size == 0 {
            return self.end_data(pass);
        }
        self.state = State::Data { left: h.size, pass };
        Ok(())
    }

    fn end_data(&mut self, pass: bool) -> Result<(), String> {
        if pass {
            self.sink.done()?;
        }
        let pad = pad4(self.pos);
        self.state = if pad > 0 { State::Pad(pad, None) } else { State::Header };
        Ok(())
    }
}

/// Bytes of a gzip'd archive go through the decoder into the stream.
impl<S: Sink> std::io::Write for Stream<S> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.feed(b).map_err(std::io::Error::other)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A newc archive, plain or gzip'd (told by its first two bytes), read as it arrives.
pub enum AnyStream<S: Sink> {
    /// Fewer than two bytes seen.
    Undecided(Vec<u8>, Option<S>),
    Plain(Stream<S>),
    Gzip(Box<flate2::write::GzDecoder<Stream<S>>>),
}

impl<S: Sink> AnyStream<S> {
    pub fn new(sink: S) -> AnyStream<S> {
        AnyStream::Undecided(Vec::new(), Some(sink))
    }

    pub fn feed(&mut self, b: &[u8]) -> Result<(), String> {
        use std::io::Write;
        match self {
            AnyStream::Undecided(seen, sink) => {
                seen.extend_from_slice(b);
                if seen.len() < 2 {
                    return Ok(());
                }
                let seen = std::mem::take(seen);
                let sink = sink.take().expect("a sink until decided");
                *self = if seen.starts_with(&[0x1f, 0x8b]) {
                    AnyStream::Gzip(Box::new(flate2::write::GzDecoder::new(Stream::new(sink))))
                } else {
                    AnyStream::Plain(Stream::new(sink))
                };
                self.feed(&seen)
            }
            AnyStream::Plain(s) => s.feed(b),
            AnyStream::Gzip(g) => g.write_all(b).map_err(|e| e.to_string()),
        }
    }

    /// The archive has ended: its sink, or why it is not a whole archive.
    pub fn finish(self) -> Result<S, String> {
        match self {
            AnyStream::Undecided(..) => Err("the archive is empty".into()),
            AnyStream::Plain(s) => s.finish(),
            AnyStream::Gzip(g) => g.finish().map_err(|e| format!("not valid gzip: {e}"))?.finish(),
        }
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

    /// The streaming reader gives what `read` gives, whatever the sizes of the pieces, plain or
    /// gzip'd, and refuses what `read` refuses.
    #[test]
    fn streams_in_pieces_of_any_size() {
        let mut e = BTreeMap::new();
        e.insert("bin".to_string(), Entry::Dir(0o755));
        e.insert("bin/busybox".to_string(), Entry::File { data: (0..5000u32).map(|i| i as u8).collect(), mode: 0o755 });
        e.insert("bin/sh".to_string(), Entry::Symlink("busybox".into()));
        e.insert("etc/a".to_string(), Entry::File { data: b"abc".to_vec(), mode: 0o644 });
        e.insert("etc/empty".to_string(), Entry::File { data: Vec::new(), mode: 0o644 });
        let a = write(&e);
        let whole = read(&a).unwrap();
        let gz = gzip(&a, 1);
        for piece in [1, 2, 3, 7, 110, 111, 4096, 1 << 20] {
            for archive in [&a, &gz] {
                let mut s = AnyStream::new(Collect::default());
                for c in archive.chunks(piece) {
                    s.feed(c).unwrap();
                }
                assert_eq!(s.finish().unwrap().out, whole, "pieces of {piece}");
            }
        }
        let mut s = AnyStream::new(Collect::default());
        s.feed(&gz[..gz.len() / 2]).unwrap();
        assert!(s.finish().is_err(), "half an archive");
        let mut bad = BTreeMap::new();
        bad.insert("a/../../x".to_string(), Entry::Dir(0o755));
        assert!(AnyStream::new(Collect::default()).feed(&write(&bad)).is_err());
        let mut s = Stream::new(Collect::default());
        assert!(s.feed(b"070702").is_ok() && s.feed(&[b'0'; 200]).is_err(), "not newc");
    }
}
