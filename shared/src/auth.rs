//! The admin credential. Every head of a cluster shares `database.admin_pass` (it is what a
//! joining head authenticates with), so a token derived from it works on every head, while the
//! password itself never travels with ordinary API calls.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HTTP header value prefix for admin calls: `Authorization: Bearer <token>`.
pub const BEARER: &str = "Bearer ";

/// Derives the admin API token from the database password.
pub fn admin_token(admin_pass: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(admin_pass.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"clusterware admin api v1");
    hex::encode(mac.finalize().into_bytes())
}

/// Compares two tokens in time independent of where they differ.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_stable_and_secret_dependent() {
        let t = admin_token("pw");
        assert_eq!(t.len(), 64);
        assert_eq!(t, admin_token("pw"));
        assert_ne!(t, admin_token("pw2"));
        assert!(tokens_equal(&t, &admin_token("pw")));
        assert!(!tokens_equal(&t, &admin_token("pw2")));
        assert!(!tokens_equal(&t, "short"));
    }
}
