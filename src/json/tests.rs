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
    let ends = reads_noting_ends(doc);
    assert_eq!(ends.is_some(), reads(doc));
    if let Some(ends) = ends {
        let start = space(doc, 0);
        steps_over_as_it_scans(doc, &ends, start);
    }
}

/// The members of the value at `start` and of every object and array in
/// it are the same found with `ends` as by a scan.
fn steps_over_as_it_scans(doc: &[u8], ends: &Ends, start: usize) {
    if !matches!(doc.get(start), Some(b'{' | b'[')) {
        return;
    }
    let scanned: Vec<_> = members(doc, start).collect();
    let stepped: Vec<_> = Members::of(doc, start, Some(ends)).collect();
    assert_eq!(scanned, stepped, "{:?}", String::from_utf8_lossy(doc));
    for (_, (value, _)) in scanned {
        steps_over_as_it_scans(doc, ends, value);
    }
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
    // Long strings: a special byte in every place of the eight-byte words
    // the scanner reads, up to 140 bytes in.
    for at in 0..140 {
        for special in [b'"', b'\\', 0x01, 0x1f] {
            let mut s = vec![b'a'; 140];
            s[at] = special;
            for doc in [
                [b"\"".as_slice(), &s, b"\""].concat(),
                [b"[\"".as_slice(), &s, b"\",1]"].concat(),
            ] {
                agrees(&doc);
            }
        }
        let mut s = [0xc3, 0xa9].repeat(70);
        s.insert(at, 0x80);
        agrees(&[b"\"".as_slice(), &s, b"\""].concat());
        // Escapes, and runs of backslashes, at every place too.
        for escape in [
            b"\\\\".as_slice(),
            b"\\\"",
            b"\\\\\\\"",
            b"\\\\\\\\",
            b"\\u00e9",
            b"\\uD83D\\uDE00",
            b"\\uD83D",
            b"\\u00",
            b"\\q",
        ] {
            let mut s = vec![b'a'; 140];
            s.splice(at..at, escape.iter().copied());
            agrees(&[b"\"".as_slice(), &s, b"\""].concat());
            agrees(&[b"[\"".as_slice(), &s[..at + escape.len()], b"\", 1]"].concat());
        }
        // A number or a word after any run of whitespace.
        let pad = " ".repeat(at);
        for scalar in ["-12.5e3", "truex", "null", "1e400", "0x1"] {
            agrees(format!("[{pad}{scalar}]").as_bytes());
            agrees(format!("{{\"k\":{pad}{scalar}}}").as_bytes());
        }
    }
}

