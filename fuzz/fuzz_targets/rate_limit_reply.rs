#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| battlement::parsers_fuzz::rate_limit_reply(data));
