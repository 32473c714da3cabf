//! The network boot after DHCP, as `clusterware-node sim --boot` makes it for each simulated
//! node: iPXE's part (the boot script from a head's plain-HTTP port, then the kernel, the
//! initramfs and the CA archive the script names) and `/init`'s part with the agent's own code
//! (the enrollment token traded for the node's certificate, the root image from the parent or
//! the other heads, checked and unpacked as it arrives: [`crate::image`]). A failure before
//! `/init` starts over at the script from the next head, as a node that boots again would.

use crate::client::{Endpoint, HeadClient};
use crate::image;
use clusterware_shared::agent::HeadEntry;
use clusterware_shared::api::path;
use clusterware_shared::ids::MacAddr;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;

/// How one simulated node booted: milliseconds from its start to each step, where it came from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Booted {
    /// The boot script arrived (the last time, when the boot started over).
    pub script_ms: u64,
    /// Kernel, initramfs and CA archive downloaded.
    pub files_ms: u64,
    /// The node's certificate received.
    pub enrolled_ms: u64,
    /// The root image downloaded, its size and SHA-256 checked, its archive read to the end.
    pub image_ms: u64,
    /// The head whose script booted the node.
    pub script_from: String,
    /// Boots started over at the script (a head failed before `/init`).
    pub restarts: u32,
    /// Bytes of kernel and initramfs.
    pub firmware_bytes: u64,
    /// Entries of the root image's archive.
    pub entries: u64,
    pub image: image::Report,
    /// Why the node did not boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the script says to boot.
#[derive(Debug, PartialEq, Eq)]
pub struct Script {
    pub kernel: String,
    pub initrd: String,
    pub ca: String,
    pub cmdline: String,
}

/// Reads the lines of the head's iPXE script that a booting node acts on (`kernel URL ARGS ||
/// …`, `initrd --name initramfs URL`, `initrd --name ca.cpio URL`); a script without them is the
/// head's "cannot boot yet", whose message is the error.
pub fn parse_script(text: &str) -> Result<Script, String> {
    let (mut kernel, mut initrd, mut ca, mut cmdline) = (None, None, None, String::new());
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["kernel", url, rest @ ..] => {
                kernel = Some(url.to_string());
                cmdline = rest.iter().take_while(|w| **w != "||").copied().collect::<Vec<_>>().join(" ");
            }
            ["initrd", "--name", "initramfs", url, ..] => initrd = Some(url.to_string()),
            ["initrd", "--name", "ca.cpio", url, ..] => ca = Some(url.to_string()),
            _ => {}
        }
    }
    match (kernel, initrd, ca) {
        (Some(kernel), Some(initrd), Some(ca)) => Ok(Script { kernel, initrd, ca, cmdline }),
        _ => {
            let why: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("echo ")).collect();
            Err(format!("no boot in the script: {}", why.join(" / ")))
        }
    }
}

/// `http://host:port/path…` as (endpoint, path).
fn split_url(url: &str) -> Result<(Endpoint, String), String> {
    let after = url.find("://").map(|i| i + 3).ok_or_else(|| format!("{url:?} is not a URL"))?;
    let cut = url[after..].find('/').map(|i| i + after).ok_or_else(|| format!("{url:?} has no path"))?;
    Ok((Endpoint::parse(&url[..cut])?, url[cut..].to_string()))
}

/// What a booted node goes on with: its head list (the parent first), its TLS settings (the CA
/// and its certificate), and how it booted.
pub struct Outcome {
    pub heads: Vec<HeadEntry>,
    pub tls: Option<Arc<ClientConfig>>,
    pub booted: Booted,
}

/// iPXE's part from one head: the script, then what it names. Returns the command line and the
/// cluster CA from the CA archive.
async fn firmware(
    client: &mut HeadClient,
    ep: &Endpoint,
    mac: MacAddr,
    b: &mut Booted,
    t0: Instant,
) -> Result<(String, Vec<u8>), String> {
    let text = client
        .request(ep, "GET", &path::full(&path::boot_script(&mac.to_string())), None, Duration::from_secs(30))
        .await
        .map_err(|e| format!("boot script from {}: {e}", ep.url))?;
    let script = parse_script(&String::from_utf8_lossy(&text)).map_err(|e| format!("{}: {e}", ep.url))?;
    b.script_ms = t0.elapsed().as_millis() as u64;
    b.script_from.clone_from(&ep.url);
    for url in [&script.kernel, &script.initrd] {
        let (fep, fpath) = split_url(url)?;
        let mut n = 0u64;
        client
            .fetch(&fep, &fpath, 0, (None, None), image::IDLE, &mut |c| {
                n += c.len() as u64;
                Ok(())
            })
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        b.firmware_bytes += n;
    }
    let (cep, cpath) = split_url(&script.ca)?;
    let archive = client
        .request(&cep, "GET", &cpath, None, Duration::from_secs(30))
        .await
        .map_err(|e| format!("{}: {e}", script.ca))?;
    let entries = clusterware_shared::cpio::read_any(&archive).map_err(|e| format!("{}: {e}", script.ca))?;
    let ca_path = clusterware_shared::agent::CA_FILE.trim_start_matches('/');
    let ca = entries.into_iter().find(|e| e.path == ca_path).ok_or_else(|| format!("{}: no {ca_path}", script.ca))?;
    b.files_ms = t0.elapsed().as_millis() as u64;
    Ok((script.cmdline, ca.data))
}

