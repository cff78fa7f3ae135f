//! Realistic leaves for segment tests and the size benchmark (`benches/src/bin/segment_size.rs`
//! includes this file): `auditledger_tests::tool_call` events with every id and content hash
//! random, as gateways send them — UUIDv7 event ids, W3C trace and span ids, BLAKE3 hashes of
//! arguments and responses — wrapped in a `LeafRecord` with a server time. ~550 bytes each.

use auditledger_ledger::event::{encode_event, encode_leaf};
use auditledger_tests::{Rng, tool_call};

fn random_hex(rng: &mut Rng, bytes: usize) -> String {
    let mut out = String::with_capacity(2 * bytes);
    while out.len() < 2 * bytes {
        out.push_str(&format!("{:016x}", rng.next_u64()));
    }
    out.truncate(2 * bytes);
    out
}

/// A UUIDv7 string: 48-bit millisecond time, version 7, 74 random bits, RFC 9562 variant.
fn uuid_v7(rng: &mut Rng, unix_millis: u64) -> String {
    let random = random_hex(rng, 10);
    let variant = ["8", "9", "a", "b"][(rng.next_u64() % 4) as usize];
    format!(
        "{:08x}-{:04x}-7{}-{}{}-{}",
        unix_millis >> 16,
        unix_millis & 0xffff,
        &random[0..3],
        variant,
        &random[3..6],
        &random[6..18]
    )
}

/// Leaves `n` in `[first, first + count)` of a log whose events arrive ~10 per millisecond.
pub fn realistic_leaves(seed: u64, first: u64, count: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed ^ first.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (first..first + count)
        .map(|n| {
            let logged_at = 1_763_700_000_000_000_000 + n * 100_000 + rng.range(0, 100_000);
            let mut event = tool_call((n % 8) as u32, n, "acme", "prod");
            event.event_id = uuid_v7(&mut rng, logged_at / 1_000_000);
            event.occurred_at = logged_at - rng.range(1_000_000, 40_000_000);
            event.trace_id = random_hex(&mut rng, 16);
            event.span_id = random_hex(&mut rng, 8);
            event.arguments_hash = format!("blake3:{}", random_hex(&mut rng, 32));
            event.response_hash = format!("blake3:{}", random_hex(&mut rng, 32));
            event.latency_ms = rng.range(3, 2_000) as u32;
            let principal = format!("gateway-{}.acme.internal", n % 8);
            encode_leaf(&encode_event(&event), logged_at, &principal)
        })
        .collect()
}
