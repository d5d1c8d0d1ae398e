//! Password hashing: Argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane), on the blocking
//! pool and behind a semaphore, so that a burst of logins cannot exhaust memory or starve the
//! async workers.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use tokio::sync::Semaphore;

/// Hashes and verifies passwords. Cheap to clone.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the account does not exist so that
    /// an unknown email costs the same time as a wrong password.
    dummy_hash: Arc<String>,
}

fn argon2() -> Argon2<'static> {
    // OWASP Password Storage Cheat Sheet: m=19456 KiB, t=2, p=1.
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl Passwords {
    /// A hasher allowing as many concurrent hashes as there are cores (at least two).
    pub fn new() -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, usize::from).max(2);
        Ok(Self { permits: Arc::new(Semaphore::new(cores)), dummy_hash: Arc::new(unmatchable_hash()?) })
    }

    /// The PHC string of `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await.context("password hasher closed")?;
        tokio::task::spawn_blocking(move || {
            let hash: PasswordHash = argon2().hash_password(password.as_bytes()).map_err(|e| anyhow::anyhow!("hashing password: {e}"))?;
            Ok(hash.to_string())
        })
        .await
        .context("password hashing task")?
    }

    /// Whether `password` matches `stored`; with no stored hash, spends the same time and says no.
    pub async fn verify(&self, password: String, stored: Option<String>) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await.context("password hasher closed")?;
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let matched = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let parsed = PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored password hash is malformed: {e}"))?;
            Ok(argon2().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .context("password verification task")??;
        Ok(exists && matched)
    }
}

/// A PHC string with `argon2()`'s parameters, a random salt and a random output: verifying a
/// password against it runs a whole Argon2id with those parameters, as a real hash would, and
/// matches no password (the output would have to be guessed). Written, not computed: hashing a
/// random password for it took 19 MiB and the time of a hash at every start, and the freed
/// memory stayed in an idle process's RSS.
fn unmatchable_hash() -> anyhow::Result<String> {
    let (mut salt, mut output) = ([0u8; 16], [0u8; 32]);
    getrandom_fill(&mut salt)?;
    getrandom_fill(&mut output)?;
    let argon2 = argon2();
    let params = argon2.params();
    // The PHC string format: B64 is standard base64 without padding.
    Ok(format!(
        "$argon2id$v={}$m={},t={},p={}${}${}",
        u32::from(Version::V0x13),
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(output)
    ))
}

/// Fills `buf` from the operating system's random source.
pub fn getrandom_fill(buf: &mut [u8]) -> anyhow::Result<()> {
    getrandom::fill(buf).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let passwords = Passwords::new().expect("hasher");
        let first = passwords.hash("correct horse".into()).await.expect("hash");
        let second = passwords.hash("correct horse".into()).await.expect("hash");
        assert!(first.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        assert!(passwords.verify("correct horse".into(), Some(first.clone())).await.expect("verify"));
        assert!(!passwords.verify("wrong horse".into(), Some(first)).await.expect("verify"));
        assert!(!passwords.verify("anything".into(), None).await.expect("verify"));
    }

    #[test]
    fn the_unmatchable_hash_costs_what_a_real_one_does_and_matches_nothing() {
        let real = argon2().hash_password(b"correct horse").expect("hash").to_string();
        let dummy = unmatchable_hash().expect("dummy");
        let (real, dummy) = (PasswordHash::new(&real).expect("real parses"), PasswordHash::new(&dummy).expect("dummy parses"));
        assert_eq!((dummy.algorithm, dummy.version, &dummy.params), (real.algorithm, real.version, &real.params));
        assert_eq!(dummy.salt.map(|s| s.len()), real.salt.map(|s| s.len()));
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
        // Refused as a wrong password, not as a malformed hash: the whole Argon2id ran.
        let refused = argon2().verify_password(b"correct horse", &dummy).expect_err("no password matches");
        assert_eq!(refused, argon2::password_hash::Error::PasswordInvalid);
    }
}
