//! The seal chains: every writer pipeline's seals read in order and checked
//! for numbering, links, recomputed hashes and writer signatures.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct SealRef {
    pub(super) chain: String,
    pub(super) seq: i64,
    pub(super) batch_id: Uuid,
}

#[derive(sqlx::FromRow)]
pub(super) struct SealRow {
    pub(super) chain: String,
    pub(super) seq: i64,
    pub(super) prev_hash: Vec<u8>,
    pub(super) seal_hash: Vec<u8>,
    pub(super) batch_id: Uuid,
    pub(super) committed_at: DateTime<Utc>,
    pub(super) inserted_count: i32,
    pub(super) entries_hash: Vec<u8>,
    pub(super) seal_key: Option<Vec<u8>>,
    pub(super) seal_signature: Option<Vec<u8>>,
}

/// A stored seal as the chain check saw it.
#[derive(Debug, Clone)]
pub struct SealSeen {
    pub hash: Vec<u8>,
    pub batch_id: Uuid,
    pub committed_at: DateTime<Utc>,
}

/// Each chain's seals read by [`check_chains`], by sequence number.
#[derive(Debug, Default)]
pub struct Seals(pub(super) HashMap<String, BTreeMap<i64, SealSeen>>);

impl Seals {
    /// Each chain's newest seal, by chain name.
    pub fn tips(&self) -> Vec<Anchored> {
        let mut tips: Vec<Anchored> = self
            .0
            .iter()
            .filter_map(|(chain, seals)| {
                seals.iter().next_back().map(|(seq, seal)| Anchored {
                    chain: chain.clone(),
                    seq: *seq,
                    seal_hash: hex(&seal.hash),
                    batch_id: seal.batch_id,
                    committed_at: seal.committed_at,
                })
            })
            .collect();
        tips.sort_by(|a, b| a.chain.cmp(&b.chain));
        tips
    }
}

/// Checks each chain's numbering, links, hashes and signatures, from the
/// sequence number `since` names for it (the whole chain otherwise);
/// returns the seals read.
pub async fn check_chains(
    pool: &PgPool,
    keys: &Keys,
    since: &HashMap<String, i64>,
    report: &mut Report,
) -> anyhow::Result<Seals> {
    let (names, starts): (Vec<&str>, Vec<i64>) =
        since.iter().map(|(c, s)| (c.as_str(), *s)).unzip();
    let mut rows = sqlx::query_as::<_, SealRow>(
        "WITH since(chain, seq) AS (SELECT * FROM unnest($1::text[], $2::bigint[])) \
         SELECT b.chain, b.seq, b.prev_hash, b.seal_hash, b.batch_id, b.committed_at, \
                b.inserted_count, sha256(b.entries) AS entries_hash, b.seal_key, b.seal_signature \
         FROM auditline.batches b LEFT JOIN since ON since.chain = b.chain \
         WHERE b.chain IS NOT NULL AND b.seq >= coalesce(since.seq, 1) \
         ORDER BY b.chain, b.seq",
    )
    .bind(&names)
    .bind(&starts)
    .fetch(pool);
    let mut chains: HashMap<String, BTreeMap<i64, SealSeen>> = HashMap::new();
    // The chain being read: its name, the sequence number expected next and
    // the hash that seal must name (unknown for a walk's first seal).
    let mut current: Option<(String, i64, Option<Vec<u8>>)> = None;
    while let Some(row) = rows.try_next().await? {
        report.seals += 1;
        let at = SealRef {
            chain: row.chain.clone(),
            seq: row.seq,
            batch_id: row.batch_id,
        };
        let (expected_seq, prev) = match current.take() {
            Some((chain, seq, hash)) if chain == row.chain => (seq, hash),
            _ => match since.get(&row.chain) {
                Some(seq) => (*seq, None),
                None => (1, Some(seal::GENESIS.to_vec())),
            },
        };
        if row.seq > expected_seq {
            report.add(
                Finding::new(
                    Kind::MissingBatch,
                    format!(
                        "chain {}: batches {expected_seq}..={} are missing (seal {} follows {})",
                        row.chain,
                        row.seq - 1,
                        row.seq,
                        expected_seq - 1
                    ),
                )
                .at_seal(&at),
            );
        } else if prev.is_some_and(|prev| row.prev_hash != prev) {
            report.add(
                Finding::new(
                    Kind::BrokenChain,
                    format!(
                        "chain {} seal {} does not name seal {}'s hash: seals were re-ordered or rewritten",
                        row.chain,
                        row.seq,
                        row.seq - 1
                    ),
                )
                .at_seal(&at),
            );
        }
        let recomputed = seal::seal_hash(&seal::SealInput {
            chain: &row.chain,
            seq: row.seq,
            prev_hash: &row.prev_hash,
            batch_id: row.batch_id,
            entry_count: i64::from(row.inserted_count),
            entries_hash: &row.entries_hash,
        });
        if recomputed[..] != row.seal_hash[..] {
            report.add(
                Finding::new(
                    Kind::AlteredSeal,
                    format!(
                        "chain {} seal {}: its hash does not recompute from its fields (batch {})",
                        row.chain, row.seq, row.batch_id
                    ),
                )
                .at_seal(&at),
            );
        }
        let signed = keys.check_seal(
            &row.seal_hash,
            row.seal_key.as_deref(),
            row.seal_signature.as_deref(),
        );
        if let Err(problem) = signed {
            let (kind, why) = match problem {
                SealSignature::Missing => (Kind::UnsignedSeal, "is not signed"),
                SealSignature::UnknownKey => (
                    Kind::ForgedSeal,
                    "is signed by a key that is not a configured writer key",
                ),
                SealSignature::Invalid => {
                    (Kind::ForgedSeal, "carries a signature that does not verify")
                }
            };
            report.add(
                Finding::new(
                    kind,
                    format!(
                        "chain {} seal {} (batch {}) {why}: it was not written by a writer",
                        row.chain, row.seq, row.batch_id
                    ),
                )
                .at_seal(&at),
            );
        }
        current = Some((row.chain.clone(), row.seq + 1, Some(row.seal_hash.clone())));
        chains.entry(row.chain).or_default().insert(
            row.seq,
            SealSeen {
                hash: row.seal_hash,
                batch_id: row.batch_id,
                committed_at: row.committed_at,
            },
        );
    }
    report.chains = chains.len();
    Ok(Seals(chains))
}
