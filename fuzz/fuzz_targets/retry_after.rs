#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| battlement::parsers_fuzz::retry_after(data));
