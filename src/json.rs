//! Whether bytes are JSON, and what is in them, answered without building
//! anything: ingress's check of a body ([`skims`]); the check of one that
//! is read for its values ([`reads`]: a provider's body it takes its event
//! type or id from, the router's payload before it is read lazily); and
//! the values at a path or in an object or array of such a document
//! ([`find`], [`members`]).
//!
//! Each accepts exactly what a serde_json call accepts (the `json` fuzz
//! target compares them on any input, and the tests below on the edge
//! cases), in one pass over the bytes: strings skipped eight bytes at a
//! time, no visitor, no decoding. On the 7.5 KB push (bench/README.md,
//! session 13) the strict read takes about half serde_json's time, the
//! skim a little less than its.

use std::borrow::Cow;

/// Whether serde_json reads `doc` whole into `IgnoredAny`, as ingress has
/// always checked a body: JSON's grammar, escapes well formed, no control
/// character in a string; bytes inside strings are not decoded (invalid
/// UTF-8 and lone surrogates pass), numbers are not valued (`1e400`
/// passes), nesting has no limit.
pub fn skims(doc: &[u8]) -> bool {
    document(doc, false, &mut ())
}

/// Whether serde_json reads `doc` whole into values (`serde_json::Value`,
/// or any visitor taking every string and number): [`skims`], and also
/// every string valid UTF-8 with its surrogate escapes paired, every
/// number within `f64`'s range, at most 127 arrays or objects deep.
pub fn reads(doc: &[u8]) -> bool {
    std::str::from_utf8(doc).is_ok() && document(doc, true, &mut ())
}

/// [`reads`], noting where each object and array ends as it goes: for
/// [`Members::of`], which then steps over a member that is an object or
/// array at once instead of scanning it. `None` when `reads` is false.
///
/// A document of 4 GiB or more is checked without noting (its `Ends` are
/// empty, so every level is scanned).
pub fn reads_noting_ends(doc: &[u8]) -> Option<Ends> {
    if u32::try_from(doc.len()).is_err() {
        return reads(doc).then(Ends::default);
    }
    let mut ends = Ends::default();
    (std::str::from_utf8(doc).is_ok() && document(doc, true, &mut ends)).then_some(ends)
}

/// Where each object and array with members of a checked document is,
/// by where it opens (empty ones are left out: they end at once).
#[derive(Debug, Default)]
pub struct Ends {
    /// Where each opens and ends, sorted by where they open, since they
    /// are opened in that order. `u32`s: 8 bytes a container, not 16 (a
    /// signed body of nested one-element arrays, `[[0],[0],…]`, would
    /// otherwise cost four times its size while it is routed).
    spans: Vec<(u32, u32)>,
    /// The open ones, innermost last (indexes into `spans`).
    open: Vec<usize>,
}

impl Ends {
    /// Where the object or array opening at `start` ends, if noted.
    fn of(&self, start: usize) -> Option<usize> {
        let start = u32::try_from(start).ok()?;
        let i = self.spans.binary_search_by_key(&start, |&(s, _)| s).ok()?;
        Some(self.spans[i].1 as usize)
    }
}

/// What [`document`] notes of the objects and arrays it opens and closes.
trait Noting {
    fn opened(&mut self, at: usize);
    fn closed(&mut self, end: usize);
}

/// Noting nothing (the checks on their own).
impl Noting for () {
    #[inline(always)]
    fn opened(&mut self, _: usize) {}
    #[inline(always)]
    fn closed(&mut self, _: usize) {}
}

impl Noting for Ends {
    // `reads_noting_ends` notes only documents under 4 GiB, so every
    // offset fits.
    fn opened(&mut self, at: usize) {
        self.open.push(self.spans.len());
        self.spans.push((at as u32, at as u32));
    }
    fn closed(&mut self, end: usize) {
        if let Some(i) = self.open.pop() {
            self.spans[i].1 = end as u32;
        }
    }
}

/// serde_json's nesting limit when it reads values: its 128th level fails.
const MAX_DEPTH: usize = 127;

