//! Every check, run over the seed corpus the fuzz targets start from.

use std::path::Path;

/// A target's check of one input.
type Check = fn(&[u8]);

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`) and their checks.
const TARGETS: [(&str, Check); 9] = [
    ("trace_context", super::trace_context),
    ("forwarded", super::forwarded),
    ("idempotency_key", super::idempotency_key),
    ("grpc_timeout", super::grpc_timeout),
    ("retry_after", super::retry_after),
    ("idempotency_record", super::idempotency_record),
    ("rate_limit_reply", super::rate_limit_reply),
    ("breaker_reply", super::breaker_reply),
    ("config", super::config),
];

#[test]
fn every_seed_keeps_its_targets_property() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, check) in TARGETS {
        let target = fuzz.join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.exists(), "{} is missing", target.display());
        let mut seeds = 0;
        for entry in std::fs::read_dir(fuzz.join("corpus").join(name)).unwrap() {
            check(&std::fs::read(entry.unwrap().path()).unwrap());
            seeds += 1;
        }
        assert!(seeds >= 3, "{name}: {seeds} seeds");
    }
    let targets = std::fs::read_dir(fuzz.join("fuzz_targets"))
        .unwrap()
        .count();
    assert_eq!(targets, TARGETS.len(), "a fuzz target without a check here");
}
