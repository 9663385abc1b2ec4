//! `SqliteStore` passes the store conformance suite every store runs.

use std::path::PathBuf;

use sync_core::store::conformance::Harness;
use sync_ffi::SqliteStore;

struct Sqlite {
    dir: tempfile::TempDir,
    opened: usize,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
            opened: 0,
        }
    }
}

impl Harness for Sqlite {
    type Store = SqliteStore;

    fn open_fresh(&mut self) -> SqliteStore {
        self.opened += 1;
        let path = self.dir.path().join(format!("db{}.sqlite3", self.opened));
        SqliteStore::open(path).unwrap()
    }

    fn reopen(&mut self, store: SqliteStore) -> SqliteStore {
        let path: PathBuf = store.path().to_owned();
        drop(store);
        SqliteStore::open(path).unwrap()
    }
}

sync_core::store_conformance_tests!(Sqlite::new());
