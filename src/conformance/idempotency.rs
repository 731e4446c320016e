//! Cases every `IdempotencyStore` must pass.
//!
//! Lock and retention expiry run on a [`ManualClock`] handed to the store
//! (caller-clock mode on Redis); the server-side TTL or lease is checked
//! on the server itself.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{Harness, StoredKey};
use crate::backends::Backend;
use crate::clock::ManualClock;
use crate::idempotency::store::CONCERN;
use crate::idempotency::{
    Claim, ClaimToken, Claimant, Completion, Fingerprint, IdempotencyStore, StoredResponse,
};

const T0: Duration = Duration::from_secs(1_767_225_600);
const LOCK: Duration = Duration::from_secs(60);
const RETENTION: Duration = Duration::from_secs(24 * 3600);

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of(&[b"POST", b"/orders", body.as_bytes()])
}

async fn setup<H: Harness>(h: &H) -> (H::Store, ManualClock)
where
    H::Store: IdempotencyStore,
{
    let clock = ManualClock::new(T0);
    (h.store_with_clock(clock.shared()).await, clock)
}

/// Claims `id`, which must be won; the token it was claimed with.
async fn won<S: IdempotencyStore>(s: &S, id: &str, f: &Fingerprint) -> ClaimToken {
    let token = ClaimToken::random();
    match s
        .claim(id, Claimant::new(token, f, LOCK))
        .await
        .expect("store answers")
    {
        Claim::Won => token,
        other => panic!("expected to win {id}, got {other:?}"),
    }
}

/// Whether a new claim on `id` finds it in flight.
async fn in_flight<S: IdempotencyStore>(s: &S, id: &str) -> bool {
    let fingerprint = fp("a");
    let claimant = Claimant::new(ClaimToken::random(), &fingerprint, LOCK);
    matches!(s.claim(id, claimant).await, Ok(Claim::InFlight { .. }))
}

/// Completes `id` for `token` with the sample response for body `a`;
/// whether the store took it.
async fn completed<S: IdempotencyStore>(
    s: &S,
    id: &str,
    token: ClaimToken,
    retention: Duration,
) -> bool {
    let (fingerprint, response) = (fp("a"), StoredResponse::sample());
    let done = Completion::new(token, &fingerprint, &response, retention);
    s.complete(id, done).await.expect("store answers")
}

/// 100 concurrent claims of one key: exactly one wins.
pub async fn hundred_concurrent_claims_have_one_winner<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    let s = h.store().await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.claim("k", Claimant::new(ClaimToken::random(), &fp("{}"), LOCK))
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.expect("task").expect("store answers") {
            Claim::Won => winners += 1,
            Claim::InFlight { fingerprint } => assert_eq!(fingerprint, fp("{}")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(winners, 1);
}

/// A claimed key answers "in flight" with the claimer's fingerprint.
pub async fn a_claimed_key_is_in_flight<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    let (s, _clock) = setup(&h).await;
    won(&s, "k", &fp("a")).await;
    for body in ["a", "b"] {
        let claim = s
            .claim("k", Claimant::new(ClaimToken::random(), &fp(body), LOCK))
            .await
            .expect("store answers");
        assert_eq!(
            claim,
            Claim::InFlight {
                fingerprint: fp("a")
            }
        );
    }
}

/// A completed key replays the response byte for byte, with the
/// completed request's fingerprint (for the 422 check).
pub async fn completed_keys_replay_byte_for_byte<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    let (s, _clock) = setup(&h).await;
    let token = won(&s, "k", &fp("a")).await;
    assert!(completed(&s, "k", token, RETENTION).await);
    for body in ["a", "b"] {
        match s
            .claim("k", Claimant::new(ClaimToken::random(), &fp(body), LOCK))
            .await
            .expect("store answers")
        {
            Claim::Completed {
                fingerprint,
                response: replayed,
            } => {
                assert_eq!(fingerprint, fp("a"));
                assert_eq!(replayed, StoredResponse::sample());
            }
            other => panic!("{other:?}"),
        }
    }
    // An empty body and no trailers survive too.
    let token = won(&s, "k2", &fp("a")).await;
    let bare = StoredResponse {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        trailers: None,
    };
    assert!(
        s.complete("k2", Completion::new(token, &fp("a"), &bare, RETENTION))
            .await
            .expect("store answers")
    );
    match s
        .claim("k2", Claimant::new(ClaimToken::random(), &fp("a"), LOCK))
        .await
        .expect("store answers")
    {
        Claim::Completed { response, .. } => assert_eq!(response, bare),
        other => panic!("{other:?}"),
    }
}