/// Boots one simulated node from `ip`: its script from `boot[first]` (then the next boot URL
/// whenever the firmware stage fails), within `give_up`.
pub async fn boot(
    boot: &[Endpoint],
    first: usize,
    mac: MacAddr,
    ip: Ipv4Addr,
    give_up: Duration,
) -> Result<Outcome, Box<Booted>> {
    let t0 = Instant::now();
    let deadline = t0 + give_up;
    let mut b = Booted::default();
    let seed = u64::from_be_bytes([0, 0, mac.0[0], mac.0[1], mac.0[2], mac.0[3], mac.0[4], mac.0[5]]);
    let mut jitter = image::Jitter::new(seed);
    let mut plain = HeadClient::new(Some(ip), None);
    let fail = |mut b: Booted, e: String| {
        b.error = Some(e);
        Err(Box::new(b))
    };
    let mut k = first;
    let (cmdline, ca) = loop {
        let ep = &boot[k % boot.len()];
        match firmware(&mut plain, ep, mac, &mut b, t0).await {
            Ok(x) => break x,
            Err(e) if Instant::now() + Duration::from_secs(1) > deadline => return fail(b, e),
            Err(_) => {
                b.restarts += 1;
                k += 1;
                tokio::time::sleep(jitter.half_to_full(Duration::from_secs(1))).await;
            }
        }
    };
    let (heads, _) = match crate::config::from_cmdline(&cmdline) {
        Ok(h) => h,
        Err(e) => return fail(b, format!("kernel command line: {e}")),
    };
    let args = match crate::init::boot_args(&cmdline) {
        Ok(a) => a,
        Err(e) => return fail(b, format!("kernel command line: {e}")),
    };
    let plain_tls = match crate::client::tls_config_pem(&ca, None) {
        Ok(t) => t,
        Err(e) => return fail(b, format!("the boot's CA: {e}")),
    };
    // /init: the token for the certificate, with the first head that takes it.
    let mut tls = plain_tls.clone();
    if let Some(token) = &args.enroll {
        let mut last = String::new();
        'enroll: loop {
            for h in &heads {
                let ep = match Endpoint::parse(&h.url) {
                    Ok(e) => e,
                    Err(e) => return fail(b, e),
                };
                let mut c = HeadClient::new(Some(ip), Some(plain_tls.clone()));
                match crate::client::enroll(&mut c, &ep, &mac, token, crate::client::ENROLL_LIMIT).await {
                    Ok(e) => match crate::client::tls_config_pem(
                        e.ca_pem.as_bytes(),
                        Some((e.cert_pem.as_bytes(), e.key_pem.as_bytes())),
                    ) {
                        Ok(t) => {
                            tls = t;
                            break 'enroll;
                        }
                        Err(e) => return fail(b, format!("the node's certificate: {e}")),
                    },
                    Err(e) if e.is_refusal() => return fail(b, format!("enrollment with {}: {e}", ep.url)),
                    Err(e) => last = format!("enrollment with {}: {e}", ep.url),
                }
            }
            if Instant::now() > deadline {
                return fail(b, last);
            }
            tokio::time::sleep(jitter.half_to_full(Duration::from_secs(1))).await;
        }
    }
    b.enrolled_ms = t0.elapsed().as_millis() as u64;
    let (Some(id), Some(size), Some(sha256)) = (args.image.clone(), args.image_size, args.image_sha256.clone()) else {
        return fail(b, "the boot config has no image (no cw.image= on the kernel command line)".into());
    };
    let eps = match heads.iter().map(|h| Endpoint::parse(&h.url)).collect::<Result<Vec<_>, _>>() {
        Ok(e) => e,
        Err(e) => return fail(b, e),
    };
    let retry =
        image::Retry { give_up: Some(deadline.saturating_duration_since(Instant::now())), ..Default::default() };
    let mut client = HeadClient::new(Some(ip), Some(tls.clone()));
    let want = image::Want { id, size, sha256 };
    match image::fetch(&mut client, &eps, &want, image::Count::default(), &retry, &mut jitter, &|_| {}).await {
        Ok((count, report)) => {
            b.entries = count.entries;
            b.image = report;
            b.image_ms = t0.elapsed().as_millis() as u64;
            Ok(Outcome { heads, tls: Some(tls), booted: b })
        }
        Err(e) => fail(b, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_heads_scripts() {
        let s = "#!ipxe\necho ClusterWare: booting n0\n:retry\nkernel http://10.0.0.1:80/api/v1/files/aa/content initrd=initramfs initrd=ca.cpio console=ttyS0 cw.image=bb cw.mac=52:54:00:00:00:01 || goto failed\ninitrd --name initramfs http://10.0.0.1:80/api/v1/files/cc/content || goto failed\ninitrd --name ca.cpio http://10.0.0.1:80/api/v1/boot/ca.cpio || goto failed\nboot || goto failed\n";
        let p = parse_script(s).unwrap();
        assert_eq!(p.kernel, "http://10.0.0.1:80/api/v1/files/aa/content");
        assert_eq!(p.initrd, "http://10.0.0.1:80/api/v1/files/cc/content");
        assert_eq!(p.cmdline, "initrd=initramfs initrd=ca.cpio console=ttyS0 cw.image=bb cw.mac=52:54:00:00:00:01");
        let (ep, path) = split_url(&p.ca).unwrap();
        assert_eq!((ep.url.as_str(), path.as_str()), ("http://10.0.0.1:80", "/api/v1/boot/ca.cpio"));
        let e = parse_script(
            "#!ipxe\necho ClusterWare: 52:54:00:00:00:01 cannot boot yet: no node has this MAC\nsleep 60\n",
        )
        .unwrap_err();
        assert!(e.contains("no node has this MAC"), "{e}");
        assert!(split_url("nothing").is_err());
    }
}
