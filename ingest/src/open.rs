//! Opening the ledger described by a config file.

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use auditledger_ledger::Ledger;
use auditledger_ledger::keys::Keyring;
use auditledger_ledger::store::Store;
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};

use crate::config::Config;

pub fn rocks_options(config: &Config) -> RocksOptions {
    RocksOptions {
        block_cache_bytes: config.ledger.block_cache_bytes,
        write_buffer_bytes: config.ledger.write_buffer_bytes,
        max_open_files: config.ledger.max_open_files,
        low_priority_compaction: config.ledger.low_priority_compaction,
        direct_io: config.ledger.direct_io,
        ..Default::default()
    }
}

pub fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let path = config.keyring_path();
    Keyring::load(&path).with_context(|| {
        format!(
            "loading the keyring named by keys.keyring ({})",
            path.display()
        )
    })
}

pub fn open_store(config: &Config) -> anyhow::Result<Arc<RocksStore>> {
    let dir = config.data_dir();
    Ok(Arc::new(
        RocksStore::open(&dir, &rocks_options(config))
            .with_context(|| format!("opening the hot store {}", dir.display()))?,
    ))
}

pub fn open_ledger(config: &Config) -> anyhow::Result<(Ledger, Arc<RocksStore>)> {
    let keyring = Arc::new(RwLock::new(load_keyring(config)?));
    let store = open_store(config)?;
    let dyn_store: Arc<dyn Store> = store.clone();
    let ledger =
        Ledger::open(dyn_store, keyring, config.ledger_options()).context("opening the ledger")?;
    Ok((ledger, store))
}
