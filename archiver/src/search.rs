//! Event searches over one archived segment (`Investigate.FindEvents` below the hot tier,
//! DESIGN §5): which row groups can hold a match, which rows do, and only then the leaves of
//! those rows.
//!
//! Steps, cheapest first:
//! 1. the whole segment is skipped when its record's `oldest..=newest` misses the time window
//!    (no object read at all — [`segment_may_match`]);
//! 2. row groups are skipped by position (the resume point), by footer statistics
//!    (`logged_at` min/max; min/max and null counts of each string column with an equality
//!    condition) and then, for the survivors only, by the bloom filters of `event_id`,
//!    `session_id`, `correlation_id` and `user_id`;
//! 3. the surviving row groups' filter columns (plus `leaf_index` and `logged_at`) are read and
//!    evaluated per row: the candidates;
//! 4. `leaf_hash` and `leaf` are fetched for as many candidates as the limit still needs (a
//!    row selection: pages without a candidate are not read); each leaf is checked against its
//!    stored hash, decoded, compared with the typed columns it was selected by (a disagreement
//!    is an error naming the leaf and column), and judged by [`EventFilter::matches`] — the one
//!    definition of a match, shared with the hot tier.
//!
//! A content-expired row is judged as `LeafRecord { event: None, logged_at: <column> }`, so it
//! matches pure time windows only. The caller ([`crate::TierReader::find_in_segment`]) opens
//! the object through the verified reader cache and checks every returned hash against the
//! tree.

use std::borrow::Cow;

use arrow::array::{Array, RecordBatch, StringArray, UInt64Array};
use auditledger_ledger::event::{AuditEvent, LeafRecord, decode_leaf};
use auditledger_ledger::query::{EventFilter, Order};
use auditledger_ledger::segments::SegmentRecord;
use futures_util::StreamExt;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::file::metadata::RowGroupMetaData;

use crate::error::ArchiveError;
use crate::segment::{
    LeafProblem, SegmentError, SegmentId, SegmentReader, SegmentRow, TypedColumns, column,
};

/// Candidates whose leaves are fetched per read when the limit does not bound them tighter.
const CANDIDATES_PER_READ: usize = 4096;

/// What one search of one segment did (for tests, benchmarks and metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchStats {
    /// The segment's time range missed the window: nothing was read.
    pub segment_skipped: bool,
    /// Row groups in the segment (0 when skipped before opening it).
    pub row_groups: usize,
    /// Row groups skipped because they lie before the resume point (in the search order).
    pub pruned_by_position: usize,
    /// Row groups skipped by footer statistics.
    pub pruned_by_statistics: usize,
    /// Bloom filters read (only for row groups that survived the statistics).
    pub bloom_filters_read: usize,
    /// Row groups skipped by a bloom filter.
    pub pruned_by_bloom: usize,
    /// Row groups whose filter columns were read.
    pub row_groups_scanned: usize,
    /// Rows whose filter columns were evaluated.
    pub rows_scanned: u64,
    /// Rows whose filter columns matched.
    pub candidates: u64,
    /// Rows whose `leaf` was fetched (a read of the `leaf` column happens only if > 0).
    pub leaves_read: u64,
    /// Leaf reads: row selections of `leaf` pages issued.
    pub leaf_reads: u64,
}

/// Whether a segment with this record can hold a leaf in the filter's time window
/// (`logged_at` never decreases, so `oldest..=newest` bounds every leaf of it).
pub fn segment_may_match(record: &SegmentRecord, filter: &EventFilter) -> bool {
    record.newest >= filter.from_time && (filter.to_time == 0 || record.oldest < filter.to_time)
}

/// One equality condition on a typed string column; `want: None` = the column must be null
/// (the event field is empty).
struct Condition {
    column: &'static str,
    /// Index into [`column::STRINGS`] (and so into [`TypedColumns::strings`]).
    slot: usize,
    want: Option<String>,
}

/// The filter as conditions on the typed columns.
struct Plan<'a> {
    filter: &'a EventFilter,
    conditions: Vec<Condition>,
    /// Any condition besides the time window: expired rows (null `event_kind`) cannot match.
    needs_event: bool,
    /// String columns read in the first pass, in this order.
    string_columns: Vec<(&'static str, usize)>,
}

fn slot_of(name: &str) -> usize {
    column::STRINGS
        .iter()
        .position(|c| *c == name)
        .unwrap_or_else(|| unreachable!("{name} is a typed string column"))
}

