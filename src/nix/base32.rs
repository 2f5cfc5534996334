//! nixbase32: the base-32 dialect Nix prints hashes and store path hash parts in.
//!
//! The alphabet drops `e`, `o`, `u` and `t` so that encoded hashes cannot spell words, and the
//! text runs from the last 5-bit group of the input to the first. Because the alphabet is in
//! ascending ASCII order, comparing two encodings of equal length as strings is the same as
//! comparing the inputs as little-endian integers (the store path ordering relies on this).

use thiserror::Error;

pub(crate) const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Maps an ASCII byte to its 5-bit value, or 0xff for bytes outside the alphabet.
const DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Base32Error {
    #[error("invalid nixbase32 character {char:?} at position {position}")]
    InvalidChar { char: char, position: usize },
    #[error("{len} characters is not the length of any nixbase32 encoding")]
    InvalidLength { len: usize },
    #[error("nixbase32 string has non-zero bits past the end of the data")]
    TrailingBits,
}

/// Length of the nixbase32 text for `byte_len` bytes of input.
pub const fn encoded_len(byte_len: usize) -> usize {
    (byte_len * 8).div_ceil(5)
}

pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = match bytes.get(i + 1) {
            Some(&next) if j > 3 => next << (8 - j),
            _ => 0,
        };
        out.push(ALPHABET[usize::from((low | high) & 0x1f)] as char);
    }
    out
}

pub fn decode(s: &str) -> Result<Vec<u8>, Base32Error> {
    let text = s.as_bytes();
    let byte_len = text.len() * 5 / 8;
    if encoded_len(byte_len) != text.len() {
        return Err(Base32Error::InvalidLength { len: text.len() });
    }
    let mut out = vec![0u8; byte_len];
    for (n, &c) in text.iter().rev().enumerate() {
        let digit = DECODE[usize::from(c)];
        if digit == 0xff {
            // Report the whole character, not one byte of it, when the input is not ASCII.
            let byte = text.len() - 1 - n;
            let (position, char) = s
                .char_indices()
                .take_while(|&(start, _)| start <= byte)
                .last()
                .unwrap_or((byte, '\u{fffd}'));
            return Err(Base32Error::InvalidChar { char, position });
        }
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let carry = if j > 3 { digit >> (8 - j) } else { 0 };
        match out.get_mut(i) {
            Some(byte) => *byte |= digit << j,
            None if digit != 0 => return Err(Base32Error::TrailingBits),
            None => {}
        }
        match out.get_mut(i + 1) {
            Some(byte) => *byte |= carry,
            None if carry != 0 => return Err(Base32Error::TrailingBits),
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    // Values printed by Nix 2.8 (`nix hash to-base32 --type sha256|md5 <hex>`, and for the
    // store path hash part `nix hash to-base16 --type sha1 rsnpyhm63gcba6l9qgpn7v1x19raxwy0`).
    #[rstest]
    #[case::empty("", "")]
    #[case::one_byte("1f", "0z")]
    #[case::sha256_of_empty(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    )]
    #[case::sha256_of_hello(
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
        "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"
    )]
    #[case::md5_all_ones("ffffffffffffffffffffffffffffffff", "7zzzzzzzzzzzzzzzzzzzzzzzzz")]
    #[case::md5_counting("0102030405060708090a0b0c0d0e0f10", "0h1w70s30b184hh1q60l2060h1")]
    #[case::store_path_hash_part(
        "c0f3ae720a3dec63efc3891ab5d81ba6427fadce",
        "rsnpyhm63gcba6l9qgpn7v1x19raxwy0"
    )]
    fn known_vectors(#[case] hex: &str, #[case] nix32: &str) {
        let bytes = from_hex(hex);
        assert_eq!(encode(&bytes), nix32);
        assert_eq!(decode(nix32).unwrap(), bytes);
        assert_eq!(encoded_len(bytes.len()), nix32.len());
    }

    #[rstest]
    #[case::sha256(32, 52)]
    #[case::store_hash(20, 32)]
    #[case::sha1(20, 32)]
    #[case::sha512(64, 103)]
    #[case::md5(16, 26)]
    fn lengths(#[case] bytes: usize, #[case] chars: usize) {
        assert_eq!(encoded_len(bytes), chars);
    }

    #[test]
    fn round_trips_every_length() {
        for len in 0..70usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes, "length {len}");
            let ones = vec![0xffu8; len];
            assert_eq!(decode(&encode(&ones)).unwrap(), ones, "length {len}");
        }
    }

    #[rstest]
    #[case::letter_e("0e", Base32Error::InvalidChar { char: 'e', position: 1 })]
    #[case::letter_o("o0", Base32Error::InvalidChar { char: 'o', position: 0 })]
    #[case::upper_case("0A", Base32Error::InvalidChar { char: 'A', position: 1 })]
    #[case::non_ascii_bad_length("0é", Base32Error::InvalidLength { len: 3 })]
    #[case::non_ascii("0é0", Base32Error::InvalidChar { char: 'é', position: 1 })]
    #[case::bad_length("000", Base32Error::InvalidLength { len: 3 })]
    #[case::one_char("0", Base32Error::InvalidLength { len: 1 })]
    // "0z" is the byte 0x1f; "10" would need a ninth bit.
    #[case::trailing_bits_in_top_char("80", Base32Error::TrailingBits)]
    #[case::trailing_bits_sha256(
        "zmdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        Base32Error::TrailingBits
    )]
    fn rejects(#[case] text: &str, #[case] expected: Base32Error) {
        assert_eq!(decode(text), Err(expected));
    }

    #[test]
    fn string_order_is_little_endian_integer_order() {
        let mut values: Vec<[u8; 4]> = (0..200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
            .collect();
        values.sort_by(|a, b| a.iter().rev().cmp(b.iter().rev()));
        let encoded: Vec<String> = values.iter().map(|v| encode(v)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
    }

    fn from_hex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }
}
