#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| battlement::parsers_fuzz::idempotency_key(data));
