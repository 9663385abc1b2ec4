//! PostgreSQL for the relay's shared-storage tests (relay-server's
//! `storage_conformance` unit tests and `tests/cluster.rs`): Debian's
//! `postgresql` package, installed with apt-get when no server is under
//! `/usr/lib/postgresql`. The tests start and stop their own servers.

use std::path::Path;
use std::process::Command;

/// Where Debian puts each installed server version.
const SERVERS: &str = "/usr/lib/postgresql";

/// Whether some installed version has `initdb` and `pg_ctl`.
fn installed() -> bool {
    std::fs::read_dir(SERVERS).is_ok_and(|versions| {
        versions.flatten().any(|v| {
            let bin = v.path().join("bin");
            bin.join("initdb").exists() && bin.join("pg_ctl").exists()
        })
    })
}

/// Installs the server unless one is there; quick when it is.
pub(crate) fn ensure() -> Result<(), String> {
    if installed() {
        println!("PostgreSQL server already installed under {SERVERS}");
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        return Err(format!(
            "no PostgreSQL server under {SERVERS} and no apt-get to install one: install \
             PostgreSQL (initdb, pg_ctl) for the relay's cluster tests"
        ));
    }
    println!("installing PostgreSQL with apt-get");
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("could not run apt-get: {e}"))
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    Err(format!("`apt-get {}` failed ({s})", args.join(" ")))
                }
            })
    };
    run(&["update", "-q"])?;
    run(&["install", "-y", "-q", "postgresql"])?;
    if installed() {
        Ok(())
    } else {
        Err(format!(
            "postgresql installed, but no server under {SERVERS}"
        ))
    }
}
