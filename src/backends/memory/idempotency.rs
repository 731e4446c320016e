//! `IdempotencyStore` for `MemoryStore`: records in one locked map, capped
//! in records and bytes.
//!
//! Without a cap a client posting random keys would grow the map for the
//! whole retention (24 h by default). The store therefore caps both the
//! number of records and their approximate size, for the whole store and
//! for each scope (see [`Limits`]), and makes room for a new record by
//! evicting *completed* records, fairly: a scope at its own cap loses its
//! oldest record; at the store-wide cap, the scope holding the most
//! completed records loses its oldest, so one client flooding keys under
//! many scopes pushes out its own records long before a scope with a few
//! loses one.
//!
//! In-flight claims are never evicted: dropping one would let a duplicate
//! of a request that is still running run beside it. When only in-flight
//! claims stand between a new record and a cap, the store refuses it with
//! a [`StoreError::Backend`] instead ("store full"), which the layer
//! handles by its failure policy (fail-closed: 503 by default) for a
//! claim, or by recording the response as not kept (410 for duplicates)
//! when it cannot store a response. A claim whose lock has expired counts
//! as absent and is dropped before anything is evicted.
//!
//! Each eviction is reported as an `idempotency`/`evicted` event (and
//! counted in `battlement.events`), each refusal as `store_full`, on the
//! store's [`Events`](crate::events::Events) (`MemoryStore::events`).
//!
//! Bookkeeping: completed records are ordered by completion in a
//! `BTreeMap` (and, per scope, a `BTreeSet` of the same sequence numbers),
//! scopes by their count of completed records in a `BTreeSet`, completed
//! records and in-flight claims each by expiry; every step (claim,
//! complete, renew, release, one eviction, one expiry) is `O(log n)`.
//! Every expired record is dropped as claims come (from the front of the
//! expiry orders), so no full-map purge is needed.
//!
//! A record's scope is the part of its id before the first `/`
//! (`scope/key`); an id without `/` belongs to no scope and only the
//! store-wide caps apply to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::mem::size_of;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::HeaderMap;

use super::MemoryStore;
use crate::error::StoreError;
use crate::events::IdempotencyEvent;
use crate::layers::idempotency::store::micros;
use crate::layers::idempotency::{
    Claim, ClaimToken, Claimant, Completion, IdempotencyStore, Record,
};

/// Caps of one store's idempotency records (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Records in the whole store.
    pub records: usize,
    /// Approximate bytes in the whole store.
    pub bytes: usize,
    /// Records of one scope.
    pub scope_records: usize,
    /// Approximate bytes of one scope.
    pub scope_bytes: usize,
}

impl Limits {
    /// 100,000 records and 256 MiB per store; 1,000 records and 16 MiB per
    /// scope.
    pub(crate) const DEFAULT: Self = Self {
        records: 100_000,
        bytes: 256 << 20,
        scope_records: 1_000,
        scope_bytes: 16 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The records, by id.
#[derive(Debug)]
pub(crate) struct Records {
    limits: Limits,
    map: Mutex<Map>,
}

#[derive(Debug, Default)]
struct Map {
    records: HashMap<Arc<str>, Entry>,
    /// Completed records by completion sequence: the eviction order.
    completed: BTreeMap<u64, Arc<str>>,
    /// Completed records by `(expiry, sequence)`: the expiry order, which
    /// differs from the completion order when layers with different
    /// retentions share the store.
    expiring: BTreeMap<(u64, u64), Arc<str>>,
    /// In-flight claims by `(lock expiry, sequence)`.
    in_flight: BTreeMap<(u64, u64), Arc<str>>,
    /// Usage and eviction order of each scope with records.
    scopes: HashMap<Arc<str>, Scope>,
    /// Scopes with completed records, by how many: the store-wide cap
    /// evicts from the last (the largest) first.
    by_completed: BTreeSet<(usize, Arc<str>)>,
    total: Usage,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    record: Record,
    /// When it was written: orders it in `completed` or `in_flight`.
    seq: u64,
    /// Its footprint, as counted.
    bytes: usize,
}

#[derive(Debug, Default)]
struct Scope {
    usage: Usage,
    /// The sequence numbers of the scope's completed records.
    completed: BTreeSet<u64>,
}

/// What some records hold; `pinned_*` of it in flight (not evictable).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    records: usize,
    bytes: usize,
    pinned_records: usize,
    pinned_bytes: usize,
}

impl Usage {
    fn add(&mut self, bytes: usize, pinned: bool) {
        self.records += 1;
        self.bytes += bytes;
        if pinned {
            self.pinned_records += 1;
            self.pinned_bytes += bytes;
        }
    }

