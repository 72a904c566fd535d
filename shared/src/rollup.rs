//! The rollups' storage layout, which the writer's fold writes and the admin
//! API reads: per-minute, per-hour and per-day aggregates of the stored events
//! (`auditline.rollups`, `auditline.rollup_latency`), at the [`Grain`]s below,
//! with latency histograms. The fold itself is the writer's
//! (`auditline_writer::fold`).
//!
//! Response times are kept as log-scale histograms: bucket 0 is `[0, 1]` ms,
//! bucket `b > 0` is `(2^((b-1)/4), 2^(b/4)]` ms, so a percentile read from a
//! histogram is the upper bound of the bucket it falls in, at most 19% above
//! the exact value.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// Histogram length; the last bucket is open-ended (above 2^(95/4) ms ≈ 3.8 h).
pub const LATENCY_BUCKETS: usize = 96;

/// The histogram bucket of a response time in milliseconds.
pub fn latency_bucket(ms: f64) -> usize {
    if ms.is_nan() || ms <= 1.0 {
        return 0;
    }
    let b = (4.0 * ms.log2()).ceil();
    if b >= (LATENCY_BUCKETS - 1) as f64 {
        LATENCY_BUCKETS - 1
    } else {
        b as usize
    }
}

/// The inclusive upper bound of a bucket, in milliseconds.
pub fn bucket_upper_ms(bucket: usize) -> f64 {
    2f64.powf(bucket as f64 / 4.0)
}

/// The exclusive lower bound of a bucket, in milliseconds (0 for bucket 0).
pub fn bucket_lower_ms(bucket: usize) -> f64 {
    if bucket == 0 {
        0.0
    } else {
        2f64.powf((bucket - 1) as f64 / 4.0)
    }
}

/// The `q` quantile (0 < q ≤ 1) of a histogram: the upper bound of the bucket
/// holding the `ceil(q·n)`-th smallest value. `None` when it is empty.
pub fn quantile(hist: &[i64], q: f64) -> Option<f64> {
    let total: i64 = hist.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as i64).clamp(1, total);
    let mut seen = 0;
    for (bucket, count) in hist.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_upper_ms(bucket));
        }
    }
    Some(bucket_upper_ms(hist.len().saturating_sub(1)))
}

/// The select-list (a literal, for `concat!`) that reads a stored, trimmed
/// histogram of `auditline.rollup_latency`: its first bucket and its counts
/// from there, as [`merge`] takes them.
#[macro_export]
macro_rules! hist_columns {
    () => {
        "array_lower(hist, 1) - 1, hist[array_lower(hist, 1):array_upper(hist, 1)]"
    };
}

/// Adds a histogram whose first count is bucket `first` into `into`.
pub fn merge(into: &mut Vec<i64>, first: i32, counts: &[i32]) {
    let first = usize::try_from(first).unwrap_or(0).min(LATENCY_BUCKETS);
    let end = (first + counts.len()).min(LATENCY_BUCKETS);
    if into.len() < end {
        into.resize(end, 0);
    }
    for (a, b) in into[first..end].iter_mut().zip(counts) {
        *a += i64::from(*b);
    }
}

/// The grains rollups are kept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grain {
    Minute,
    Hour,
    Day,
}

impl Grain {
    pub const ALL: [Grain; 3] = [Grain::Minute, Grain::Hour, Grain::Day];

    /// The value of the `grain` column.
    pub fn code(self) -> &'static str {
        match self {
            Grain::Minute => "m",
            Grain::Hour => "h",
            Grain::Day => "d",
        }
    }

    pub fn span(self) -> TimeDelta {
        match self {
            Grain::Minute => TimeDelta::minutes(1),
            Grain::Hour => TimeDelta::hours(1),
            Grain::Day => TimeDelta::days(1),
        }
    }

    /// The start of the bucket holding `at`.
    pub fn floor(self, at: DateTime<Utc>) -> DateTime<Utc> {
        at.duration_trunc(self.span()).unwrap_or(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values() {
        for ms in [0.0, 0.5, 1.0, 1.01, 2.0, 3.7, 12.5, 99.9, 1_000.0, 65_000.0] {
            let b = latency_bucket(ms);
            assert!(
                ms <= bucket_upper_ms(b) * (1.0 + 1e-12),
                "{ms} above bucket {b}"
            );
            assert!(ms > bucket_lower_ms(b) || b == 0, "{ms} below bucket {b}");
        }
        assert_eq!(latency_bucket(1e12), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn quantile_reads_the_bucket_of_the_rank() {
        let mut hist = vec![0i64; LATENCY_BUCKETS];
        for ms in 1..=100 {
            hist[latency_bucket(f64::from(ms))] += 1;
        }
        let p95 = quantile(&hist, 0.95).expect("not empty");
        assert!((95.0..=95.0 * 1.19).contains(&p95), "{p95}");
        assert_eq!(quantile(&[0, 0], 0.5), None);
    }

    #[test]
    fn trimmed_histograms_merge_at_their_first_bucket() {
        let mut merged = vec![1, 1];
        merge(&mut merged, 3, &[2, 5]);
        merge(&mut merged, 0, &[1]);
        assert_eq!(merged, vec![2, 1, 0, 2, 5]);
        // Nothing lands past the last bucket, whatever a row claims.
        merge(&mut merged, LATENCY_BUCKETS as i32 - 1, &[1, 9]);
        assert_eq!(merged.len(), LATENCY_BUCKETS);
        assert_eq!(merged[LATENCY_BUCKETS - 1], 1);
    }
}
