//! The stored form of secrets that are random enough to need no slow hash (refresh tokens, server
//! keys, reset tokens, device ids), and of identifiers kept out of cache keys (emails).

use sha2::{Digest, Sha256};

/// SHA-256 of `text`, in lowercase hex (64 characters).
pub fn sha256_hex(text: &str) -> String {
    use std::fmt::Write;
    Sha256::digest(text.as_bytes()).iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_hex_matches_the_known_digest() {
        // FIPS 180-2's example "abc".
        assert_eq!(super::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
