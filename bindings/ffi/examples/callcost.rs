//! The cost of one put and one get, through the Rust API (sync-ffi) and
//! through this crate's exports called from Rust, for comparison with the
//! same measurement in each binding (docs/BENCHMARKS.md):
//!
//! ```sh
//! cargo run --release --locked -p concord-ffi --example callcost
//! ```
//!
//! A put is applied, then waited on until durable (an fsync, shared by
//! nobody here: one writer); a get copies one 3-field document out.

use std::collections::HashMap;
use std::time::Instant;

use concord_ffi::{OpenOptions, Value};
use sync_ffi::Wait;

const PUTS: u32 = 300;
const GETS: u32 = 200_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("concord-callcost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let db = sync_ffi::open(dir.join("rust.db"), sync_ffi::Options::local())?;
    let c = db.collection("bench");
    let start = Instant::now();
    for i in 0..PUTS {
        c.put(
            &format!("d{}", i % 10),
            [
                ("title", sync_ffi::Value::from("Buy milk")),
                ("done", false.into()),
                ("n", i64::from(i).into()),
            ],
        )
        .wait()?;
    }
    let put_ns = start.elapsed().as_nanos() / u128::from(PUTS);
    let start = Instant::now();
    for _ in 0..GETS {
        std::hint::black_box(c.get("d3"));
    }
    let get_ns = start.elapsed().as_nanos() / u128::from(GETS);
    futures::executor::block_on(db.close());
    println!("rust api:        put {put_ns} ns/call, get {get_ns} ns/call");

    let options = OpenOptions {
        relay: None,
        agent: None,
    };
    let db = concord_ffi::open_database(dir.join("ffi.db").display().to_string(), options, None)?;
    let c = db.collection("bench".into());
    let start = Instant::now();
    for i in 0..PUTS {
        let fields = HashMap::from([
            (
                "title".to_owned(),
                Value::StringValue {
                    value: "Buy milk".into(),
                },
            ),
            ("done".to_owned(), Value::BoolValue { value: false }),
            (
                "n".to_owned(),
                Value::IntValue {
                    value: i64::from(i),
                },
            ),
        ]);
        c.put_blocking(format!("d{}", i % 10), fields)?;
    }
    let put_ns = start.elapsed().as_nanos() / u128::from(PUTS);
    let start = Instant::now();
    for _ in 0..GETS {
        std::hint::black_box(c.get("d3".into()));
    }
    let get_ns = start.elapsed().as_nanos() / u128::from(GETS);
    db.shutdown_blocking();
    println!("concord-ffi (rust): put {put_ns} ns/call, get {get_ns} ns/call");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