impl<'a> Plan<'a> {
    fn new(filter: &'a EventFilter) -> Self {
        // The column text of an enum is whatever the writer derives from an event holding it:
        // derive it the same way rather than restating the naming rule.
        let derived = |event: AuditEvent, name: &'static str| -> Option<String> {
            let record = LeafRecord {
                event: Some(event),
                logged_at: 0,
                principal: String::new(),
            };
            TypedColumns::of(&record).strings[slot_of(name)]
                .as_ref()
                .map(|s| s.to_string())
        };
        let mut conditions = Vec::new();
        if let Some(kind) = filter.event_kind {
            let event = AuditEvent {
                event_kind: kind as i32,
                ..Default::default()
            };
            conditions.push((column::EVENT_KIND, derived(event, column::EVENT_KIND)));
        }
        if let Some(decision) = filter.decision {
            let event = AuditEvent {
                decision: decision as i32,
                ..Default::default()
            };
            conditions.push((column::DECISION, derived(event, column::DECISION)));
        }
        for (name, want) in [
            (column::EVENT_ID, &filter.event_id),
            (column::CORRELATION_ID, &filter.correlation_id),
            (column::SESSION_ID, &filter.session_id),
            (column::TRACE_ID, &filter.trace_id),
            (column::USER_ID, &filter.user_id),
            (column::AGENT_ID, &filter.agent_id),
            (column::TOOL_SERVER, &filter.tool_server),
            (column::TOOL_NAME, &filter.tool_name),
            (column::DATA_CLASSIFICATION, &filter.data_classification),
        ] {
            if let Some(want) = want {
                // The writer stores an empty field as null.
                conditions.push((name, (!want.is_empty()).then(|| want.clone())));
            }
        }
        let conditions: Vec<Condition> = conditions
            .into_iter()
            .map(|(column, want)| Condition {
                column,
                slot: slot_of(column),
                want,
            })
            .collect();
        let needs_event = *filter
            != EventFilter {
                from_time: filter.from_time,
                to_time: filter.to_time,
                ..EventFilter::default()
            };
        let mut string_columns: Vec<(&'static str, usize)> = Vec::new();
        if needs_event {
            string_columns.push((column::EVENT_KIND, slot_of(column::EVENT_KIND)));
        }
        for c in &conditions {
            if !string_columns.iter().any(|(name, _)| *name == c.column) {
                string_columns.push((c.column, c.slot));
            }
        }
        Plan {
            filter,
            conditions,
            needs_event,
            string_columns,
        }
    }
}

fn segment_error(step: &'static str) -> impl Fn(SegmentError) -> ArchiveError {
    move |source| ArchiveError::Segment { step, source }
}

/// Position of a column in the (flat) Parquet schema.
fn column_index(reader: &SegmentReader, name: &'static str) -> Result<usize, SegmentError> {
    reader
        .parquet_metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == name)
        .ok_or_else(|| SegmentError::Schema {
            segment: reader.id().to_string(),
            column: name,
            reason: "missing: the segment cannot be searched on it".into(),
        })
}

/// Whether the row group's footer statistics prove that no row can match.
fn pruned_by_statistics(
    group: &RowGroupMetaData,
    plan: &Plan<'_>,
    indexes: &ColumnIndexes,
) -> bool {
    let rows = u64::try_from(group.num_rows()).unwrap_or(0);
    let filter = plan.filter;
    let value = |bytes: Option<&[u8]>| {
        bytes
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if (filter.from_time != 0 || filter.to_time != 0)
        && let Some(stats) = group.column(indexes.logged_at).statistics()
        && let (Some(min), Some(max)) = (value(stats.min_bytes_opt()), value(stats.max_bytes_opt()))
        && (max < filter.from_time || (filter.to_time != 0 && min >= filter.to_time))
    {
        return true;
    }
    let all_null = |index: usize| {
        group
            .column(index)
            .statistics()
            .and_then(|s| s.null_count_opt())
            .is_some_and(|nulls| nulls >= rows)
    };
    if plan.needs_event && all_null(indexes.event_kind) {
        // Every row of the group expired.
        return true;
    }
    for (condition, &index) in plan.conditions.iter().zip(&indexes.conditions) {
        let stats = group.column(index).statistics();
        match &condition.want {
            None => {
                if stats
                    .and_then(|s| s.null_count_opt())
                    .is_some_and(|nulls| nulls == 0)
                {
                    return true;
                }
            }
            Some(want) => {
                if all_null(index) {
                    return true;
                }
                // UTF-8 compares like its bytes, the Parquet order of STRING; truncated
                // statistics stay bounds (min rounded down, max up).
                let want = want.as_bytes();
                if let Some(stats) = stats
                    && (stats.min_bytes_opt().is_some_and(|min| want < min)
                        || stats.max_bytes_opt().is_some_and(|max| want > max))
                {
                    return true;
                }
            }
        }
    }
    false
}

/// Schema positions of the columns a plan looks at.
struct ColumnIndexes {
    logged_at: usize,
    event_kind: usize,
    /// One per [`Plan::conditions`] entry.
    conditions: Vec<usize>,
}

/// A row whose filter columns matched.
#[derive(Clone)]
struct Candidate {
    leaf_index: u64,
    /// Row number inside its row group.
    position: usize,
    logged_at: u64,
    /// Values of [`Plan::string_columns`], in that order.
    values: Vec<Option<String>>,
}

/// Column `name` of `batch` as an array of type `A` (`expected` names the type in errors).
fn typed_column<'b, A: Array + 'static>(
    id: &SegmentId,
    batch: &'b RecordBatch,
    name: &'static str,
    expected: &str,
) -> Result<&'b A, SegmentError> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| SegmentError::Schema {
            segment: id.to_string(),
            column: name,
            reason: "missing".into(),
        })?;
    array
        .as_any()
        .downcast_ref::<A>()
        .ok_or_else(|| SegmentError::Schema {
            segment: id.to_string(),
            column: name,
            reason: format!("type {}, expected {expected}", array.data_type()),
        })
}

