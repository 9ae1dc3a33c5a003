//! A borrowed view of an OTLP trace export request: one pass over the protobuf bytes as received that checks the
//! whole request and records where each span, attribute and event lies in them. Nothing is copied and nothing is
//! reference-counted per field: the view is the request's `Bytes` plus flat tables of offsets, which
//! `TraceView::resources` turns into borrowed spans and attributes (`&[u8]`, `&str`).
//!
//! Written by hand because no protobuf crate decodes into borrowed slices of a shared buffer with a flat index
//! (prost's types own their strings; its `Bytes` fields cost an atomic reference count per field, which was the
//! largest single cost of ingest). The wire format is walked against the OTLP trace schema of
//! `opentelemetry-proto`, field by field, and the rule that keeps it sound is: **the view declines whatever it
//! is not sure prost would decode to the same content.** `TraceView::decode` returns `None` (and the caller decodes
//! with the owned types, which give prost's own answer, error or not) for: an unknown field, a wire type other than
//! the schema's, a truncated or over-long varint, a length past its message, a string that is not UTF-8 (checked on
//! every occurrence, as prost does), a singular message field or `AnyValue` value given twice (prost would merge
//! them), and nesting deeper than `MAX_DEPTH`. A scalar or string field given twice keeps its last value, as in
//! prost. So whatever the view takes, the owned types take, with the same content: asserted on 200,000 mutated
//! requests in the tests and by the `otlp_protobuf` fuzz target.

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// Deeper nesting of attribute values (arrays and maps) is left to the owned types. This depth counts attribute
/// value and list levels only; prost counts every message level against its limit of 100, and the deepest request
/// the view takes is about 53 of those levels deep, well inside it.
const MAX_DEPTH: u32 = 32;

/// A range of the request's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slice {
    at: u32,
    len: u32,
}

impl Slice {
    fn new(start: usize, end: usize) -> Slice {
        Slice {
            at: start as u32,
            len: (end - start) as u32,
        }
    }

    fn of(self, bytes: &[u8]) -> &[u8] {
        &bytes[self.at as usize..(self.at + self.len) as usize]
    }
}

/// A range of one of the view's tables.
#[derive(Clone, Copy, Debug, Default)]
struct Rows {
    from: u32,
    to: u32,
}

impl Rows {
    fn of<T>(self, table: &[T]) -> &[T] {
        &table[self.from as usize..self.to as usize]
    }
}

#[derive(Clone, Copy, Debug)]
enum ValueIx {
    /// The key-value pair has no value message.
    Absent,
    /// A value message with no value set.
    Unset,
    Str(Slice),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Slice),
    Array,
    Kvlist,
    StrIndex(i32),
}

#[derive(Clone, Copy, Debug)]
struct KvIx {
    /// The whole `KeyValue` message, for the owned form.
    message: Slice,
    key: Slice,
    value: ValueIx,
}

#[derive(Clone, Copy, Debug, Default)]
struct SpanIx {
    trace_id: Slice,
    span_id: Slice,
    parent_span_id: Slice,
    trace_state: Slice,
    name: Slice,
    kind: i32,
    status_code: i32,
    start: u64,
    end: u64,
    /// The span's `flags` (W3C trace flags and the OTLP is-remote bits); 0 when absent.
    flags: u32,
    attributes: Rows,
    events: Rows,
}

#[derive(Clone, Copy, Debug)]
struct EventIx {
    name: Slice,
    time: u64,
}

#[derive(Clone, Copy, Debug)]
struct ResourceIx {
    attributes: Rows,
    spans: Rows,
    scopes: Rows,
}

/// One ScopeSpans: its instrumentation scope's name and its spans.
#[derive(Clone, Copy, Debug)]
struct ScopeIx {
    name: Slice,
    spans: Rows,
}

/// The view of one trace export request (see the module's documentation).
#[derive(Clone, Debug)]
pub struct TraceView {
    bytes: Bytes,
    resources: Vec<ResourceIx>,
    spans: Vec<SpanIx>,
    scopes: Vec<ScopeIx>,
    kvs: Vec<KvIx>,
    events: Vec<EventIx>,
}

/// An attribute's value, borrowed from the request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An array or a map (read through `KeyValues::owned`).
    Nested,
    StrIndex(i32),
    /// A value message with no value in it.
    Unset,
}

/// The attributes of a resource or a span.
#[derive(Clone, Copy, Debug)]
pub struct KeyValues<'a> {
    bytes: &'a [u8],
    kvs: &'a [KvIx],
}

impl<'a> KeyValues<'a> {
    /// Each key and its value (`None`: the pair carries no value).
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<Value<'a>>)> + 'a {
        let bytes = self.bytes;
        self.kvs
            .iter()
            .map(move |kv| (kv.key.of(bytes), value(bytes, kv.value)))
    }

