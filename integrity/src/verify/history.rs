//! The checkpoint history: that it moves forward, and that every seal it
//! anchors is still in the database.

use super::{Finding, Kind, Report, SealRef, Seals};
use crate::checkpoint::{self, Anchored, Stored};
use auditline_shared::auth::hex;
use std::collections::{BTreeMap, HashMap};

/// Checks that the history moves forward: each checkpoint names the one
/// before it, and anchors every chain the one before it anchored, at the
/// same or a later seal. Returns the checkpoints that could be read.
pub(super) fn check_history(
    history: Vec<Result<Stored, String>>,
    from_named: bool,
    report: &mut Report,
) -> Vec<Stored> {
    let mut good: Vec<Stored> = Vec::with_capacity(history.len());
    for entry in history {
        let cp = match entry {
            Ok(cp) => cp,
            Err(e) => {
                report.add(Finding::new(Kind::BadCheckpoint, e));
                continue;
            }
        };
        if let Some(before) = good.last() {
            let link_ok = match &cp.previous {
                Some(previous) => *previous == before.sha256,
                // A first-format checkpoint names nothing: only numbering checks it.
                None => cp.version < checkpoint::VERSION,
            };
            if !link_ok {
                report.add(Finding::new(
                    Kind::CheckpointRegression,
                    format!(
                        "{} does not name {} as its predecessor: a checkpoint between them is \
                         missing or one of them was altered",
                        cp.file, before.file
                    ),
                ));
            }
            let was: HashMap<&str, &Anchored> = before
                .chains
                .iter()
                .map(|a| (a.chain.as_str(), a))
                .collect();
            let now: HashMap<&str, &Anchored> =
                cp.chains.iter().map(|a| (a.chain.as_str(), a)).collect();
            for (chain, old) in was {
                let problem = match now.get(chain) {
                    None => Some(format!("no longer anchors chain {chain}")),
                    Some(new) if new.seq < old.seq => Some(format!(
                        "anchors chain {chain} at seal {} though {} anchored seal {}",
                        new.seq, before.file, old.seq
                    )),
                    Some(new) if new.seq == old.seq && new.seal_hash != old.seal_hash => {
                        Some(format!(
                            "anchors another hash for chain {chain} seal {} than {}",
                            new.seq, before.file
                        ))
                    }
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    report.add(Finding::new(
                        Kind::CheckpointRegression,
                        format!("{} {problem}: the history went backwards", cp.file),
                    ));
                }
            }
        } else if cp.previous.is_some() && !from_named {
            report.add(Finding::new(
                Kind::CheckpointRegression,
                format!(
                    "the oldest checkpoint in storage, {}, names a predecessor that is not \
                     there: older checkpoints were removed",
                    cp.file
                ),
            ));
        }
        good.push(cp);
    }
    good
}

/// Compares every anchored seal with the database: per chain, the newest
/// anchored seal must be there and each anchored hash must match (one
/// finding per chain and kind, naming the first checkpoint concerned).
pub fn check_anchors(history: &[Stored], seals: &Seals, report: &mut Report) {
    // chain -> (newest anchored seq, the first checkpoint anchoring it)
    let mut newest: BTreeMap<&str, (i64, &Stored, &Anchored)> = BTreeMap::new();
    // chain -> the first mismatching anchor, and how many differ
    let mut mismatched: BTreeMap<&str, (&Stored, &Anchored, usize)> = BTreeMap::new();
    let mut compared: HashMap<(&str, i64), ()> = HashMap::new();
    for cp in history {
        for anchored in &cp.chains {
            let chain = anchored.chain.as_str();
            match newest.get(chain) {
                Some((seq, _, _)) if *seq >= anchored.seq => {}
                _ => {
                    newest.insert(chain, (anchored.seq, cp, anchored));
                }
            }
            if compared.insert((chain, anchored.seq), ()).is_some() {
                continue;
            }
            let stored = seals.0.get(chain).and_then(|s| s.get(&anchored.seq));
            if let Some(seal) = stored
                && hex(&seal.hash) != anchored.seal_hash
            {
                mismatched
                    .entry(chain)
                    .and_modify(|(_, _, n)| *n += 1)
                    .or_insert((cp, anchored, 1));
            }
        }
    }
    for (chain, (seq, cp, anchored)) in newest {
        let at = SealRef {
            chain: chain.to_owned(),
            seq,
            batch_id: anchored.batch_id,
        };
        let held = seals
            .0
            .get(chain)
            .and_then(|s| s.keys().next_back().copied())
            .unwrap_or(0);
        if held < seq {
            let what = if held == 0 {
                "holds no seal at all: the whole chain was removed".to_owned()
            } else {
                format!("ends at seal {held}: its newest batches were removed")
            };
            report.add(
                Finding::new(
                    Kind::Truncated,
                    format!(
                        "chain {chain} {what}, but {} (of {}) anchors seal {seq}",
                        cp.file, cp.created_at
                    ),
                )
                .at_seal(&at),
            );
        }
    }
    for (chain, (cp, anchored, count)) in mismatched {
        let at = SealRef {
            chain: chain.to_owned(),
            seq: anchored.seq,
            batch_id: anchored.batch_id,
        };
        let more = if count > 1 {
            format!(" ({} later anchored seals differ too)", count - 1)
        } else {
            String::new()
        };
        report.add(
            Finding::new(
                Kind::CheckpointMismatch,
                format!(
                    "chain {chain} seal {} differs from {} (of {}){more}: the chain was rewritten",
                    anchored.seq, cp.file, cp.created_at
                ),
            )
            .at_seal(&at),
        );
    }
}