/// Reads the plan's columns of one row group and returns its candidates in ascending order.
async fn scan_row_group(
    reader: &SegmentReader,
    plan: &Plan<'_>,
    row_group: usize,
    after: impl Fn(u64) -> bool,
    stats: &mut SearchStats,
) -> Result<Vec<Candidate>, SegmentError> {
    let id = reader.id();
    let mut columns = vec![column::LEAF_INDEX, column::LOGGED_AT];
    columns.extend(plan.string_columns.iter().map(|(name, _)| *name));
    let mut batches = reader.row_group_batches(&columns, row_group, None)?;
    let mut out = Vec::new();
    let mut position = 0usize;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let leaf_index = typed_column::<UInt64Array>(id, &batch, column::LEAF_INDEX, "UInt64")?;
        let logged_at = typed_column::<UInt64Array>(id, &batch, column::LOGGED_AT, "UInt64")?;
        let strings = plan
            .string_columns
            .iter()
            .map(|(name, _)| typed_column::<StringArray>(id, &batch, name, "Utf8"))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted: Vec<(usize, &Option<String>)> = plan
            .conditions
            .iter()
            .map(|c| {
                let at = plan
                    .string_columns
                    .iter()
                    .position(|(name, _)| *name == c.column)
                    .unwrap_or_else(|| unreachable!("every condition column is read"));
                (at, &c.want)
            })
            .collect();
        for row in 0..batch.num_rows() {
            let row_position = position + row;
            if !leaf_index.is_valid(row) {
                return Err(SegmentError::Schema {
                    segment: id.to_string(),
                    column: column::LEAF_INDEX,
                    reason: format!("null value in row {row_position} of row group {row_group}"),
                });
            }
            let index = leaf_index.value(row);
            stats.rows_scanned += 1;
            if !after(index) {
                continue;
            }
            if !logged_at.is_valid(row) {
                return Err(SegmentError::leaf(
                    id,
                    index,
                    LeafProblem::Null {
                        column: column::LOGGED_AT,
                    },
                ));
            }
            let time = logged_at.value(row);
            if !plan.filter.time_matches(time) {
                continue;
            }
            let value = |at: usize| {
                let array = strings[at];
                array.is_valid(row).then(|| array.value(row))
            };
            // Expired rows have every typed column but `logged_at` null; present ones always
            // have an event kind.
            if plan.needs_event && value(0).is_none() {
                continue;
            }
            if !wanted
                .iter()
                .all(|(at, want)| value(*at) == want.as_deref())
            {
                continue;
            }
            out.push(Candidate {
                leaf_index: index,
                position: row_position,
                logged_at: time,
                values: (0..strings.len())
                    .map(|at| value(at).map(str::to_owned))
                    .collect(),
            });
        }
        position += batch.num_rows();
    }
    stats.candidates += out.len() as u64;
    Ok(out)
}

/// A row selection of the given ascending row positions.
fn selection_of(positions: &[usize]) -> RowSelection {
    let mut selectors = Vec::new();
    let mut next = 0usize;
    for &p in positions {
        if p > next {
            selectors.push(RowSelector::skip(p - next));
        }
        selectors.push(RowSelector::select(1));
        next = p + 1;
    }
    RowSelection::from(selectors)
}