    /// Each key, its value unread (`value_at` reads it): a reader that wants a few keys pays for no other value.
    #[inline]
    pub fn keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        self.kvs.iter().map(move |kv| kv.key.of(bytes))
    }

    /// The value of the pair at `at` (in `keys`' order); `None` when it carries none or there is no such pair.
    #[inline]
    pub fn value_at(&self, at: usize) -> Option<Value<'a>> {
        value(self.bytes, self.kvs.get(at)?.value)
    }

    /// The first pair with `key`: `Some(None)` when it carries no value.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<Option<Value<'a>>> {
        let bytes = self.bytes;
        self.kvs
            .iter()
            .find(|kv| same_bytes(kv.key.of(bytes), key))
            .map(|kv| value(bytes, kv.value))
    }

    pub fn len(&self) -> usize {
        self.kvs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kvs.is_empty()
    }

    /// A hash of the pairs as encoded: the same attributes, encoded alike, hash alike. For caches keyed by a
    /// resource, so that a request from a resource seen a moment ago need not decode its attributes again.
    pub fn identity(&self) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        // foldhash rather than std's SipHash: a few times faster on these short pairs, and seeded once per process
        // (one state, so that equal pairs hash alike for the process's life; a caller that must not confuse two
        // resources compares the encoded pairs on a hit).
        static SEED: std::sync::LazyLock<foldhash::fast::RandomState> = std::sync::LazyLock::new(Default::default);
        let mut h = SEED.build_hasher();
        for kv in self.kvs {
            kv.message.of(self.bytes).hash(&mut h);
        }
        h.finish()
    }

    /// The pairs as encoded, one after the other (what `identity` hashes), to tell a hash's collision apart.
    pub fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.kvs.iter().map(|kv| kv.message.of(self.bytes).len()).sum());
        for kv in self.kvs {
            out.extend_from_slice(kv.message.of(self.bytes));
        }
        out
    }

    /// Whether these pairs, as encoded, are `encoded` (what `encoded` gave for a resource), without copying.
    pub fn is_encoded(&self, mut encoded: &[u8]) -> bool {
        for kv in self.kvs {
            let m = kv.message.of(self.bytes);
            match encoded.strip_prefix(m) {
                Some(rest) => encoded = rest,
                None => return false,
            }
        }
        encoded.is_empty()
    }

    /// The owned form (for code that takes the generated types: dimensions, the replica directory); each pair is
    /// decoded by prost from its own bytes.
    pub fn owned(&self) -> Vec<KeyValue> {
        self.kvs
            .iter()
            .map(|kv| {
                KeyValue::decode(kv.message.of(self.bytes)).unwrap_or_else(|e| {
                    debug_assert!(false, "a pair the view took does not decode: {e}");
                    KeyValue::default()
                })
            })
            .collect()
    }
}

fn value(bytes: &[u8], v: ValueIx) -> Option<Value<'_>> {
    Some(match v {
        ValueIx::Absent => return None,
        ValueIx::Unset => Value::Unset,
        ValueIx::Str(s) => Value::Str(text(s.of(bytes))),
        ValueIx::Bool(b) => Value::Bool(b),
        ValueIx::Int(i) => Value::Int(i),
        ValueIx::Double(d) => Value::Double(d),
        ValueIx::Bytes(s) => Value::Bytes(s.of(bytes)),
        ValueIx::Array | ValueIx::Kvlist => Value::Nested,
        ValueIx::StrIndex(i) => Value::StrIndex(i),
    })
}

/// A string field's text: checked UTF-8 when the view was taken (an empty string otherwise, which cannot happen).
fn text(b: &[u8]) -> &str {
    // Most trace states and many scope names are empty: no call for them.
    if b.is_empty() {
        return "";
    }
    std::str::from_utf8(b).unwrap_or_else(|_| {
        debug_assert!(false, "a string the view took is not UTF-8");
        ""
    })
}

/// Whether two byte strings are equal, compared inline a word at a time. Attribute keys and span names are a few
/// dozen bytes; for them the call to libc's `memcmp` that `==` makes cost more than the comparison (it was 4% of
/// the CPU at 50-span requests, most of it on keys that do match).
#[inline(always)]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let mut at = 0;
    while at + 8 < n {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    // The last word, overlapping the one before when `n` is not a multiple of 8.
    word(a, n - 8) == word(b, n - 8)
}

/// One resource of the request: its attributes and its spans (over all its scopes).
#[derive(Clone, Copy, Debug)]
pub struct ResourceView<'a> {
    view: &'a TraceView,
    ix: &'a ResourceIx,
}

impl<'a> ResourceView<'a> {
    pub fn attributes(&self) -> KeyValues<'a> {
        KeyValues {
            bytes: &self.view.bytes,
            kvs: self.ix.attributes.of(&self.view.kvs),
        }
    }

    pub fn spans(self) -> impl ExactSizeIterator<Item = SpanView<'a>> + 'a {
        self.view.spans_of(self.ix.spans)
    }

    /// Each ScopeSpans: the instrumentation scope's name and its spans.
    pub fn scopes(self) -> impl ExactSizeIterator<Item = ScopeView<'a>> + 'a {
        let view = self.view;
        self.ix
            .scopes
            .of(&view.scopes)
            .iter()
            .map(move |ix| ScopeView { view, ix })
    }
}

/// One ScopeSpans of a resource.
#[derive(Clone, Copy, Debug)]
pub struct ScopeView<'a> {
    view: &'a TraceView,
    ix: &'a ScopeIx,
}

impl<'a> ScopeView<'a> {
    /// The instrumentation scope's name ("" when it has none).
    pub fn name(&self) -> &'a str {
        text(self.ix.name.of(&self.view.bytes))
    }

    pub fn spans(self) -> impl ExactSizeIterator<Item = SpanView<'a>> + 'a {
        self.view.spans_of(self.ix.spans)
    }
}

