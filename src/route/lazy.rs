//! A stored event's JSON payload as templates see it, read only as far as
//! they look into it: [`payload`].
//!
//! The whole document is checked once ([`crate::json::reads`]: exactly
//! what the eager reading's serde_json parse, [`super::context::parse`],
//! accepts, building nothing): a document that parse refuses (bad UTF-8
//! in a string, a lone surrogate, a number out of range, nesting past
//! serde_json's limit, trailing bytes) is null, as it always was. An
//! object or array is then a [`Lazy`]: the first time a template looks
//! into it, one level of it is read (its members found by a scan,
//! [`crate::json::Members`], which the check makes safe: no second parse;
//! and the check noted where each object and array ends, so the scan
//! steps over those members at once;
//! its scalars become values, its objects and arrays more `Lazy`s), and
//! that level is kept. A route that reads `payload.ref` of a 7.5 KB push
//! pays the check and a scan of the top level, not building every value
//! (377,000 instructions). What a template sees is
//! exactly what the eager reading gives (the tests print both).

use std::sync::{Arc, OnceLock};

use minijinja::value::{DynObject, Enumerator, Object, ObjectRepr};
use minijinja::Value;

use crate::json::Span;

/// `json` as templates see it: null unless serde_json reads it whole.
pub fn payload(json: &[u8]) -> Value {
    let Some(ends) = crate::json::reads_noting_ends(json) else {
        return Value::from(());
    };
    let doc = Arc::new(Doc {
        bytes: json.into(),
        ends,
    });
    let (start, end) = trim(&doc.bytes, 0, doc.bytes.len());
    at(&doc, start, end)
}

/// A checked document, and where its objects and arrays end (noted by the
/// check, so reading a level steps over the members that are objects or
/// arrays instead of scanning them: on the 7.5 KB push, the top level's
/// read went from about 57,000 instructions to about 22,000, most of it
/// making the values).
struct Doc {
    bytes: Box<[u8]>,
    ends: crate::json::Ends,
}

/// The value at `doc[start..end]` (checked JSON, no surrounding space).
fn at(doc: &Arc<Doc>, start: usize, end: usize) -> Value {
    let repr = match doc.bytes[start] {
        b'{' => ObjectRepr::Map,
        b'[' => ObjectRepr::Seq,
        _ => return super::context::parse(&doc.bytes[start..end]),
    };
    Value::from_object(Lazy {
        doc: doc.clone(),
        start,
        repr,
        level: OnceLock::new(),
    })
}

/// JSON's whitespace.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `doc[start..end]` without the JSON whitespace around it.
fn trim(doc: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    while start < end && is_space(doc[start]) {
        start += 1;
    }
    while end > start && is_space(doc[end - 1]) {
        end -= 1;
    }
    (start, end)
}

/// A JSON object or array of a checked document, read the first time it
/// is looked into.
struct Lazy {
    doc: Arc<Doc>,
    /// Where its opening bracket is.
    start: usize,
    repr: ObjectRepr,
    /// The level, once read: the same map or list the eager reading makes,
    /// with `Lazy`s for the objects and arrays in it.
    level: OnceLock<Value>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.level().render(f)
    }
}

impl Lazy {
    fn level(&self) -> &DynObject {
        self.level
            .get_or_init(|| self.read())
            .as_object()
            .expect("a level is an object")
    }

    fn read(&self) -> Value {
        let doc = &self.doc;
        let value = |(start, end): Span| at(doc, start, end);
        let members = crate::json::Members::of(&doc.bytes, self.start, Some(&doc.ends));
        match self.repr {
            ObjectRepr::Seq => {
                Value::from_object(members.map(|(_, v)| value(v)).collect::<Vec<_>>())
            }
            // Collected into a map: sorted, the last of a repeated key
            // kept, as eagerly.
            _ => members
                .map(|(k, v)| {
                    (
                        key(&doc.bytes, k.expect("an object's members have keys")),
                        value(v),
                    )
                })
                .collect(),
        }
    }
}

/// A key (its quotes included) as a template value: escapes decoded.
fn key(doc: &[u8], (start, end): Span) -> Value {
    Value::from(
        crate::json::unquote(&doc[start..end])
            .expect("checked JSON")
            .as_ref(),
    )
}

impl Object for Lazy {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        self.repr
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.level().get_value(key)
    }
    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        self.level().get_value_by_str(key)
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.level().enumerate()
    }
    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        self.level().enumerator_len()
    }
    fn is_true(self: &Arc<Self>) -> bool {
        self.level().is_true()
    }
    fn call_method(
        self: &Arc<Self>,
        state: &minijinja::State<'_, '_>,
        method: &str,
        args: &[Value],
    ) -> Result<Value, minijinja::Error> {
        self.level().call_method(state, method, args)
    }
    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.level().render(f)
    }
}
