//! Feeds arbitrary bytes to `protocol::decode`. Whatever decodes must
//! re-encode to a frame that decodes to the same message, and encoding must
//! be a fixed point from then on. Operations alone go through `decode_op`
//! the same way, and a decoded `Deliver` must equal its spliced form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::protocol::{self, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = protocol::decode(data, protocol::DEFAULT_MAX_FRAME_BYTES) {
        let frame = protocol::encode(&message);
        let again = protocol::decode(&frame, usize::MAX).expect("a re-encoded frame decodes");
        assert_eq!(again, message, "decode(encode(m)) != m");
        assert_eq!(protocol::encode(&again), frame, "encoding is not canonical");
        if let Message::Deliver { from, cursor, ops } = &message {
            let encoded: Vec<Vec<u8>> = ops.iter().map(protocol::encode_op).collect();
            let spliced =
                protocol::encode_deliver(*from, *cursor, encoded.iter().map(Vec::as_slice));
            assert_eq!(spliced, frame, "encode_deliver differs from encode");
        }
    }
    if let Ok(op) = protocol::decode_op(data) {
        let bytes = protocol::encode_op(&op);
        assert_eq!(
            protocol::decode_op(&bytes).expect("a re-encoded op decodes"),
            op
        );
    }
});
