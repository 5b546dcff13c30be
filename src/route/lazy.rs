//! A stored event's JSON payload as templates see it, read only as far as
//! they look into it: [`payload`].
//!
//! The whole document is checked once, by the same serde_json parse the
//! eager reading ([`super::context::parse`]) makes, building nothing: a
//! document that parse refuses (bad UTF-8 in a string, a lone surrogate,
//! a number out of range, nesting past serde_json's limit, trailing bytes)
//! is null, as it always was. An object or array is then a [`Lazy`]: the
//! first time a template looks into it, one level of it is read (its
//! scalars become values, its objects and arrays more `Lazy`s), and that
//! level is kept. A route that reads `payload.ref` of a 7.5 KB push pays
//! the check and one pass over the top level: about 200,000 instructions
//! against 377,000 for building every value. What a template sees is
//! exactly what the eager reading gives (the tests print both).

use std::sync::{Arc, OnceLock};

use minijinja::value::{DynObject, Enumerator, Object, ObjectRepr};
use minijinja::Value;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// `json` as templates see it: null unless serde_json reads it whole.
pub fn payload(json: &[u8]) -> Value {
    if !is_json(json) {
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
        end,
        repr,
        level: OnceLock::new(),
    })
}

/// `doc[start..end]` without the JSON whitespace around it.
fn trim(doc: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    while start < end && space(doc[start]) {
        start += 1;
    }
    while end > start && space(doc[end - 1]) {
        end -= 1;
    }
    (start, end)
}

/// A JSON object or array of a checked document, read the first time it
/// is looked into.
struct Lazy {
    doc: Arc<[u8]>,
    start: usize,
    end: usize,
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
        let bytes = &self.doc[self.start..self.end];
        let child = |raw: &RawValue| {
            let start = raw.get().as_ptr() as usize - self.doc.as_ptr() as usize;
            let (start, end) = trim(&self.doc, start, start + raw.get().len());
            at(&self.doc, start, end)
        };
        // The document was checked whole: reading a level cannot fail.
        match self.repr {
            ObjectRepr::Seq => {
                let items: Vec<&RawValue> = serde_json::from_slice(bytes).expect("checked JSON");
                Value::from_object(items.into_iter().map(child).collect::<Vec<_>>())
            }
            _ => {
                // Sorted, the last of a repeated key kept, as eagerly.
                let members: std::collections::BTreeMap<String, &RawValue> =
                    serde_json::from_slice(bytes).expect("checked JSON");
                members
                    .into_iter()
                    .map(|(k, raw)| (Value::from(k), child(raw)))
                    .collect()
            }
        }
    }
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

/// Whether serde_json reads `json` whole as the eager reading does
/// (strings decoded, numbers in range, nesting within its limit, nothing
/// after), keeping nothing.
fn is_json(json: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(json);
    Check.deserialize(&mut de).and_then(|()| de.end()).is_ok()
}

/// Reads a value as [`super::context::parse`] does, building nothing.
#[derive(Clone, Copy)]
struct Check;

/// Reads a key as a string, as `next_key::<String>` does.
struct Key;

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> DeserializeSeed<'de> for Key {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(Check)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}
