//! Object store round trips on the local filesystem, with signed manifests.

mod common;

use auditledger_archiver::manifest::{self, ManifestError, SegmentManifest};
use auditledger_archiver::store::{
    SegmentStore, StoreError, StoreOptions, manifest_object_path, segment_object_path,
};
use auditledger_tests::test_signer;
use bytes::Bytes;

use common::segment;

#[tokio::test]
async fn local_filesystem_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("warm");
    let store = SegmentStore::open(root.to_str().unwrap(), &StoreOptions::default()).unwrap();

    let (id, leaves, file, summary) = segment(256, 8);
    let object = segment_object_path("acme", "prod", id.start(), id.end()).unwrap();
    let manifest_path = manifest_object_path("acme", "prod", id.start(), id.end()).unwrap();
    assert_eq!(store.head(&object).await.unwrap(), None);

    store.put(&object, file.clone()).await.unwrap();
    let manifest = SegmentManifest::for_object(&summary, object.as_ref(), &file, 1_763_700_000);
    let note = manifest.sign(&[test_signer()]).unwrap();
    store
        .put(&manifest_path, Bytes::from(note.clone()))
        .await
        .unwrap();

    // The layout on disk is the documented one.
    assert!(root.join("acme/prod/segments/256-512.parquet").is_file());
    assert!(root.join("acme/prod/segments/256-512.manifest").is_file());
    let meta = store.head(&object).await.unwrap().unwrap();
    assert_eq!(meta.size, file.len() as u64);

    // Read back through another handle, as the verification step of a move does.
    let url = format!("file://{}", root.display());
    let store = SegmentStore::open(&url, &StoreOptions::default()).unwrap();
    let note = store.get(&manifest_path).await.unwrap();
    let verified = manifest::open_for(&note, &[test_signer().verifier()], &id).unwrap();
    let object_bytes = store.get(&object).await.unwrap();
    verified.manifest.check_object(&object_bytes).unwrap();
    let reader = store.open_segment(&object, &id).await.unwrap();
    let checked = reader
        .verify(&verified.manifest.segment_root)
        .await
        .unwrap();
    assert_eq!(checked.root, summary.root);
    let row = reader.leaf(300).await.unwrap();
    assert_eq!(row.leaf.as_deref(), Some(leaves[44].as_slice()));

    // A damaged object no longer matches its manifest.
    let mut damaged = object_bytes.to_vec();
    damaged[1000] ^= 1;
    store
        .put(&object, Bytes::from(damaged.clone()))
        .await
        .unwrap();
    let err = verified
        .manifest
        .check_object(&store.get(&object).await.unwrap())
        .unwrap_err();
    assert!(matches!(err, ManifestError::ObjectHash { .. }), "{err}");

    // Deletes are idempotent; reads of absent objects say so.
    store.delete(&object).await.unwrap();
    store.delete(&object).await.unwrap();
    assert_eq!(store.head(&object).await.unwrap(), None);
    let err = store.get(&object).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("256-512.parquet"), "{err}");
    let err = store.open_segment(&object, &id).await.unwrap_err();
    assert!(err.to_string().contains("[256,512)"), "{err}");
}

#[tokio::test]
async fn in_memory_store_round_trip() {
    let store = SegmentStore::open("memory://", &StoreOptions::default()).unwrap();
    let (id, _, file, summary) = segment(0, 8);
    let object = segment_object_path("_system", "prod", 0, 256).unwrap();
    store.put(&object, file).await.unwrap();
    let reader = store.open_segment(&object, &id).await.unwrap();
    reader.verify(&summary.root).await.unwrap();
}
