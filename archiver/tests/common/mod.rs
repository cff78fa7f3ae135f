//! Helpers shared by the archiver's integration tests.
#![allow(dead_code)]

pub mod events;
#[cfg(feature = "engine")]
pub mod tiers;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, FixedSizeBinaryArray, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use auditledger_archiver::SegmentSummary;
use auditledger_archiver::segment::{SegmentId, WriteOptions, write_segment};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

pub const ORIGIN: &str = "auditledger.local/acme/prod";

/// A segment of realistic leaves, written with the default options.
pub fn segment(start: u64, bits: u8) -> (SegmentId, Vec<Vec<u8>>, Bytes, SegmentSummary) {
    segment_with(start, bits, &WriteOptions::default())
}

pub fn segment_with(
    start: u64,
    bits: u8,
    options: &WriteOptions,
) -> (SegmentId, Vec<Vec<u8>>, Bytes, SegmentSummary) {
    let id = SegmentId::new(ORIGIN, start, bits).unwrap();
    let leaves = events::realistic_leaves(7, start, 1 << bits);
    let (bytes, summary) = write_segment(id.clone(), &leaves, options).unwrap();
    (id, leaves, Bytes::from(bytes), summary)
}

/// One row of the three verification columns, as a tamperer sees it.
#[derive(Clone, Debug)]
pub struct RawRow {
    pub leaf_index: u64,
    pub leaf_hash: Vec<u8>,
    pub leaf: Option<Vec<u8>>,
}

/// Rewrites a segment file's `leaf_index`, `leaf_hash` and `leaf` columns through `tamper`,
/// keeping its key/value metadata: a file an attacker or a bug could produce.
pub fn tamper_rows(file: &Bytes, tamper: impl FnOnce(&mut Vec<RawRow>)) -> Bytes {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file.clone()).unwrap();
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let mut rows = Vec::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let index = batch.column_by_name("leaf_index").unwrap();
        let index = index.as_any().downcast_ref::<UInt64Array>().unwrap();
        let hash = batch.column_by_name("leaf_hash").unwrap();
        let hash = hash
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .unwrap();
        let leaf = batch.column_by_name("leaf").unwrap();
        let leaf = leaf.as_any().downcast_ref::<BinaryArray>().unwrap();
        for i in 0..batch.num_rows() {
            rows.push(RawRow {
                leaf_index: index.value(i),
                leaf_hash: hash.value(i).to_vec(),
                leaf: leaf.is_valid(i).then(|| leaf.value(i).to_vec()),
            });
        }
    }
    tamper(&mut rows);
    let schema = Arc::new(Schema::new(vec![
        Field::new("leaf_index", DataType::UInt64, false),
        Field::new("leaf_hash", DataType::FixedSizeBinary(32), false),
        Field::new("leaf", DataType::Binary, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.leaf_index),
        )),
        Arc::new(
            FixedSizeBinaryArray::try_from_iter(rows.iter().map(|r| r.leaf_hash.clone())).unwrap(),
        ),
        Arc::new(BinaryArray::from_iter(
            rows.iter().map(|r| r.leaf.as_deref()),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(metadata))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    Bytes::from(out)
}

/// Replaces one file metadata value.
pub fn with_metadata(file: &Bytes, key: &str, value: &str) -> Bytes {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file.clone()).unwrap();
    let mut metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    for pair in &mut metadata {
        if pair.key == key {
            *pair = KeyValue::new(key.to_owned(), value.to_owned());
        }
    }
    let schema = builder.schema().clone();
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(metadata))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(properties)).unwrap();
    for batch in builder.build().unwrap() {
        writer.write(&batch.unwrap()).unwrap();
    }
    writer.close().unwrap();
    Bytes::from(out)
}
