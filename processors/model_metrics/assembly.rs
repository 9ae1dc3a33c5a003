//! One request, counted once, from spans that arrive in any order (contract section 2, "request span" and
//! "server profiles").
//!
//! Three kinds of spans wait here: requests that a profile names (their stage spans may still come), stages whose
//! facts belong to a request (inference time, tokens, a first-byte marker, an error), and SERVER spans whose parent
//! may or may not be in the same process (candidates: the span carries no OTLP is-remote bits, and it has a
//! parent). Spans of one trace are kept together, whichever process sent them (Ray Serve's replica reports in
//! another process than its proxy); a stage belongs to the request it descends from, through the trace's waiting
//! spans, else to the innermost request whose time holds it.
//!
//! Bounded in time and in number: a trace's parts are resolved `join_wait` after its first request arrived (or
//! `orphan_wait` after its first stage, when no request came), or earlier when more than `max_pending_spans` parts
//! wait (the oldest first). A stage that finds no request is counted (`orphan_span`), never dropped silently.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::classify::{Status, StatusClass};
use super::state::Dims;

/// A trace within one resource: (the resource's identity, the trace id).
pub type TraceKey = (u64, u128);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A request span (by its profile, or a SERVER span whose parent is known to be remote or absent).
    Request,
    /// A span whose facts belong to the request that holds it.
    Stage,
    /// A SERVER span with a parent of unknown locality: a request unless its parent shows up in the same trace
    /// and resource.
    Candidate,
}

/// What spans say about one request. A stage's facts fill in what the request's own lack.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// The server said the request failed (an error on one of its stages, an abort).
    pub failed: bool,
    /// A status the server gave on another span than the request's (when the request's own has no code).
    pub status: Option<Status>,
    /// End-to-end seconds as the server measured them; else the request span's times.
    pub duration: Option<f64>,
    pub inference: Option<f64>,
    pub queue: Option<f64>,
    /// When the first byte or token left (span time, ns).
    pub first_byte_ns: Option<u64>,
    /// When the request entered the server's queue, and when its execution started (span times, ns): the queue
    /// time when the server gives no duration for it (Triton marks them on different spans).
    pub queue_start_ns: Option<u64>,
    pub execution_start_ns: Option<u64>,
    /// Seconds to the first byte or token, as the server measured them.
    pub time_to_first_byte: Option<f64>,
    /// The server said no token was produced: no time to first byte is recorded.
    pub no_first_byte: bool,
    /// The response was streamed, and when the server first handed a token on (TGI): the first byte when it
    /// streams; a response sent whole leaves with its end.
    pub streamed: bool,
    pub token_sent_ns: Option<u64>,
    pub input_tokens: Option<f64>,
    pub output_tokens: Option<f64>,
    pub request_size: Option<f64>,
    pub response_size: Option<f64>,
    /// The model's name as the server put it on a span.
    pub model: Option<String>,
}

