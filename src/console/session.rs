//! The console's sessions: a cookie the daemon signs, and a CSRF token
//! derived from it. Nothing is stored: a cookie is good until it expires
//! on any instance that has the same admin token, and changing the token
//! ends every session.
//!
//! Cookie value: `<expires, unix seconds>.<nonce>.<HMAC-SHA256 of both>`,
//! keyed by a key derived from the admin token. The CSRF token is the
//! HMAC of the cookie's value: a page of this origin reads it from the
//! page; another site's page can read neither.

use hmac::{Hmac, Mac};
use http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The cookie's name.
pub const COOKIE: &str = "hookgate_session";
/// How long a login lasts.
pub const LIFETIME_S: u64 = 12 * 3600;

/// Signs and checks sessions.
pub struct Sessions {
    key: [u8; 32],
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
}

/// A valid session, as its cookie said.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    csrf: String,
    /// Unix seconds.
    pub expires: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session(expires {})", self.expires)
    }
}

impl Session {
    /// The token a change must carry.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    pub fn csrf_is(&self, given: &str) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.csrf.as_bytes(), given.as_bytes()).into()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl Sessions {
    /// Keyed by the admin `token`; without one, by a key of this process
    /// (there is no login then, only the open CSRF token).
    pub fn new(token: Option<&Secret>) -> Sessions {
        let key = match token {
            Some(t) => {
                let mut h = Sha256::new();
                h.update(b"hookgate console session v1\0");
                h.update(t.expose());
                h.finalize().into()
            }
            None => rand::random(),
        };
        Sessions { key }
    }

    fn mac(&self, what: &[&[u8]]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("any key length");
        for part in what {
            m.update(part);
        }
        m.finalize().into_bytes().into()
    }

    /// A new session's cookie value, good until `now_s` + [`LIFETIME_S`].
    pub fn issue(&self, now_s: u64) -> String {
        let expires = now_s + LIFETIME_S;
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let signed = format!("{expires}.{nonce}");
        let mac = hex::encode(self.mac(&[b"session:", signed.as_bytes()]));
        format!("{signed}.{mac}")
    }

    /// The session of a cookie value, if this daemon signed it and it has
    /// not expired at `now_s`.
    pub fn verify(&self, value: &str, now_s: u64) -> Option<Session> {
        let (signed, mac) = value.rsplit_once('.')?;
        let (expires, _nonce) = signed.split_once('.')?;
        let expires: u64 = expires.parse().ok()?;
        let given = hex::decode(mac).ok()?;
        let want = self.mac(&[b"session:", signed.as_bytes()]);
        let same: bool = subtle::ConstantTimeEq::ct_eq(&want[..], &given[..]).into();
        (same && now_s < expires).then(|| Session {
            csrf: hex::encode(&self.mac(&[b"csrf:", value.as_bytes()])[..16]),
            expires,
        })
    }

    /// The session of the request's cookie, if any is valid now.
    pub fn of_cookies(&self, headers: &HeaderMap) -> Option<Session> {
        let now = now_s();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .find_map(|(_, value)| self.verify(value, now))
    }

    /// The CSRF token of the console's forms when no admin token is set.
    pub fn open_csrf(&self) -> String {
        hex::encode(&self.mac(&[b"csrf:open"])[..16])
    }

    pub fn open_csrf_is(&self, given: &str) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.open_csrf().as_bytes(), given.as_bytes()).into()
    }
}

/// `Set-Cookie` for a session `value`: HttpOnly (no script reads it),
/// SameSite=Strict (no other site's request carries it).
pub fn set_cookie(value: &str) -> String {
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_S}")
}

/// `Set-Cookie` that ends the session in this browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_good_until_it_expires_and_only_with_its_key() {
        let s = Sessions::new(Some(&Secret::new("token-a")));
        let cookie = s.issue(1_000);
        let session = s.verify(&cookie, 1_001).expect("valid");
        assert_eq!(session.expires, 1_000 + LIFETIME_S);
        assert!(s.verify(&cookie, 1_000 + LIFETIME_S).is_none(), "expired");
        let other = Sessions::new(Some(&Secret::new("token-b")));
        assert!(other.verify(&cookie, 1_001).is_none(), "another token's");
        let same = Sessions::new(Some(&Secret::new("token-a")));
        assert!(same.verify(&cookie, 1_001).is_some(), "another instance's");
        // Tampered: a later expiry, a changed mac, nonsense.
        let (_, rest) = cookie.split_once('.').unwrap();
        let later = format!("{}.{rest}", 1_000 + 10 * LIFETIME_S);
        assert!(s.verify(&later, 1_001).is_none());
        let mut flipped = cookie.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert!(s.verify(&flipped, 1_001).is_none());
        for junk in ["", ".", "a.b.c", "1.2", "99999999999.x.zz"] {
            assert!(s.verify(junk, 1_001).is_none(), "{junk}");
        }
    }

    #[test]
    fn each_session_has_its_own_csrf_token() {
        let s = Sessions::new(Some(&Secret::new("t")));
        let a = s.verify(&s.issue(10), 11).unwrap();
        let b = s.verify(&s.issue(10), 11).unwrap();
        assert_ne!(a.csrf(), b.csrf());
        assert!(a.csrf_is(a.csrf()));
        assert!(!a.csrf_is(b.csrf()));
        assert!(!a.csrf_is(""));
        assert!(!s.open_csrf_is(a.csrf()));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let s = Sessions::new(Some(&Secret::new("t")));
        let value = s.issue(now_s());
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; hookgate_session=bad".parse().unwrap());
        assert!(s.of_cookies(&h).is_none());
        h.append(
            header::COOKIE,
            format!("b=2; {COOKIE}={value}").parse().unwrap(),
        );
        assert!(s.of_cookies(&h).is_some());
        assert!(set_cookie(&value).contains("HttpOnly; SameSite=Strict"));
    }
}