/// One span, borrowed from the request.
#[derive(Clone, Copy, Debug)]
pub struct SpanView<'a> {
    bytes: &'a [u8],
    ix: &'a SpanIx,
    attributes: KeyValues<'a>,
    events: &'a [EventIx],
}

impl<'a> SpanView<'a> {
    pub fn trace_id(&self) -> &'a [u8] {
        self.ix.trace_id.of(self.bytes)
    }
    pub fn span_id(&self) -> &'a [u8] {
        self.ix.span_id.of(self.bytes)
    }
    pub fn parent_span_id(&self) -> &'a [u8] {
        self.ix.parent_span_id.of(self.bytes)
    }
    pub fn trace_state(&self) -> &'a str {
        text(self.ix.trace_state.of(self.bytes))
    }
    /// The name's bytes (UTF-8).
    pub fn name(&self) -> &'a [u8] {
        self.ix.name.of(self.bytes)
    }
    pub fn kind(&self) -> i32 {
        self.ix.kind
    }
    pub fn start_time_unix_nano(&self) -> u64 {
        self.ix.start
    }
    pub fn end_time_unix_nano(&self) -> u64 {
        self.ix.end
    }
    /// The status code (0 when the span has no status).
    pub fn status_code(&self) -> i32 {
        self.ix.status_code
    }
    /// The span's `flags` (0 when absent): bits 0-7 the W3C trace flags, 0x100 "is-remote is known", 0x200
    /// "the parent is remote".
    pub fn flags(&self) -> u32 {
        self.ix.flags
    }
    pub fn attributes(&self) -> &KeyValues<'a> {
        &self.attributes
    }
    /// Each event's name (bytes, UTF-8) and time.
    pub fn events(&self) -> impl Iterator<Item = (&'a [u8], u64)> + 'a {
        let bytes = self.bytes;
        self.events.iter().map(move |e| (e.name.of(bytes), e.time))
    }
}

impl TraceView {
    /// The view of `bytes`, when it is sure to hold what prost would decode (see the module's documentation);
    /// `None` sends the caller to the owned types.
    pub fn decode(bytes: Bytes) -> Option<TraceView> {
        if bytes.len() > u32::MAX as usize {
            return None;
        }
        // Capacity guesses from the size, so that the tables rarely grow: a span with attributes is 100 bytes or
        // more, an attribute 20 or more.
        let mut ix = Indexer {
            b: &bytes,
            resources: Vec::new(),
            spans: Vec::with_capacity(bytes.len() / 128),
            scopes: Vec::new(),
            kvs: Vec::with_capacity(bytes.len() / 32),
            events: Vec::with_capacity(bytes.len() / 512),
        };
        ix.request(0, bytes.len())?;
        let Indexer {
            resources,
            spans,
            scopes,
            kvs,
            events,
            ..
        } = ix;
        Some(TraceView {
            bytes,
            resources,
            spans,
            scopes,
            kvs,
            events,
        })
    }

    fn spans_of(&self, rows: Rows) -> impl ExactSizeIterator<Item = SpanView<'_>> {
        rows.of(&self.spans).iter().map(move |ix| SpanView {
            bytes: &self.bytes,
            ix,
            attributes: KeyValues {
                bytes: &self.bytes,
                kvs: ix.attributes.of(&self.kvs),
            },
            events: ix.events.of(&self.events),
        })
    }

    pub fn resources(&self) -> impl ExactSizeIterator<Item = ResourceView<'_>> {
        self.resources.iter().map(move |ix| ResourceView { view: self, ix })
    }

    /// Every span of the request.
    pub fn spans(&self) -> impl Iterator<Item = SpanView<'_>> {
        self.resources().flat_map(|r| r.spans())
    }

    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }
}

/// A field's payload, by wire type.
#[derive(Clone, Copy)]
enum Field {
    Varint(u64),
    Fixed64,
    /// Start and end of a length-delimited field's bytes.
    Len(usize, usize),
    /// A fixed32 (a link's flags).
    Fixed32,
}

/// A varint at `*pos` before `end`; `None` when truncated or longer than 64 bits.
#[inline(always)]
fn varint(b: &[u8], pos: &mut usize, end: usize) -> Option<u64> {
    let first = *b[..end].get(*pos)?;
    *pos += 1;
    if first < 0x80 {
        return Some(u64::from(first));
    }
    let mut value = u64::from(first & 0x7f);
    for i in 1..10 {
        let byte = *b[..end].get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return (i < 9 || byte <= 1).then_some(value);
        }
    }
    None
}

/// The next field of the message ending at `end`: its tag and payload.
#[inline(always)]
fn field(b: &[u8], pos: &mut usize, end: usize) -> Option<(u32, Field)> {
    let key = varint(b, pos, end)?;
    if key > u64::from(u32::MAX) || key >> 3 == 0 {
        return None;
    }
    let tag = (key >> 3) as u32;
    let payload = match key & 7 {
        0 => Field::Varint(varint(b, pos, end)?),
        1 => {
            fixed64(b, pos, end)?;
            Field::Fixed64
        }
        2 => {
            let len = varint(b, pos, end)?;
            if len > (end - *pos) as u64 {
                return None;
            }
            let start = *pos;
            *pos += len as usize;
            Field::Len(start, *pos)
        }
        5 => {
            if end - *pos < 4 {
                return None;
            }
            *pos += 4;
            Field::Fixed32
        }
        // Groups (3, 4) appear in no field of the schema; 6 and 7 are no wire type.
        _ => return None,
    };
    Some((tag, payload))
}