/// After the lock, the key can be claimed again; the old owner can then
/// neither complete nor release it.
pub async fn the_lock_expires_on_the_store_clock<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    let (s, clock) = setup(&h).await;
    let old = won(&s, "k", &fp("a")).await;
    clock.advance(LOCK - Duration::from_millis(1));
    assert!(in_flight(&s, "k").await);
    clock.advance(Duration::from_millis(1));
    let new = won(&s, "k", &fp("a")).await;
    assert!(!completed(&s, "k", old, RETENTION).await);
    s.release("k", old).await.expect("store answers");
    assert!(in_flight(&s, "k").await);
    assert!(completed(&s, "k", new, RETENTION).await);
}

/// A renewed claim holds past its first lock, for its owner only; it
/// expires a lock after the renewal, and a completed key renews nothing.
pub async fn renew_extends_a_live_claim_for_its_owner_only<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    let (s, clock) = setup(&h).await;
    let token = won(&s, "k", &fp("a")).await;
    clock.advance(LOCK - Duration::from_millis(1));
    let renew = |token| s.renew("k", token, LOCK);
    assert!(!renew(ClaimToken::random()).await.expect("store answers"));
    assert!(renew(token).await.expect("store answers"));
    clock.advance(Duration::from_millis(2));
    assert!(in_flight(&s, "k").await);
    clock.advance(LOCK);
    assert!(!renew(token).await.expect("store answers"), "expired");
    let next = won(&s, "k", &fp("a")).await;
    assert!(completed(&s, "k", next, RETENTION).await);
    assert!(!s.renew("k", next, LOCK).await.expect("store answers"));
}

/// After the retention, the key executes again.
pub async fn retention_expires_on_the_store_clock<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    let (s, clock) = setup(&h).await;
    let retention = Duration::from_secs(10);
    let token = won(&s, "k", &fp("a")).await;
    assert!(completed(&s, "k", token, retention).await);
    clock.advance(retention - Duration::from_millis(1));
    assert!(matches!(
        s.claim("k", Claimant::new(ClaimToken::random(), &fp("a"), LOCK))
            .await,
        Ok(Claim::Completed { .. })
    ));
    clock.advance(Duration::from_millis(1));
    won(&s, "k", &fp("a")).await;
}

/// Releasing frees the key, and only its owner can release it.
pub async fn release_frees_the_key_for_its_owner_only<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    let (s, _clock) = setup(&h).await;
    let token = won(&s, "k", &fp("a")).await;
    s.release("k", ClaimToken::random())
        .await
        .expect("store answers");
    assert!(in_flight(&s, "k").await);
    s.release("k", token).await.expect("store answers");
    won(&s, "k", &fp("a")).await;
}

/// The same key under two principals is two keys.
pub async fn principals_are_isolated<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    use crate::idempotency::scope_id_for_tests as scoped;
    let (s, _clock) = setup(&h).await;
    let alice = scoped("alice", "order-1");
    let bob = scoped("bob", "order-1");
    let token = won(&s, &alice, &fp("a")).await;
    assert!(completed(&s, &alice, token, RETENTION).await);
    won(&s, &bob, &fp("a")).await;
}

/// Every record is namespaced, hides the client's key, and has a TTL on
/// the server: the lock while in flight, the retention once completed.
pub async fn records_have_a_ttl_on_the_server<H: Harness>(h: H)
where
    H::Store: IdempotencyStore,
{
    use crate::idempotency::scope_id_for_tests as scoped;
    let s = h.store().await;
    let id = scoped("anonymous", "my-secret-order-key");
    let token = won(&s, &id, &fp("a")).await;
    let ttl = |keys: Vec<StoredKey>| {
        let prefix = s.keyspace().concern_prefix(CONCERN);
        let mine: Vec<_> = keys
            .into_iter()
            .filter(|k| k.key.starts_with(&prefix))
            .collect();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert!(!mine[0].key.contains("secret"), "{}", mine[0].key);
        mine[0]
            .ttl
            .unwrap_or_else(|| panic!("{} has no TTL", mine[0].key))
    };
    let lock_ttl = ttl(h.stored_keys(&s).await);
    // etcd leases are whole seconds and shared: up to twice the TTL.
    assert!(
        lock_ttl > LOCK - SLACK && lock_ttl <= LOCK * 2 + SLACK,
        "{lock_ttl:?}"
    );
    assert!(completed(&s, &id, token, RETENTION).await);
    let kept = ttl(h.stored_keys(&s).await);
    assert!(
        kept > RETENTION - SLACK && kept <= RETENTION * 2 + SLACK,
        "{kept:?}"
    );
}

const SLACK: Duration = Duration::from_secs(5);
