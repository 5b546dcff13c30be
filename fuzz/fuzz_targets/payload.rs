//! A payload read only as far as templates look (`route/lazy.rs`) is the
//! whole payload: for any body, the router's path
//! (`Routes::evaluate_event`) makes exactly what `Routes::evaluate` makes
//! on the whole parse (`route::context`), errors included. The templates
//! print every level, walk the members in order, and look up a few paths.

#![no_main]

use std::sync::OnceLock;

use hookgate::queue::EventRecord;
use hookgate::route::{context, ContentSpec, RouteSpec, Routes};

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let texts = [
            "{{ payload | tojson }}",
            "{{ payload | pprint }}",
            "{% for k, v in payload | items %}{{ k }}={{ v }};{% endfor %}{{ payload | length }}",
            "{{ payload.a.b }}|{{ payload[0][1] }}|{{ payload[''] }}|{{ payload is mapping }}",
        ];
        let specs = texts
            .iter()
            .enumerate()
            .map(|(i, t)| RouteSpec {
                name: format!("t{i}"),
                sources: vec![],
                event: None,
                when: None,
                each: None,
                to: vec!["log".into()],
                slack: vec![],
                content: ContentSpec::Template {
                    source: (*t).into(),
                    json: false,
                    file: None,
                },
                order_key: None,
            })
            .collect();
        Routes::compile(specs).expect("the fuzz routes compile")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let event = EventRecord {
        source: "github".into(),
        provider: "github".into(),
        event: "push".into(),
        delivery_id: "d".into(),
        received_at_ms: 0,
        client_ip: "127.0.0.1".into(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: data.to_vec(),
    };
    let routes = routes();
    assert_eq!(
        routes.evaluate_event(&event),
        routes.evaluate(&context(&event))
    );
});