/// The next field's key (`tag << 3 | wire type`), for the hot messages, which match the whole key at once: one
/// dispatch per field instead of one on the wire type and another on the tag (a third of the decoding time went
/// to those two jumps). A key no arm names (tag 0, an unknown tag, a wire type the schema does not give that tag)
/// is declined, as `field` declines it.
#[inline(always)]
fn key(b: &[u8], pos: &mut usize, end: usize) -> Option<u64> {
    varint(b, pos, end)
}

/// A length-delimited payload: its start and end.
#[inline(always)]
fn len(b: &[u8], pos: &mut usize, end: usize) -> Option<(usize, usize)> {
    let len = varint(b, pos, end)?;
    if len > (end - *pos) as u64 {
        return None;
    }
    let start = *pos;
    *pos += len as usize;
    Some((start, *pos))
}

#[inline(always)]
fn fixed64(b: &[u8], pos: &mut usize, end: usize) -> Option<u64> {
    let v = u64::from_le_bytes(b.get(*pos..*pos + 8).filter(|_| end - *pos >= 8)?.try_into().ok()?);
    *pos += 8;
    Some(v)
}

/// Whether a string field's bytes are UTF-8.
#[inline(always)]
fn utf8(b: &[u8]) -> Option<()> {
    (b.is_ascii() || std::str::from_utf8(b).is_ok()).then_some(())
}

struct Indexer<'b> {
    b: &'b [u8],
    resources: Vec<ResourceIx>,
    spans: Vec<SpanIx>,
    scopes: Vec<ScopeIx>,
    kvs: Vec<KvIx>,
    events: Vec<EventIx>,
}

// Every record is written in place, into its table or the caller's slot, rather than returned: a span or value
// built on the stack and then copied reads back bytes that were just stored piecewise, which stalls the CPU (store
// forwarding); that was a third of the decoding time.
impl Indexer<'_> {
    /// ExportTraceServiceRequest.
    fn request(&mut self, mut pos: usize, end: usize) -> Option<()> {
        while pos < end {
            match field(self.b, &mut pos, end)? {
                (1, Field::Len(s, e)) => self.resource_spans(s, e)?,
                _ => return None,
            }
        }
        Some(())
    }

    /// ResourceSpans.
    fn resource_spans(&mut self, mut pos: usize, end: usize) -> Option<()> {
        let spans_from = self.spans.len() as u32;
        let scopes_from = self.scopes.len() as u32;
        let mut attributes = None;
        while pos < end {
            match field(self.b, &mut pos, end)? {
                (1, Field::Len(s, e)) if attributes.is_none() => attributes = Some(self.resource(s, e)?),
                (2, Field::Len(s, e)) => self.scope_spans(s, e)?,
                (3, Field::Len(s, e)) => _ = string(self.b, s, e)?,
                _ => return None,
            }
        }
        self.resources.push(ResourceIx {
            attributes: attributes.unwrap_or_default(),
            spans: Rows {
                from: spans_from,
                to: self.spans.len() as u32,
            },
            scopes: Rows {
                from: scopes_from,
                to: self.scopes.len() as u32,
            },
        });
        Some(())
    }

    /// Resource: its attributes' rows.
    fn resource(&mut self, mut pos: usize, end: usize) -> Option<Rows> {
        let from = self.kvs.len() as u32;
        while pos < end {
            match field(self.b, &mut pos, end)? {
                (1, Field::Len(s, e)) => push_key_value(self.b, &mut self.kvs, s, e)?,
                (2, Field::Varint(_)) => {}
                (3, Field::Len(s, e)) => entity_ref(self.b, s, e)?,
                _ => return None,
            }
        }
        Some(Rows {
            from,
            to: self.kvs.len() as u32,
        })
    }

    /// ScopeSpans.
    fn scope_spans(&mut self, mut pos: usize, end: usize) -> Option<()> {
        let mut scope = false;
        let mut name = Slice::default();
        let spans_from = self.spans.len() as u32;
        while pos < end {
            match field(self.b, &mut pos, end)? {
                (1, Field::Len(s, e)) if !scope => {
                    scope = true;
                    name = self::scope(self.b, s, e)?;
                }
                (2, Field::Len(s, e)) => self.span(s, e)?,
                (3, Field::Len(s, e)) => _ = string(self.b, s, e)?,
                _ => return None,
            }
        }
        self.scopes.push(ScopeIx {
            name,
            spans: Rows {
                from: spans_from,
                to: self.spans.len() as u32,
            },
        });
        Some(())
    }

    /// Span, pushed. Its attributes are pushed while it is read; attributes of its events and links are checked
    /// only, so the span's own rows stay contiguous.
    fn span(&mut self, mut pos: usize, end: usize) -> Option<()> {
        let Indexer {
            b, spans, kvs, events, ..
        } = self;
        let b: &[u8] = b;
        spans.push(SpanIx::default());
        let span = spans.last_mut()?;
        let (attributes_from, events_from) = (kvs.len() as u32, events.len() as u32);
        let mut status = false;
        while pos < end {
            // Keys: tag << 3 | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
            match key(b, &mut pos, end)? {
                0x0a => span.trace_id = slice(b, &mut pos, end)?,
                0x12 => span.span_id = slice(b, &mut pos, end)?,
                0x1a => span.trace_state = string_at(b, &mut pos, end)?,
                0x22 => span.parent_span_id = slice(b, &mut pos, end)?,
                0x2a => span.name = string_at(b, &mut pos, end)?,
                0x30 => span.kind = varint(b, &mut pos, end)? as i32,
                0x39 => span.start = fixed64(b, &mut pos, end)?,
                0x41 => span.end = fixed64(b, &mut pos, end)?,
                0x4a => {
                    let (s, e) = len(b, &mut pos, end)?;
                    push_key_value(b, kvs, s, e)?
                }
                // 10, 12, 14: the dropped counts.
                0x50 | 0x60 | 0x70 => _ = varint(b, &mut pos, end)?,
                0x5a => {
                    let (s, e) = len(b, &mut pos, end)?;
                    events.push(EventIx {
                        name: Slice::default(),
                        time: 0,
                    });
                    event(b, s, e, events.last_mut()?)?;
                }
                0x6a => {
                    let (s, e) = len(b, &mut pos, end)?;
                    link(b, s, e)?
                }
                0x7a if !status => {
                    let (s, e) = len(b, &mut pos, end)?;
                    status = true;
                    span.status_code = self::status(b, s, e)?;
                }
                0x85 => {
                    if end - pos < 4 {
                        return None;
                    }
                    span.flags = u32::from_le_bytes(b[pos..pos + 4].try_into().ok()?);
                    pos += 4;
                }
                _ => return None,
            }
        }
        span.attributes = Rows {
            from: attributes_from,
            to: kvs.len() as u32,
        };
        span.events = Rows {
            from: events_from,
            to: events.len() as u32,
        };
        Some(())
    }
}