/// Checks that the typed columns a candidate was selected by are those of its leaf.
fn check_agreement(
    id: &SegmentId,
    plan: &Plan<'_>,
    candidate: &Candidate,
    record: &LeafRecord,
    present: bool,
) -> Result<(), SegmentError> {
    let typed = TypedColumns::of(record);
    let disagree = |column: &'static str, column_value: Option<String>, leaf_value| {
        SegmentError::leaf(
            id,
            candidate.leaf_index,
            LeafProblem::ColumnDisagrees {
                column,
                column_value,
                leaf_value,
            },
        )
    };
    if present && typed.logged_at != candidate.logged_at {
        return Err(disagree(
            column::LOGGED_AT,
            Some(candidate.logged_at.to_string()),
            Some(typed.logged_at.to_string()),
        ));
    }
    for ((name, slot), value) in plan.string_columns.iter().zip(&candidate.values) {
        let leaf_value = typed.strings[*slot].as_ref().map(Cow::as_ref);
        if value.as_deref() != leaf_value {
            return Err(disagree(name, value.clone(), leaf_value.map(str::to_owned)));
        }
    }
    Ok(())
}

/// Fetches, checks and judges the leaves of `candidates` (ascending) of one row group;
/// returns the matching rows, ascending.
async fn confirm(
    reader: &SegmentReader,
    plan: &Plan<'_>,
    row_group: usize,
    candidates: &[Candidate],
    stats: &mut SearchStats,
) -> Result<Vec<SegmentRow>, SegmentError> {
    let id = reader.id();
    let positions: Vec<usize> = candidates.iter().map(|c| c.position).collect();
    let rows = reader
        .selected_rows(row_group, selection_of(&positions))
        .await?;
    stats.leaf_reads += 1;
    stats.leaves_read += rows.len() as u64;
    let mut out = Vec::new();
    let mut rows = rows.into_iter();
    for candidate in candidates {
        let Some(row) = rows.next() else {
            return Err(SegmentError::leaf(
                id,
                candidate.leaf_index,
                LeafProblem::Missing {
                    next_found: id.end(),
                },
            ));
        };
        if row.leaf_index != candidate.leaf_index {
            let problem = if row.leaf_index > candidate.leaf_index {
                LeafProblem::Missing {
                    next_found: row.leaf_index,
                }
            } else {
                LeafProblem::OutOfOrder {
                    found: row.leaf_index,
                }
            };
            return Err(SegmentError::leaf(id, candidate.leaf_index, problem));
        }
        let record = match &row.leaf {
            Some(bytes) => decode_leaf(bytes)
                .map_err(|e| SegmentError::leaf(id, row.leaf_index, LeafProblem::Decode(e)))?,
            None => LeafRecord {
                event: None,
                logged_at: candidate.logged_at,
                principal: String::new(),
            },
        };
        check_agreement(id, plan, candidate, &record, row.leaf.is_some())?;
        if plan.filter.matches(&record) {
            out.push(row);
        }
    }
    Ok(out)
}