/// One value and nothing after it but whitespace. Iterative, so no
/// nesting overflows the stack. The place in `doc` is passed in and out
/// of each step (not kept in a struct), so it stays in a register.
fn document(doc: &[u8], strict: bool, ends: &mut impl Noting) -> bool {
    // The open arrays and objects, innermost last (`true`: an object).
    let mut open: Vec<bool> = Vec::new();
    let mut at = 0;
    'value: loop {
        at = space(doc, at);
        let Some(&b) = doc.get(at) else { return false };
        let next = match b {
            b'{' | b'[' => {
                if strict && open.len() == MAX_DEPTH {
                    return false;
                }
                let object = b == b'{';
                let opens = at;
                at = space(doc, at + 1);
                match (doc.get(at), object) {
                    (Some(b'}'), true) | (Some(b']'), false) => Some(at + 1),
                    (_, true) => {
                        open.push(true);
                        ends.opened(opens);
                        let Some(next) = key(doc, at, strict) else {
                            return false;
                        };
                        at = next;
                        continue 'value;
                    }
                    (_, false) => {
                        open.push(false);
                        ends.opened(opens);
                        continue 'value;
                    }
                }
            }
            b'"' => string(doc, at + 1, strict),
            b't' => word(doc, at, b"true"),
            b'f' => word(doc, at, b"false"),
            b'n' => word(doc, at, b"null"),
            b'-' | b'0'..=b'9' => number(doc, at, strict),
            _ => None,
        };
        let Some(next) = next else { return false };
        at = next;
        // A value ended: close what it ends, or go on to the next.
        loop {
            at = space(doc, at);
            let Some(&object) = open.last() else {
                return at == doc.len();
            };
            match (doc.get(at), object) {
                (Some(b','), true) => {
                    let Some(next) = key(doc, space(doc, at + 1), strict) else {
                        return false;
                    };
                    at = next;
                    continue 'value;
                }
                (Some(b','), false) => {
                    at += 1;
                    continue 'value;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    at += 1;
                    open.pop();
                    ends.closed(at);
                }
                _ => return false,
            }
        }
    }
}

/// Past JSON's whitespace from `at`.
fn space(doc: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = doc.get(at) {
        at += 1;
    }
    at
}

/// Past an object's key and its colon at `at`.
fn key(doc: &[u8], at: usize, strict: bool) -> Option<usize> {
    if doc.get(at) != Some(&b'"') {
        return None;
    }
    let at = space(doc, string(doc, at + 1, strict)?);
    (doc.get(at) == Some(&b':')).then_some(at + 1)
}

/// Past `word` at `at`.
fn word(doc: &[u8], at: usize, word: &[u8]) -> Option<usize> {
    doc[at..].starts_with(word).then_some(at + word.len())
}

/// Past the rest of a string, its opening quote before `at`.
fn string(doc: &[u8], mut at: usize, strict: bool) -> Option<usize> {
    loop {
        at = special(doc, at);
        match doc.get(at) {
            Some(b'"') => return Some(at + 1),
            Some(b'\\') => at = escape(doc, at + 1, strict)?,
            // A control character, or the end of the document.
            _ => return None,
        }
    }
}

/// Past an escape, its backslash before `at`.
fn escape(doc: &[u8], at: usize, strict: bool) -> Option<usize> {
    match doc.get(at)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 1),
        b'u' => {
            let n = hex4(doc, at + 1)?;
            let at = at + 5;
            match n {
                _ if !strict => Some(at),
                0xDC00..=0xDFFF => None,
                // A leading surrogate: its trailing one must follow.
                0xD800..=0xDBFF => {
                    let at = word(doc, at, b"\\u")?;
                    (0xDC00..=0xDFFF)
                        .contains(&hex4(doc, at)?)
                        .then_some(at + 4)
                }
                _ => Some(at),
            }
        }
        _ => None,
    }
}

/// The four hex digits at `at`.
fn hex4(doc: &[u8], at: usize) -> Option<u16> {
    doc.get(at..at + 4)?.iter().try_fold(0u16, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        Some(n << 4 | u16::from(v))
    })
}

