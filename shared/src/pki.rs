//! The cluster CA and the certificates it issues (feature `pki`; the node agent does not link
//! it).
//!
//! One CA per cluster, created at the first install (`scyld-install`, or the first start of a
//! head that creates a new cluster) and handed to a joining head only after its password check
//! (see `ca_proof`). Every head keeps a copy in its `tls.dir` and issues its own certificate
//! from it at start (its name, its addresses, `localhost`), which serves HTTPS and authenticates
//! it to its etcd peers. Files, all in `tls.dir`:
//!
//! - [`CA_CERT`] `ca.pem`: the CA certificate (public; clients trust it);
//! - [`CA_KEY`] `ca.key`: the CA's private key (mode 0600);
//! - [`HEAD_CERT`] `head.pem`, [`HEAD_KEY`] `head.key` (mode 0600): this head's own.
//!
//! The CA's subject names its public key, so the issuer of a new certificate is rebuilt from
//! the key alone: nothing else about the CA must be parsed back.

use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const HEAD_CERT: &str = "head.pem";
pub const HEAD_KEY: &str = "head.key";

/// How long the CA is valid.
const CA_DAYS: i64 = 20 * 365;
/// How long a head's certificate is valid (a head issues itself a new one at every start).
pub const HEAD_DAYS: i64 = 2 * 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Bad { path: PathBuf, why: String },
    #[error("{0}")]
    Crypto(String),
}

fn crypto(e: rcgen::Error) -> PkiError {
    PkiError::Crypto(format!("cannot make a certificate: {e}"))
}

/// A CA: its certificate and its key, both PEM.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &fingerprint(&self.cert_pem)).finish_non_exhaustive()
    }
}

/// A certificate and its key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The subject of the CA whose key is `key`.
fn ca_params(key: &rcgen::KeyPair) -> Result<rcgen::CertificateParams, PkiError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
    let id = hex::encode(&Sha256::digest(key.public_key_der())[..8]);
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "ClusterWare");
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("ClusterWare cluster CA {id}"));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn validity(p: &mut rcgen::CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that differ between machines.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

/// A random serial number (16 bytes, positive).
fn serial() -> rcgen::SerialNumber {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b.copy_from_slice(&Sha256::digest(format!("{t:?}{}", std::process::id()))[..16]);
    }
    b[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&b)
}

impl Ca {
    /// A new CA with a new key (ECDSA P-256).
    pub fn create() -> Result<Ca, PkiError> {
        let key = rcgen::KeyPair::generate().map_err(crypto)?;
        let mut p = ca_params(&key)?;
        validity(&mut p, CA_DAYS);
        p.serial_number = Some(serial());
        let cert = p.self_signed(&key).map_err(crypto)?;
        Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A CA from its PEM texts; the key must be the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| format!("not a private key: {e}"))?;
        let der = first_der(cert_pem).ok_or("not a PEM certificate")?;
        // The certificate's subject public key info holds the key's public half.
        let spki = key.public_key_der();
        if !der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err("the key is not the certificate's".into());
        }
        Ok(Ca { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() })
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The SHA-256 of the certificate (hex).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_pem)
    }

    /// Issues a certificate for `names` (host names and IP addresses), valid for `days`, usable
    /// both to serve TLS and to authenticate as a client (heads are etcd peers of each other).
    pub fn issue(&self, common_name: &str, names: &[String], days: i64) -> Result<Issued, PkiError> {
        let ca_key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(crypto)?;
        let issuer = ca_params(&ca_key)?.self_signed(&ca_key).map_err(crypto)?;
        let key = rcgen::KeyPair::generate().map_err(crypto)?;
        let mut p = rcgen::CertificateParams::new(names.to_vec()).map_err(crypto)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "ClusterWare");
        p.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(serial());
        validity(&mut p, days);
        let cert = p.signed_by(&key, &issuer, &ca_key).map_err(crypto)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600) into `dir` (created 0755 if missing).
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        make_dir(dir)?;
        write(&dir.join(CA_KEY), self.key_pem.as_bytes(), 0o600)?;
        write(&dir.join(CA_CERT), self.cert_pem.as_bytes(), 0o644)
    }

    /// The CA in `dir`; `Ok(None)` when it has none.
    pub fn load(dir: &Path) -> Result<Option<Ca>, PkiError> {
        let (cp, kp) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let cert = match std::fs::read_to_string(&cp) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PkiError::Io { path: cp, source }),
        };
        let key = std::fs::read_to_string(&kp).map_err(|source| PkiError::Io { path: kp.clone(), source })?;
        Ca::from_pem(&cert, &key).map(Some).map_err(|why| PkiError::Bad { path: kp, why })
    }
}