impl Facts {
    /// Adds a stage's facts: what `self` has stays; inference times add up (one request may compute in several
    /// steps), the earliest first byte wins, and one failed stage fails the request.
    pub fn absorb(&mut self, stage: Facts) {
        self.failed |= stage.failed;
        self.no_first_byte |= stage.no_first_byte;
        self.streamed |= stage.streamed;
        self.token_sent_ns = match (self.token_sent_ns, stage.token_sent_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        fill(&mut self.status, stage.status);
        fill(&mut self.duration, stage.duration);
        self.inference = match (self.inference, stage.inference) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        fill(&mut self.queue, stage.queue);
        self.first_byte_ns = match (self.first_byte_ns, stage.first_byte_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        fill(&mut self.time_to_first_byte, stage.time_to_first_byte);
        fill(&mut self.queue_start_ns, stage.queue_start_ns);
        fill(&mut self.execution_start_ns, stage.execution_start_ns);
        fill(&mut self.input_tokens, stage.input_tokens);
        fill(&mut self.output_tokens, stage.output_tokens);
        fill(&mut self.request_size, stage.request_size);
        fill(&mut self.response_size, stage.response_size);
        fill(&mut self.model, stage.model);
    }
}

/// Sets `slot` to `other` when it holds nothing yet: the first fact given wins.
pub(super) fn fill<T>(slot: &mut Option<T>, other: Option<T>) {
    if slot.is_none() {
        *slot = other;
    }
}

/// What a request span is, read when it arrived (its span is gone by the time it is recorded).
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub dims: Dims,
    pub status: Status,
    /// The adjusted count (1 / sampling probability).
    pub count: f64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

/// One span's share of a request.
#[derive(Clone, Debug)]
pub struct Part {
    pub role: Role,
    pub key: TraceKey,
    pub span_id: u64,
    /// 0 when the span has no parent.
    pub parent: u64,
    pub start: u64,
    pub end: u64,
    pub facts: Facts,
    /// Requests and candidates only.
    pub head: Option<Box<Head>>,
}

/// A request whose wait is over, with every fact its spans gave.
#[derive(Clone, Debug)]
pub struct Complete {
    pub head: Head,
    /// The identity of the request span's resource: its replica (see `per_replica`).
    pub resource: u64,
    pub start: u64,
    pub end: u64,
    pub facts: Facts,
}

/// What a resolution gave: requests to record and stages that found none.
#[derive(Debug, Default)]
pub struct Resolved {
    pub requests: Vec<Complete>,
    pub orphans: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub join_wait_ns: u64,
    pub orphan_wait_ns: u64,
    pub max_pending: usize,
}

#[derive(Default)]
struct Entry {
    /// Requests, candidates and stages, as they came (most traces hold one or two: no room is kept spare).
    parts: Vec<Part>,
    /// When the first request or candidate arrived.
    request_since: Option<u64>,
    /// When the first stage arrived.
    stage_since: Option<u64>,
}

impl Entry {
    fn deadline(&self, limits: &Limits) -> u64 {
        match (self.request_since, self.stage_since) {
            (Some(t), _) => t.saturating_add(limits.join_wait_ns),
            (None, Some(t)) => t.saturating_add(limits.orphan_wait_ns),
            (None, None) => 0,
        }
    }

    fn len(&self) -> usize {
        self.parts.len()
    }
}

/// Span ids seen lately, so that a candidate whose parent came first knows it is a stage. Direct-mapped and
/// lock-free: each id has one slot (by its low bits), and a newer id in that slot replaces it, so every span is
/// noted with one store, memory is fixed (8 bytes a slot), and a parent is forgotten once `slots` later spans
/// have been noted (then its candidate counts as a request: the rule degrades, nothing grows).
pub struct Seen {
    slots: Box<[AtomicU64]>,
}

impl Seen {
    /// A table of 2^`bits` slots.
    pub fn new(bits: u32) -> Seen {
        Seen {
            slots: (0..1usize << bits).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// 0 marks an empty slot: no key is 0.
    fn slot(&self, key: u64) -> (&AtomicU64, u64) {
        let key = key.max(1);
        (&self.slots[key as usize & (self.slots.len() - 1)], key)
    }

    pub fn note(&self, key: u64) {
        let (slot, key) = self.slot(key);
        slot.store(key, Ordering::Relaxed);
    }

    pub fn contains(&self, key: u64) -> bool {
        let (slot, key) = self.slot(key);
        slot.load(Ordering::Relaxed) == key
    }
}

/// A span's identity within its trace and resource, as one number (for `Seen` and the candidates' parents).
pub fn span_key(key: TraceKey, span_id: u64) -> u64 {
    let (resource, trace) = key;
    let mixed = resource ^ (trace as u64) ^ ((trace >> 64) as u64).rotate_left(29);
    mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ span_id
}

pub struct Assembly {
    limits: Limits,
    traces: HashMap<u128, Entry>,
    /// Each waiting trace by its deadline.
    deadlines: BTreeSet<(u64, u128)>,
    /// The candidates waiting, by their parent's `span_key`.
    candidate_parents: HashMap<u64, TraceKey>,
    seen: Arc<Seen>,
    pending: usize,
}

impl Assembly {
    /// `seen` is where the spans without is-remote bits are noted (by the caller, without this lock).
    pub fn new(limits: Limits, seen: Arc<Seen>) -> Assembly {
        Assembly {
            limits,
            traces: HashMap::new(),
            deadlines: BTreeSet::new(),
            candidate_parents: HashMap::new(),
            seen,
            pending: 0,
        }
    }

    /// Parts waiting now.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Candidates waiting now.
    pub fn candidates(&self) -> usize {
        self.candidate_parents.len()
    }

    /// Spans just noted in `seen` (their `span_key`s): candidates waiting for one of them are stages, not
    /// requests.
    pub fn note_spans(&mut self, ids: &[u64]) {
        if self.candidate_parents.is_empty() {
            return;
        }
        for &id in ids {
            if let Some(key) = self.candidate_parents.remove(&id) {
                self.drop_candidates_under(key, id);
            }
        }
    }

    fn drop_candidates_under(&mut self, key: TraceKey, parent_key: u64) {
        let Some(entry) = self.traces.get_mut(&key.1) else {
            return;
        };
        let before = entry.parts.len();
        entry
            .parts
            .retain(|p| p.role != Role::Candidate || span_key(p.key, p.parent) != parent_key);
        let removed = before - entry.parts.len();
        self.pending -= removed;
        if entry.len() == 0 {
            self.remove_entry(key.1);
        }
    }

    fn remove_entry(&mut self, key: u128) -> Option<Entry> {
        let entry = self.traces.remove(&key)?;
        self.deadlines.remove(&(entry.deadline(&self.limits), key));
        Some(entry)
    }

    /// Adds one span's part. A candidate whose parent was seen is a stage of another request and adds nothing.
    pub fn add(&mut self, part: Part, now: u64) {
        let (key, trace) = (part.key, part.key.1);
        if part.role == Role::Candidate {
            let parent = span_key(key, part.parent);
            if self.seen.contains(parent) {
                return;
            }
            self.candidate_parents.insert(parent, key);
        }
        let limits = self.limits;
        let entry = self.traces.entry(trace).or_default();
        let old_deadline = entry.deadline(&limits);
        match part.role {
            Role::Request | Role::Candidate => entry.request_since.get_or_insert(now),
            Role::Stage => entry.stage_since.get_or_insert(now),
        };
        if entry.parts.len() == entry.parts.capacity() {
            entry.parts.reserve_exact(entry.parts.len().max(1));
        }
        entry.parts.push(part);
        let new_deadline = entry.deadline(&limits);
        if new_deadline != old_deadline {
            self.deadlines.remove(&(old_deadline, trace));
            self.deadlines.insert((new_deadline, trace));
        }
        self.pending += 1;
    }

    /// Resolves every trace whose wait is over, and the oldest ones while more than `max_pending` parts wait.
    pub fn expire(&mut self, now: u64) -> Resolved {
        let mut out = Resolved::default();
        while let Some(&(deadline, trace)) = self.deadlines.first() {
            if deadline > now && self.pending <= self.limits.max_pending {
                break;
            }
            self.resolve(trace, &mut out);
        }
        out
    }

    /// Resolves everything (at shutdown).
    pub fn drain(&mut self) -> Resolved {
        let mut out = Resolved::default();
        while let Some(&(_, trace)) = self.deadlines.first() {
            self.resolve(trace, &mut out);
        }
        out
    }

    fn resolve(&mut self, trace: u128, out: &mut Resolved) {
        let Some(entry) = self.remove_entry(trace) else {
            return;
        };
        self.pending -= entry.len();
        for c in entry.parts.iter().filter(|p| p.role == Role::Candidate) {
            self.candidate_parents.remove(&span_key(c.key, c.parent));
        }
        // A candidate's parent may have been noted while it waited (by a thread that did not look for it).
        let seen = &self.seen;
        let (mut stages, mut requests): (Vec<Part>, Vec<Part>) = entry
            .parts
            .into_iter()
            .filter(|p| p.role != Role::Candidate || !seen.contains(span_key(p.key, p.parent)))
            .partition(|p| p.role == Role::Stage);
        stages.sort_by_key(|s| s.start);
        let holders: Vec<Option<usize>> = stages.iter().map(|s| holder(&requests, &stages, s)).collect();
        let mut facts: Vec<Facts> = requests.iter_mut().map(|r| std::mem::take(&mut r.facts)).collect();
        for (stage, holder) in stages.into_iter().zip(holders) {
            match holder {
                Some(i) => facts[i].absorb(stage.facts),
                None => out.orphans += 1,
            }
        }
        for (request, facts) in requests.into_iter().zip(facts) {
            if let Some(head) = request.head {
                out.requests.push(Complete {
                    head: *head,
                    resource: request.key.0,
                    start: request.start,
                    end: request.end,
                    facts,
                });
            }
        }
    }
}

/// The request a stage belongs to: the one it descends from through the trace's waiting spans, else the
/// innermost request whose time holds the stage's, else the only request of the trace.
fn holder(requests: &[Part], stages: &[Part], stage: &Part) -> Option<usize> {
    let mut parent = stage.parent;
    // A bounded walk: a cycle of parents (a broken client) ends it.
    for _ in 0..32 {
        if parent == 0 {
            break;
        }
        if let Some(i) = requests.iter().position(|r| r.span_id == parent) {
            return Some(i);
        }
        match stages.iter().find(|s| s.span_id == parent) {
            Some(s) => parent = s.parent,
            None => break,
        }
    }
    let holding = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.start <= stage.start && stage.end <= r.end)
        .min_by_key(|(_, r)| r.end - r.start)
        .map(|(i, _)| i);
    holding.or((requests.len() == 1).then_some(0))
}

/// The status once every fact is in: a code the request span lacks comes from a stage, and a request the server
/// says failed is never a success.
pub fn final_status(head: &Head, facts: &Facts) -> Status {
    let mut status = head.status;
    if status.code == super::classify::Code::Unset
        && let Some(other) = facts.status
    {
        status = other;
    }
    if facts.failed && status.class == StatusClass::OK {
        status.class = StatusClass::SERVER_ERROR;
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_metrics::classify::{Code, Protocol};

    const LIMITS: Limits = Limits {
        join_wait_ns: 5_000,
        orphan_wait_ns: 50_000,
        max_pending: 100,
    };

    fn assembly() -> Assembly {
        Assembly::new(LIMITS, Arc::new(Seen::new(10)))
    }

    fn head() -> Option<Box<Head>> {
        Some(Box::new(Head {
            dims: vec!["m".to_string()].into(),
            status: Status {
                protocol: Protocol::Http,
                code: Code::Unset,
                class: StatusClass::OK,
            },
            count: 1.0,
            trace_id: [1; 16],
            span_id: [2; 8],
        }))
    }

    fn part(role: Role, span_id: u64, parent: u64, start: u64, end: u64, facts: Facts) -> Part {
        let head = (role != Role::Stage).then(head).flatten();
        Part {
            role,
            key: (7, 9),
            span_id,
            parent,
            start,
            end,
            facts,
            head,
        }
    }

    fn inference(v: f64) -> Facts {
        Facts {
            inference: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn a_stage_joins_its_request_in_either_order() {
        for stage_first in [true, false] {
            let mut a = assembly();
            let request = part(Role::Request, 1, 0, 100, 900, Facts::default());
            let stage = part(Role::Stage, 2, 1, 200, 800, inference(0.6));
            if stage_first {
                a.add(stage.clone(), 10);
                a.add(request.clone(), 20);
            } else {
                a.add(request.clone(), 10);
                a.add(stage.clone(), 20);
            }
            assert!(a.expire(1_000).requests.is_empty(), "waits for join_wait");
            let done = a.expire(10 + LIMITS.join_wait_ns + 20);
            assert_eq!(done.requests.len(), 1);
            assert_eq!(done.requests[0].facts.inference, Some(0.6));
            assert_eq!(done.orphans, 0);
            assert_eq!(a.pending(), 0);
        }
    }

    #[test]
    fn a_stage_without_request_is_an_orphan_after_orphan_wait() {
        let mut a = assembly();
        a.add(part(Role::Stage, 2, 1, 200, 800, inference(0.6)), 0);
        assert_eq!(a.expire(LIMITS.join_wait_ns + 1).orphans, 0);
        let done = a.expire(LIMITS.orphan_wait_ns + 1);
        assert_eq!((done.requests.len(), done.orphans), (0, 1));
    }

    #[test]
    fn a_candidate_whose_parent_shows_up_is_no_request() {
        // Parent first, then the candidate; and the candidate first, then its parent.
        let key = (7, 9);
        let mut a = assembly();
        a.seen.note(span_key(key, 5));
        a.add(part(Role::Candidate, 6, 5, 0, 10, Facts::default()), 1);
        assert_eq!(a.pending(), 0);
        let mut b = assembly();
        b.add(part(Role::Candidate, 6, 5, 0, 10, Facts::default()), 1);
        b.seen.note(span_key(key, 5));
        b.note_spans(&[span_key(key, 5)]);
        assert_eq!(b.pending(), 0);
        assert!(b.drain().requests.is_empty());
        // Noted while it waited, by a thread that did not tell: still a stage at its deadline.
        let mut d = assembly();
        d.add(part(Role::Candidate, 6, 5, 0, 10, Facts::default()), 1);
        d.seen.note(span_key(key, 5));
        assert!(d.drain().requests.is_empty());
        // No parent ever: a request.
        let mut c = assembly();
        c.add(part(Role::Candidate, 6, 5, 0, 10, Facts::default()), 1);
        assert_eq!(c.expire(1 + LIMITS.join_wait_ns).requests.len(), 1);
    }

    #[test]
    fn pending_parts_are_bounded() {
        let mut a = assembly();
        for i in 0..150u64 {
            let mut p = part(Role::Stage, i + 1, 0, 0, 1, Facts::default());
            p.key = (i, i as u128);
            a.add(p, i);
        }
        let done = a.expire(200);
        assert_eq!(a.pending(), LIMITS.max_pending);
        assert_eq!(done.orphans, 50);
    }

    #[test]
    fn stages_go_to_the_innermost_request_that_holds_them() {
        let mut a = assembly();
        a.add(part(Role::Request, 1, 0, 0, 1000, Facts::default()), 0);
        a.add(part(Role::Request, 2, 0, 100, 500, Facts::default()), 0);
        a.add(part(Role::Stage, 3, 0, 200, 300, inference(0.1)), 0);
        let done = a.drain();
        let inner = done.requests.iter().find(|r| r.start == 100).unwrap();
        let outer = done.requests.iter().find(|r| r.start == 0).unwrap();
        assert_eq!((inner.facts.inference, outer.facts.inference), (Some(0.1), None));
    }
}

#[cfg(test)]
mod size_tests {
    /// The README states the memory a waiting span takes: keep the statement true.
    #[test]
    fn a_waiting_part_is_small() {
        let part = std::mem::size_of::<super::Part>();
        let head = std::mem::size_of::<super::Head>();
        println!("part {part} bytes, head {head} bytes (boxed, requests only)");
        assert!(part <= 352, "a waiting span takes {part} bytes");
    }
}