/// Past a number at `start`: JSON's grammar; strictly, also a value `f64`
/// can hold.
fn number(doc: &[u8], start: usize, strict: bool) -> Option<usize> {
    let digit = |at: usize| doc.get(at).is_some_and(u8::is_ascii_digit);
    let digits = |mut at: usize| {
        while digit(at) {
            at += 1;
        }
        at
    };
    let mut at = start + usize::from(doc[start] == b'-');
    match doc.get(at)? {
        b'0' if digit(at + 1) => return None,
        b'0' => at += 1,
        b'1'..=b'9' => at = digits(at + 1),
        _ => return None,
    }
    let integer_end = at;
    if doc.get(at) == Some(&b'.') {
        if !digit(at + 1) {
            return None;
        }
        at = digits(at + 1);
    }
    if let Some(b'e' | b'E') = doc.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = doc.get(at) {
            at += 1;
        }
        if !digit(at) {
            return None;
        }
        at = digits(at);
    }
    // Up to 18 digits always fit an i64 or u64; anything else is valued
    // by serde_json itself, so its range is exactly serde_json's.
    let plain = at == integer_end && at - start <= 18;
    (!strict || plain || serde_reads(&doc[start..at])).then_some(at)
}

/// Where the first quote, backslash or control character is in `doc`
/// from `at` (the end when there is none), as serde_json skips a string.
fn special(doc: &[u8], at: usize) -> usize {
    first(
        doc,
        at,
        // Bytes below 0x20 (`!x` leaves out 0x80 and up), quotes,
        // backslashes.
        |x| {
            (x.wrapping_sub(every(0x20)) & !x & every(0x80))
                | zero(x ^ every(b'"'))
                | zero(x ^ every(b'\\'))
        },
        |b| b < 0x20 || b == b'"' || b == b'\\',
    )
}

/// In `doc`, a document [`reads`] accepts, the value at `path` (object
/// keys, outermost first) as written, found by a scan without building
/// anything: what `serde_json::Value`'s `get` of each key finds, so where
/// an object holds a key twice the last one counts. `None` where a step is
/// not an object or lacks the key (or `doc` is not such a document).
pub fn find<'a, K: AsRef<str>>(doc: &'a [u8], path: &[K]) -> Option<&'a [u8]> {
    let mut at = space(doc, 0);
    let mut end = None;
    for key in path {
        if doc.get(at) != Some(&b'{') {
            return None;
        }
        let (start, ends) = members(doc, at)
            .filter(|(k, _)| k.is_some_and(|(s, e)| is_key(&doc[s..e], key.as_ref())))
            .last()?
            .1;
        (at, end) = (start, Some(ends));
    }
    let end = match end {
        Some(end) => end,
        None => value_end(doc, at)?,
    };
    Some(&doc[at..end])
}

/// Where a value (or a key, its quotes included) is in a document.
pub type Span = (usize, usize);

/// The entries of the object or array opening at `doc[start]`, in order:
/// each member's key (none in an array) and value. For a document
/// [`reads`] or [`skims`] accepts: finding them is a scan, not a parse
/// (anything else ends them early).
pub fn members(doc: &[u8], start: usize) -> Members<'_> {
    Members::of(doc, start, None)
}

/// What [`members`] returns.
pub struct Members<'a> {
    doc: &'a [u8],
    at: usize,
    keyed: bool,
    done: bool,
    ends: Option<&'a Ends>,
}

impl<'a> Members<'a> {
    /// [`members`], stepping over members that are objects or arrays by
    /// `ends` ([`reads_noting_ends`] of `doc`) where it has them.
    pub fn of(doc: &'a [u8], start: usize, ends: Option<&'a Ends>) -> Members<'a> {
        let keyed = doc.get(start) == Some(&b'{');
        let at = space(doc, start + 1);
        let done = matches!(doc.get(at), Some(b'}' | b']') | None);
        Members {
            doc,
            at,
            keyed,
            done,
            ends,
        }
    }
}

impl Iterator for Members<'_> {
    type Item = (Option<Span>, Span);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.done = true;
        let doc = self.doc;
        let mut at = self.at;
        let key = if self.keyed {
            if doc.get(at) != Some(&b'"') {
                return None;
            }
            let key = (at, checked_string(doc, at + 1)?);
            // Past the colon.
            at = space(doc, space(doc, key.1) + 1);
            Some(key)
        } else {
            None
        };
        let end = match self.ends.and_then(|ends| ends.of(at)) {
            Some(end) => end,
            None => value_end(doc, at)?,
        };
        let value = (at, end);
        at = space(doc, value.1);
        if doc.get(at) == Some(&b',') {
            (self.at, self.done) = (space(doc, at + 1), false);
        }
        Some((key, value))
    }
}

