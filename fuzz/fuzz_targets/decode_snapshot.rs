//! Feeds arbitrary bytes to `Snapshot::decode`, twice: as they are (header,
//! checksum and all), and as a payload behind a valid header and CRC-32 so
//! the fuzzer reaches the body parser without having to forge checksums.
//! Whatever decodes must re-encode to a snapshot that decodes to the same
//! value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::Snapshot;

fn check(bytes: &[u8]) {
    if let Ok(snapshot) = Snapshot::decode(bytes) {
        let encoded = Snapshot::encode(&snapshot.state, &snapshot.version, snapshot.max_hlc);
        let again = Snapshot::decode(&encoded).expect("a re-encoded snapshot decodes");
        assert_eq!(again, snapshot, "decode(encode(s)) != s");
        let twice = Snapshot::encode(&again.state, &again.version, again.max_hlc);
        assert_eq!(twice, encoded, "snapshot encoding is not a fixed point");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut wrapped = b"CNSN\x01".to_vec();
    wrapped.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wrapped.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    wrapped.extend_from_slice(data);
    check(&wrapped);
});
