//! The attribute lists a request span is read by (status codes, sizes, tokens, times), as one table, so that a
//! span's attributes are read in one pass: each key is looked up among the few listed keys that share its
//! sketch bit, and only a listed key's value is read. Reading list by list scanned the span's attributes once per
//! list (ten lists, a dozen keys), which cost more than recording the span's values.

use super::classify::{Attributes, Val};
use super::config::SpanRules;
use infercol_pipelines::lite::same_bytes;

/// The lists, in the order `Found` keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    GrpcStatus,
    RpcSystem,
    WebsocketClose,
    HttpStatus,
    TimeToFirstToken,
    RequestSize,
    ResponseSize,
    InputTokens,
    OutputTokens,
    QueueDuration,
}

const LISTS: usize = 10;

impl List {
    const ALL: [List; LISTS] = [
        List::GrpcStatus,
        List::RpcSystem,
        List::WebsocketClose,
        List::HttpStatus,
        List::TimeToFirstToken,
        List::RequestSize,
        List::ResponseSize,
        List::InputTokens,
        List::OutputTokens,
        List::QueueDuration,
    ];

    fn keys(self, rules: &SpanRules) -> &[String] {
        match self {
            List::GrpcStatus => &rules.grpc_status_code_attributes,
            List::RpcSystem => &rules.rpc_system_attributes,
            List::WebsocketClose => &rules.websocket_close_code_attributes,
            List::HttpStatus => &rules.http_status_code_attributes,
            List::TimeToFirstToken => &rules.time_to_first_token_attributes,
            List::RequestSize => &rules.request_size_attributes,
            List::ResponseSize => &rules.response_size_attributes,
            List::InputTokens => &rules.input_token_attributes,
            List::OutputTokens => &rules.output_token_attributes,
            List::QueueDuration => &rules.queue_duration_attributes,
        }
    }
}

/// A listed key: which list, and its rank there (the first listed key present wins).
struct Listed {
    key: Box<[u8]>,
    list: usize,
    rank: u32,
}

/// Every listed key, by its sketch bit (`key_bit`): most of a span's keys find an empty run, the rest one key to
/// compare. One flat table (`listed[at[bit]..at[bit + 1]]`), so that a lookup follows no pointer but the key's.
pub struct RequestKeys {
    at: [u32; 65],
    listed: Vec<Listed>,
}

/// What one pass found, list by list: the rank of the first-ranked key present and that pair's position (its value
/// `None` when the pair carries none, which then hides the lower-ranked keys, as a lookup list by list does).
/// Positions rather than values, so that it stays small: holding the values made it 400 bytes, copied on return.
pub struct Found<'a, A: ?Sized> {
    attributes: &'a A,
    rank: [u32; LISTS],
    at: [u32; LISTS],
}

impl<'a, A: Attributes + ?Sized> Found<'a, A> {
    /// The list's value: that of the first-ranked key present, as `classify::find` answers.
    pub fn get(&self, list: List) -> Option<Val<'a>> {
        let i = list as usize;
        if self.rank[i] == NOT_FOUND {
            return None;
        }
        self.attributes.value_at(self.at[i] as usize)
    }
}

const NOT_FOUND: u32 = u32::MAX;

impl RequestKeys {
    pub fn new(rules: &SpanRules) -> RequestKeys {
        let mut listed: Vec<(usize, Listed)> = Vec::new();
        for list in List::ALL {
            for (rank, key) in list.keys(rules).iter().enumerate() {
                let entry = Listed {
                    key: key.as_bytes().into(),
                    list: list as usize,
                    rank: rank as u32,
                };
                listed.push((bit_of(key.as_bytes()), entry));
            }
        }
        listed.sort_by_key(|(bit, _)| *bit);
        let mut at = [0u32; 65];
        for bit in 0..64 {
            at[bit + 1] = at[bit] + listed.iter().filter(|(b, _)| *b == bit).count() as u32;
        }
        RequestKeys {
            at,
            listed: listed.into_iter().map(|(_, l)| l).collect(),
        }
    }

    /// One pass over `attributes`.
    #[inline]
    pub fn read<'a, A: Attributes + ?Sized>(&self, attributes: &'a A) -> Found<'a, A> {
        let mut found = Found {
            attributes,
            rank: [NOT_FOUND; LISTS],
            at: [0; LISTS],
        };
        attributes.for_each_key(|at, key| {
            let bit = bit_of(key);
            for listed in &self.listed[self.at[bit] as usize..self.at[bit + 1] as usize] {
                if !same_bytes(&listed.key, key) {
                    continue;
                }
                // Strictly better only: of a key given twice, the first pair counts (as a lookup finds it).
                if listed.rank < found.rank[listed.list] {
                    found.rank[listed.list] = listed.rank;
                    found.at[listed.list] = at as u32;
                }
            }
        });
        found
    }
}

fn bit_of(key: &[u8]) -> usize {
    super::classify::key_bit(key).trailing_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_metrics::classify::find;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};

    /// Whatever the span carries (keys of several lists, a key twice, a key without a value, keys that share a
    /// sketch bit), the one pass answers every list as a lookup list by list does.
    #[test]
    fn one_pass_answers_as_each_list_does() {
        let rules = SpanRules::default();
        let table = RequestKeys::new(&rules);
        let mut keys: Vec<String> = List::ALL.iter().flat_map(|l| l.keys(&rules).iter().cloned()).collect();
        keys.extend(["a", "", "x.y.z", "http.request.body.size"].map(String::from));
        for mask in 0u32..(1 << 12) {
            let attrs: Vec<KeyValue> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << (i % 12)) != 0 && i % 5 != 4)
                .map(|(i, k)| KeyValue {
                    key: k.clone(),
                    // Every seventh pair carries no value.
                    value: (i % 7 != 6).then_some(AnyValue {
                        value: Some(Value::IntValue(i as i64)),
                    }),
                    ..Default::default()
                })
                .collect();
            let found = table.read(attrs.as_slice());
            for list in List::ALL {
                assert_eq!(
                    found.get(list),
                    find(attrs.as_slice(), list.keys(&rules)),
                    "{list:?} in {mask:b}"
                );
            }
        }
    }
}
