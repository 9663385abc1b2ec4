//! CRC-32 (IEEE 802.3: reflected polynomial `0xEDB88320`, initial value
//! and final XOR all ones), the snapshot checksum.
//!
//! Sixteen bytes a step through sixteen lookup tables, so that checking a
//! large snapshot stays a small part of decoding it. The tables (16 KiB)
//! are computed on first use rather than stored in the binary: a
//! precomputed table does not compress, and every kilobyte of the wasm
//! build is downloaded by each browser that loads the client.

use std::sync::OnceLock;

/// The IEEE polynomial, bit-reversed (the reflected form).
const POLY: u32 = 0xEDB8_8320;

/// Bytes consumed per step, one table each.
const STEP: usize = 16;

/// `TABLES[k][b]`: the CRC contribution of byte `b` followed by `k` zero bytes.
type Tables = [[u32; 256]; STEP];

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Box<Tables>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t: Box<Tables> = Box::new([[0; 256]; STEP]);
        for (byte, entry) in t[0].iter_mut().enumerate() {
            let mut crc = byte as u32;
            for _ in 0..8 {
                crc = (crc >> 1) ^ (POLY & (crc & 1).wrapping_neg());
            }
            *entry = crc;
        }
        for k in 1..STEP {
            for byte in 0..256 {
                let before = t[k - 1][byte];
                t[k][byte] = (before >> 8) ^ t[0][usize::from(before as u8)];
            }
        }
        t
    })
}

/// The CRC-32 of `bytes`.
pub(crate) fn hash(bytes: &[u8]) -> u32 {
    let t = tables();
    let mut crc = !0u32;
    let mut steps = bytes.chunks_exact(STEP);
    for step in &mut steps {
        // Always STEP bytes: the fallback is never taken.
        let step: &[u8; STEP] = step.try_into().unwrap_or(&[0; STEP]);
        // The CRC so far folds into the first four bytes; the first byte
        // is the furthest from the end, so it takes the last table.
        let head = (crc ^ u32::from_le_bytes([step[0], step[1], step[2], step[3]])).to_le_bytes();
        let byte = |i: usize| usize::from(if i < 4 { head[i] } else { step[i] });
        crc = (0..STEP).fold(0, |acc, i| acc ^ t[STEP - 1 - i][byte(i)]);
    }
    for &byte in steps.remainder() {
        crc = (crc >> 8) ^ t[0][usize::from(crc as u8 ^ byte)];
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::hash;

    #[test]
    fn matches_the_standard_check_values() {
        // The catalogue check value of CRC-32/ISO-HDLC, and the empty input.
        assert_eq!(hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(hash(b""), 0);
        assert_eq!(
            hash(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn matches_crc32fast_at_every_length_and_alignment() {
        // Every length up to 40 (past two 16-byte steps, each with every
        // tail) and some longer ones, at several offsets into the buffer,
        // so both the step loop and the tail are checked against an
        // independent implementation.
        let data: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..8 {
            for len in (0..40).chain([255, 256, 511, 590]) {
                let slice = &data[start..start + len];
                assert_eq!(
                    hash(slice),
                    crc32fast::hash(slice),
                    "start {start} len {len}"
                );
            }
        }
    }
}
