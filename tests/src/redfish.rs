//! Redfish BMCs for the tests and the benchmark: `sushy-emulator` (PyPI's sushy-tools, which
//! `make sushy-venv` installs into `target/sushy-venv`; `make test` does it) with its fake
//! systems driver, one process per BMC on its own loopback address and port, over HTTPS with a
//! certificate the test gives (issued by a CA the heads trust, or one they do not), with HTTP
//! Basic credentials from an htpasswd file. Each emulator runs in a process group of its own,
//! killed on drop and tied to the test thread with `PR_SET_PDEATHSIG`.
//!
//! Also a TLS server that answers garbage, for the BMC that does not speak Redfish.

use crate::{poll_until, sys};
use clusterware_shared::pki::Issued;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tempfile::TempDir;

/// The virtual environment `make sushy-venv` makes (`SUSHY_VENV` overrides it).
pub fn venv() -> PathBuf {
    match std::env::var_os("SUSHY_VENV") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sushy-venv"),
    }
}

/// The `sushy-emulator` program; panics saying how to install it when it is missing.
pub fn emulator() -> PathBuf {
    let p = venv().join("bin/sushy-emulator");
    assert!(
        p.is_file(),
        "{} is missing: run `make sushy-venv` (make test does) to install sushy-tools from PyPI into a virtual \
         environment",
        p.display()
    );
    p
}

/// An htpasswd file with one user (bcrypt, as sushy-emulator requires; cost 4, so that checking
/// it on every request costs the emulator little). The password reaches the hashing Python on
/// its standard input, never its command line.
pub struct Htpasswd {
    dir: TempDir,
    pub user: String,
    pub pass: String,
}

