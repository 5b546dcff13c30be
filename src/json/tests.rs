use super::*;

/// Both checks against serde_json's, on `doc`.
fn agrees(doc: &[u8]) {
    assert_eq!(
        skims(doc),
        serde_skims(doc),
        "skims {:?}",
        String::from_utf8_lossy(doc)
    );
    assert_eq!(
        reads(doc),
        serde_reads(doc),
        "reads {:?}",
        String::from_utf8_lossy(doc)
    );
}

const EDGES: &[&[u8]] = &[
    b"",
    b" ",
    b"{}",
    b"[]",
    b" [ ] ",
    b"[1,]",
    b"{\"a\":1,}",
    b"{,}",
    b"[,1]",
    b"[1 2]",
    b"{\"a\" 1}",
    b"{\"a\":}",
    b"{1:2}",
    b"{\"a\":1 \"b\":2}",
    b"[}",
    b"{]",
    b"[[]",
    b"[]]",
    b"01",
    b"-0",
    b"-",
    b"-a",
    b"1.",
    b".5",
    b"1e",
    b"1e+",
    b"1E5",
    b"1.5e-3",
    b"+1",
    b"0.0e0",
    b"-01",
    b"1.e5",
    b"tru",
    b"true",
    b"truex",
    b"nul",
    b"null ",
    b" null",
    b"null x",
    b"false",
    b"fals",
    b"\"abc",
    b"\"abc\"",
    b"\"a\\qb\"",
    b"\"\\u12\"",
    b"\"\\u12G4\"",
    b"\"\\u00e9\"",
    b"\"\\uD800\"",
    b"\"\\uD800\\uDC00\"",
    b"\"\\uDC00\"",
    b"\"\\uD800\\u0041\"",
    b"\"\\uD800x\"",
    b"\"\\uD800\\x\"",
    b"\"\\uDBFF\\uDFFF\"",
    b"\"\\uD800\\uD800\\uDC00\"",
    b"\"a\x01b\"",
    b"\"a\x1fb\"",
    b"\"a\x7fb\"",
    b"\"a\tb\"",
    b"\"\xff\"",
    b"\xff",
    b"\"\xc3\xa9\"",
    b"\"\xed\xa0\x80\"",
    b"\"\\/\\b\\f\\n\\r\\t\\\"\\\\\"",
    b"\"\\",
    b"\"\\u",
    b"1e400",
    b"-1e400",
    b"1e308",
    b"1.7976931348623157e308",
    b"1.7976931348623159e308",
    b"1e-400",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"123456789012345678",
    b"-12345678901234567",
    b"1234567890123456789",
    b"\t\n\r1\r\n\t",
    b"\x0c1",
    b"\xef\xbb\xbf{}",
    b"{\"a\":{\"b\":[1,{\"c\":null}]}}",
    b"{\"\\u00e9\":1}",
    b"{\"\xff\":1}",
    b"{\"\\uDC00\":1}",
    b"[1e400]",
    b"{\"a\":1e400}",
];

#[test]
fn agrees_with_serde_json_on_the_edges() {
    for doc in EDGES {
        agrees(doc);
    }
    // What each check is for, stated apart from serde_json.
    assert!(skims(b"\"\xff\"") && !reads(b"\"\xff\""));
    assert!(skims(b"\"\\uD800\"") && !reads(b"\"\\uD800\""));
    assert!(skims(b"1e400") && !reads(b"1e400"));
    assert!(reads(b"{\"a\":[1,2.5,-3e2,\"\\uD83D\\uDE00\",true,null]}"));
    assert!(!skims(b"[1,]") && !skims(b"\"a\x01\""));
    let long = format!("1{}", "0".repeat(400));
    agrees(long.as_bytes());
    assert!(skims(long.as_bytes()) && !reads(long.as_bytes()));
}

#[test]
fn nesting_is_limited_only_when_reading_values() {
    for depth in [1, 126, 127, 128, 129] {
        let doc = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        agrees(doc.as_bytes());
        let doc = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        agrees(doc.as_bytes());
    }
    assert!(reads(
        format!("{}{}", "[".repeat(127), "]".repeat(127)).as_bytes()
    ));
    assert!(!reads(
        format!("{}{}", "[".repeat(128), "]".repeat(128)).as_bytes()
    ));
    // Deep enough to overflow a recursive checker's stack.
    let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
    assert!(skims(deep.as_bytes()) && !reads(deep.as_bytes()));
    assert!(!skims(&deep.as_bytes()[1..]));
}

#[test]
fn a_string_stops_at_its_first_special_byte_wherever_it_falls() {
    for at in 0..20 {
        for special in [b'"', b'\\', 0x01, 0x1f] {
            let mut s = vec![b'a'; 20];
            s[at] = special;
            for doc in [
                [b"\"".as_slice(), &s, b"\""].concat(),
                [b"[\"".as_slice(), &s, b"\",1]"].concat(),
            ] {
                agrees(&doc);
            }
        }
        let mut s = [0xc3, 0xa9].repeat(10);
        s.insert(at, 0x80);
        agrees(&[b"\"".as_slice(), &s, b"\""].concat());
    }
}

#[test]
fn agrees_with_serde_json_on_a_mangled_push() {
    let push = crate::samples::find("github", "push").expect("bundled push");
    agrees(push.as_bytes());
    assert!(reads(push.as_bytes()));
    // A fixed generator: the same mangled documents every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let specials = b"\"\\{}[]:,.-+eE0u\x01\xff\xed ";
    for _ in 0..3000 {
        let mut doc = push.as_bytes().to_vec();
        for _ in 0..1 + next() % 3 {
            let at = (next() % doc.len() as u64) as usize;
            match next() % 3 {
                0 => doc[at] = specials[(next() % specials.len() as u64) as usize],
                1 => {
                    doc.remove(at);
                }
                _ => doc.truncate(at),
            }
        }
        agrees(&doc);
    }
}
