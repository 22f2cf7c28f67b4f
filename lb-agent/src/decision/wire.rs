//! A `View` on the wire: `LBD1`, the JSON of the view, and an HMAC-SHA256 of both under the
//! pair's shared key. Decoding checks the size, the tag (in constant time) and only then
//! parses; anything else is an error, counted by the caller, never a panic. Replays are
//! harmless: an old view carries an older epoch, which changes nothing.

use sha2::{Digest, Sha256};

use super::shared::View;

const MAGIC: &[u8; 4] = b"LBD1";
const TAG: usize = 32;
/// A view of a thousand services fits; a datagram larger than this is not ours.
pub const MAX_DATAGRAM: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    TooShort,
    TooLong,
    NotOurs,
    BadTag,
    Malformed,
}

impl WireError {
    pub fn name(&self) -> &'static str {
        match self {
            WireError::TooShort => "too_short",
            WireError::TooLong => "too_long",
            WireError::NotOurs => "not_ours",
            WireError::BadTag => "bad_tag",
            WireError::Malformed => "malformed",
        }
    }
}

pub fn encode(view: &View, key: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&serde_json::to_vec(view).expect("a view serializes"));
    let tag = hmac(key, &out);
    out.extend_from_slice(&tag);
    out
}

pub fn decode(bytes: &[u8], key: &[u8]) -> Result<View, WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::TooLong);
    }
    if bytes.len() < MAGIC.len() + TAG {
        return Err(WireError::TooShort);
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(WireError::NotOurs);
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG);
    let want = hmac(key, body);
    // Constant time: every byte is compared whatever the first difference.
    if want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err(WireError::BadTag);
    }
    serde_json::from_slice(&body[MAGIC.len()..]).map_err(|_| WireError::Malformed)
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The pair's shared key from `path`: owner-only (neither group- nor world-readable), at
/// least 16 bytes (trailing newlines are not part of it).
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut key = crate::secret::read(path, "key file")?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.len() < 16 {
        return Err(format!(
            "key file {}: at least 16 bytes of secret needed",
            path.display()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::shared::Decision;

    /// RFC 4231 test case 2.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let tag = hmac(b"Jefe", b"what do ya want for nothing?");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn view() -> View {
        View {
            from: "db1".into(),
            leader: true,
            decisions: [(
                "mysql-write".to_string(),
                Decision {
                    epoch: 7,
                    sorry: true,
                    switched: false,
                },
            )]
            .into_iter()
            .collect(),
            maintenance: Default::default(),
        }
    }

    #[test]
    fn a_view_round_trips_and_anything_else_is_refused() {
        let bytes = encode(&view(), b"secret");
        assert_eq!(decode(&bytes, b"secret"), Ok(view()));
        assert_eq!(decode(&bytes, b"other"), Err(WireError::BadTag));
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        assert_eq!(decode(&flipped, b"secret"), Err(WireError::BadTag));
        assert_eq!(decode(b"LBD1", b"secret"), Err(WireError::TooShort));
        assert_eq!(decode(&[0; 40], b"secret"), Err(WireError::NotOurs));
        assert_eq!(
            decode(&vec![0; MAX_DATAGRAM + 1], b"secret"),
            Err(WireError::TooLong)
        );
        // A valid tag over garbage: malformed, not a panic.
        let mut junk = MAGIC.to_vec();
        junk.extend_from_slice(b"{not json");
        let tag = hmac(b"secret", &junk);
        junk.extend_from_slice(&tag);
        assert_eq!(decode(&junk, b"secret"), Err(WireError::Malformed));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 12345;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert!(decode(&bytes, b"k").is_err());
        }
    }
}
