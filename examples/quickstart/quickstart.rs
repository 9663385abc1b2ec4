//! The Rust quick start from the README: run it beside `cargo xtask demo`
//! (`cargo run -p concord-cli --example quickstart`, with the demo's token).

use futures::StreamExt;
use sync_ffi::{ListOptions, Options, RelayOptions, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), sync_ffi::Error> {
    let env = |name| std::env::var(name).unwrap_or_default();
    let relay = RelayOptions::new(env("CONCORD_RELAY"), "demo", env("CONCORD_TOKEN"));
    let db = sync_ffi::open("quickstart.db", Options::with_relay(relay))?;
    let todos = db.collection("todos"); // the collection the web demo shows
    let mut changes = todos.subscribe(); // a Stream of local and remote changes

    // A write applies at once; awaiting it returns once it is durable here.
    let todo = [
        ("title", Value::from("Buy milk")),
        ("done", false.into()),
        ("order", 1.0.into()),
    ];
    todos.put("milk", todo).await?;
    let rev = todos.get("milk").expect("just written").revision;
    todos.put_if("milk", [("done", true)], Some(rev)).await?; // optimistic concurrency

    db.flush().await?; // until the relay acknowledged every write
    for doc in todos.list(&ListOptions::default()) {
        println!("{} {:?}", doc.id, doc.fields);
    }
    println!("{:?} {:?}", changes.next().await, db.status());
    db.close().await;
    Ok(())
}
