//! Password hashing: argon2id, computed off the async runtime on a pool small enough to leave the chat a
//! core of its own.
//!
//! Parameters (the README's "Security" lists them): 19 MiB of memory, 2 passes, 1 lane, the OWASP
//! baseline for argon2id. On this project's 2-core machines one hash takes about 25-40 ms, so with one
//! hashing thread 100 sign-ins at once queue for a few seconds while messages keep flowing on the other
//! core (`make bench` measures it).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::OsRng;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Memory per hash, in KiB.
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Passes over the memory.
pub const PASSES: u32 = 2;
/// Parallel lanes within one hash (the pool, not the hash, uses the cores).
pub const LANES: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Argon2(String),
    #[error("the hashing pool stopped")]
    Stopped,
}

/// A cheap handle to the hashing pool.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    /// One permit per hashing thread. A semaphore in front of `spawn_blocking`, since Tokio's blocking
    /// pool would otherwise run as many hashes at once as there are requests, and take every core.
    permits: Arc<Semaphore>,
    /// A hash nobody's password matches, checked against when a name has no account: made once, so an
    /// unknown name costs one check, the same as a known one.
    dummy: Arc<std::sync::OnceLock<String>>,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new(
            Params::new(MEMORY_KIB, PASSES, LANES, None).expect("valid argon2 parameters"),
            threads(),
        )
    }
}

/// Hashing threads: half the cores, at least one.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl Hasher {
    pub fn new(params: Params, threads: usize) -> Self {
        Self {
            params,
            permits: Arc::new(Semaphore::new(threads.max(1))),
            dummy: Arc::default(),
        }
    }

    /// Fast parameters for tests, where hashing strength is not what is tested.
    pub fn for_tests() -> Self {
        Self::new(
            Params::new(256, 1, 1, None).expect("valid argon2 parameters"),
            2,
        )
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::Stopped)?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || work(argon2))
            .await
            .map_err(|_| HashError::Stopped)
    }

    /// The PHC string of `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move |argon2| {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Argon2(e.to_string()))
        })
        .await?
    }

    /// Whether `password` matches `phc`. With no `phc` (no such member) it still spends the time of a
    /// check, so timing does not tell which names are members.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, HashError> {
        let dummy = self.dummy.clone();
        self.run(move |argon2| {
            let real = phc.is_some();
            let phc = phc.unwrap_or_else(|| dummy.get_or_init(|| dummy_hash(&argon2)).clone());
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return false;
            };
            argon2.verify_password(password.as_bytes(), &parsed).is_ok() && real
        })
        .await
    }
}

/// A hash nobody's password matches, made with the pool's own parameters.
fn dummy_hash(argon2: &Argon2<'_>) -> String {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(&[0u8; 32], &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() {
        let hasher = Hasher::for_tests();
        let phc = hasher.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(hasher
            .verify("correct horse".into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!hasher
            .verify("correct horsf".into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!hasher.verify("correct horse".into(), None).await.unwrap());
        assert!(!hasher
            .verify("x".into(), Some("not a hash".into()))
            .await
            .unwrap());
        // Salted: the same password hashes differently each time.
        assert_ne!(phc, hasher.hash("correct horse".into()).await.unwrap());
    }

    #[test]
    fn the_shipped_parameters_are_argon2id_at_the_owasp_baseline() {
        let hasher = Hasher::default();
        assert_eq!(hasher.params.m_cost(), 19 * 1024);
        assert_eq!(hasher.params.t_cost(), 2);
        assert_eq!(hasher.params.p_cost(), 1);
    }
}