/// Writes this head's certificate and key into `dir`.
pub fn write_issued(dir: &Path, cert_file: &str, key_file: &str, i: &Issued) -> Result<(), PkiError> {
    make_dir(dir)?;
    write(&dir.join(key_file), i.key_pem.as_bytes(), 0o600)?;
    write(&dir.join(cert_file), i.cert_pem.as_bytes(), 0o644)
}

fn make_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })
}

fn write(path: &Path, body: &[u8], mode: u32) -> Result<(), PkiError> {
    crate::fsutil::write_atomic(path, None, body, Some(mode))
        .map_err(|source| PkiError::Io { path: path.into(), source })
}

/// The DER of the first certificate of a PEM text.
pub fn first_der(pem: &str) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let len = pem[start..].find(END)?;
    let b64: String = pem[start..start + len].chars().filter(|c| !c.is_whitespace()).collect();
    crate::agent::base64_decode(&b64)
}

/// The SHA-256 of a PEM certificate's DER (hex); empty when it is not one.
pub fn fingerprint(cert_pem: &str) -> String {
    first_der(cert_pem).map(|d| hex::encode(Sha256::digest(d))).unwrap_or_default()
}

/// The names a head's certificate carries: its name, `localhost`, its addresses and loopback.
pub fn head_names(name: &str, ips: &[IpAddr]) -> Vec<String> {
    let mut v = vec![name.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
    for ip in ips {
        let s = ip.to_string();
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}

/// Proof that whoever sent `cert_pem` knows the database password: a joining head checks it
/// before it trusts the CA, so a machine in the middle cannot hand it another one. PBKDF2
/// (HMAC-SHA256, 100,000 rounds) of the password, salted with the certificate's fingerprint,
/// makes each guess at the password from a captured proof cost as much as 100,000 hashes.
pub fn ca_proof(admin_pass: &str, cert_pem: &str) -> String {
    use hmac::{Hmac, Mac};
    let salt = format!("clusterware ca proof v1 {}", fingerprint(cert_pem));
    let mut out = [0u8; 32];
    // PBKDF2 with one output block: U1 = HMAC(P, S || 1), Ui = HMAC(P, Ui-1), T = xor of all.
    let prf = || Hmac::<Sha256>::new_from_slice(admin_pass.as_bytes()).expect("HMAC takes any key length");
    let mut m = prf();
    m.update(salt.as_bytes());
    m.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    out.copy_from_slice(&u);
    for _ in 1..100_000 {
        let mut m = prf();
        m.update(&u);
        u = m.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    hex::encode(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trip_and_issue() {
        let d = std::env::temp_dir().join(format!("cw-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert!(Ca::load(&d).unwrap().is_none());
        let ca = Ca::create().unwrap();
        ca.write(&d).unwrap();
        let back = Ca::load(&d).unwrap().unwrap();
        assert_eq!(back.fingerprint(), ca.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(d.join(CA_KEY)).unwrap().permissions().mode() & 0o777, 0o600);
        let i = back.issue("head1", &head_names("head1", &["10.0.0.1".parse().unwrap()]), 1).unwrap();
        assert!(i.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(first_der(&i.cert_pem).is_some());
        // A key that is not the certificate's is refused.
        let other = Ca::create().unwrap();
        assert!(Ca::from_pem(&ca.cert_pem, other.key_pem()).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn proof_depends_on_password_and_certificate() {
        let (a, b) = (Ca::create().unwrap(), Ca::create().unwrap());
        let p = ca_proof("pw", &a.cert_pem);
        assert_eq!(p, ca_proof("pw", &a.cert_pem));
        assert_ne!(p, ca_proof("pw2", &a.cert_pem));
        assert_ne!(p, ca_proof("pw", &b.cert_pem));
    }

    #[test]
    fn base64() {
        assert_eq!(crate::agent::base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(crate::agent::base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert!(crate::agent::base64_decode("a!").is_none());
        for v in [&b""[..], b"h", b"he", b"hel", b"hello", b"hello!", b"admin:S3cret/+?", &[0xff, 0xfe, 0x00, 0x80]] {
            let e = crate::agent::base64_encode(v);
            assert_eq!(e.len() % 4, 0);
            if !v.is_empty() {
                assert_eq!(crate::agent::base64_decode(&e).unwrap(), v, "{e}");
            }
        }
        assert_eq!(crate::agent::base64_encode(b"hello"), "aGVsbG8=");
    }
}