    fn sub(&mut self, bytes: usize, pinned: bool) {
        self.records = self.records.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        if pinned {
            self.pinned_records = self.pinned_records.saturating_sub(1);
            self.pinned_bytes = self.pinned_bytes.saturating_sub(bytes);
        }
    }

    /// Whether one more record of `bytes` fits `records` and `max_bytes`.
    fn fits(&self, bytes: usize, records: usize, max_bytes: usize) -> bool {
        self.records < records && self.bytes.saturating_add(bytes) <= max_bytes
    }

    /// Whether it would fit once every completed record was evicted.
    fn could_fit(&self, bytes: usize, records: usize, max_bytes: usize) -> bool {
        self.pinned_records < records && self.pinned_bytes.saturating_add(bytes) <= max_bytes
    }
}

/// The id at the front of an expiry order, if it has expired by `now_us`.
fn expired_front(order: &BTreeMap<(u64, u64), Arc<str>>, now_us: u64) -> Option<Arc<str>> {
    let (&(expires_us, _), id) = order.first_key_value()?;
    (expires_us <= now_us).then(|| id.clone())
}

/// What making room for one record evicted, by the cap that needed it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Evicted {
    scope: usize,
    store: usize,
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Scope,
    Store,
}

impl Full {
    fn error(self, bytes: usize, limits: &Limits) -> StoreError {
        let (what, records, max_bytes) = match self {
            Full::Scope => ("scope", limits.scope_records, limits.scope_bytes),
            Full::Store => ("store", limits.records, limits.bytes),
        };
        StoreError::Backend(format!(
            "memory idempotency store full: a record of {bytes} bytes does not fit the \
             {what}'s cap of {records} records and {max_bytes} bytes beside its in-flight claims"
        ))
    }
}

/// What a record of the map, its id and its place in the orders take
/// besides the id's text and the response, roughly.
const RECORD_OVERHEAD: usize = size_of::<(Arc<str>, Entry)>() + 3 * size_of::<Arc<str>>() + 64;

/// What one header takes besides its name and value, roughly.
const HEADER_OVERHEAD: usize = 48;

/// The approximate heap footprint of `record` under `id`, as counted
/// against the byte caps.
fn footprint(id: &str, record: &Record) -> usize {
    let response = match record {
        Record::InFlight { .. } => 0,
        Record::Completed { response, .. } => {
            response.body.len()
                + headers_bytes(&response.headers)
                + response.trailers.as_ref().map_or(0, headers_bytes)
        }
    };
    RECORD_OVERHEAD + id.len() + response
}

fn headers_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
        .sum()
}

/// The scope of `id`: its part before the first `/`, if any.
fn scope_of(id: &str) -> Option<&str> {
    id.split_once('/').map(|(scope, _)| scope)
}

impl Map {
    /// Whether `id` is an in-flight claim of `token`.
    fn owns(&self, id: &str, token: ClaimToken) -> bool {
        self.records
            .get(id)
            .is_some_and(|e| matches!(e.record, Record::InFlight { token: t, .. } if t == token))
    }

    /// Adds `entry` (which must be absent) to the map, orders and usage.
    fn insert_entry(&mut self, id: Arc<str>, entry: Entry) {
        let pinned = match &entry.record {
            Record::InFlight { expires_us, .. } => {
                self.in_flight.insert((*expires_us, entry.seq), id.clone());
                true
            }
            Record::Completed { expires_us, .. } => {
                self.completed.insert(entry.seq, id.clone());
                self.expiring.insert((*expires_us, entry.seq), id.clone());
                false
            }
        };
        self.total.add(entry.bytes, pinned);
        if let Some(scope) = scope_of(&id) {
            if !self.scopes.contains_key(scope) {
                self.scopes.insert(scope.into(), Scope::default());
            }
            if let Some(s) = self.scopes.get_mut(scope) {
                s.usage.add(entry.bytes, pinned);
                if !pinned {
                    let before = s.completed.len();
                    s.completed.insert(entry.seq);
                    self.rank(scope, before, before + 1);
                }
            }
        }
        self.records.insert(id, entry);
    }