/// Up to `limit` rows of the segment matching `filter`, strictly after `resume_after` in
/// `order`, in that order. Returned leaves hash to their stored `leaf_hash` (not yet checked
/// against the tree: the caller does that).
pub(crate) async fn search(
    reader: &SegmentReader,
    filter: &EventFilter,
    order: Order,
    resume_after: Option<u64>,
    limit: usize,
    stats: &mut SearchStats,
) -> Result<Vec<SegmentRow>, ArchiveError> {
    let id = reader.id();
    let plan = Plan::new(filter);
    let indexes = ColumnIndexes {
        logged_at: column_index(reader, column::LOGGED_AT)
            .map_err(segment_error("searching: finding the filter columns"))?,
        event_kind: column_index(reader, column::EVENT_KIND)
            .map_err(segment_error("searching: finding the filter columns"))?,
        conditions: plan
            .conditions
            .iter()
            .map(|c| column_index(reader, c.column))
            .collect::<Result<_, _>>()
            .map_err(segment_error("searching: finding the filter columns"))?,
    };
    let after = |leaf_index: u64| match (order, resume_after) {
        (_, None) => true,
        (Order::OldestFirst, Some(r)) => leaf_index > r,
        (Order::NewestFirst, Some(r)) => leaf_index < r,
    };
    // Leaf ranges of the row groups (rows are contiguous leaves from the segment start).
    let groups = reader.parquet_metadata().row_groups();
    stats.row_groups = groups.len();
    let mut ranges = Vec::with_capacity(groups.len());
    let mut first = id.start();
    for group in groups {
        let rows = u64::try_from(group.num_rows()).unwrap_or(0);
        ranges.push(first..first.saturating_add(rows));
        first = first.saturating_add(rows);
    }
    let mut order_of_groups: Vec<usize> = (0..groups.len()).collect();
    if order == Order::NewestFirst {
        order_of_groups.reverse();
    }
    let mut out: Vec<SegmentRow> = Vec::new();
    for row_group in order_of_groups {
        if out.len() >= limit {
            break;
        }
        let range = &ranges[row_group];
        if range.is_empty() || !(after(range.start) || after(range.end - 1)) {
            stats.pruned_by_position += 1;
            continue;
        }
        if pruned_by_statistics(&groups[row_group], &plan, &indexes) {
            stats.pruned_by_statistics += 1;
            continue;
        }
        let mut pruned = false;
        for (condition, &index) in plan.conditions.iter().zip(&indexes.conditions) {
            let Some(want) = &condition.want else {
                continue;
            };
            if !column::BLOOM.contains(&condition.column) {
                continue;
            }
            stats.bloom_filters_read += 1;
            let bloom = reader
                .bloom_filter(row_group, index)
                .await
                .map_err(segment_error("searching: reading a bloom filter"))?;
            if bloom.is_some_and(|b| !b.check(want.as_str())) {
                pruned = true;
                break;
            }
        }
        if pruned {
            stats.pruned_by_bloom += 1;
            continue;
        }
        stats.row_groups_scanned += 1;
        let mut candidates = scan_row_group(reader, &plan, row_group, after, stats)
            .await
            .map_err(segment_error("searching: reading the filter columns"))?;
        if order == Order::NewestFirst {
            candidates.reverse();
        }
        // Fetch leaves for as many candidates as the limit may still need, in search order.
        let mut rest = candidates.as_slice();
        while !rest.is_empty() && out.len() < limit {
            let take = (limit - out.len()).min(CANDIDATES_PER_READ).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let mut ascending = chunk.to_vec();
            ascending.sort_by_key(|c| c.leaf_index);
            let mut rows = confirm(reader, &plan, row_group, &ascending, stats)
                .await
                .map_err(segment_error("searching: reading candidate leaves"))?;
            if order == Order::NewestFirst {
                rows.reverse();
            }
            out.extend(rows);
        }
    }
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{SegmentWriter, WriteOptions};
    use auditledger_ledger::event::{encode_event, encode_leaf};
    use bytes::Bytes;

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            event_id: format!("e-{n}"),
            event_kind: 1,
            user_id: format!("user-{}", n % 3),
            session_id: format!("s-{}", n / 4),
            ..Default::default()
        }
    }

    /// A segment whose typed columns say leaf 5 belongs to "mallory" while its leaf says
    /// otherwise: a search for mallory must refuse, not return or silently drop it.
    #[tokio::test]
    async fn typed_columns_disagreeing_with_the_leaf_are_refused() {
        let id = SegmentId::new("example.com/log", 0, 4).unwrap();
        let options = WriteOptions {
            row_group_rows: 4,
            ..WriteOptions::default()
        };
        let mut writer = SegmentWriter::new(Vec::new(), id.clone(), &options).unwrap();
        for n in 0..16u64 {
            let leaf = encode_leaf(&encode_event(&event(n)), 1_000 + n, "gw");
            let mut record = decode_leaf(&leaf).unwrap();
            if n == 5 {
                record.event.as_mut().unwrap().user_id = "mallory".into();
            }
            writer.push_decoded(&leaf, &record).unwrap();
        }
        let (bytes, _) = writer.finish().unwrap();
        let reader = SegmentReader::from_bytes(Bytes::from(bytes), &id)
            .await
            .unwrap();
        let filter = EventFilter {
            user_id: Some("mallory".into()),
            ..Default::default()
        };
        let mut stats = SearchStats::default();
        let error = search(&reader, &filter, Order::OldestFirst, None, 10, &mut stats)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("leaf 5") && error.contains("user_id") && error.contains("mallory"),
            "{error}"
        );
        // The consistent rows are found as usual.
        let filter = EventFilter {
            user_id: Some("user-1".into()),
            ..Default::default()
        };
        let rows = search(&reader, &filter, Order::NewestFirst, None, 10, &mut stats)
            .await
            .unwrap();
        let found: Vec<u64> = rows.iter().map(|r| r.leaf_index).collect();
        assert_eq!(found, vec![13, 10, 7, 4, 1]);
    }
}
