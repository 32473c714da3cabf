//! QEMU virtual machines that network-boot on a [`Segment`](crate::netns::Segment), and the
//! files they boot: Debian's kernel (`make netboot-kernel`) and the static agent (`make agent`).

use crate::netns::Segment;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The workspace's top directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// KVM only where it works: `/dev/kvm` present and the CPU advertises vmx or svm (else KVM makes
/// iPXE triple-fault); otherwise TCG.
pub fn accel() -> &'static str {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if Path::new("/dev/kvm").exists() && (cpu.contains(" vmx") || cpu.contains(" svm")) { "kvm" } else { "tcg" }
}

/// Debian's kernel unpacked by `make netboot-kernel`.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// The directory holding `lib/modules/<version>`.
    pub root: PathBuf,
    pub version: String,
}

impl Kernel {
    pub fn find() -> Option<Kernel> {
        let root = workspace().join("target/netboot/kernel");
        let version = std::fs::read_dir(root.join("lib/modules"))
            .ok()?
            .flatten()
            .next()?
            .file_name()
            .to_string_lossy()
            .to_string();
        let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
        vmlinuz.is_file().then_some(Kernel { vmlinuz, root, version })
    }

    /// The kernel, or a panic that says how to get it.
    pub fn require() -> Kernel {
        Kernel::find().expect("Debian's kernel is not in target/netboot: run `make netboot-kernel` (make test does)")
    }

