//! A stored event's JSON payload as templates see it, read only as far as
//! they look into it: [`payload`].
//!
//! The whole document is checked once ([`crate::json::reads`]: exactly
//! what the eager reading's serde_json parse, [`super::context::parse`],
//! accepts, building nothing): a document that parse refuses (bad UTF-8
//! in a string, a lone surrogate, a number out of range, nesting past
//! serde_json's limit, trailing bytes) is null, as it always was. An object or array is then a [`Lazy`]: the
//! first time a template looks into it, one level of it is read (its
//! members found by a scan, which the check makes safe: no second parse;
//! its scalars become values, its objects and arrays more `Lazy`s), and
//! that level is kept. A route that reads `payload.ref` of a 7.5 KB push
//! pays the check and a scan of the top level, not building every value
//! (377,000 instructions). What a template sees is
//! exactly what the eager reading gives (the tests print both).

use std::sync::{Arc, OnceLock};

use minijinja::value::{DynObject, Enumerator, Object, ObjectRepr};
use minijinja::Value;

/// `json` as templates see it: null unless serde_json reads it whole.
pub fn payload(json: &[u8]) -> Value {
    if !crate::json::reads(json) {
        return Value::from(());
    }
    let doc: Arc<[u8]> = Arc::from(json);
    let (start, end) = trim(&doc, 0, doc.len());
    at(&doc, start, end)
}

/// The value at `doc[start..end]` (checked JSON, no surrounding space).
fn at(doc: &Arc<[u8]>, start: usize, end: usize) -> Value {
    let repr = match doc[start] {
        b'{' => ObjectRepr::Map,
        b'[' => ObjectRepr::Seq,
        _ => return super::context::parse(&doc[start..end]),
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
    doc: Arc<[u8]>,
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
        let entries = entries(doc, self.start);
        match self.repr {
            ObjectRepr::Seq => Value::from_object(
                entries
                    .into_iter()
                    .map(|(_, v)| value(v))
                    .collect::<Vec<_>>(),
            ),
            // Collected into a map: sorted, the last of a repeated key
            // kept, as eagerly.
            _ => entries
                .into_iter()
                .map(|(k, v)| {
                    (
                        key(doc, k.expect("an object's members have keys")),
                        value(v),
                    )
                })
                .collect(),
        }
    }
}

/// Where a value (or a key, quotes included) is in the document.
type Span = (usize, usize);

/// The entries of the object or array opening at `doc[start]`, in order:
/// each member's key (none in an array) and value. The document was
/// checked whole, so finding them is a scan, not a parse.
fn entries(doc: &[u8], start: usize) -> Vec<(Option<Span>, Span)> {
    let keyed = doc[start] == b'{';
    let mut out = Vec::new();
    let mut i = skip_space(doc, start + 1);
    if matches!(doc[i], b'}' | b']') {
        return out;
    }
    loop {
        let key = keyed.then(|| {
            let key = (i, string_end(doc, i));
            // Past the colon.
            i = skip_space(doc, skip_space(doc, key.1) + 1);
            key
        });
        let value = (i, value_end(doc, i));
        out.push((key, value));
        i = skip_space(doc, value.1);
        if doc[i] != b',' {
            // The closing bracket.
            return out;
        }
        i = skip_space(doc, i + 1);
    }
}

fn skip_space(doc: &[u8], mut i: usize) -> usize {
    while is_space(doc[i]) {
        i += 1;
    }
    i
}

/// Where the string opening at `doc[i]` ends: past its closing quote.
fn string_end(doc: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', &doc[j..]).expect("checked JSON");
        if doc[k] == b'"' {
            return k + 1;
        }
        // An escape: its next byte is never the closing quote.
        j = k + 2;
    }
}

/// Where the value starting at `doc[i]` ends.
fn value_end(doc: &[u8], i: usize) -> usize {
    match doc[i] {
        b'"' => string_end(doc, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match doc[j] {
                    b'"' => {
                        j = string_end(doc, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        // A number, true, false or null: up to what follows it.
        _ => {
            let mut j = i;
            while j < doc.len() && !matches!(doc[j], b',' | b'}' | b']') && !is_space(doc[j]) {
                j += 1;
            }
            j
        }
    }
}

/// A key (its quotes included) as a template value: escapes decoded.
fn key(doc: &[u8], (start, end): Span) -> Value {
    let inner = &doc[start + 1..end - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        // Checked JSON: a string's bytes are UTF-8.
        if let Ok(s) = std::str::from_utf8(inner) {
            return Value::from(s);
        }
    }
    Value::from(serde_json::from_slice::<String>(&doc[start..end]).expect("checked JSON"))
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
