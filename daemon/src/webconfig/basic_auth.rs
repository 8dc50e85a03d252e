//! `basic_auth_users`: user name -> bcrypt hash, checked per request.
//!
//! Every check costs one bcrypt verification at the configured cost, for a
//! known user with a wrong password and an unknown user alike (the latter
//! against a dummy hash of the highest cost configured), so the time taken
//! does not tell which users exist; bcrypt compares the digests in constant
//! time. As in the exporter toolkit, credentials that passed are remembered
//! (a SHA-256 of hash, user and password, for this set of users only), so
//! a scraper pays for bcrypt once, not at every scrape; a wrong password is
//! never remembered and always costs a full bcrypt.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use super::Bad;

#[derive(Debug, Clone)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Verified for unknown users, so they take as long as known ones.
    dummy: String,
    /// Digests of credentials that passed (see [`PASSED_KEPT`]).
    passed: Arc<Mutex<HashSet<[u8; 32]>>>,
}

/// Credentials remembered at most; past it the memory starts again empty.
const PASSED_KEPT: usize = 256;

impl BasicAuth {
    /// Checks every hash; `None` for an empty table (no authentication).
    pub fn new(users: &BTreeMap<String, String>) -> Result<Option<Self>, Bad> {
        let mut max_cost = 0;
        for (user, hash) in users {
            let key = format!("basic_auth_users.{user}");
            if user.is_empty() || user.contains(':') {
                return Err(Bad::new(
                    key,
                    format!("invalid user name {user:?} (empty, or with a ':')"),
                ));
            }
            let parts = bcrypt::HashParts::from_str(hash).map_err(|e| {
                Bad::new(
                    key.clone(),
                    format!(
                        "not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 {user}` \
                         and use the part after the ':'"
                    ),
                )
            })?;
            if !(4..=31).contains(&parts.get_cost()) {
                return Err(Bad::new(
                    key,
                    format!("bcrypt cost {} is outside 4..=31", parts.get_cost()),
                ));
            }
            max_cost = max_cost.max(parts.get_cost());
        }
        if users.is_empty() {
            return Ok(None);
        }
        let dummy = bcrypt::hash("telemetryd: no such user", max_cost)
            .map_err(|e| Bad::new("basic_auth_users", format!("bcrypt: {e}")))?;
        Ok(Some(Self {
            users: users.clone(),
            dummy,
            passed: Arc::default(),
        }))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the `Authorization` header's value names a user and their
    /// password. Blocking (bcrypt): call it off the async workers.
    pub fn verify(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        match self.users.get(&user) {
            Some(hash) => {
                let digest = passed_digest(hash, &user, &password);
                let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
                if passed.contains(&digest) {
                    return true;
                }
                drop(passed);
                let ok = bcrypt::verify(&password, hash).unwrap_or(false);
                if ok {
                    passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
                    if passed.len() >= PASSED_KEPT {
                        passed.clear();
                    }
                    passed.insert(digest);
                }
                ok
            }
            None => {
                let _ = bcrypt::verify(&password, &self.dummy);
                false
            }
        }
    }

    #[cfg(test)]
    fn dummy_cost(&self) -> u32 {
        bcrypt::HashParts::from_str(&self.dummy).unwrap().get_cost()
    }
}

fn passed_digest(hash: &str, user: &str, password: &[u8]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [hash.as_bytes(), b"\0", user.as_bytes(), b"\0", password] {
        context.update(part);
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

/// `Basic base64(user:password)` -> (user, password).
fn credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    #[test]
    fn checks_users_passwords_and_the_header_form() {
        let users = BTreeMap::from([
            ("alice".to_owned(), bcrypt::hash("s3cret", 4).unwrap()),
            // htpasswd writes $2y$.
            (
                "bob".to_owned(),
                bcrypt::hash("pa:ss", 5)
                    .unwrap()
                    .replacen("$2b$", "$2y$", 1),
            ),
        ]);
        let auth = BasicAuth::new(&users).unwrap().unwrap();
        assert_eq!(auth.len(), 2);
        assert_eq!(
            auth.dummy_cost(),
            5,
            "the dummy costs as much as the dearest user"
        );
        assert!(auth.verify(Some(&header("alice", "s3cret"))));
        assert!(
            auth.verify(Some(&header("bob", "pa:ss"))),
            "a ':' in the password"
        );
        assert!(
            auth.verify(Some(b"basic YWxpY2U6czNjcmV0")),
            "scheme is case-insensitive"
        );
        assert!(!auth.verify(Some(&header("alice", "wrong"))));
        assert!(!auth.verify(Some(&header("alice", ""))));
        assert!(!auth.verify(Some(&header("mallory", "s3cret"))));
        assert!(
            !auth.verify(Some(&header("bob", "s3cret"))),
            "another user's password"
        );
        assert!(!auth.verify(None));
        assert!(!auth.verify(Some(b"Bearer YWxpY2U6czNjcmV0")));
        assert!(!auth.verify(Some(b"Basic !!!")));
        assert!(!auth.verify(Some(b"Basic YWxpY2U=")), "no colon");

        // Only what passed is remembered, and only for these users.
        let passed = auth.passed.lock().unwrap().len();
        assert_eq!(passed, 2, "alice and bob");
        assert!(auth.verify(Some(&header("alice", "s3cret"))));
        assert!(!auth.verify(Some(&header("alice", "wrong"))));
        assert_eq!(auth.passed.lock().unwrap().len(), 2);
        let users = BTreeMap::from([("alice".to_owned(), bcrypt::hash("other", 4).unwrap())]);
        let reloaded = BasicAuth::new(&users).unwrap().unwrap();
        assert!(
            !reloaded.verify(Some(&header("alice", "s3cret"))),
            "a new hash forgets"
        );
        assert!(reloaded.verify(Some(&header("alice", "other"))));
    }

    #[test]
    fn malformed_hashes_and_names_are_refused_by_key() {
        for (user, hash) in [
            ("alice", "s3cret"),
            ("alice", "$2y$10$tooshort"),
            (
                "alice",
                "$2y$99$KpD5qPp4vhYoj6MTJVhk2eWHuk4Ij1vuJH3hl.IO5DGr0bmUOCvBe",
            ),
            (
                "a:b",
                "$2y$10$KpD5qPp4vhYoj6MTJVhk2eWHuk4Ij1vuJH3hl.IO5DGr0bmUOCvBe",
            ),
        ] {
            let users = BTreeMap::from([(user.to_owned(), hash.to_owned())]);
            let err = BasicAuth::new(&users).expect_err(hash);
            assert_eq!(err.key, format!("basic_auth_users.{user}"));
        }
        assert!(BasicAuth::new(&BTreeMap::new()).unwrap().is_none());
    }
}
