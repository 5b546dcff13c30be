//! Secret rotation: a source whose `secret` is a list verifies with each
//! listed secret that is set, and reports which one matched (its index in
//! the list as written), so an operator sees when the old one stops being
//! used. Every scheme is tried, each in constant time, whatever matched
//! first: how long verification takes does not tell which secret is in use.
//! Envelope reading, signing and the stored body do not depend on the
//! secret; they use the first scheme (the newest secret that is set).

use std::borrow::Cow;
use std::sync::Arc;

use super::{Envelope, Inbound, Provider, ShapeError, SignInput, Signed, Verified, VerifyError};

#[derive(Debug)]
pub struct Rotating {
    /// (index in the `secret` list, the scheme built with that secret),
    /// in list order; never empty.
    schemes: Vec<(usize, Arc<dyn Provider>)>,
}

impl Rotating {
    /// `None` when `schemes` is empty: a source with no secret set is closed.
    pub fn new(schemes: Vec<(usize, Arc<dyn Provider>)>) -> Option<Rotating> {
        (!schemes.is_empty()).then_some(Rotating { schemes })
    }

    fn first(&self) -> &dyn Provider {
        self.schemes[0].1.as_ref()
    }
}

impl Provider for Rotating {
    /// The first match wins. Without one: `Stale` when some secret's
    /// signature matched but its timestamp is out of the window, else the
    /// first scheme's error (missing and malformed proofs fail alike under
    /// every secret).
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        let mut matched = None;
        let mut stale = false;
        let mut first_error = None;
        for (index, scheme) in &self.schemes {
            match scheme.verify(req) {
                Ok(v) => {
                    matched.get_or_insert(Verified {
                        secret: *index,
                        ..v
                    });
                }
                Err(VerifyError::Stale) => stale = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (matched, stale, first_error) {
            (Some(v), _, _) => Ok(v),
            (None, true, _) => Err(VerifyError::Stale),
            (None, false, Some(e)) => Err(e),
            (None, false, None) => Err(VerifyError::Mismatch),
        }
    }

    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        self.first().envelope(req)
    }

    fn sign(&self, input: &SignInput<'_>) -> Signed {
        self.first().sign(input)
    }

    fn stored_body<'b>(&self, body: &'b [u8]) -> Cow<'b, [u8]> {
        self.first().stored_body(body)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::secret::Secret;
    use crate::verify::{github::Github, header_map, zendesk::Zendesk};

    fn github(secret: &str) -> Arc<dyn Provider> {
        Arc::new(Github {
            secret: Secret::new(secret),
            legacy_sha1: false,
        })
    }

    fn verify_with(p: &dyn Provider, signer: &dyn Provider) -> Result<Verified, VerifyError> {
        let now = SystemTime::now();
        let signed = signer.sign(&SignInput {
            body: b"{}",
            event: "push",
            delivery_id: "d",
            now,
        });
        let headers = header_map(&signed.headers);
        p.verify(&Inbound {
            headers: &headers,
            body: &signed.body,
            now,
        })
    }

    #[test]
    fn any_listed_secret_verifies_and_says_which() {
        let p = Rotating::new(vec![(0, github("new")), (1, github("old"))]).unwrap();
        assert_eq!(verify_with(&p, &*github("new")).unwrap().secret, 0);
        assert_eq!(verify_with(&p, &*github("old")).unwrap().secret, 1);
        assert_eq!(
            verify_with(&p, &*github("other")),
            Err(VerifyError::Mismatch)
        );
        // The index is the one in the list as written, gaps included.
        let p = Rotating::new(vec![(1, github("old"))]).unwrap();
        assert_eq!(verify_with(&p, &*github("old")).unwrap().secret, 1);
        assert!(Rotating::new(Vec::new()).is_none());
    }

    #[test]
    fn a_stale_match_under_one_secret_is_stale() {
        let zendesk = |s: &str| -> Arc<dyn Provider> {
            Arc::new(Zendesk {
                secret: Secret::new(s),
                max_skew: Duration::from_secs(300),
            })
        };
        let p = Rotating::new(vec![(0, zendesk("new")), (1, zendesk("old"))]).unwrap();
        let then = SystemTime::now() - Duration::from_secs(3600);
        let signed = zendesk("old").sign(&SignInput {
            body: b"{}",
            event: "",
            delivery_id: "inv",
            now: then,
        });
        let headers = header_map(&signed.headers);
        let req = Inbound {
            headers: &headers,
            body: &signed.body,
            now: SystemTime::now(),
        };
        assert_eq!(p.verify(&req), Err(VerifyError::Stale));
    }
}