/// A string field's bytes, checked.
#[inline(always)]
fn string(b: &[u8], start: usize, end: usize) -> Option<Slice> {
    utf8(&b[start..end])?;
    Some(Slice::new(start, end))
}

/// A length-delimited field's bytes at `pos`.
#[inline(always)]
fn slice(b: &[u8], pos: &mut usize, end: usize) -> Option<Slice> {
    let (s, e) = len(b, pos, end)?;
    Some(Slice::new(s, e))
}

/// A string field's bytes at `pos`, checked.
#[inline(always)]
fn string_at(b: &[u8], pos: &mut usize, end: usize) -> Option<Slice> {
    let (s, e) = len(b, pos, end)?;
    string(b, s, e)
}

/// EntityRef: strings only.
fn entity_ref(b: &[u8], mut pos: usize, end: usize) -> Option<()> {
    while pos < end {
        match field(b, &mut pos, end)? {
            (1..=4, Field::Len(s, e)) => _ = string(b, s, e)?,
            _ => return None,
        }
    }
    Some(())
}

/// InstrumentationScope: checked; its name kept (the last one given, as prost keeps it).
fn scope(b: &[u8], mut pos: usize, end: usize) -> Option<Slice> {
    let mut name = Slice::default();
    while pos < end {
        match field(b, &mut pos, end)? {
            (1, Field::Len(s, e)) => name = string(b, s, e)?,
            (2, Field::Len(s, e)) => _ = string(b, s, e)?,
            (3, Field::Len(s, e)) => check_key_value(b, s, e, 0)?,
            (4, Field::Varint(_)) => {}
            _ => return None,
        }
    }
    Some(name)
}

/// Span.Event: name and time kept, attributes checked.
fn event(b: &[u8], mut pos: usize, end: usize, event: &mut EventIx) -> Option<()> {
    while pos < end {
        match key(b, &mut pos, end)? {
            0x09 => event.time = fixed64(b, &mut pos, end)?,
            0x12 => event.name = string_at(b, &mut pos, end)?,
            0x1a => {
                let (s, e) = len(b, &mut pos, end)?;
                check_key_value(b, s, e, 0)?
            }
            0x20 => _ = varint(b, &mut pos, end)?,
            _ => return None,
        }
    }
    Some(())
}

/// Span.Link: checked, not kept.
fn link(b: &[u8], mut pos: usize, end: usize) -> Option<()> {
    while pos < end {
        match field(b, &mut pos, end)? {
            (1 | 2, Field::Len(..)) => {}
            (3, Field::Len(s, e)) => _ = string(b, s, e)?,
            (4, Field::Len(s, e)) => check_key_value(b, s, e, 0)?,
            (5, Field::Varint(_)) | (6, Field::Fixed32) => {}
            _ => return None,
        }
    }
    Some(())
}

/// Status: its code.
fn status(b: &[u8], mut pos: usize, end: usize) -> Option<i32> {
    let mut code = 0;
    while pos < end {
        match field(b, &mut pos, end)? {
            (2, Field::Len(s, e)) => _ = string(b, s, e)?,
            (3, Field::Varint(v)) => code = v as i32,
            _ => return None,
        }
    }
    Some(code)
}

const EMPTY_KV: KvIx = KvIx {
    message: Slice { at: 0, len: 0 },
    key: Slice { at: 0, len: 0 },
    value: ValueIx::Absent,
};

