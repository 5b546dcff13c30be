//! Whether a route may read the event's payload: parsing a 7.5 KB payload
//! into template values is most of what routing an event costs, and a
//! route that forwards the body as it is, or looks only at the source, the
//! event type or the headers, never needs it. Decided once, when the routes
//! are compiled, from the compiled instructions (every branch and macro,
//! taken or not): a template reads the payload when it looks the name up,
//! and may read it when it includes, imports or extends another template
//! (whose reads are not its own) or calls `debug()` (which prints the whole
//! context). Anything else cannot reach it.

use minijinja::machinery::Instruction;
use minijinja::Environment;

/// Whether the template `name` in `env` may read `payload`. A template
/// the environment lacks reads nothing.
pub fn may_read_payload(env: &Environment<'_>, name: &str) -> bool {
    let Ok(template) = env.get_template(name) else {
        return false;
    };
    let compiled = minijinja::machinery::get_compiled_template(&template);
    std::iter::once(&compiled.instructions)
        .chain(compiled.blocks.values())
        .any(|code| {
            (0..code.len() as u32).any(|idx| {
                matches!(
                    code.get(idx),
                    Some(
                        Instruction::Lookup("payload")
                            | Instruction::Include(_)
                            | Instruction::LoadBlocks
                            | Instruction::CallFunction("debug", _)
                    )
                )
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(source: &str) -> bool {
        let mut env = Environment::new();
        env.add_template("other", "{{ payload.x }}").unwrap();
        env.add_template_owned("t", source.to_owned()).unwrap();
        may_read_payload(&env, "t")
    }

    #[test]
    fn every_way_to_the_payload_counts() {
        for source in [
            "{{ payload.repository.full_name }}",
            "{% if event == 'push' %}{{ payload['ref'] }}{% endif %}",
            "{% if false %}{{ payload }}{% endif %}",
            "{% set p = payload %}{{ p.x }}",
            "{% for c in payload.commits %}{{ c.id }}{% endfor %}",
            "{% macro m() %}{{ payload.x }}{% endmacro %}{{ source }}",
            "{{ payload | tojson }}",
            "{% include 'other' %}",
            "{% import 'other' as o %}",
            "{% from 'other' import m %}",
            "{% extends 'other' %}",
            "{{ debug() }}",
            "{{ (payload) }}",
        ] {
            assert!(reads(source), "{source}");
        }
    }

    #[test]
    fn what_never_names_the_payload_reads_nothing() {
        for source in [
            "",
            "plain text with the word payload in it",
            "{{ source }}/{{ event }}: {{ delivery_id }} at {{ received_at }}",
            "{{ headers['x-github-event'] }}",
            "{{ range(1000000) }}",
            "{% set payload_size = 3 %}{{ payload_size }}",
            "{{ item.name }}",
        ] {
            assert!(!reads(source), "{source}");
        }
        assert!(!may_read_payload(&Environment::new(), "missing"));
    }
}