    /// Adds `record` under `id` (which must be absent) as the newest.
    fn insert(&mut self, id: &str, record: Record) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let bytes = footprint(id, &record);
        self.insert_entry(id.into(), Entry { record, seq, bytes });
    }

    /// Removes `id` from the map, orders and usage.
    fn remove(&mut self, id: &str) -> Option<(Arc<str>, Entry)> {
        let (id, entry) = self.records.remove_entry(id)?;
        let pinned = match &entry.record {
            Record::InFlight { expires_us, .. } => {
                self.in_flight.remove(&(*expires_us, entry.seq));
                true
            }
            Record::Completed { expires_us, .. } => {
                self.completed.remove(&entry.seq);
                self.expiring.remove(&(*expires_us, entry.seq));
                false
            }
        };
        self.total.sub(entry.bytes, pinned);
        if let Some(scope) = scope_of(&id)
            && let Some(s) = self.scopes.get_mut(scope)
        {
            s.usage.sub(entry.bytes, pinned);
            let before = s.completed.len();
            let ranked = !pinned && s.completed.remove(&entry.seq);
            let empty = s.usage.records == 0;
            if ranked {
                self.rank(scope, before, before - 1);
            }
            if empty {
                self.scopes.remove(scope);
            }
        }
        Some((id, entry))
    }

    /// Moves `scope` in the ranking by completed records from `before` to
    /// `after` of them.
    fn rank(&mut self, scope: &str, before: usize, after: usize) {
        let Some((name, _)) = self.scopes.get_key_value(scope) else {
            return;
        };
        let name = name.clone();
        if before > 0 {
            self.by_completed.remove(&(before, name.clone()));
        }
        if after > 0 {
            self.by_completed.insert((after, name));
        }
    }

    /// The record the store-wide cap evicts next: the oldest completed
    /// record of the scope with the most of them, so that a scope with
    /// few records is the last to lose one; records without a scope go
    /// oldest first once no scope has any.
    fn next_victim(&self) -> Option<Arc<str>> {
        let oldest_of_largest = self
            .by_completed
            .last()
            .and_then(|(_, scope)| self.scopes.get(scope))
            .and_then(|s| s.completed.first())
            .and_then(|seq| self.completed.get(seq));
        oldest_of_largest
            .or_else(|| self.completed.first_key_value().map(|(_, id)| id))
            .cloned()
    }

    /// Drops every expired record, in-flight or completed, from the front
    /// of the two expiry orders: each record goes once, so this is
    /// amortised `O(log n)` per write.
    fn expire(&mut self, now_us: u64) {
        // `remove` takes each id out of its order; an id missing from the
        // map (which cannot happen) is dropped from the order so the loop
        // still ends.
        while let Some(id) = expired_front(&self.in_flight, now_us) {
            if self.remove(&id).is_none() {
                self.in_flight.pop_first();
            }
        }
        while let Some(id) = expired_front(&self.expiring, now_us) {
            if self.remove(&id).is_none() {
                self.expiring.pop_first();
            }
        }
    }

    /// Evicts the oldest completed records until one more record of
    /// `bytes` under `id` fits every cap; refuses, evicting nothing, when
    /// in-flight claims alone leave it no room.
    fn make_room(&mut self, id: &str, bytes: usize, limits: &Limits) -> Result<Evicted, Full> {
        let scope = scope_of(id);
        if let Some(s) = scope.and_then(|s| self.scopes.get(s))
            && !s
                .usage
                .could_fit(bytes, limits.scope_records, limits.scope_bytes)
        {
            return Err(Full::Scope);
        }
        if scope.is_some() && bytes > limits.scope_bytes {
            return Err(Full::Scope);
        }
        if !self.total.could_fit(bytes, limits.records, limits.bytes) {
            return Err(Full::Store);
        }
        let mut evicted = Evicted::default();
        if let Some(scope) = scope {
            while let Some(s) = self.scopes.get(scope)
                && !s
                    .usage
                    .fits(bytes, limits.scope_records, limits.scope_bytes)
            {
                // Some completed record is left: `could_fit` held.
                let Some(id) = s.completed.first().and_then(|seq| self.completed.get(seq)) else {
                    return Err(Full::Scope);
                };
                let id = id.clone();
                self.remove(&id);
                evicted.scope += 1;
            }
        }
        while !self.total.fits(bytes, limits.records, limits.bytes) {
            let Some(id) = self.next_victim() else {
                return Err(Full::Store);
            };
            self.remove(&id);
            evicted.store += 1;
        }
        Ok(evicted)
    }
}

