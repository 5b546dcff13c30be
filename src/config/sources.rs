//! `[sources.NAME]` into a ready [`Source`]: provider, dedupe window,
//! skew, rate limit, allowlist, and the verifier built once its secret is
//! resolved (a missing secret closes the source instead).
//!
//! `secret` may be a list while rotating: a verifier is built for each
//! listed secret that is set, and the source is closed only when none is.
//! A missing entry beside a set one is a warning, not a secret problem, so
//! `check --strict` and a reload accept a rotation in progress.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawSecret, RawSecrets, RawSource};
use super::secrets::SecretShape;
use super::{parse_rate, Cx, Proof, ProviderKind, Source};
use crate::secret::Secret;
use crate::verify::{self, Locator, Provider};

/// Builds a verifier once its secret is known (once per listed secret).
type BuildScheme = Box<dyn Fn(Secret) -> Result<Arc<dyn Provider>, String>>;

/// One listed secret: where it is written, its key for messages
/// (`sources.x.secret[1]`), and whether it resolved.
struct Listed {
    span: Range<usize>,
    key: String,
    secret: Result<Secret, String>,
}

const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

impl Cx<'_> {
    pub(super) fn source(&mut self, name: &str, raw: RawSource) -> Option<Source> {
        let at = |k: &str| format!("sources.{name}.{k}");
        let Some(provider) = ProviderKind::parse(raw.provider.get_ref()) else {
            let names: Vec<&str> = ProviderKind::ALL.iter().map(|(n, _)| *n).collect();
            self.err(
                raw.provider.span(),
                &at("provider"),
                match crate::suggest::closest(raw.provider.get_ref(), names.iter().copied()) {
                    Some(meant) => format!(
                        "unknown provider `{}`: did you mean `{meant}`?",
                        raw.provider.get_ref()
                    ),
                    None => format!(
                        "unknown provider `{}`: use one of {}",
                        raw.provider.get_ref(),
                        names.join(", ")
                    ),
                },
            );
            return None;
        };
        let before = self.problems.len();
        let allow_ips = raw
            .allow_ips
            .as_ref()
            .map(|list| self.cidrs(list, &at("allow_ips")));
        if raw.allow_ips.as_ref().is_some_and(Vec::is_empty) {
            self.warn(
                0..0,
                &at("allow_ips"),
                "an empty list lets no address in: every request gets 403 (leave allow_ips out to let any in)",
            );
        }
        let dedupe_window = self.duration(
            &raw.dedupe_window,
            &at("dedupe_window"),
            DEFAULT_DEDUPE_WINDOW,
        );
        let max_skew = self.duration(&raw.max_skew, &at("max_skew"), DEFAULT_MAX_SKEW);
        let rate_limit = raw
            .rate_limit
            .as_ref()
            .and_then(|v| match parse_rate(v.get_ref()) {
                Some(r) => Some(r),
                None => {
                    self.err(
                        v.span(),
                        &at("rate_limit"),
                        format!(
                            "`{}` is not a rate: write it like \"200/s\", \"600/m\" or \"5000/h\"",
                            v.get_ref()
                        ),
                    );
                    None
                }
            });

        // Keys that only some providers understand.
        let only = |allowed: &[ProviderKind]| allowed.contains(&provider);
        let misplaced: [(&str, Option<Range<usize>>, bool); 10] = [
            (
                "signing_secret",
                raw.signing_secret.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Gitlab]),
            ),
            (
                "legacy_sha1",
                raw.legacy_sha1.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Github]),
            ),
            (
                "max_skew",
                raw.max_skew.as_ref().map(|v| v.span()),
                provider.has_timestamp(),
            ),
            (
                "event_from",
                raw.event_from.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Standard, ProviderKind::Hmac]),
            ),
            (
                "id_from",
                raw.id_from.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Standard, ProviderKind::Hmac]),
            ),
            (
                "header",
                raw.header.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Hmac]),
            ),
            (
                "algorithm",
                raw.algorithm.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Hmac]),
            ),
            (
                "encoding",
                raw.encoding.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Hmac]),
            ),
            (
                "prefix",
                raw.prefix.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Hmac]),
            ),
            (
                "timestamp_header",
                raw.timestamp_header.as_ref().map(|v| v.span()),
                only(&[ProviderKind::Hmac]),
            ),
        ];
        for (key, span, allowed) in misplaced {
            if let (Some(span), false) = (span, allowed) {
                self.err(
                    span,
                    &at(key),
                    format!(
                        "`{key}` does not apply to provider `{}`: remove it",
                        provider.name()
                    ),
                );
            }
        }

        let Some(secret_raw) = raw.secret.as_ref() else {
            // A `secret` already reported (and dropped) is not missing too.
            let key = format!("sources.{name}.secret");
            if !self.problems.iter().any(|p| p.key.starts_with(&key)) {
                self.err(
                    raw.provider.span(),
                    &format!("sources.{name}"),
                    "missing `secret`: add secret = { env = \"NAME\" } (or { file } / { credential })",
                );
            }
            return None;
        };
        let shape = if provider == ProviderKind::Standard {
            SecretShape::Whsec
        } else {
            SecretShape::Token
        };
        let entries: Vec<(Range<usize>, String, &RawSecret)> = match secret_raw.get_ref() {
            RawSecrets::One(s) => vec![(secret_raw.span(), at("secret"), s)],
            RawSecrets::List(list) => list
                .iter()
                .enumerate()
                .map(|(i, s)| (s.span(), format!("{}[{i}]", at("secret")), s.get_ref()))
                .collect(),
        };
        if entries.is_empty() {
            self.err(
                secret_raw.span(),
                &at("secret"),
                "an empty list verifies nothing: list at least one secret, e.g. [{ env = \"NEW\" }, { env = \"OLD\" }]",
            );
        }
        let unset_before = self.secret_problems.len();
        let secrets: Vec<Option<Listed>> = entries
            .into_iter()
            .map(|(span, key, raw)| {
                let secret = self.resolve_at(span.clone(), raw, &key, shape)?;
                Some(Listed { span, key, secret })
            })
            .collect();
        let secrets: Vec<Listed> = secrets.into_iter().collect::<Option<_>>()?;
        if secrets.iter().any(|l| l.secret.is_ok()) && self.secret_problems.len() > unset_before {
            // A rotation in progress: the source still verifies with the rest.
            for mut p in self
                .secret_problems
                .drain(unset_before..)
                .collect::<Vec<_>>()
            {
                p.message.push_str(
                    "; the source verifies with its other listed secret(s) meanwhile (remove the entry once the rotation is done)",
                );
                self.warnings.push(p);
            }
        }
        let signing = match raw
            .signing_secret
            .as_ref()
            .filter(|_| provider == ProviderKind::Gitlab)
        {
            Some(s) => Some(self.resolve(s, &at("signing_secret"), SecretShape::Whsec)?),
            None => None,
        };
        let scheme = self.scheme(name, provider, &raw, secrets, signing, max_skew);
        let timestamped = match provider {
            ProviderKind::Zendesk | ProviderKind::Standard => true,
            ProviderKind::Gitlab => raw.signing_secret.is_some(),
            ProviderKind::Hmac => raw.timestamp_header.is_some(),
            _ => false,
        };
        if timestamped && dedupe_window < 2 * max_skew {
            let span = raw.dedupe_window.as_ref().map(|v| v.span()).unwrap_or(0..0);
            self.err(
                span,
                &at("dedupe_window"),
                format!(
                    "`dedupe_window` ({}) is shorter than twice `max_skew` ({}): a signed request is accepted for that long (its timestamp up to max_skew old or ahead), so a replay could come back as new; set dedupe_window to at least {}",
                    humantime::format_duration(dedupe_window),
                    humantime::format_duration(max_skew),
                    humantime::format_duration(2 * max_skew),
                ),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some(Source {
            name: name.to_owned(),
            provider,
            proof: match scheme {
                Ok(p) => Proof::Ready(p),
                Err(reason) => Proof::Closed(reason),
            },
            allow_ips,
            dedupe_window,
            rate_limit,
        })
    }

    /// Builds the verifier: one per listed secret that is set, behind
    /// [`verify::rotation::Rotating`] when `secret` is a list. `Err` closes the
    /// source (no secret is set, or none is usable).
    fn scheme(
        &mut self,
        name: &str,
        provider: ProviderKind,
        raw: &RawSource,
        secrets: Vec<Listed>,
        signing: Option<Result<Secret, String>>,
        max_skew: Duration,
    ) -> Result<Arc<dyn Provider>, String> {
        let at = |k: &str| format!("sources.{name}.{k}");
        let locator = |cx: &mut Self, v: &Option<Spanned<String>>, key: &str, default: &str| {
            let (text, span) = match v {
                Some(v) => (v.get_ref().as_str(), v.span()),
                None => (default, 0..0),
            };
            match Locator::parse(text) {
                Ok(l) => Some(l),
                Err(msg) => {
                    cx.err(span, &at(key), msg);
                    None
                }
            }
        };
        // Structural checks first, so `check` reports them even when the
        // secret is missing.
        let built: Option<BuildScheme> = match provider {
            ProviderKind::Github => {
                let legacy_sha1 = raw.legacy_sha1.as_ref().is_some_and(|v| *v.get_ref());
                Some(Box::new(move |secret| {
                    Ok(Arc::new(verify::github::Github {
                        secret,
                        legacy_sha1,
                    }) as Arc<dyn Provider>)
                }))
            }
            ProviderKind::Gitlab => {
                let signing = match signing {
                    None => None,
                    Some(Err(reason)) => return Err(reason),
                    Some(Ok(s)) => {
                        match verify::standard::decode_whsec(s.expose_str().unwrap_or("")) {
                            Some(key) => Some(Secret::new(key)),
                            None => {
                                let span = raw
                                    .signing_secret
                                    .as_ref()
                                    .map(|s| s.span())
                                    .unwrap_or(0..0);
                                let p = self.problem(
                                span,
                                &at("signing_secret"),
                                "the signing token is not a `whsec_<base64>` key: copy it exactly as GitLab shows it",
                            );
                                self.secret_problems.push(p);
                                return Err("signing token is not a whsec_ key".into());
                            }
                        }
                    }
                };
                Some(Box::new(move |token| {
                    Ok(Arc::new(verify::gitlab::Gitlab {
                        token,
                        signing_secret: signing.clone(),
                        max_skew,
                    }) as Arc<dyn Provider>)
                }))
            }
            ProviderKind::Jira => Some(Box::new(|secret| {
                Ok(Arc::new(verify::jira::Jira { secret }) as Arc<dyn Provider>)
            })),
            ProviderKind::Figma => Some(Box::new(|passcode| {
                Ok(Arc::new(verify::figma::Figma { passcode }) as Arc<dyn Provider>)
            })),
            ProviderKind::Zendesk => Some(Box::new(move |secret| {
                Ok(Arc::new(verify::zendesk::Zendesk { secret, max_skew }) as Arc<dyn Provider>)
            })),
            ProviderKind::Intercom => Some(Box::new(|secret| {
                Ok(Arc::new(verify::intercom::Intercom { secret }) as Arc<dyn Provider>)
            })),
            ProviderKind::Standard => {
                let event_from = locator(self, &raw.event_from, "event_from", "body:type");
                let id_from = locator(self, &raw.id_from, "id_from", "header:webhook-id");
                match (event_from, id_from) {
                    (Some(event_from), Some(id_from)) => Some(Box::new(move |s: Secret| {
                        let key = verify::standard::decode_whsec(s.expose_str().unwrap_or(""))
                            .ok_or("the secret is not a `whsec_<base64>` key")?;
                        Ok(Arc::new(verify::standard::Standard {
                            key: Secret::new(key),
                            max_skew,
                            event_from: event_from.clone(),
                            id_from: id_from.clone(),
                        }) as Arc<dyn Provider>)
                    })),
                    _ => None,
                }
            }
            ProviderKind::Hmac => self.hmac_scheme(name, raw, max_skew, locator),
        };
        let built = built.ok_or_else(|| "invalid configuration".to_string())?;
        let listed = matches!(
            raw.secret.as_ref().map(|s| s.get_ref()),
            Some(RawSecrets::List(_))
        );
        let mut schemes = Vec::new();
        let mut reasons = Vec::new();
        for (index, l) in secrets.into_iter().enumerate() {
            match l.secret.and_then(|s| {
                built(s).inspect_err(|reason| {
                    let p = self.problem(l.span.clone(), &l.key, reason.clone());
                    self.secret_problems.push(p);
                })
            }) {
                Ok(p) => schemes.push((index, p)),
                Err(reason) => reasons.push(reason),
            }
        }
        match (listed, schemes.len()) {
            (_, 0) => Err(reasons.join("; ")),
            (false, _) => Ok(schemes.remove(0).1),
            (true, _) => Ok(Arc::new(
                verify::rotation::Rotating::new(schemes).expect("not empty"),
            )),
        }
    }

    fn hmac_scheme(
        &mut self,
        name: &str,
        raw: &RawSource,
        max_skew: Duration,
        locator: impl Fn(&mut Self, &Option<Spanned<String>>, &str, &str) -> Option<Locator>,
    ) -> Option<BuildScheme> {
        use verify::hmac::{Algorithm, Encoding};
        let at = |k: &str| format!("sources.{name}.{k}");
        let header = match raw.header.as_ref() {
            None => {
                self.err(
                    raw.provider.span(),
                    &format!("sources.{name}"),
                    "provider `hmac` needs `header`: the request header that carries the signature",
                );
                None
            }
            Some(h) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.err(
                        h.span(),
                        &at("header"),
                        format!("`{}` is not a header name", h.get_ref()),
                    );
                    None
                }
            },
        };
        let algorithm = match raw.algorithm.as_ref() {
            None => Some(Algorithm::Sha256),
            Some(a) => Algorithm::parse(a.get_ref()).or_else(|| {
                self.err(
                    a.span(),
                    &at("algorithm"),
                    "use one of sha1, sha256, sha512",
                );
                None
            }),
        };
        let encoding = match raw.encoding.as_ref() {
            None => Some(Encoding::Hex),
            Some(e) => Encoding::parse(e.get_ref()).or_else(|| {
                self.err(e.span(), &at("encoding"), "use one of hex, base64");
                None
            }),
        };
        let timestamp_header = match raw.timestamp_header.as_ref() {
            None => Some(None),
            Some(h) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => Some(Some(n)),
                Err(_) => {
                    self.err(
                        h.span(),
                        &at("timestamp_header"),
                        format!("`{}` is not a header name", h.get_ref()),
                    );
                    None
                }
            },
        };
        let event_from = locator(self, &raw.event_from, "event_from", "body:type");
        let id_from = match raw.id_from {
            None => Some(None),
            Some(_) => locator(self, &raw.id_from, "id_from", "").map(Some),
        };
        let prefix = raw
            .prefix
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_default();
        let (header, algorithm, encoding, timestamp_header, event_from, id_from) = (
            header?,
            algorithm?,
            encoding?,
            timestamp_header?,
            event_from?,
            id_from?,
        );
        Some(Box::new(move |secret| {
            Ok(Arc::new(verify::hmac::Hmac {
                secret,
                header: header.clone(),
                algorithm,
                encoding,
                prefix: prefix.clone(),
                timestamp_header: timestamp_header.clone(),
                max_skew,
                event_from: event_from.clone(),
                id_from: id_from.clone(),
            }) as Arc<dyn Provider>)
        }))
    }
}
