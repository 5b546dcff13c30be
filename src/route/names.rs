//! Filters and tests a template uses that the environment lacks.
//! MiniJinja looks filters and tests up only when they run, so a misspelt
//! `regex_captur` compiles and then fails every delivery; this walks the
//! compiled instructions (every branch, taken or not) and asks the
//! environment about each name, so `check` reports it instead.

use std::collections::BTreeMap;

use minijinja::machinery::Instruction;
use minijinja::{Environment, ErrorKind};

/// Names worth suggesting: MiniJinja's built-in filters and ours. Only
/// those the environment really has are offered (see [`known`]).
const FILTERS: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "zip",
    "regex_match",
    "regex_capture",
    "regex_captures",
    "truncate",
    "striptags",
    "slack_escape",
    "discord_escape",
];

/// The same for tests.
const TESTS: &[&str] = &[
    "boolean",
    "defined",
    "divisibleby",
    "endingwith",
    "eq",
    "equalto",
    "escaped",
    "even",
    "false",
    "filter",
    "float",
    "ge",
    "greaterthan",
    "gt",
    "in",
    "integer",
    "iterable",
    "le",
    "lessthan",
    "lower",
    "lt",
    "mapping",
    "ne",
    "none",
    "number",
    "odd",
    "safe",
    "sameas",
    "sequence",
    "startingwith",
    "string",
    "test",
    "true",
    "undefined",
    "upper",
    "regex_match",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Filter,
    Test,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Test => "test",
        }
    }
}

/// Whether `env` has a filter (or test) of this name: a one-value probe
/// fails with `UnknownFilter`/`UnknownTest` exactly when it does not.
fn has(env: &Environment<'_>, kind: Kind, name: &str) -> bool {
    let (probe, unknown) = match kind {
        Kind::Filter => (format!("{{{{ 0 | {name} }}}}"), ErrorKind::UnknownFilter),
        Kind::Test => (format!("{{{{ 0 is {name} }}}}"), ErrorKind::UnknownTest),
    };
    !matches!(env.render_str(&probe, ()), Err(e) if e.kind() == unknown)
}

/// The listed names `env` has.
fn known(env: &Environment<'_>, kind: Kind) -> Vec<&'static str> {
    let list = match kind {
        Kind::Filter => FILTERS,
        Kind::Test => TESTS,
    };
    list.iter().copied().filter(|n| has(env, kind, n)).collect()
}

/// Every unknown filter and test in the template `name` of `env`, each
/// once, with the line of its first use and a message that says what to
/// write instead.
pub fn unknown(env: &Environment<'_>, name: &str) -> Vec<(Option<usize>, String)> {
    let Ok(template) = env.get_template(name) else {
        return Vec::new();
    };
    let compiled = minijinja::machinery::get_compiled_template(&template);
    let mut used: BTreeMap<(Kind, &str), Option<usize>> = BTreeMap::new();
    for code in std::iter::once(&compiled.instructions).chain(compiled.blocks.values()) {
        for idx in 0..code.len() as u32 {
            let found = match code.get(idx) {
                Some(Instruction::ApplyFilter(n, ..)) => (Kind::Filter, *n),
                Some(Instruction::PerformTest(n, ..)) => (Kind::Test, *n),
                _ => continue,
            };
            used.entry(found).or_insert(code.get_line(idx));
        }
    }
    used.into_iter()
        .filter(|((kind, n), _)| !has(env, *kind, n))
        .map(|((kind, n), line)| {
            let hint = crate::suggest::did_you_mean(n, known(env, kind));
            (line, format!("unknown {} `{n}`{hint}", kind.word()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment<'static> {
        let mut env = Environment::new();
        crate::route::filters::register(&mut env);
        env
    }

    #[test]
    fn every_listed_name_is_one_the_environment_has() {
        let env = env();
        for kind in [Kind::Filter, Kind::Test] {
            let list = match kind {
                Kind::Filter => FILTERS,
                Kind::Test => TESTS,
            };
            assert_eq!(known(&env, kind), list, "{kind:?}");
        }
    }

    #[test]
    fn finds_unknown_filters_and_tests_in_branches_never_taken() {
        let mut env = env();
        env.add_template(
            "t",
            "{{ x | upper }}\n{% if false %}{{ x | regex_captur('a') }}{% endif %}\n{% for i in [] %}{{ i is evn }}{{ i is even }}{% endfor %}{{ y | regex_captur('b') }}",
        )
        .unwrap();
        assert_eq!(
            unknown(&env, "t"),
            vec![
                (
                    Some(2),
                    "unknown filter `regex_captur`: did you mean `regex_capture`?".to_owned()
                ),
                (
                    Some(3),
                    "unknown test `evn`: did you mean `even`?".to_owned()
                ),
            ]
        );
    }
}