impl Htpasswd {
    pub fn new(user: &str, pass: &str) -> Htpasswd {
        let dir = TempDir::with_prefix("cw-htpasswd-").expect("temp dir");
        let mut child = Command::new(venv().join("bin/python"))
            .args([
                "-c",
                "import bcrypt, sys; p = sys.stdin.buffer.read(); \
                 print(sys.argv[1] + ':' + bcrypt.hashpw(p, bcrypt.gensalt(rounds=4)).decode())",
                user,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}/bin/python: {e} (run `make sushy-venv`)", venv().display()));
        child.stdin.take().expect("stdin").write_all(pass.as_bytes()).expect("password to python");
        let out = child.wait_with_output().expect("bcrypt");
        assert!(out.status.success(), "bcrypt failed");
        std::fs::write(dir.path().join("htpasswd"), &out.stdout).expect("htpasswd");
        Htpasswd { dir, user: user.to_string(), pass: pass.to_string() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("htpasswd")
    }
}

/// One sushy-emulator, one BMC.
pub struct RedfishBmc {
    child: Option<Child>,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The CA that issued its certificate (to check it when the test reads the BMC directly).
    ca_pem: String,
    /// The SHA-256 of its certificate (hex), for `_bmc_tls_fingerprint`.
    pub fingerprint: String,
    auth: (String, String),
    dir: TempDir,
}

impl RedfishBmc {
    /// Starts an emulator with one system (power off) and waits until it answers over HTTPS.
    pub fn start(ip: Ipv4Addr, cert: &Issued, ca_pem: &str, auth: &Htpasswd) -> RedfishBmc {
        let b = Self::spawn(ip, cert, ca_pem, auth, 1);
        b.wait_ready(Duration::from_secs(30));
        b
    }

    /// Starts an emulator with `systems` systems without waiting for it (see [`wait_ready`]):
    /// many start at once that way.
    ///
    /// [`wait_ready`]: RedfishBmc::wait_ready
    pub fn spawn(ip: Ipv4Addr, cert: &Issued, ca_pem: &str, auth: &Htpasswd, systems: usize) -> RedfishBmc {
        let program = emulator();
        let dir = TempDir::with_prefix("cw-sushy-").expect("temp dir");
        let d = dir.path();
        let port = crate::free_port(ip);
        std::fs::write(d.join("cert.pem"), &cert.cert_pem).expect("cert");
        std::fs::write(d.join("key.pem"), &cert.key_pem).expect("key");
        std::fs::set_permissions(d.join("key.pem"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let fake: Vec<String> = (0..systems)
            .map(|i| {
                format!(
                    "{{'uuid': '27946b59-9e44-4fa7-8e91-f3527a1e{i:04x}', 'name': 'node{i}', 'power_state': 'Off', \
                     'nics': [{{'mac': '52:54:00:5e:00:{i:02x}', 'ip': '10.255.0.{}'}}]}}",
                    i + 1
                )
            })
            .collect();
        std::fs::write(
            d.join("emulator.conf"),
            format!(
                "# written by the test harness\nSUSHY_EMULATOR_LISTEN_IP = '{ip}'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                 SUSHY_EMULATOR_SSL_CERT = '{d}/cert.pem'\nSUSHY_EMULATOR_SSL_KEY = '{d}/key.pem'\n\
                 SUSHY_EMULATOR_AUTH_FILE = '{auth}'\nSUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_STATE_DIR = '{d}/state'\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{systems}]\n",
                d = d.display(),
                auth = auth.path().display(),
                systems = fake.join(", ")
            ),
        )
        .expect("emulator.conf");
        let log = std::fs::File::create(d.join("emulator.log")).expect("log");
        let mut cmd = Command::new(program);
        cmd.arg("--config")
            .arg(d.join("emulator.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .process_group(0);
        sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start sushy-emulator");
        RedfishBmc {
            child: Some(child),
            ip,
            port,
            ca_pem: ca_pem.to_string(),
            fingerprint: clusterware_shared::pki::fingerprint(&cert.cert_pem),
            auth: (auth.user.clone(), auth.pass.clone()),
            dir,
        }
    }

    /// Waits until the emulator answers its service root over HTTPS.
    pub fn wait_ready(&self, within: Duration) {
        poll_until(&format!("sushy-emulator at {}", self.addr()), within, || {
            if let Some(pid) = self.child.as_ref().map(Child::id) {
                assert!(crate::proc_alive(pid), "sushy-emulator at {} died: {}", self.addr(), self.log());
            }
            self.request("GET", "/redfish/v1/", None, false).is_ok_and(|(s, _)| s == 200)
        });
    }

    /// `IP:PORT`, as `_bmc_addr` takes it.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// What the emulator logged (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// One request straight to the emulator (its CA checked, Basic credentials when `auth`):
    /// status and JSON body (`Null` when there is none).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>, auth: bool) -> std::io::Result<(u16, Value)> {
        let tcp = TcpStream::connect_timeout(&(self.ip, self.port).into(), Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = crate::tls_stream_to(tcp, self.ip, &self.ca_pem, None);
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr(),
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if auth {
            let cred = clusterware_shared::agent::base64_encode(format!("{}:{}", self.auth.0, self.auth.1).as_bytes());
            req.push_str(&format!("Authorization: Basic {cred}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        tls.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        // The emulator closes without a TLS close_notify: what came before counts.
        match tls.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(e),
        }
        let (status, _, body) = crate::split_response(&buf);
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// The BMC's systems (their paths).
    pub fn systems(&self) -> Vec<String> {
        let (s, v) = self.request("GET", "/redfish/v1/Systems", None, true).expect("GET Systems");
        assert_eq!(s, 200, "{v}");
        v["Members"].as_array().expect("Members").iter().map(|m| m["@odata.id"].as_str().unwrap().to_string()).collect()
    }

    /// The first system as the emulator shows it.
    pub fn system(&self) -> Value {
        let path = self.systems().into_iter().next().expect("a system");
        let (s, v) = self.request("GET", &path, None, true).expect("GET system");
        assert_eq!(s, 200, "{v}");
        v
    }

    /// `On` or `Off` (the fake driver applies a change 1 to 11 s after it is asked).
    pub fn power(&self) -> String {
        self.system()["PowerState"].as_str().unwrap_or("").to_string()
    }

    /// The boot override target (`Pxe`, `Hdd`, …).
    pub fn boot_target(&self) -> String {
        self.system()["Boot"]["BootSourceOverrideTarget"].as_str().unwrap_or("").to_string()
    }
}

impl Drop for RedfishBmc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::killpg(c.id(), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// A TLS server (a certificate the heads trust) that answers every connection with bytes that
/// are not HTTP. Stops on drop.
pub struct GarbageTls {
    pub ip: Ipv4Addr,
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl GarbageTls {
    pub fn start(ip: Ipv4Addr, cert: &Issued) -> GarbageTls {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<_, _>>().expect("certificate");
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        let cfg = Arc::new(cfg);
        let l = TcpListener::bind((ip, 0)).expect("bind");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut s) = s else { continue };
                let cfg = cfg.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let Ok(conn) = rustls::ServerConnection::new(cfg) else { return };
                    let mut tls = rustls::StreamOwned::new(conn, &mut s);
                    let mut first = [0u8; 1];
                    // The handshake happens on the first read; then garbage, then close.
                    if tls.read(&mut first).is_ok() {
                        let _ = tls.write_all(b"\x15\x03\x03 \xff\xfe this is not HTTP, let alone Redfish\r\n\r\n");
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        GarbageTls { ip, port, stop }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

impl Drop for GarbageTls {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&(self.ip, self.port).into(), Duration::from_secs(1));
    }
}
