//! Password hashing (argon2id, the crate's default cost: 19 MiB, 2 passes)
//! on a small pool of threads that each own their argon2 working memory.
//!
//! Hashing on whichever blocking thread asked made every such thread's
//! allocator arena keep a hash's 19 MiB after it was freed: a burst of 64
//! registrations left the server at about 1 GB. Here the memory is
//! allocated once per hashing thread and reused, so any burst of logins,
//! registrations or password-protected link redemptions costs at most
//! `threads × 19 MiB`, and hashes beyond the pool's size wait their turn
//! (on two cores more at once would not finish sooner anyway).

use std::sync::{Mutex, OnceLock, mpsc};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version, password_hash};

/// Hashing threads: one per core, at most four.
fn pool_size() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).min(4)
}

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

fn pool() -> &'static mpsc::Sender<Job> {
    static POOL: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = std::sync::Arc::new(Mutex::new(receiver));
        for index in 0..pool_size() {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("porch-argon2-{index}"))
                .spawn(move || {
                    let mut memory = vec![Block::default(); Params::default().block_count()];
                    loop {
                        // The lock is only held to take the next job, not to run it.
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => return,
                        }
                    }
                })
                .expect("cannot start a password hashing thread");
        }
        sender
    })
}

/// Run `work` on a hashing thread and wait for its answer (callers are on
/// blocking threads, never on the async executor).
fn on_pool<T: Send + 'static>(work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static) -> Option<T> {
    let (reply, answer) = mpsc::sync_channel(1);
    let job: Job = Box::new(move |memory| {
        let _ = reply.send(work(memory));
    });
    pool().send(job).ok()?;
    answer.recv().ok()
}

/// Hash a password with argon2id and a random salt, as a PHC string.
pub fn hash(password: &str) -> Result<String, password_hash::Error> {
    let password = zeroizing(password);
    on_pool(move |memory| hash_with(&password, memory)).unwrap_or(Err(password_hash::Error::Crypto))
}

/// Whether `password` matches a PHC string made by [`hash`] (or any argon2 one).
pub fn verify(password: &str, phc: &str) -> bool {
    let password = zeroizing(password);
    let phc = phc.to_owned();
    on_pool(move |memory| verify_with(&password, &phc, memory).unwrap_or(false)).unwrap_or(false)
}

fn zeroizing(password: &str) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(password.as_bytes().to_vec())
}

fn hash_with(password: &[u8], memory: &mut [Block]) -> Result<String, password_hash::Error> {
    let argon2 = Argon2::default();
    let salt = password_hash::SaltString::generate(&mut rand::thread_rng());
    let output = compute(&argon2, password, salt.as_salt(), Params::DEFAULT_OUTPUT_LEN, memory)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::default().into()),
        params: password_hash::ParamsString::try_from(argon2.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

fn verify_with(password: &[u8], phc: &str, memory: &mut [Block]) -> Result<bool, password_hash::Error> {
    let parsed = PasswordHash::new(phc)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Ok(false);
    };
    let algorithm = Algorithm::try_from(parsed.algorithm)?;
    let version = parsed.version.map(Version::try_from).transpose()?.unwrap_or_default();
    let params = Params::try_from(&parsed)?;
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    // A hash made at a higher cost than today's default gets its own memory
    // for this one check; the thread's own stays at the default size.
    let mut larger;
    let memory: &mut [Block] = if blocks > memory.len() {
        larger = vec![Block::default(); blocks];
        &mut larger
    } else {
        memory
    };
    let actual = compute(&argon2, password, salt, expected.len(), memory)?;
    // `Output`'s equality is constant-time.
    Ok(actual == expected)
}

/// The argon2 output of `password` with `salt`, in the given memory.
fn compute(
    argon2: &Argon2,
    password: &[u8],
    salt: password_hash::Salt,
    len: usize,
    memory: &mut [Block],
) -> Result<password_hash::Output, password_hash::Error> {
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    password_hash::Output::init_with(len, |out| {
        Ok(argon2.hash_password_into_with_memory(password, salt_bytes, out, &mut *memory)?)
    })
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_are_standard_argon2id_phc_strings_in_both_directions() {
        let ours = super::hash("correct horse").expect("hash");
        assert!(ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{ours}");
        // The argon2 crate's own verifier accepts ours, and we accept its.
        let parsed = argon2::PasswordHash::new(&ours).expect("parse");
        assert!(argon2::Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        let salt = argon2::password_hash::SaltString::generate(&mut rand::thread_rng());
        let theirs = argon2::Argon2::default().hash_password(b"battery staple", &salt).expect("hash").to_string();
        assert!(super::verify("battery staple", &theirs));
        assert!(!super::verify("battery stapler", &theirs));
        assert!(!super::verify("correct horse!", &ours));
        assert!(super::verify("correct horse", &ours));
    }

    #[test]
    fn a_costlier_hash_than_the_default_still_verifies() {
        let params = argon2::Params::new(32 * 1024, 1, 1, None).expect("params");
        let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = argon2::password_hash::SaltString::generate(&mut rand::thread_rng());
        let phc = hasher.hash_password(b"pw", &salt).expect("hash").to_string();
        assert!(super::verify("pw", &phc));
        assert!(!super::verify("pw2", &phc));
    }

    #[test]
    fn garbage_never_verifies() {
        assert!(!super::verify("pw", "not a hash"));
        assert!(!super::verify("pw", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ"));
        assert!(!super::verify("", ""));
    }

    #[test]
    fn many_threads_hash_at_once_and_each_gets_its_own_answer() {
        let handles: Vec<_> = (0..8)
            .map(|i| std::thread::spawn(move || (i, super::hash(&format!("password {i}")).expect("hash"))))
            .collect();
        for handle in handles {
            let (i, phc) = handle.join().expect("thread");
            assert!(super::verify(&format!("password {i}"), &phc));
            assert!(!super::verify(&format!("password {}", i + 1), &phc));
        }
    }
}
