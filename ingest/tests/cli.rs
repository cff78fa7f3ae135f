//! The `auditledger` binary as users run it: init, keys, demo, fsck (clean and after damage).

use std::path::Path;
use std::process::{Command, Output};

fn auditledger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_auditledger"))
        .args(args)
        .env_remove("AUDITLEDGER_CONFIG")
        .output()
        .expect("run auditledger")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config(dir: &Path) -> String {
    dir.join("config.toml").to_str().unwrap().to_owned()
}

#[test]
fn init_keys_demo_fsck() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let init = auditledger(&["init", dir.to_str().unwrap(), "--segment-bits", "10"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let vkey = stdout(&init).trim().to_owned();
    assert!(
        vkey.starts_with("auditledger.local+"),
        "verifier key: {vkey}"
    );
    assert!(
        std::fs::read_to_string(dir.join("config.toml"))
            .unwrap()
            .contains("segment_bits = 10")
    );

    // init refuses to overwrite.
    let again = auditledger(&["init", dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // keys list prints the key before any log exists; generate adds a second active key.
    let list = auditledger(&["keys", "list", "--config", &config(&dir)]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert_eq!(stdout(&list).trim(), vkey);
    let generated = auditledger(&["keys", "generate", "--config", &config(&dir)]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let list = stdout(&auditledger(&["keys", "list", "--config", &config(&dir)]));
    assert_eq!(list.lines().count(), 2);
    assert!(list.contains(stdout(&generated).trim()));

    // The demo appends, checkpoints (signed by both keys) and proves.
    let demo = auditledger(&["demo", "--config", &config(&dir)]);
    assert!(demo.status.success(), "{}", stderr(&demo));
    let out = stdout(&demo);
    assert!(out.contains("auditledger.local/demo/dev"), "{out}");
    assert!(out.contains("verified against the checkpoint"), "{out}");
    assert_eq!(
        out.matches("— auditledger.local ").count(),
        2,
        "two active keys sign: {out}"
    );

    let fsck = auditledger(&["fsck", "--config", &config(&dir)]);
    assert!(fsck.status.success(), "{}{}", stdout(&fsck), stderr(&fsck));
    assert!(stdout(&fsck).contains("no problems"), "{}", stdout(&fsck));

    // Alter one leaf behind the ledger's back: fsck must fail and name it.
    {
        use auditledger_ledger::layout::{self, Space};
        use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
        use auditledger_ledger::store::{Store, WriteBatch};
        let store = RocksStore::open(&dir.join("hot"), &RocksOptions::small_for_tests()).unwrap();
        let key = layout::leaf_key(0, 1);
        let mut leaf = store
            .get(Space::Leaves, &key)
            .unwrap()
            .expect("demo leaf 1");
        let last = leaf.len() - 1;
        leaf[last] ^= 0x01;
        let mut b = WriteBatch::new();
        b.put(Space::Leaves, key, leaf);
        store.write(b, true).unwrap();
    }
    let fsck = auditledger(&["fsck", "--config", &config(&dir)]);
    assert_eq!(
        fsck.status.code(),
        Some(1),
        "fsck passed on altered data: {}",
        stdout(&fsck)
    );
    assert!(stdout(&fsck).contains("leaf 1"), "{}", stdout(&fsck));
}

#[test]
fn bad_config_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    std::fs::write(&path, "[ledger]\nsegment_bits = 99\n").unwrap();
    let out = auditledger(&["keys", "list", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("segment_bits = 99"),
        "{}",
        stderr(&out)
    );
    let out = auditledger(&[
        "fsck",
        "--config",
        tmp.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}
