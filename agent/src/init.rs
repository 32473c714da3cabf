//! The agent as `/init` in the initramfs: mount the kernel file systems, load the network
//! drivers listed in `/etc/clusterware/modules`, bring up the boot interface (the one with the MAC
//! from `cw.mac=`), get its address by DHCP, download the root image named by `cw.image=` from the
//! parent (then the other heads of `cw.heads=`), check its size and SHA-256, unpack it into RAM
//! (tmpfs), and switch root into the image's `/sbin/init`. Every failure is printed on the
//! console and retried with backoff (1 s doubling to 30 s); nothing here makes the kernel panic.

use crate::client::{Endpoint, HeadClient};
use crate::sys;
use clusterware_shared::agent::Enrolled;
use clusterware_shared::ids::MacAddr;
use nix::errno::Errno;
use nix::mount::MsFlags;
use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn say(msg: &str) {
    eprintln!("clusterware-node init: {msg}");
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in literal paths")
}

fn mount(src: &str, target: &str, fstype: &str, data: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    match nix::mount::mount(Some(src), target, Some(fstype), MsFlags::empty(), Some(data)) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount {fstype} on {target}: {}", std::io::Error::from(e))),
    }
}

/// Moves the mount at `from` to `to` (`MS_MOVE`).
fn move_mount(from: &str, to: &str) -> nix::Result<()> {
    nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
}

/// What the kernel command line says.
#[derive(Debug, Default, Clone)]
pub struct BootArgs {
    pub heads: Vec<String>,
    pub mac: Option<MacAddr>,
    pub image: Option<String>,
    pub image_size: Option<u64>,
    pub image_sha256: Option<String>,
    /// The one-time token the node trades for its certificate (`cw.enroll=`).
    pub enroll: Option<String>,
}

pub fn boot_args(cmdline: &str) -> Result<BootArgs, String> {
    let (heads, mac) = crate::config::from_cmdline(cmdline)?;
    let mut a = BootArgs { heads: heads.into_iter().map(|h| h.url).collect(), mac, ..Default::default() };
    for tok in cmdline.split_whitespace() {
        if let Some(v) = tok.strip_prefix("cw.image=") {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!("cw.image={v:?} is not a file id"));
            }
            a.image = Some(v.to_string());
        } else if let Some(v) = tok.strip_prefix("cw.image_size=") {
            a.image_size = Some(v.parse().map_err(|_| format!("cw.image_size={v:?} is not a number"))?);
        } else if let Some(v) = tok.strip_prefix("cw.image_sha256=") {
            if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("cw.image_sha256={v:?} is not a SHA-256"));
            }
            a.image_sha256 = Some(v.to_ascii_lowercase());
        } else if let Some(v) = tok.strip_prefix("cw.enroll=") {
            a.enroll = Some(v.to_string());
        }
    }
    Ok(a)
}

fn load_modules() {
    let Ok(list) = std::fs::read_to_string("/etc/clusterware/modules") else { return };
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                say(&format!("cannot open module {path}: {e}"));
                continue;
            }
        };
        match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => say(&format!("cannot load {path}: {}", std::io::Error::from(e))),
        }
    }
}

/// The interface with this MAC, waiting for drivers to create it.
fn find_interface(mac: &MacAddr, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let addr = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap_or_default();
                if addr.trim().parse::<MacAddr>().ok().as_ref() == Some(mac) {
                    return Ok(name);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no network interface has MAC {mac} (is its driver in the initramfs?)"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An address from DHCP.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
}

fn dhcp_packet(kind: u8, xid: u32, mac: &MacAddr, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast replies: we have no address yet
    p[28..34].copy_from_slice(&mac.0);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, kind]);
    for (code, val) in extra {
        p.push(*code);
        p.push(val.len() as u8);
        p.extend_from_slice(val);
    }
    // Parameters wanted: netmask, router, DNS, host name.
    p.extend_from_slice(&[55, 4, 1, 3, 6, 12, 255]);
    p
}