/// A fixed generator (xorshift): the same mangled documents every run.
fn numbers(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

#[test]
fn agrees_with_serde_json_on_a_mangled_push() {
    let push = crate::samples::find("github", "push").expect("bundled push");
    agrees(push.as_bytes());
    assert!(reads(push.as_bytes()));
    let mut next = numbers(0x9e37_79b9_7f4a_7c15);
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

/// What `serde_json::Value` finds at `path`, as the providers read it: a
/// string, or a number as text.
fn value_text(doc: &[u8], path: &[&str]) -> Option<String> {
    let mut v = &serde_json::from_slice::<serde_json::Value>(doc).ok()?;
    for key in path {
        v = v.get(key)?;
    }
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `find` and `text` against `Value`, on `doc`, for each of `paths`.
fn finds_as_value_does(doc: &[u8], paths: &[&[&str]]) {
    assert_eq!(
        reads(doc),
        serde_json::from_slice::<serde_json::Value>(doc).is_ok()
    );
    if !reads(doc) {
        return;
    }
    for path in paths {
        assert_eq!(
            find(doc, path).and_then(text),
            value_text(doc, path),
            "{path:?} in {:?}",
            String::from_utf8_lossy(doc)
        );
    }
}

const PUSH_PATHS: &[&[&str]] = &[
    &["ref"],
    &["before"],
    &["repository", "name"],
    &["repository", "owner", "login"],
    &["repository", "id"],
    &["repository", "private"],
    &["head_commit", "id"],
    &["commits"],
    &["sender", "id"],
    &["missing"],
    &["ref", "x"],
    &[],
];

#[test]
fn finds_what_a_value_finds() {
    let docs: &[&[u8]] = &[
        br#"{"a":1,"a":"two"}"#,
        br#"{"a":{"b":1},"a":{"c":2}}"#,
        br#"{"\u0061":"escaped key","b":"\u00e9t\u00e9 \ud83d\ude00"}"#,
        br#"{"a\"b":1,"a":[{"a":3}],"c":-0}"#,
        br#"{"a":1.0e3,"b":-12345678901234567890,"c":1E-2,"d":18446744073709551615}"#,
        br#" { "a" : { "b" : "deep" } , "c" : [ ] } "#,
        br#"{"a":true,"b":null,"c":false,"d":{}}"#,
        br#"["a",{"a":1}]"#,
        br#""a""#,
        br#"{}"#,
        br#"{"a":"\\","b":"x\"y"}"#,
    ];
    let paths: &[&[&str]] = &[
        &["a"],
        &["a", "b"],
        &["a", "c"],
        &["b"],
        &["c"],
        &["d"],
        &["a\"b"],
        &[],
    ];
    for doc in docs {
        finds_as_value_does(doc, paths);
    }
    assert_eq!(
        find(br#"{"a":1,"a":"two"}"#, &["a"]),
        Some(&br#""two""#[..])
    );
    assert_eq!(text(b"1.0e3").as_deref(), Some("1000.0"));
    assert_eq!(
        find(br#"{"a":{"b":[1, 2]}}"#, &["a", "b"]),
        Some(&b"[1, 2]"[..])
    );
}

#[test]
fn finds_what_a_value_finds_in_a_mangled_push() {
    let push = crate::samples::find("github", "push").expect("bundled push");
    finds_as_value_does(push.as_bytes(), PUSH_PATHS);
    assert_eq!(
        find(push.as_bytes(), &["ref"]).and_then(text).as_deref(),
        Some("refs/heads/main")
    );
    let mut next = numbers(0x2545_f491_4f6c_dd1d);
    // Changes that keep the document JSON: keys renamed or repeated,
    // values swapped for other kinds.
    let swaps: &[(&str, &str)] = &[
        ("\"name\"", "\"ref\""),
        ("\"id\"", "\"i\\u0064\""),
        ("true", "\"true\""),
        ("null", "1.5e2"),
        ("\"acme\"", "{\"login\":\"x\"}"),
        ("812345678", "-0.0"),
        ("\"ref\"", "\"name\""),
    ];
    for _ in 0..300 {
        let mut doc = push.to_owned();
        for _ in 0..1 + next() % 4 {
            let (from, to) = swaps[(next() % swaps.len() as u64) as usize];
            let hits: Vec<usize> = doc.match_indices(from).map(|(i, _)| i).collect();
            if let Some(&at) = hits.get((next() % hits.len().max(1) as u64) as usize) {
                doc.replace_range(at..at + from.len(), to);
            }
        }
        finds_as_value_does(doc.as_bytes(), PUSH_PATHS);
        agrees(doc.as_bytes());
    }
}

#[test]
fn the_noted_ends_of_many_small_arrays_take_twice_the_body() {
    // 10,000 one-element arrays in one: 10,001 containers in 40,001 bytes,
    // 8 bytes noted for each (the outer array's are the 8 over).
    let doc = format!("[{}]", vec!["[0]"; 10_000].join(","));
    let ends = reads_noting_ends(doc.as_bytes()).unwrap();
    assert_eq!(ends.spans.len(), 10_001);
    let bytes = ends.spans.len() * std::mem::size_of_val(&ends.spans[0]);
    assert!(
        bytes <= 2 * doc.len() + 8,
        "{bytes} bytes for {}",
        doc.len()
    );
    steps_over_as_it_scans(doc.as_bytes(), &ends, 0);
}