impl Records {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            map: Mutex::default(),
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    fn with<T>(&self, f: impl FnOnce(&mut Map) -> T) -> T {
        f(&mut self.map.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl IdempotencyStore for MemoryStore {
    async fn claim(&self, id: &str, claimant: Claimant<'_>) -> Result<Claim, StoreError> {
        self.check_open()?;
        let now = self.inner.clock.now_micros();
        let limits = self.inner.idempotency.limits;
        let (claim, evicted) = self.inner.idempotency.with(|map| {
            map.expire(now);
            match map.records.get(id).map(|e| &e.record) {
                Some(Record::InFlight {
                    expires_us,
                    fingerprint,
                    ..
                }) if *expires_us > now => {
                    let claim = Claim::InFlight {
                        fingerprint: *fingerprint,
                    };
                    return (Ok(claim), Evicted::default());
                }
                Some(Record::Completed {
                    expires_us,
                    fingerprint,
                    response,
                }) if *expires_us > now => {
                    let claim = Claim::Completed {
                        fingerprint: *fingerprint,
                        response: response.clone(),
                    };
                    return (Ok(claim), Evicted::default());
                }
                // Expired: absent.
                _ => map.remove(id),
            };
            let record = claimant.record(now);
            let bytes = footprint(id, &record);
            match map.make_room(id, bytes, &limits) {
                Ok(evicted) => {
                    map.insert(id, record);
                    (Ok(Claim::Won), evicted)
                }
                Err(full) => (Err(full.error(bytes, &limits)), Evicted::default()),
            }
        });
        self.report(evicted, claim.as_ref().err());
        claim
    }

    async fn complete(&self, id: &str, done: Completion<'_>) -> Result<bool, StoreError> {
        self.check_open()?;
        let now = self.inner.clock.now_micros();
        let limits = self.inner.idempotency.limits;
        let (stored, evicted) = self.inner.idempotency.with(|map| {
            if !map.owns(id, done.token) {
                return (Ok(false), Evicted::default());
            }
            let record = done.record(now);
            let bytes = footprint(id, &record);
            // The claim makes way for its outcome; put back as it was if
            // the outcome does not fit.
            let Some((key, claim)) = map.remove(id) else {
                return (Ok(false), Evicted::default());
            };
            match map.make_room(id, bytes, &limits) {
                Ok(evicted) => {
                    map.insert(id, record);
                    (Ok(true), evicted)
                }
                Err(full) => {
                    map.insert_entry(key, claim);
                    (Err(full.error(bytes, &limits)), Evicted::default())
                }
            }
        });
        self.report(evicted, stored.as_ref().err());
        stored
    }

    async fn renew(&self, id: &str, token: ClaimToken, lock: Duration) -> Result<bool, StoreError> {
        self.check_open()?;
        let now = self.inner.clock.now_micros();
        Ok(self.inner.idempotency.with(|map| {
            let Some(entry) = map.records.get_mut(id) else {
                return false;
            };
            let Record::InFlight {
                expires_us,
                token: t,
                ..
            } = &mut entry.record
            else {
                return false;
            };
            if *t != token || *expires_us <= now {
                return false;
            }
            let seq = entry.seq;
            let old = std::mem::replace(expires_us, now.saturating_add(micros(lock)));
            let new = *expires_us;
            if let Some(key) = map.in_flight.remove(&(old, seq)) {
                map.in_flight.insert((new, seq), key);
            }
            true
        }))
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), StoreError> {
        self.check_open()?;
        self.inner.idempotency.with(|map| {
            if map.owns(id, token) {
                map.remove(id);
            }
        });
        Ok(())
    }
}

impl MemoryStore {
    /// Whether `id` is claimed by `token` and not completed (expired
    /// claims included: the store's answer to them is the same).
    pub(crate) fn holds_claim(&self, id: &str, token: ClaimToken) -> bool {
        self.inner.idempotency.with(|map| map.owns(id, token))
    }

    /// Whether `id` has a live record: an in-flight claim or a completed
    /// response not yet expired.
    pub(crate) fn holds_record(&self, id: &str) -> bool {
        let now = self.inner.clock.now_micros();
        self.inner.idempotency.with(|map| {
            map.records
                .get(id)
                .is_some_and(|e| e.record.expires_us() > now)
        })
    }

    #[cfg(any(test, feature = "conformance"))]
    /// Every idempotency record's key (namespaced as on the servers) with
    /// the time until it expires.
    pub fn idempotency_entries(&self) -> Vec<(String, Duration)> {
        let now = self.inner.clock.now_micros();
        self.inner.idempotency.with(|map| {
            map.records
                .iter()
                .filter(|(_, e)| e.record.expires_us() > now)
                .map(|(id, e)| {
                    (
                        crate::layers::idempotency::store::state_key(&self.inner.keys, id),
                        Duration::from_micros(e.record.expires_us() - now),
                    )
                })
                .collect()
        })
    }

    /// Number of idempotency records held (in flight or completed,
    /// including expired ones not dropped yet); never above
    /// [`idempotency_max_records`](Self::idempotency_max_records).
    pub fn idempotency_records(&self) -> usize {
        self.inner.idempotency.with(|map| map.total.records)
    }

    /// The approximate bytes the idempotency records take, as counted
    /// against [`idempotency_max_bytes`](Self::idempotency_max_bytes): each
    /// record's id, response body, header names and values, plus a fixed
    /// overhead per record and per header.
    pub fn idempotency_bytes(&self) -> usize {
        self.inner.idempotency.with(|map| map.total.bytes)
    }

    /// Reports evictions and a refusal on the store's events.
    fn report(&self, evicted: Evicted, refused: Option<&StoreError>) {
        let events = &self.inner.events;
        for (count, cap) in [(evicted.scope, "scope"), (evicted.store, "store")] {
            for _ in 0..count {
                events.report(IdempotencyEvent::Evicted, None, || {
                    Some(format!("oldest completed record evicted for the {cap} cap"))
                });
            }
        }
        if let Some(e) = refused {
            events.report(IdempotencyEvent::StoreFull, None, || Some(e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use bytes::Bytes;
    use http::StatusCode;

    use super::*;
    use crate::clock::ManualClock;
    use crate::events::Events;
    use crate::idempotency::Fingerprint;
    use crate::idempotency::StoredResponse;
    use crate::layers::idempotency::store::state_key;

    const LOCK: Duration = Duration::from_secs(60);
    const RETENTION: Duration = Duration::from_secs(24 * 3600);

    fn fp() -> Fingerprint {
        Fingerprint::of(&[b"POST", b"/orders"])
    }

    fn response(body: usize) -> StoredResponse {
        StoredResponse {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![7u8; body]),
            trailers: None,
        }
    }

    fn store(clock: &ManualClock) -> MemoryStore {
        MemoryStore::new().with_clock(clock.shared())
    }

    /// Claims and completes `id`.
    async fn run(s: &MemoryStore, id: &str, body: usize) -> Result<(), StoreError> {
        let token = ClaimToken::random();
        assert_eq!(
            s.claim(id, Claimant::new(token, &fp(), LOCK)).await?,
            Claim::Won,
            "{id}"
        );
        assert!(
            s.complete(
                id,
                Completion::new(token, &fp(), &response(body), RETENTION)
            )
            .await?
        );
        Ok(())
    }

    async fn held(s: &MemoryStore, id: &str) -> bool {
        let token = ClaimToken::random();
        match s
            .claim(id, Claimant::new(token, &fp(), LOCK))
            .await
            .unwrap()
        {
            Claim::Won => {
                s.release(id, token).await.unwrap();
                false
            }
            _ => true,
        }
    }

    /// Whether `id` has a record (without claiming it, which could evict).
    fn has(s: &MemoryStore, id: &str) -> bool {
        s.inner.idempotency.with(|map| map.records.contains_key(id))
    }

    fn evictions(rx: &mut tokio::sync::broadcast::Receiver<crate::events::Event>) -> usize {
        let mut n = 0;
        while let Ok(e) = rx.try_recv() {
            if (e.layer(), e.event()) == ("idempotency", "evicted") {
                n += 1;
            }
        }
        n
    }

    // 20,000 random keys against a cap of 1,000 records and 1 MiB: the
    // store never holds more, the oldest go first, every eviction is an
    // event. Small bodies first (the record cap binds), then larger ones
    // (the byte cap binds).
    #[tokio::test]
    async fn random_keys_stay_within_the_caps_and_the_oldest_go_first() {
        let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
        let events = Events::new();
        let mut rx = events.subscribe();
        let s = store(&clock)
            .idempotency_max_records(1_000)
            .idempotency_max_bytes(1 << 20)
            .events(events);
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        let mut evicted = 0;
        for i in 0..20_000usize {
            let id = format!("{:032x}", fastrand::u128(..));
            assert!(seen.insert(id.clone()));
            let body = if i < 10_000 {
                100
            } else {
                fastrand::usize(..4096)
            };
            run(&s, &id, body).await.unwrap();
            ids.push(id);
            assert!(s.idempotency_records() <= 1_000, "{i}");
            if i == 9_999 {
                assert_eq!(s.idempotency_records(), 1_000);
            }
            assert!(s.idempotency_bytes() <= 1 << 20, "{i}");
            evicted += evictions(&mut rx);
        }
        let kept = s.idempotency_records();
        assert!(kept > 300, "{kept} kept");
        assert_eq!(evicted, 20_000 - kept, "every eviction is an event");
        // What is left is the newest, in one run.
        let newest = &ids[ids.len() - kept..];
        let mut kept_ids: HashSet<String> = s
            .idempotency_entries()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for id in newest {
            assert!(
                kept_ids.remove(&state_key(&s.inner.keys, id)),
                "{id} evicted"
            );
        }
        assert!(kept_ids.is_empty());
        assert!(held(&s, &ids[ids.len() - 1]).await);
        assert!(!has(&s, &ids[0]));
    }

    #[tokio::test]
    async fn a_scope_is_capped_and_evicts_its_own_oldest() {
        let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
        let s = store(&clock).idempotency_max_scope_records(10);
        for i in 0..10 {
            run(&s, &format!("other/{i}"), 10).await.unwrap();
        }
        for i in 0..50 {
            run(&s, &format!("noisy/{i}"), 10).await.unwrap();
        }
        // Unscoped ids are only under the store cap.
        for i in 0..50 {
            run(&s, &format!("plain-{i}"), 10).await.unwrap();
        }
        assert_eq!(s.idempotency_records(), 70);
        for i in 0..10 {
            assert!(held(&s, &format!("other/{i}")).await);
        }
        for i in 0..50 {
            assert_eq!(has(&s, &format!("noisy/{i}")), i >= 40, "noisy/{i}");
        }

        let cap = 2 * (RECORD_OVERHEAD + 3) + 4100;
        let s = store(&clock).idempotency_max_scope_bytes(cap);
        run(&s, "a/1", 1000).await.unwrap();
        run(&s, "a/2", 1000).await.unwrap();
        run(&s, "a/3", 3000).await.unwrap();
        assert!(!has(&s, "a/1"));
        assert!(has(&s, "a/2") && has(&s, "a/3"));
        assert!(s.idempotency_bytes() <= cap);
    }

    // Evicting a claim would let a duplicate run beside the request: when
    // only claims fill a cap, a new claim is refused instead, and a
    // response is refused before a claim is lost.
    #[tokio::test]
    async fn in_flight_claims_are_never_evicted() {
        let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
        let events = Events::new();
        let mut rx = events.subscribe();
        let s = store(&clock)
            .idempotency_max_records(3)
            .events(events.clone());
        run(&s, "done", 10).await.unwrap();
        let tokens: Vec<_> = (0..3).map(|_| ClaimToken::random()).collect();
        for (i, t) in tokens.iter().enumerate() {
            let id = format!("k{i}");
            assert_eq!(
                s.claim(&id, Claimant::new(*t, &fp(), LOCK)).await.unwrap(),
                Claim::Won
            );
        }
        // "done" made way for k2.
        assert_eq!(evictions(&mut rx), 1);
        let refused = s
            .claim("k3", Claimant::new(ClaimToken::random(), &fp(), LOCK))
            .await;
        assert!(matches!(&refused, Err(StoreError::Backend(m)) if m.contains("full")));
        assert!(!refused.unwrap_err().is_transient());
        for i in 0..3 {
            assert!(held(&s, &format!("k{i}")).await);
        }
        assert!(
            std::iter::from_fn(|| rx.try_recv().ok()).any(|e| e.event() == "store_full"),
            "the refusal is an event"
        );
        // A completed claim is evictable again.
        assert!(
            s.complete(
                "k0",
                Completion::new(tokens[0], &fp(), &response(10), RETENTION)
            )
            .await
            .unwrap()
        );
        run(&s, "k3", 10).await.unwrap();
        assert!(!has(&s, "k0"));

        // An expired lock frees its place without an eviction.
        clock.advance(LOCK);
        run(&s, "k4", 10).await.unwrap();
        assert_eq!(evictions(&mut rx), 1, "k0 only");

        // A response that cannot fit beside the claims is refused and the
        // claim stays.
        let s = store(&clock).idempotency_max_bytes(2 * RECORD_OVERHEAD + 1000);
        let (a, b) = (ClaimToken::random(), ClaimToken::random());
        assert_eq!(
            s.claim("a", Claimant::new(a, &fp(), LOCK)).await.unwrap(),
            Claim::Won
        );
        assert_eq!(
            s.claim("b", Claimant::new(b, &fp(), LOCK)).await.unwrap(),
            Claim::Won
        );
        let big = s
            .complete("a", Completion::new(a, &fp(), &response(2000), RETENTION))
            .await;
        assert!(matches!(big, Err(StoreError::Backend(_))));
        assert!(held(&s, "a").await);
        assert!(
            s.complete("a", Completion::new(a, &fp(), &response(10), RETENTION))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn renewed_and_released_claims_keep_the_books_straight() {
        let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
        let s = store(&clock);
        let t = ClaimToken::random();
        assert_eq!(
            s.claim("s/a", Claimant::new(t, &fp(), LOCK)).await.unwrap(),
            Claim::Won
        );
        clock.advance(LOCK / 2);
        assert!(s.renew("s/a", t, LOCK).await.unwrap());
        clock.advance(LOCK * 3 / 4);
        // Still held: the renewal moved it in the expiry order.
        assert!(held(&s, "s/a").await);
        s.release("s/a", t).await.unwrap();
        run(&s, "s/b", 100).await.unwrap();
        clock.advance(RETENTION);
        run(&s, "s/c", 0).await.unwrap();
        assert_eq!(s.idempotency_records(), 1, "s/b expired");
        s.inner.idempotency.with(|map| {
            assert_eq!(map.in_flight.len(), 0);
            assert_eq!(map.completed.len(), 1);
            assert_eq!(map.scopes.len(), 1);
            let scope = &map.scopes["s"];
            assert_eq!(scope.usage, map.total);
            assert_eq!(scope.completed.len(), 1);
            assert_eq!(map.total.pinned_bytes, 0);
            assert_eq!(map.by_completed.len(), 1);
        });
    }

    // Records of two retentions in one store: a short one completed after
    // a long one still goes at its own expiry, not the long one's.
    #[tokio::test]
    async fn each_record_expires_at_its_own_time_whatever_came_before() {
        let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
        let s = store(&clock);
        run(&s, "s/long", 10).await.unwrap();
        let token = ClaimToken::random();
        let short = Duration::from_secs(5);
        s.claim("s/short", Claimant::new(token, &fp(), LOCK))
            .await
            .unwrap();
        s.complete(
            "s/short",
            Completion::new(token, &fp(), &response(10), short),
        )
        .await
        .unwrap();
        clock.advance(short);
        run(&s, "s/next", 10).await.unwrap();
        assert!(!has(&s, "s/short"), "expired and dropped");
        assert!(has(&s, "s/long"));
        assert_eq!(s.idempotency_records(), 2);
    }

    // At the store-wide cap the largest scope loses its oldest record: a
    // victim with one record keeps it while a flood spread over many
    // scopes evicts only its own.
    #[tokio::test]
    async fn the_store_cap_evicts_from_the_largest_scope_first() {
        let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
        let s = store(&clock)
            .idempotency_max_records(100)
            .idempotency_max_scope_records(50);
        run(&s, "victim/k", 10).await.unwrap();
        for i in 0..1_000 {
            run(&s, &format!("flood{}/k{i}", i % 7), 10).await.unwrap();
            clock.advance(Duration::from_millis(1));
        }
        assert!(has(&s, "victim/k"), "the victim's one record stays");
        assert_eq!(s.idempotency_records(), 100);
        s.inner.idempotency.with(|map| {
            let sizes: Vec<_> = (0..7)
                .map(|i| map.scopes[format!("flood{i}").as_str()].completed.len())
                .collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "the flood's scopes shrink evenly: {sizes:?}"
            );
            let ranked: usize = map.by_completed.iter().map(|(n, _)| n).sum();
            assert_eq!(ranked, map.completed.len());
        });
    }
}
