//! Stored records (`queue::EventRecord`, `queue::DeliveryRecord`) read
//! from any bytes: decoding never panics, and what decodes re-encodes to
//! bytes that decode to the same value. `EventRecord::head` agrees with
//! `decode` wherever `decode` succeeds.

#![no_main]

use hookgate::queue::{DeliveryRecord, EventRecord};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let head = EventRecord::head(data);
    if let Ok(event) = EventRecord::decode(data) {
        let head = head.expect("a record that decodes has a head");
        assert_eq!(
            (head.source, head.provider, head.event),
            (
                event.source.as_str(),
                event.provider.as_str(),
                event.event.as_str()
            )
        );
        let again = EventRecord::decode(&event.encode()).expect("a re-encoded event decodes");
        assert_eq!(again, event);
    }
    if let Ok(delivery) = DeliveryRecord::decode(data) {
        let again =
            DeliveryRecord::decode(&delivery.encode()).expect("a re-encoded delivery decodes");
        assert_eq!(again, delivery);
        let _ = delivery.due_key();
    }
});
