//! Feeds arbitrary bytes to `Snapshot::decode`, twice: as they are (header,
//! checksum and all), and as a payload behind a valid header and CRC-32 so
//! the fuzzer reaches the body parser without having to forge checksums.
//! Whatever decodes must re-encode, plain and compressed, to snapshots that
//! decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::Snapshot;

fn check(bytes: &[u8]) {
    if let Ok(snapshot) = Snapshot::decode(bytes) {
        let s = &snapshot;
        let encoded = Snapshot::encode(&s.state, &s.version, s.max_hlc, s.tombstone_horizon);
        let again = Snapshot::decode(&encoded).expect("a re-encoded snapshot decodes");
        assert_eq!(again, snapshot, "decode(encode(s)) != s");
        let a = &again;
        let twice = Snapshot::encode(&a.state, &a.version, a.max_hlc, a.tombstone_horizon);
        assert_eq!(twice, encoded, "snapshot encoding is not a fixed point");
        let compressed =
            Snapshot::encode_compressed(&s.state, &s.version, s.max_hlc, s.tombstone_horizon);
        let inflated = Snapshot::decode(&compressed).expect("a compressed snapshot decodes");
        assert_eq!(inflated, snapshot, "decode(encode_compressed(s)) != s");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Behind a format-2 header (a row-wise body) and a format-4 header
    // (columns), so the body parsers see the bytes past the checksum.
    for format in [2u8, 4] {
        let mut wrapped = b"CNSN".to_vec();
        wrapped.push(format);
        wrapped.extend_from_slice(&(data.len() as u32).to_le_bytes());
        wrapped.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        wrapped.extend_from_slice(data);
        check(&wrapped);
    }
});
