//! The GRUB scripts of Secure Boot network boot. Debian's signed network GRUB (loaded by shim)
//! reuses the firmware's DHCP answer, has `$prefix` = `(tftp,HEAD)/grub` and reads
//! `$prefix/grub.cfg` over TFTP; it has no HTTP, so the kernel, the initramfs and the CA archive
//! come over TFTP too ([`crate::netboot::sbnames`]). `grub/grub.cfg` is the same for every node
//! and sources the node's own script, `grub/node/<mac>.cfg`, generated like the iPXE script.
//! Every value in a generated script is single-quoted ([`quote`]).

use crate::core::schema::HeadRecord;
use clusterware_shared::api::{BootConfig, Node};
use clusterware_shared::ids::MacAddr;
use std::net::Ipv4Addr;

/// `grub/grub.cfg`: asks for the node's own script by the MAC GRUB booted from, and asks again
/// a minute later when there is none.
pub const BOOTSTRAP: &str = "set timeout=0
echo \"ClusterWare: ${net_default_mac} asks ${net_default_server} for its boot config\"
source \"$prefix/node/${net_default_mac}.cfg\"
echo \"ClusterWare: no boot config for ${net_default_mac}; trying again in 60 s\"
sleep 60
configfile \"$prefix/grub.cfg\"
";

/// `value` as one GRUB word that nothing in it can end or expand: control characters removed,
/// single-quoted, a `'` written `'\''`.
pub fn quote(value: &str) -> String {
    let clean: String = value.chars().filter(|c| !c.is_control()).collect();
    format!("'{}'", clean.replace('\'', "'\\''"))
}

/// The TFTP path of a stored file (kernel, initramfs) on the head at `server`.
pub fn file_path(server: Ipv4Addr, id: &str) -> String {
    format!("(tftp,{server})/cw/file/{id}")
}

/// The script that boots `node` with `cfg`: `args` is the kernel command line
/// ([`crate::netboot::script::kernel_args`]); kernel and initramfs come from `server` over TFTP.
pub fn boot(
    head: &HeadRecord,
    server: Ipv4Addr,
    node: &Node,
    mac: &MacAddr,
    cfg: &BootConfig,
    args: &[String],
) -> String {
    let words = |v: &[String]| v.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    let hello = format!("ClusterWare: booting {} ({mac}) with boot config {} from {}", node.name, cfg.name, head.name);
    let kernel = file_path(server, &cfg.kernel);
    let initrds = [file_path(server, &cfg.initramfs), format!("(tftp,{server})/cw/ca.cpio")];
    format!(
        "echo {hello}\nif linux {kernel} {args}; then\n  if initrd {initrds}; then\n    boot\n  fi\nfi\necho {failed}\nsleep 10\nconfigfile \"$prefix/grub.cfg\"\n",
        hello = quote(&hello),
        kernel = quote(&kernel),
        args = words(args),
        initrds = words(&initrds),
        failed = quote("ClusterWare: boot failed; trying again in 10 s"),
    )
}

/// A script that says why the node cannot boot yet and asks again in a minute.
pub fn retry(mac: &MacAddr, why: &str) -> String {
    format!(
        "echo {}\necho 'Asking again in 60 s'\nsleep 60\nconfigfile \"$prefix/grub.cfg\"\n",
        quote(&format!("ClusterWare: {mac} cannot boot yet: {why}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GRUB word as GRUB's lexer reads it (single quotes, backslash outside them): the value
    /// back, or `None` if the word ends early.
    fn unquote(w: &str) -> Option<String> {
        let (mut out, mut chars, mut quoted) = (String::new(), w.chars(), false);
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('\'', _) => quoted = !quoted,
                ('\\', false) => out.push(chars.next()?),
                (c, true) => out.push(c),
                (c, false) if c.is_whitespace() || ";&|<>$\"".contains(c) => return None,
                (c, false) => out.push(c),
            }
        }
        (!quoted).then_some(out)
    }

    #[test]
    fn quoting_keeps_values_whole() {
        for (v, want) in [
            ("console=ttyS0", "console=ttyS0"),
            ("a'b", "a'b"),
            ("'; reboot; echo '", "'; reboot; echo '"),
            ("$prefix ${x} `y` \\z \"q\"", "$prefix ${x} `y` \\z \"q\""),
            ("line\nbreak\r\u{1b}[2J\u{0}", "linebreak[2J"),
            ("", ""),
        ] {
            let q = quote(v);
            assert!(q.starts_with('\'') && q.ends_with('\'') && !q.contains('\n'), "{q}");
            assert_eq!(unquote(&q).as_deref(), Some(want), "{v:?} → {q}");
        }
    }

    #[test]
    fn the_boot_script_quotes_every_value() {
        let head = HeadRecord::for_test("h1", 1);
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let node = Node {
            uid: "u".into(),
            index: 0,
            name: "n0".into(),
            macs: vec![mac],
            ip: "10.0.0.5".parse().unwrap(),
            attributes: Default::default(),
            created: 0,
        };
        let cfg = BootConfig {
            name: "c1".into(),
            description: String::new(),
            kernel: "k".repeat(32),
            initramfs: "i".repeat(32),
            image: None,
            cmdline: String::new(),
            secure_boot: true,
            created: 0,
        };
        let args = vec!["console=ttyS0".to_string(), "x='; reboot'\nboot".into(), "cw.enroll=cwe_t".into()];
        let text = boot(&head, "10.0.0.1".parse().unwrap(), &node, &mac, &cfg, &args);
        let linux = text.lines().find(|l| l.starts_with("if linux ")).unwrap();
        assert_eq!(
            linux,
            format!(
                "if linux '(tftp,10.0.0.1)/cw/file/{}' 'console=ttyS0' 'x='\\''; reboot'\\''boot' 'cw.enroll=cwe_t'; then",
                "k".repeat(32)
            )
        );
        assert!(text.contains(&format!(
            "  if initrd '(tftp,10.0.0.1)/cw/file/{}' '(tftp,10.0.0.1)/cw/ca.cpio'; then\n    boot\n",
            "i".repeat(32)
        )));
        let r = retry(&mac, "it's\nbroken");
        assert!(r.starts_with("echo 'ClusterWare: 52:54:00:00:00:01 cannot boot yet: it'\\''sbroken'\n"), "{r}");
        assert_eq!(r.lines().count(), 4);
    }
}