/// A KeyValue, pushed onto `kvs`.
#[inline(always)]
fn push_key_value(b: &[u8], kvs: &mut Vec<KvIx>, start: usize, end: usize) -> Option<()> {
    kvs.push(EMPTY_KV);
    key_value(b, start, end, 0, kvs.last_mut()?)
}

/// A KeyValue, checked only (attributes of events, links and scopes, and inside maps).
fn check_key_value(b: &[u8], start: usize, end: usize, depth: u32) -> Option<()> {
    let mut kv = EMPTY_KV;
    key_value(b, start, end, depth, &mut kv)
}

/// KeyValue, into `kv`.
#[inline(always)]
fn key_value(b: &[u8], start: usize, end: usize, depth: u32, kv: &mut KvIx) -> Option<()> {
    kv.message = Slice::new(start, end);
    let mut pos = start;
    while pos < end {
        match key(b, &mut pos, end)? {
            0x0a => kv.key = string_at(b, &mut pos, end)?,
            0x12 if matches!(kv.value, ValueIx::Absent) => {
                let (s, e) = len(b, &mut pos, end)?;
                kv.value = ValueIx::Unset;
                any_value(b, s, e, depth + 1, &mut kv.value)?
            }
            0x18 => _ = varint(b, &mut pos, end)?,
            _ => return None,
        }
    }
    Some(())
}

/// AnyValue, into `value` (`Unset` on entry): one value at most (prost would merge or replace a second one).
fn any_value(b: &[u8], mut pos: usize, end: usize, depth: u32, value: &mut ValueIx) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    while pos < end {
        if !matches!(value, ValueIx::Unset) {
            return None;
        }
        *value = match key(b, &mut pos, end)? {
            0x0a => ValueIx::Str(string_at(b, &mut pos, end)?),
            0x10 => ValueIx::Bool(varint(b, &mut pos, end)? != 0),
            0x18 => ValueIx::Int(varint(b, &mut pos, end)? as i64),
            0x21 => ValueIx::Double(f64::from_bits(fixed64(b, &mut pos, end)?)),
            0x2a => {
                let (s, e) = len(b, &mut pos, end)?;
                list(b, s, e, depth + 1, false)?;
                ValueIx::Array
            }
            0x32 => {
                let (s, e) = len(b, &mut pos, end)?;
                list(b, s, e, depth + 1, true)?;
                ValueIx::Kvlist
            }
            0x3a => ValueIx::Bytes(slice(b, &mut pos, end)?),
            0x40 => ValueIx::StrIndex(varint(b, &mut pos, end)? as i32),
            _ => return None,
        };
    }
    Some(())
}

