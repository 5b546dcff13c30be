//! "Did you mean": the known name closest to a misspelt one, for errors
//! that name keys, sources, sinks, routes, filters and tests.

/// The candidate nearest to `wrong` within two edits, if any (and never a
/// candidate as different from it as a wholly other word).
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(wrong, c), c))
        .filter(|(d, c)| *d <= 2 && *d < wrong.chars().count().max(c.chars().count()) / 2 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `": did you mean `x`?"`, or nothing.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match closest(wrong, candidates) {
        Some(c) => format!(": did you mean `{c}`?"),
        None => String::new(),
    }
}

/// "no source `githb` in the config: did you mean `github`?", or the
/// names there are when none is close: for a name given on the command
/// line or in a test file that the config lacks.
pub fn not_in_config<'a>(
    what: &str,
    name: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match closest(name, names.iter().copied()) {
        Some(meant) => format!("no {what} `{name}` in the config: did you mean `{meant}`?"),
        None => format!(
            "no {what} `{name}` in the config (the {what}s are {})",
            names.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_a_close_name_and_nothing_for_a_stranger() {
        let names = ["provider", "secret", "allow_ips", "max_skew"];
        assert_eq!(closest("provder", names), Some("provider"));
        assert_eq!(closest("secert", names), Some("secret"));
        assert_eq!(closest("allow_ip", names), Some("allow_ips"));
        assert_eq!(closest("colour", names), None);
        assert_eq!(closest("ab", ["xy"]), None);
        assert_eq!(
            did_you_mean("stdot", ["stdout", "slack"]),
            ": did you mean `stdout`?"
        );
    }
}