/// (message type, yiaddr, server id, mask, router) of a reply for `xid` and `mac`.
pub fn parse_reply(
    b: &[u8],
    xid: u32,
    mac: &MacAddr,
) -> Option<(u8, Ipv4Addr, Option<Ipv4Addr>, Option<Ipv4Addr>, Option<Ipv4Addr>)> {
    if b.len() < 240
        || b[0] != 2
        || b[4..8] != xid.to_be_bytes()
        || b[28..34] != mac.0
        || b[236..240] != [99, 130, 83, 99]
    {
        return None;
    }
    let yi = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    let (mut kind, mut sid, mut mask, mut router) = (0u8, None, None, None);
    let mut i = 240;
    while i < b.len() {
        let code = b[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = *b.get(i + 1)? as usize;
        let v = b.get(i + 2..i + 2 + len)?;
        let ip = |v: &[u8]| (v.len() >= 4).then(|| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
        match code {
            53 if len == 1 => kind = v[0],
            54 => sid = ip(v),
            1 => mask = ip(v),
            3 => router = ip(v),
            _ => {}
        }
        i += 2 + len;
    }
    Some((kind, yi, sid, mask, router))
}

fn dhcp(iface: &str, mac: &MacAddr) -> Result<Lease, String> {
    let s = UdpSocket::bind("0.0.0.0:68").map_err(|e| format!("DHCP socket: {e}"))?;
    s.set_broadcast(true).map_err(|e| e.to_string())?;
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::BindToDevice, &iface.into())
        .map_err(|e| format!("binding the DHCP socket to {iface}: {}", std::io::Error::from(e)))?;
    s.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
    let to: SocketAddr = "255.255.255.255:67".parse().expect("literal address");
    let xid = (std::process::id() as u32)
        ^ (Instant::now().elapsed().subsec_nanos())
        ^ u32::from_be_bytes([mac.0[2], mac.0[3], mac.0[4], mac.0[5]]);
    let mut buf = [0u8; 1500];
    for attempt in 0..4 {
        s.send_to(&dhcp_packet(1, xid, mac, &[]), to).map_err(|e| format!("sending DHCPDISCOVER: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(2 + attempt);
        let mut offer = None;
        while Instant::now() < deadline && offer.is_none() {
            if let Ok(n) = s.recv(&mut buf) {
                if let Some((2, yi, Some(sid), mask, router)) = parse_reply(&buf[..n], xid, mac) {
                    offer = Some((yi, sid, mask, router));
                }
            }
        }
        let Some((yi, sid, mask, router)) = offer else { continue };
        let req = dhcp_packet(3, xid, mac, &[(50, yi.octets().to_vec()), (54, sid.octets().to_vec())]);
        s.send_to(&req, to).map_err(|e| format!("sending DHCPREQUEST: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(n) = s.recv(&mut buf) {
                match parse_reply(&buf[..n], xid, mac) {
                    Some((5, ip, _, m, r)) => {
                        return Ok(Lease {
                            ip,
                            mask: m.or(mask).unwrap_or(Ipv4Addr::new(255, 255, 255, 0)),
                            router: r.or(router),
                            server: sid,
                        });
                    }
                    Some((6, ..)) => break,
                    _ => {}
                }
            }
        }
    }
    Err("no DHCP answer".into())
}

fn configure(iface: &str, lease: &Lease) -> Result<(), String> {
    sys::set_address(iface, lease.ip, lease.mask)?;
    if let Some(gw) = lease.router {
        sys::add_default_route(iface, gw)?;
    }
    Ok(())
}

/// Downloads the image into `dest` from the first head that has it; checks size and SHA-256.
/// The cluster CA the boot script loaded beside the initramfs.
fn boot_ca() -> Option<Vec<u8>> {
    std::fs::read(clusterware_shared::agent::CA_FILE).ok()
}

/// Trades the boot script's token for the node's certificate, with the first head that takes it.
async fn enroll(heads: &[String], mac: &MacAddr, token: &str) -> Result<Enrolled, String> {
    let ca = boot_ca().ok_or_else(|| format!("no cluster CA at {}", clusterware_shared::agent::CA_FILE))?;
    let tls = crate::client::tls_config_pem(&ca, None)?;
    let mut errors = Vec::new();
    for h in heads {
        let ep = match Endpoint::parse(h) {
            Ok(e) => e,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let mut client = HeadClient::new(None, Some(tls.clone()));
        match crate::client::enroll(&mut client, &ep, mac, token, crate::client::ENROLL_LIMIT).await {
            Ok(e) => {
                say(&format!("enrolled with {}", ep.url));
                return Ok(e);
            }
            Err(e) => errors.push(format!("{}: {e}", ep.url)),
        }
    }
    Err(format!("no head enrolled this node: {}", errors.join("; ")))
}

/// The root image, from the parent, then the other heads (resuming where a transfer stopped),
/// hashed and unpacked into `root` as it arrives.
async fn fetch_image(
    heads: &[String],
    args: &BootArgs,
    mac: &MacAddr,
    root: &std::path::Path,
    identity: Option<&Enrolled>,
) -> Result<u64, String> {
    let id = args.image.as_deref().ok_or("no cw.image= on the kernel command line")?;
    let (Some(size), Some(sha)) = (args.image_size, args.image_sha256.clone()) else {
        return Err("no cw.image_size= and cw.image_sha256= on the kernel command line".into());
    };
    let tls = match (boot_ca(), identity) {
        (_, Some(e)) => Some(crate::client::tls_config_pem(
            e.ca_pem.as_bytes(),
            Some((e.cert_pem.as_bytes(), e.key_pem.as_bytes())),
        )?),
        (Some(ca), None) => Some(crate::client::tls_config_pem(&ca, None)?),
        (None, None) => None,
    };
    let eps = heads.iter().map(|h| Endpoint::parse(h)).collect::<Result<Vec<_>, _>>()?;
    say(&format!("downloading image {id} ({size} bytes) from {}", eps.first().map_or("", |e| e.url.as_str())));
    let want = crate::image::Want { id: id.to_string(), size, sha256: sha };
    let mut client = HeadClient::new(None, tls);
    let seed = u64::from_be_bytes([0, 0, mac.0[0], mac.0[1], mac.0[2], mac.0[3], mac.0[4], mac.0[5]]);
    let (sink, report) = crate::image::fetch(
        &mut client,
        &eps,
        &want,
        crate::image::Unpack::new(root),
        &crate::image::Retry::default(),
        &mut crate::image::Jitter::new(seed),
        &say,
    )
    .await?;
    let from: Vec<String> = report.served.iter().map(|(h, b)| format!("{b} bytes from {h}")).collect();
    say(&format!("image verified: {}", from.join(", ")));
    Ok(sink.entries)
}

fn switch_root(new_root: &str, init: &str) -> String {
    for d in ["dev", "proc", "sys", "run"] {
        let target = format!("{new_root}/{d}");
        let _ = std::fs::create_dir_all(&target);
        let _ = move_mount(&format!("/{d}"), &target);
    }
    // The classic switch_root sequence.
    let err = |e: Errno| std::io::Error::from(e);
    if let Err(e) = nix::unistd::chdir(new_root) {
        return format!("chdir {new_root}: {}", err(e));
    }
    if let Err(e) = move_mount(".", "/") {
        return format!("moving {new_root} to /: {}", err(e));
    }
    if let Err(e) = nix::unistd::chroot(".") {
        return format!("chroot: {}", err(e));
    }
    let _ = nix::unistd::chdir("/");
    let prog = cstr(init);
    match nix::unistd::execv(&prog, &[&prog]) {
        Err(e) => format!("cannot run {init} in the image: {}", err(e)),
        Ok(never) => match never {},
    }
}

/// One attempt at booting; returns only on failure.
/// `identity`: the node's certificate once enrolled (a token works once: later attempts keep it).
fn attempt(rt: &tokio::runtime::Runtime, args: &BootArgs, mac: &MacAddr, identity: &mut Option<Enrolled>) -> String {
    let iface = match find_interface(mac, Duration::from_secs(15)) {
        Ok(i) => i,
        Err(e) => return e,
    };
    if let Err(e) = sys::link_up(&iface) {
        return e;
    }
    say(&format!("asking for an address on {iface} ({mac})"));
    let lease = match dhcp(&iface, mac) {
        Ok(l) => l,
        Err(e) => return e,
    };
    say(&format!("address {} from {}", lease.ip, lease.server));
    if let Err(e) = configure(&iface, &lease) {
        return e;
    }
    // A fresh tmpfs for every attempt: what an earlier attempt unpacked is gone.
    let _ = nix::mount::umount2("/newroot", nix::mount::MntFlags::MNT_DETACH);
    if let Err(e) = mount("tmpfs", "/newroot", "tmpfs", "mode=0755") {
        return e;
    }
    if let (None, Some(token)) = (identity.as_ref(), &args.enroll) {
        match rt.block_on(enroll(&args.heads, mac, token)) {
            Ok(e) => *identity = Some(e),
            Err(e) => return e,
        }
    }
    match rt.block_on(fetch_image(&args.heads, args, mac, std::path::Path::new("/newroot"), identity.as_ref())) {
        Ok(n) => say(&format!("image unpacked: {n} entries")),
        Err(e) => return e,
    }
    // The booted system's agent starts from the same kernel command line, checks heads against
    // the same CA and presents the same certificate (the new root is in RAM).
    let mut files: Vec<(&str, Vec<u8>, u32)> = Vec::new();
    if let Some(pem) = boot_ca() {
        files.push((clusterware_shared::agent::CA_FILE, pem, 0o644));
    }
    if let Some(e) = identity.as_ref() {
        files.push((clusterware_shared::agent::CERT_FILE, e.cert_pem.clone().into_bytes(), 0o644));
        files.push((clusterware_shared::agent::KEY_FILE, e.key_pem.clone().into_bytes(), 0o600));
    }
    for (file, body, mode) in files {
        let to = std::path::Path::new("/newroot").join(file.trim_start_matches('/'));
        let placed = to.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&to)?;
            std::io::Write::write_all(&mut f, &body)
        });
        if let Err(e) = placed {
            return format!("cannot put {file} into the image: {e}");
        }
    }
    say("switching to the image's /sbin/init");
    switch_root("/newroot", "/sbin/init")
}

/// Runs as `/init`: never returns.
pub fn main() -> ! {
    for (src, target, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        if let Err(e) = mount(src, target, fs, "") {
            say(&e);
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            say(&format!("cannot start: {e}"));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    };
    load_modules();
    let mut wait = Duration::from_secs(1);
    let mut identity = None;
    loop {
        let why = match boot_args(&cmdline) {
            Err(e) => format!("kernel command line: {e}"),
            Ok(a) if a.heads.is_empty() => "no cw.parent= or cw.heads= on the kernel command line".into(),
            Ok(a) => match a.mac {
                None => "no cw.mac= (or BOOTIF=) on the kernel command line".into(),
                Some(mac) => attempt(&rt, &a, &mac, &mut identity),
            },
        };
        say(&format!("{why}; trying again in {} s", wait.as_secs()));
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_command_line() {
        let a = boot_args("console=ttyS0 cw.image=ab12 cw.image_size=10 cw.image_sha256=0000000000000000000000000000000000000000000000000000000000000000 cw.parent=http://10.0.0.1:8080 cw.heads=http://10.0.0.1:8080,http://10.0.0.2:8080 cw.mac=52:54:00:00:00:01").unwrap();
        assert_eq!(a.heads, ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]);
        assert_eq!((a.image.as_deref(), a.image_size), (Some("ab12"), Some(10)));
        assert!(boot_args("cw.image=../x").is_err());
        assert!(boot_args("cw.image_sha256=xyz").is_err());
    }

    #[test]
    fn dhcp_replies() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let mut p = dhcp_packet(1, 7, &mac, &[]);
        assert_eq!(&p[240..243], &[53, 1, 1]);
        assert_eq!(*p.last().unwrap(), 255);
        p[0] = 2;
        p[16..20].copy_from_slice(&[10, 0, 0, 5]);
        let end = p.len() - 1;
        p.truncate(end);
        p.extend_from_slice(&[54, 4, 10, 0, 0, 1, 1, 4, 255, 255, 255, 0, 255]);
        p[242] = 2;
        let (kind, yi, sid, mask, _) = parse_reply(&p, 7, &mac).unwrap();
        assert_eq!(
            (kind, yi, sid, mask),
            (2, Ipv4Addr::new(10, 0, 0, 5), Some(Ipv4Addr::new(10, 0, 0, 1)), Some(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert!(parse_reply(&p, 8, &mac).is_none());
        assert!(parse_reply(&p[..100], 7, &mac).is_none());
        let mut cut = p.clone();
        cut.truncate(246);
        let _ = parse_reply(&cut, 7, &mac);
    }
}
