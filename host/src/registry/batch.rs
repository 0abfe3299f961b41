//! Packing key writes and deletes into etcd transactions: at most `max_ops`
//! operations and about `max_bytes` of payload each (etcd's defaults are 128
//! operations and 1.5 MiB per request), with every delete that is replaced by
//! a put of the same service kept in the same transaction, so an identity
//! change is never seen half done (both keys, or neither).

use std::collections::{BTreeMap, VecDeque};

/// One operation in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String),
    Delete(String),
}

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Comfortably under etcd's default 1.5 MiB `--max-request-bytes`.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// Everything before the last `/`: `<prefix>/<namespace>/<name>`.
fn service_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(service, _)| service)
}

/// Plans transactions for `deletes` and `puts` (each with its payload size).
pub fn plan(
    mut deletes: Vec<(String, usize)>,
    puts: Vec<(String, usize)>,
    max_ops: usize,
    max_bytes: usize,
) -> Vec<Vec<Op>> {
    let max_ops = max_ops.max(2);
    deletes.sort_by(|a, b| (service_of(&a.0), &a.0).cmp(&(service_of(&b.0), &b.0)));

    // Units that must land together: (delete, put) pairs of one service,
    // then whatever is left on its own.
    let mut units: Vec<(Vec<Op>, usize)> = Vec::new();
    let mut lonely_deletes = Vec::new();
    let mut puts_by_service: BTreeMap<String, VecDeque<(String, usize)>> = BTreeMap::new();
    for (put, size) in puts {
        puts_by_service
            .entry(service_of(&put).to_string())
            .or_default()
            .push_back((put, size));
    }
    for (delete, delete_size) in deletes {
        let partner = puts_by_service
            .get_mut(service_of(&delete))
            .and_then(VecDeque::pop_front);
        match partner {
            Some((put, put_size)) => units.push((
                vec![Op::Delete(delete), Op::Put(put)],
                delete_size + put_size,
            )),
            None => lonely_deletes.push((vec![Op::Delete(delete)], delete_size)),
        }
    }
    units.extend(lonely_deletes);
    units.extend(
        puts_by_service
            .into_values()
            .flatten()
            .map(|(put, size)| (vec![Op::Put(put)], size)),
    );

    let mut batches: Vec<Vec<Op>> = Vec::new();
    let mut current: Vec<Op> = Vec::new();
    let mut current_bytes = 0;
    for (ops, bytes) in units {
        let fits = current.len() + ops.len() <= max_ops && current_bytes + bytes <= max_bytes;
        if !fits && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.extend(ops);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<(String, usize)> {
        names.iter().map(|n| (n.to_string(), 100)).collect()
    }

    #[test]
    fn nothing_to_do_plans_nothing() {
        assert!(plan(vec![], vec![], MAX_TXN_OPS, MAX_TXN_BYTES).is_empty());
    }

    #[test]
    fn an_identity_change_is_one_transaction() {
        let batches = plan(
            keys(&["/p/ns/svc/old"]),
            keys(&["/p/ns/svc/new"]),
            128,
            MAX_TXN_BYTES,
        );
        assert_eq!(
            batches,
            vec![vec![
                Op::Delete("/p/ns/svc/old".into()),
                Op::Put("/p/ns/svc/new".into())
            ]]
        );
    }

    #[test]
    fn pairs_never_split_across_batches() {
        let deletes: Vec<String> = (0..300)
            .map(|i| format!("/p/ns/svc{}/old{i}", i % 7))
            .collect();
        let puts: Vec<String> = (0..300)
            .map(|i| format!("/p/ns/svc{}/new{i}", i % 7))
            .collect();
        let batches = plan(
            deletes.iter().map(|k| (k.clone(), 10)).collect(),
            puts.iter().map(|k| (k.clone(), 10)).collect(),
            5,
            MAX_TXN_BYTES,
        );
        let mut seen = 0;
        for batch in &batches {
            assert!(batch.len() <= 5);
            // Within a batch, each delete is followed by its service's put.
            let mut i = 0;
            while i < batch.len() {
                if let Op::Delete(d) = &batch[i] {
                    match batch.get(i + 1) {
                        Some(Op::Put(p)) => assert_eq!(service_of(d), service_of(p)),
                        other => panic!("delete {d} not paired: {other:?}"),
                    }
                    i += 2;
                } else {
                    i += 1;
                }
            }
            seen += batch.len();
        }
        assert_eq!(seen, 600);
    }

    #[test]
    fn batches_respect_op_and_byte_limits() {
        let puts: Vec<(String, usize)> =
            (0..1000).map(|i| (format!("/p/ns/s/{i}"), 1000)).collect();
        let batches = plan(vec![], puts, 128, 50_000);
        assert!(batches.iter().all(|b| b.len() <= 50));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 1000);
        let batches = plan(
            vec![],
            keys(&["/a/b/c"; 300].map(|s| s)),
            128,
            MAX_TXN_BYTES,
        );
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![128, 128, 44]
        );
    }

    #[test]
    fn an_oversized_record_still_goes_alone() {
        let batches = plan(
            vec![],
            vec![("/a/b/big".into(), 5_000_000), ("/a/b/small".into(), 10)],
            128,
            MAX_TXN_BYTES,
        );
        assert_eq!(batches.len(), 2);
    }

    #[test]
    fn deletes_of_other_services_are_not_paired() {
        let batches = plan(keys(&["/p/ns/a/1"]), keys(&["/p/ns/b/2"]), 1, MAX_TXN_BYTES);
        // max_ops is raised to 2 so a pair always fits; unrelated ops may share.
        assert_eq!(batches.concat().len(), 2);
    }
}
