//! The shard schema and the bit order: the contract docs/data-format.md describes to users.
//!
//! One row is one image. Columns (Arrow types):
//!
//! | column        | type    | null | content                                                             |
//! |---------------|---------|------|---------------------------------------------------------------------|
//! | `id`          | uint64  | no   | unique sample id                                                    |
//! | `bucket`      | uint16  | no   | index into the manifest's `schedules`                               |
//! | `bits`        | binary  | no   | packed bits of every scale, `L · ⌈d/8⌉` bytes (see below)           |
//! | `latent`      | binary  | no*  | f16 little-endian `[d, H, W]`, `(H, W)` = last scale                |
//! | `class_label` | int32   | no*  | class id in `[0, num_classes)`                                      |
//! | `text_emb`    | binary  | no*  | f16 or bf16 little-endian `[n_tokens, text_width]`, `n_tokens ≥ 1`  |
//! | `text_emb_short` | binary | yes* | the same for the image's short caption; null: the row has none     |
//! | `caption`     | utf8    | yes  | the caption the text embedding was made from                        |
//!
//! `*` the column exists only when the manifest declares it (`text_emb_short`: `conditions.text.short_caption`),
//! and then every row has a value (`text_emb_short`: or a null).
//!
//! Bit order: tokens are stored scale after scale, each scale row-major `(y, x)`; token `t` occupies
//! bytes `[t·nb, (t+1)·nb)` with `nb = ⌈d/8⌉`; bit `i` of a token (latent channel `i`, 1 = code `+1/√d`)
//! is bit `i % 8` (least significant first) of byte `i / 8`. Unused high bits of the last byte are 0.

use arrow_schema::{DataType, Field, Schema};

pub const FORMAT_NAME: &str = "infinity-bits";
pub const FORMAT_VERSION: u32 = 1;
pub const BIT_ORDER: &str = "token-major; ceil(d/8) bytes per token; bit i at byte i/8, bit i%8 (LSB first)";

pub const COL_ID: &str = "id";
pub const COL_BUCKET: &str = "bucket";
pub const COL_BITS: &str = "bits";
pub const COL_LATENT: &str = "latent";
pub const COL_CLASS: &str = "class_label";
pub const COL_TEXT: &str = "text_emb";
pub const COL_TEXT_SHORT: &str = "text_emb_short";
pub const COL_CAPTION: &str = "caption";

/// Which optional columns a dataset has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    pub latent: bool,
    pub class_label: bool,
    pub text_emb: bool,
    /// A second text embedding per row, of a short caption (upstream's `text` beside `long_caption`).
    pub text_emb_short: bool,
    pub caption: bool,
}

/// The Arrow schema of a shard with the given optional columns.
pub fn schema(cols: Columns) -> Schema {
    let mut fields = vec![
        Field::new(COL_ID, DataType::UInt64, false),
        Field::new(COL_BUCKET, DataType::UInt16, false),
        Field::new(COL_BITS, DataType::Binary, false),
    ];
    if cols.latent {
        fields.push(Field::new(COL_LATENT, DataType::Binary, false));
    }
    if cols.class_label {
        fields.push(Field::new(COL_CLASS, DataType::Int32, false));
    }
    if cols.text_emb {
        fields.push(Field::new(COL_TEXT, DataType::Binary, false));
    }
    if cols.text_emb_short {
        fields.push(Field::new(COL_TEXT_SHORT, DataType::Binary, true));
    }
    if cols.caption {
        fields.push(Field::new(COL_CAPTION, DataType::Utf8, true));
    }
    Schema::new(fields).with_metadata(
        [("infinity.format".to_string(), format!("{FORMAT_NAME}/{FORMAT_VERSION}"))]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>(),
    )
}

/// Bytes per token: `⌈d/8⌉`.
pub fn bytes_per_token(d: usize) -> usize {
    d.div_ceil(8)
}

/// Pack token-major 0/1 bits `[L, d]` into `[L, ⌈d/8⌉]` bytes.
pub fn pack_bits(bits: &[u8], d: usize, out: &mut Vec<u8>) {
    let nb = bytes_per_token(d);
    let l = bits.len() / d;
    out.clear();
    out.resize(l * nb, 0);
    for (tok, dst) in bits.chunks_exact(d).zip(out.chunks_exact_mut(nb)) {
        for (i, &b) in tok.iter().enumerate() {
            dst[i / 8] |= (b & 1) << (i % 8);
        }
    }
}

/// Unpack `[L, ⌈d/8⌉]` bytes into token-major 0/1 bits `[L, d]`.
pub fn unpack_bits(packed: &[u8], d: usize, out: &mut [u8]) {
    let nb = bytes_per_token(d);
    assert_eq!(packed.len() / nb * d, out.len(), "unpack_bits: output is not [L, d={d}]");
    for (src, tok) in packed.chunks_exact(nb).zip(out.chunks_exact_mut(d)) {
        for (i, b) in tok.iter_mut().enumerate() {
            *b = (src[i / 8] >> (i % 8)) & 1;
        }
    }
}

/// Mask of the bits of the last byte of a token that must be zero (`0` when `d % 8 == 0`).
pub fn padding_mask(d: usize) -> u8 {
    match d % 8 {
        0 => 0,
        r => !((1u8 << r) - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip_and_documented_order() {
        for d in [1usize, 8, 14, 16, 32, 56, 64] {
            let bits: Vec<u8> = (0..3 * d).map(|i| ((i * 7 + i / 3) % 2) as u8).collect();
            let mut packed = Vec::new();
            pack_bits(&bits, d, &mut packed);
            assert_eq!(packed.len(), 3 * bytes_per_token(d));
            let mut back = vec![0u8; bits.len()];
            unpack_bits(&packed, d, &mut back);
            assert_eq!(back, bits, "d = {d}");
            for tok in packed.chunks_exact(bytes_per_token(d)) {
                assert_eq!(tok[tok.len() - 1] & padding_mask(d), 0, "padding bits must stay zero");
            }
        }
        // bit 0 is the least significant bit of byte 0; bit 9 is bit 1 of byte 1
        let mut bits = vec![0u8; 16];
        bits[0] = 1;
        bits[9] = 1;
        let mut packed = Vec::new();
        pack_bits(&bits, 16, &mut packed);
        assert_eq!(packed, vec![0b0000_0001, 0b0000_0010]);
    }
}
