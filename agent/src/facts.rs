//! What a node reports: read from `/proc`, `/sys` and the interface list.

use clusterware_shared::agent::{Disk, Hardware, Interface, Phase, StatusReport};
use clusterware_shared::ids::MacAddr;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The kernel's boot id.
pub fn boot_id() -> String {
    let b = read("/proc/sys/kernel/random/boot_id");
    if b.is_empty() { "0".into() } else { b }
}

/// Every interface with its MAC and IPv4 addresses (from getifaddrs and /sys).
pub fn interfaces() -> Vec<Interface> {
    let mut map: BTreeMap<String, Interface> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let mac = read(&format!("/sys/class/net/{name}/address"))
                .parse::<MacAddr>()
                .ok()
                .filter(|m| m.to_string() != "00:00:00:00:00:00");
            map.insert(name.clone(), Interface { name, mac, addrs: Vec::new() });
        }
    }
    for (name, ip, prefix) in ipv4_addrs() {
        map.entry(name.clone())
            .or_insert_with(|| Interface { name, mac: None, addrs: Vec::new() })
            .addrs
            .push(format!("{ip}/{prefix}"));
    }
    map.into_values().collect()
}

pub use clusterware_shared::sys::ipv4_addrs;

/// The MAC of the interface this machine uses to reach `head` (the boot interface, for a node).
pub fn mac_towards(head: Ipv4Addr) -> Option<MacAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((head, 9)).ok()?;
    let local = match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(v4) => v4,
        _ => return None,
    };
    let (name, _, _) = ipv4_addrs().into_iter().find(|(_, ip, _)| *ip == local)?;
    read(&format!("/sys/class/net/{name}/address")).parse().ok()
}

/// The hardware inventory.
pub fn hardware() -> Hardware {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let mut disks = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "dm-", "zram", "sr", "md"].iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let sectors: u64 = read(&format!("/sys/block/{name}/size")).parse().unwrap_or(0);
            if sectors > 0 {
                disks.push(Disk { name, bytes: sectors * 512 });
            }
        }
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Hardware {
        cpu_model,
        cpus: cpus(),
        mem_total_kib: meminfo().0,
        vendor: read("/sys/class/dmi/id/sys_vendor"),
        product: read("/sys/class/dmi/id/product_name"),
        disks,
    }
}

/// A status report of this machine.
pub fn report(mac: MacAddr, boot_id: &str, phase: Phase, with_hardware: bool) -> StatusReport {
    let uptime = read("/proc/uptime").split_whitespace().next().and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0);
    let loadavg = read("/proc/loadavg");
    let mut load = [0.0f64; 3];
    for (i, v) in loadavg.split_whitespace().take(3).enumerate() {
        load[i] = v.parse().unwrap_or(0.0);
    }
    let (total, avail) = meminfo();
    StatusReport {
        mac,
        boot_id: boot_id.to_string(),
        phase,
        agent_version: clusterware_shared::VERSION.to_string(),
        uptime_secs: uptime as u64,
        load,
        mem_total_kib: total,
        mem_available_kib: avail,
        cpus: cpus(),
        kernel: read("/proc/sys/kernel/osrelease"),
        hostname: read("/proc/sys/kernel/hostname"),
        interfaces: interfaces(),
        hardware: with_hardware.then(hardware),
    }
}