/// A value [`find`] found, as text: a string decoded, a number as
/// serde_json writes it (`1.0e3` as `1000.0`); `None` for anything else.
pub fn text(value: &[u8]) -> Option<String> {
    match value.first()? {
        b'"' => unquote(value).map(Cow::into_owned),
        b'-' | b'0'..=b'9' => serde_json::from_slice::<serde_json::Number>(value)
            .ok()
            .map(|n| n.to_string()),
        _ => None,
    }
}

/// A string of a checked document, as written (its quotes included),
/// decoded: borrowed when it holds no escape.
pub fn unquote(quoted: &[u8]) -> Option<Cow<'_, str>> {
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        serde_json::from_slice(quoted).ok().map(Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

/// Whether the quoted key `quoted` (as written) is `key` once decoded.
fn is_key(quoted: &[u8], key: &str) -> bool {
    unquote(quoted).is_some_and(|k| k == key)
}

/// Where the value at `at` of a checked document ends.
fn value_end(doc: &[u8], at: usize) -> Option<usize> {
    match *doc.get(at)? {
        b'"' => checked_string(doc, at + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                i = bracket_or_quote(doc, i);
                match *doc.get(i)? {
                    b'"' => i = checked_string(doc, i + 1)?,
                    b'{' | b'[' => {
                        depth += 1;
                        i += 1;
                    }
                    _ => {
                        depth -= 1;
                        i += 1;
                        if depth == 0 {
                            return Some(i);
                        }
                    }
                }
            }
        }
        _ => {
            let scalar = doc[at..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
            Some(scalar.map_or(doc.len(), |n| at + n))
        }
    }
}

/// Past the rest of a string of a checked document, its opening quote
/// before `at`: only quotes and backslashes matter (an escape is two
/// bytes, or six with no quote or backslash among them).
fn checked_string(doc: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at += memchr::memchr2(b'"', b'\\', doc.get(at..)?)?;
        if doc[at] == b'"' {
            return Some(at + 1);
        }
        at += 2;
    }
}

/// `b` in each of a word's eight bytes.
const fn every(b: u8) -> u64 {
    u64::MAX / 255 * b as u64
}

/// The high bit of each zero byte of `x`, and perhaps of bytes above the
/// lowest zero one (a borrow runs on): the lowest flag is always a true
/// one, which is all a search needs.
fn zero(x: u64) -> u64 {
    x.wrapping_sub(every(1)) & !x & every(0x80)
}

/// Where the first bracket, brace or quote is in `doc` from `at` (the end
/// when there is none): with 0x20 set, `[` is `{` and `]` is `}`, and no
/// other byte becomes either.
fn bracket_or_quote(doc: &[u8], at: usize) -> usize {
    first(
        doc,
        at,
        |x| {
            let folded = x | every(0x20);
            zero(folded ^ every(b'{')) | zero(folded ^ every(b'}')) | zero(x ^ every(b'"'))
        },
        |b| matches!(b, b'"' | b'{' | b'}' | b'[' | b']'),
    )
}

/// Where the first byte `is` holds of is in `doc` from `at` (the end when
/// there is none), eight bytes at a time: `flags` marks them in a word
/// (its lowest flag a true one, as [`zero`] gives).
fn first(doc: &[u8], mut at: usize, flags: impl Fn(u64) -> u64, is: impl Fn(u8) -> bool) -> usize {
    while let Some(word) = doc.get(at..at + 8) {
        let found = flags(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        if found != 0 {
            return at + found.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    at + doc[at..]
        .iter()
        .position(|&b| is(b))
        .unwrap_or(doc.len() - at)
}

/// serde_json's own strict reading of `doc`, building nothing: what
/// [`reads`] must agree with, and how it values a number.
pub fn serde_reads(doc: &[u8]) -> bool {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(doc);
    Read.deserialize(&mut de).and_then(|()| de.end()).is_ok()
}

/// serde_json's skim of `doc`: what [`skims`] must agree with.
pub fn serde_skims(doc: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(doc).is_ok()
}

/// Reads a value as `serde_json::Value` does, keeping nothing.
#[derive(Clone, Copy)]
struct Read;

/// Reads a key as a string, as `next_key::<String>` does.
struct Key;

impl<'de> serde::de::DeserializeSeed<'de> for Read {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Key {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(Read)
    }
}

impl<'de> serde::de::Visitor<'de> for Read {
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
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