    /// Writes an initramfs for this kernel with `scyld-mkinitramfs`: `agent` as /init and the
    /// virtio network drivers QEMU's NIC needs.
    pub fn initramfs(&self, agent: &Path, out: &Path) {
        let o = Command::new(crate::bin("scyld-mkinitramfs"))
            .arg("--agent")
            .arg(agent)
            .args(["--kernel-version", &self.version, "--modules-root"])
            .arg(&self.root)
            .args(["--module", "virtio_net", "--module", "virtio_pci", "-o"])
            .arg(out)
            .output()
            .expect("run scyld-mkinitramfs");
        assert!(o.status.success(), "scyld-mkinitramfs: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// A minimal node root in `dir`: static busybox (checked) as init and shell, and a few applets.
pub fn busybox_root(dir: &Path) {
    let bb = Path::new("/bin/busybox");
    let ldd = Command::new("ldd").arg(bb).output().unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        text.contains("not a dynamic") || text.contains("statically"),
        "/bin/busybox must be static (Debian package busybox-static; make test installs it): {text}"
    );
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(bb, dir.join("bin/busybox")).unwrap();
    for a in ["sh", "mount", "mkdir", "hostname", "ip", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    for a in ["init", "reboot"] {
        std::os::unix::fs::symlink("/bin/busybox", dir.join("sbin").join(a)).unwrap();
    }
    std::fs::write(dir.join("etc/hostname"), "node\n").unwrap();
}

/// Packs `rootfs` into a node root image with the agent in it (`scyld-modimg build`).
pub fn root_image(rootfs: &Path, agent: &Path, out: &Path) {
    let o = Command::new(crate::bin("scyld-modimg"))
        .arg("build")
        .arg("--from")
        .arg(rootfs)
        .arg("--agent")
        .arg(agent)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run scyld-modimg");
    assert!(o.status.success(), "scyld-modimg build: {}", String::from_utf8_lossy(&o.stderr));
}

/// The static agent built by `make agent`.
pub fn static_agent() -> PathBuf {
    let p = workspace().join("target/x86_64-unknown-linux-gnu/agent/clusterware-node");
    assert!(p.is_file(), "{} is missing: run `make agent` (make test does)", p.display());
    p
}

/// A VM on its own tap device on the segment's bridge, network-booting (QEMU's iPXE ROM or OVMF's
/// own network stack, virtio-net), its serial console in a file. QEMU runs under an outer `timeout` (a VM whose test
/// was killed outright ends by itself) in a process group of its own, which `drop` kills whole:
/// killing `timeout` alone would orphan QEMU.
pub struct Vm {
    child: Child,
    pub console: PathBuf,
    /// QEMU's `-name`, unique to this VM: [`crate::processes_named`] finds its processes by it.
    pub marker: String,
}

/// The firmware a [`Vm`] network-boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS and QEMU's iPXE option ROM.
    Bios,
    /// OVMF (Debian's `ovmf`) with its own UEFI network stack: the NIC has no option ROM, so
    /// OVMF's PXE and HTTP Boot clients run, as on most real machines.
    Uefi,
    /// OVMF built for Secure Boot, with Debian's and Microsoft's keys enrolled and Secure Boot on
    /// (`OVMF_VARS_4M.ms.fd`): only signed loaders run (shim, then GRUB and the kernel it checks).
    UefiSecureBoot,
}

/// OVMF's code and a template of its variable store (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF for Secure Boot (needs SMM: q35, `smm=on`, a secure flash) and a variable store with the
/// keys enrolled and Secure Boot on.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// Debian's signed boot loaders unpacked by `make secureboot-files`: shim, network GRUB and
/// MokManager (for `secure_boot.shim`, `secure_boot.grub`, `secure_boot.mokmanager`).
pub struct SignedLoaders {
    pub shim: PathBuf,
    pub grub: PathBuf,
    pub mokmanager: PathBuf,
}

impl SignedLoaders {
    /// The loaders, or a panic that says how to get them.
    pub fn require() -> SignedLoaders {
        let root = workspace().join("target/secureboot/root/usr/lib");
        let l = SignedLoaders {
            shim: root.join("shim/shimx64.efi.signed"),
            grub: root.join("grub/x86_64-efi-signed/grubnetx64.efi.signed"),
            mokmanager: root.join("shim/mmx64.efi.signed"),
        };
        for f in [&l.shim, &l.grub, &l.mokmanager] {
            assert!(f.is_file(), "{} is missing: run `make secureboot-files` (make test does)", f.display());
        }
        l
    }
}

impl Vm {
    /// A VM that boots with SeaBIOS and QEMU's iPXE ROM.
    pub fn start(seg: &mut Segment, n: usize, mac: &str, console: &Path) -> Vm {
        Vm::start_with(seg, n, mac, console, Firmware::Bios)
    }

    /// A VM that boots with `firmware`. A UEFI VM's variable store is a copy beside `console`.
    pub fn start_with(seg: &mut Segment, n: usize, mac: &str, console: &Path, firmware: Firmware) -> Vm {
        let tap = format!("cwtap{n}");
        seg.tap(&tap);
        let _ = std::fs::remove_file(console);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let marker = format!("cw-vm-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", seg.bridge_ns(), "timeout", "500", "qemu-system-x86_64"])
            .args(["-name", &marker])
            .args(["-m", "768", "-no-reboot", "-display", "none"])
            .args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")]);
        match firmware {
            Firmware::Bios => {
                cmd.args(["-machine", &format!("pc,accel={}", accel()), "-boot", "n"])
                    .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")]);
            }
            Firmware::Uefi | Firmware::UefiSecureBoot => {
                let secure = firmware == Firmware::UefiSecureBoot;
                let (code, template) = if secure { (OVMF_CODE_SECBOOT, OVMF_VARS_MS) } else { (OVMF_CODE, OVMF_VARS) };
                for f in [code, template] {
                    assert!(Path::new(f).is_file(), "{f} is missing: install Debian's ovmf (make test does)");
                }
                // Each VM writes its own copy (boot order; shim's SBAT level).
                let vars = console.with_extension("vars.fd");
                std::fs::copy(template, &vars).expect("copy OVMF's variable store");
                if secure {
                    // Secure Boot OVMF runs its variable store in SMM, behind a secure flash.
                    cmd.args(["-machine", &format!("q35,smm=on,accel={}", accel())])
                        .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
                } else {
                    cmd.args(["-machine", &format!("q35,accel={}", accel())]);
                }
                cmd.args(["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}")])
                    .args(["-drive", &format!("if=pflash,format=raw,unit=1,file={}", vars.display())])
                    // No option ROM: OVMF's own network stack boots; the NIC is the first boot device.
                    .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1")])
                    // IPv4 only: the segments have no DHCPv6, whose PXE and HTTP attempts
                    // would each wait a minute first.
                    .args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"]);
            }
        }
        let child = cmd
            .args(["-serial", &format!("file:{}", console.display()), "-monitor", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("qemu-system-x86_64 (Debian package qemu-system-x86)");
        Vm { child, console: console.to_path_buf(), marker }
    }

    /// What the console printed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).to_string()
    }

    /// Whether QEMU has ended (and how).
    pub fn ended(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Vm {
    /// Kills the whole process group (`ip netns exec` became `timeout`, which leads the group that
    /// QEMU is in), then reaps `timeout`; QEMU, orphaned for a moment, is reaped by init.
    fn drop(&mut self) {
        // The process group made at spawn.
        crate::sys::killpg(self.child.id(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