/// ArrayValue (`pairs` false) or KeyValueList (`pairs` true): checked, not kept.
fn list(b: &[u8], mut pos: usize, end: usize, depth: u32, pairs: bool) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    while pos < end {
        match field(b, &mut pos, end)? {
            (1, Field::Len(s, e)) if pairs => check_key_value(b, s, e, depth)?,
            (1, Field::Len(s, e)) => {
                let mut value = ValueIx::Unset;
                any_value(b, s, e, depth + 1, &mut value)?
            }
            _ => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value as V};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event, span::Link};

    fn kv(k: &str, v: V) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    /// Resources alike in their encoded attributes share an identity and match each other's bytes; one attribute
    /// more, or another value, does not.
    #[test]
    fn a_resource_is_known_by_its_encoded_attributes() {
        let resource = |attributes: Vec<KeyValue>| ResourceSpans {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = || {
            vec![
                kv("service.name", V::StringValue("chat".into())),
                kv("pid", V::IntValue(7)),
            ]
        };
        let mut longer = a();
        longer.push(kv("x", V::BoolValue(true)));
        let other = vec![
            kv("service.name", V::StringValue("chas".into())),
            kv("pid", V::IntValue(7)),
        ];
        let request = ExportTraceServiceRequest {
            resource_spans: vec![resource(a()), resource(a()), resource(longer), resource(other)],
        };
        let view = TraceView::decode(request.encode_to_vec().into()).unwrap();
        let attrs: Vec<KeyValues<'_>> = view.resources().map(|r| r.attributes()).collect();
        assert_eq!(attrs[0].identity(), attrs[1].identity());
        assert!(attrs[1].is_encoded(&attrs[0].encoded()));
        for different in &attrs[2..] {
            assert_ne!(different.identity(), attrs[0].identity());
            assert!(!different.is_encoded(&attrs[0].encoded()));
            assert!(!attrs[0].is_encoded(&different.encoded()));
        }
        assert_eq!(attrs[0].owned(), a());
    }

    fn sample() -> ExportTraceServiceRequest {
        let nested = V::KvlistValue(opentelemetry_proto::tonic::common::v1::KeyValueList {
            values: vec![kv(
                "inner",
                V::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                    values: vec![AnyValue {
                        value: Some(V::StringValue("déjà vu".into())),
                    }],
                }),
            )],
        });
        let span = |n: u8, parent: Vec<u8>| Span {
            trace_id: vec![1; 16],
            span_id: vec![n; 8],
            parent_span_id: parent,
            name: "POST /predict".into(),
            kind: 2,
            start_time_unix_nano: 5,
            end_time_unix_nano: 9,
            trace_state: "ot=th:8".into(),
            attributes: vec![
                kv("http.response.status_code", V::IntValue(200)),
                kv("x", V::DoubleValue(1.5)),
                kv("b", V::BoolValue(true)),
                kv("n", nested.clone()),
                kv("raw", V::BytesValue(vec![0xff, 0xfe])),
                KeyValue {
                    key: "empty".into(),
                    value: Some(AnyValue { value: None }),
                    ..Default::default()
                },
                KeyValue {
                    key: "none".into(),
                    ..Default::default()
                },
            ],
            events: vec![Event {
                name: "first_token".into(),
                time_unix_nano: 7,
                attributes: vec![kv("e", V::StringValue("é".into()))],
                ..Default::default()
            }],
            links: vec![Link {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                attributes: vec![kv("l", V::IntValue(-1))],
                ..Default::default()
            }],
            status: Some(Status {
                message: "ok".into(),
                code: 2,
            }),
            ..Default::default()
        };
        let resource_spans = |name: &str| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", V::StringValue(name.into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span(2, vec![]), span(3, vec![2; 8])],
                ..Default::default()
            }],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![resource_spans("m"), resource_spans("n")],
        }
    }

    #[test]
    fn scopes_and_flags_are_kept() {
        let span = |id: u8, flags: u32| Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            flags,
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                            name: "vllm.tracing.otel".into(),
                            version: "1".into(),
                            ..Default::default()
                        }),
                        spans: vec![span(1, 0x301), span(2, 0x100)],
                        ..Default::default()
                    },
                    ScopeSpans {
                        spans: vec![span(3, 0)],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        };
        let view = TraceView::decode(request.encode_to_vec().into()).expect("a view");
        let resource = view.resources().next().unwrap();
        let scopes: Vec<(String, Vec<(u8, u32)>)> = resource
            .scopes()
            .map(|s| {
                (
                    s.name().to_string(),
                    s.spans().map(|sp| (sp.span_id()[0], sp.flags())).collect(),
                )
            })
            .collect();
        assert_eq!(
            scopes,
            vec![
                ("vllm.tracing.otel".to_string(), vec![(1, 0x301), (2, 0x100)]),
                (String::new(), vec![(3, 0)]),
            ]
        );
        assert_eq!(resource.spans().len(), 3);
    }

    /// What classification and the replica directory read, from either form, to compare them.
    #[derive(Debug, PartialEq)]
    struct Seen {
        resource: Vec<KeyValue>,
        spans: Vec<SeenSpan>,
    }

    /// Ids, trace state, name, kind, status code, start, end, attributes, events.
    type SeenSpan = (
        Vec<u8>,
        Vec<u8>,
        Vec<u8>,
        String,
        Vec<u8>,
        i32,
        i32,
        u64,
        u64,
        Vec<KeyValue>,
        Vec<(Vec<u8>, u64)>,
    );

    fn seen_view(view: &TraceView) -> Vec<Seen> {
        view.resources()
            .map(|r| Seen {
                resource: r.attributes().owned(),
                spans: r
                    .spans()
                    .map(|s| {
                        // The borrowed values agree with the owned form of each pair.
                        for ((key, value), owned) in s.attributes().iter().zip(s.attributes().owned()) {
                            assert_eq!(key, owned.key.as_bytes());
                            let want = owned.value.as_ref().map(|v| match &v.value {
                                None => Value::Unset,
                                Some(V::StringValue(x)) => Value::Str(x),
                                Some(V::BoolValue(x)) => Value::Bool(*x),
                                Some(V::IntValue(x)) => Value::Int(*x),
                                Some(V::DoubleValue(x)) => Value::Double(*x),
                                Some(V::BytesValue(x)) => Value::Bytes(x),
                                Some(V::ArrayValue(_) | V::KvlistValue(_)) => Value::Nested,
                                Some(V::StringValueStrindex(x)) => Value::StrIndex(*x),
                            });
                            match (value, want) {
                                (Some(Value::Double(a)), Some(Value::Double(b))) => {
                                    assert_eq!(a.to_bits(), b.to_bits())
                                }
                                (a, b) => assert_eq!(a, b),
                            }
                        }
                        (
                            s.trace_id().to_vec(),
                            s.span_id().to_vec(),
                            s.parent_span_id().to_vec(),
                            s.trace_state().to_string(),
                            s.name().to_vec(),
                            s.kind(),
                            s.status_code(),
                            s.start_time_unix_nano(),
                            s.end_time_unix_nano(),
                            s.attributes().owned(),
                            s.events().map(|(n, t)| (n.to_vec(), t)).collect(),
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    fn seen_owned(request: &ExportTraceServiceRequest) -> Vec<Seen> {
        request
            .resource_spans
            .iter()
            .map(|rs| Seen {
                resource: rs.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default(),
                spans: rs
                    .scope_spans
                    .iter()
                    .flat_map(|ss| &ss.spans)
                    .map(|s| {
                        (
                            s.trace_id.clone(),
                            s.span_id.clone(),
                            s.parent_span_id.clone(),
                            s.trace_state.clone(),
                            s.name.as_bytes().to_vec(),
                            s.kind,
                            s.status.as_ref().map(|st| st.code).unwrap_or(0),
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                            s.attributes.clone(),
                            s.events
                                .iter()
                                .map(|e| (e.name.as_bytes().to_vec(), e.time_unix_nano))
                                .collect(),
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn the_view_holds_what_the_owned_types_hold() {
        let request = sample();
        let view = TraceView::decode(Bytes::from(request.encode_to_vec())).expect("a well-formed request");
        assert_eq!(view.span_count(), 4);
        assert_eq!(view.resource_count(), 2);
        assert_eq!(seen_view(&view), seen_owned(&request));
        let span = view.spans().nth(1).unwrap();
        assert_eq!(span.name(), b"POST /predict");
        assert_eq!(span.parent_span_id(), &[2; 8]);
        assert_eq!(span.status_code(), 2);
        assert_eq!(
            span.attributes().get(b"http.response.status_code"),
            Some(Some(Value::Int(200)))
        );
        assert_eq!(span.attributes().get(b"empty"), Some(Some(Value::Unset)));
        assert_eq!(span.attributes().get(b"none"), Some(None));
        assert_eq!(span.attributes().get(b"n"), Some(Some(Value::Nested)));
        assert_eq!(span.attributes().get(b"missing"), None);
        assert_eq!(span.events().collect::<Vec<_>>(), vec![(&b"first_token"[..], 7)]);
    }

    /// Wraps a span's bytes in a request of one resource and one scope.
    fn request_of_span(span: &[u8]) -> Vec<u8> {
        let wrap = |tag: u8, inner: &[u8]| {
            let mut out = vec![tag];
            prost::encoding::encode_varint(inner.len() as u64, &mut out);
            out.extend_from_slice(inner);
            out
        };
        wrap(0x0a, &wrap(0x12, &wrap(0x12, span)))
    }

    /// A field repeated: scalars and strings keep their last value, as in prost; a singular message given twice
    /// (which prost merges) and an unknown field are left to the owned types.
    #[test]
    fn last_value_wins_and_merges_are_declined() {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            kind: 2,
            name: "a".into(),
            status: Some(Status {
                code: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        // `kind` (field 6) 3 and `name` (field 5) "b" again after the first ones.
        let mut twice = span.encode_to_vec();
        twice.extend_from_slice(&[0x30, 0x03, 0x2a, 0x01, b'b']);
        let req = request_of_span(&twice);
        let owned = ExportTraceServiceRequest::decode(req.as_slice()).unwrap();
        let view = TraceView::decode(Bytes::from(req)).unwrap();
        assert_eq!(seen_view(&view), seen_owned(&owned));
        assert_eq!(
            (view.spans().next().unwrap().kind(), view.spans().next().unwrap().name()),
            (3, &b"b"[..])
        );
        // The status (field 15) again: prost merges the two messages; the view declines.
        let mut merged = span.encode_to_vec();
        merged.extend_from_slice(&[0x7a, 0x02, 0x18, 0x02]);
        let req = request_of_span(&merged);
        assert!(ExportTraceServiceRequest::decode(req.as_slice()).is_ok());
        assert!(TraceView::decode(Bytes::from(req)).is_none());
        // An unknown field in the span (tag 99, varint): prost skips it; the view declines.
        let mut unknown = span.encode_to_vec();
        unknown.extend_from_slice(&[0x98, 0x06, 0x01]);
        let req = request_of_span(&unknown);
        assert!(ExportTraceServiceRequest::decode(req.as_slice()).is_ok());
        assert!(TraceView::decode(Bytes::from(req)).is_none());
        // A request sent twice back to back is one request with the resources of both.
        let mut two = sample().encode_to_vec();
        two.extend_from_slice(&sample().encode_to_vec());
        let owned = ExportTraceServiceRequest::decode(two.as_slice()).unwrap();
        let view = TraceView::decode(Bytes::from(two)).unwrap();
        assert_eq!(view.resource_count(), 4);
        assert_eq!(seen_view(&view), seen_owned(&owned));
    }

    /// Every mutation of a valid request (bytes flipped, cut, inserted) that the view takes, the owned types take
    /// too, with the same content; and the view takes most of what the owned types take.
    #[test]
    fn accepts_only_what_the_owned_types_accept() {
        let valid = sample().encode_to_vec();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut viewed, mut owned_only) = (0, 0);
        for _ in 0..200_000 {
            let mut b = valid.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % b.len();
                match next() % 4 {
                    0 => b[i] = next() as u8,
                    1 => b[i] ^= 1 << (next() % 8),
                    2 => b.truncate(i),
                    _ => b.insert(i, next() as u8),
                }
                if b.is_empty() {
                    break;
                }
            }
            let owned = ExportTraceServiceRequest::decode(b.as_slice());
            let view = TraceView::decode(Bytes::from(b.clone()));
            match (&owned, view) {
                (Ok(o), Some(v)) => {
                    // Compared as text: a mutated double can be NaN, which equals nothing.
                    assert_eq!(
                        format!("{:?}", seen_view(&v)),
                        format!("{:?}", seen_owned(o)),
                        "the same content from {b:?}"
                    );
                    viewed += 1;
                }
                (Ok(_), None) => owned_only += 1,
                (Err(e), Some(v)) => panic!("{b:?}: the view took {v:?}, the owned types refused: {e}"),
                (Err(_), None) => {}
            }
        }
        assert!(
            viewed > 5_000 && viewed > owned_only,
            "{viewed} taken by the view, {owned_only} by the owned types only"
        );
    }
}
