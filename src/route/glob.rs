//! Event-type patterns: exact, or a glob with `*` (any run of characters)
//! and `?` (one character). `zen:event-type:ticket.*`, `jira:issue_*`.

/// A compiled `event` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPattern(String);

impl EventPattern {
    pub fn new(pattern: &str) -> EventPattern {
        EventPattern(pattern.to_owned())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, event: &str) -> bool {
        glob(self.0.as_bytes(), event.as_bytes())
    }
}

/// Iterative glob match with single-star backtracking: linear in practice,
/// never exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_globs() {
        let m = |p: &str, e: &str| EventPattern::new(p).matches(e);
        assert!(m("push", "push"));
        assert!(!m("push", "pushed"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m(
            "zen:event-type:ticket.*",
            "zen:event-type:ticket.created"
        ));
        assert!(!m("zen:event-type:ticket.*", "zen:event-type:user.created"));
        assert!(m("jira:issue_*", "jira:issue_updated"));
        assert!(m("conversation.*.created", "conversation.user.created"));
        assert!(m("p?sh", "push"));
        assert!(!m("p?sh", "pussh"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        // Pathological input stays fast.
        let long = "a".repeat(10_000);
        assert!(!m("*a*a*a*a*a*b", &long));
    }
}
