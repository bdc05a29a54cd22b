//! Key and value codecs.
//!
//! Keys are tuples of parts. A string part is its UTF-8 bytes followed by a
//! 0xFF terminator (a byte UTF-8 never contains), an integer is 8 big-endian
//! bytes, so byte order matches tuple order and a prefix of a tuple is a byte
//! prefix of its keys: `(user_id,)` scans all of a user's rows.

use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

impl CodecError {
    fn new(what: &'static str, reason: impl ToString) -> Self {
        Self { what, reason: reason.to_string() }
    }
}

const TERMINATOR: u8 = 0xFF;

/// A key, or one part of a tuple key.
pub trait Key: Sized {
    fn encode_into(&self, out: &mut Vec<u8>);
    /// Decode one part from the front of `input`, advancing it.
    fn decode_from(input: &mut &[u8]) -> Result<Self, CodecError>;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_into(&mut out);
        out
    }
    fn decode(mut input: &[u8]) -> Result<Self, CodecError> {
        let key = Self::decode_from(&mut input)?;
        if !input.is_empty() {
            return Err(CodecError::new("key", "trailing bytes"));
        }
        Ok(key)
    }
}

impl Key for String {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
        out.push(TERMINATOR);
    }
    fn decode_from(input: &mut &[u8]) -> Result<Self, CodecError> {
        let end = input
            .iter()
            .position(|b| *b == TERMINATOR)
            .ok_or_else(|| CodecError::new("string key part", "missing terminator"))?;
        let text =
            std::str::from_utf8(&input[..end]).map_err(|e| CodecError::new("string key part", e))?.to_owned();
        *input = &input[end + 1..];
        Ok(text)
    }
}

impl Key for u64 {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode_from(input: &mut &[u8]) -> Result<Self, CodecError> {
        let (head, rest) = input
            .split_first_chunk::<8>()
            .ok_or_else(|| CodecError::new("u64 key part", "fewer than 8 bytes"))?;
        *input = rest;
        Ok(u64::from_be_bytes(*head))
    }
}

macro_rules! tuple_key {
    ($($name:ident),+) => {
        impl<$($name: Key),+> Key for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode_into(&self, out: &mut Vec<u8>) {
                let ($($name,)+) = self;
                $($name.encode_into(out);)+
            }
            fn decode_from(input: &mut &[u8]) -> Result<Self, CodecError> {
                Ok(($($name::decode_from(input)?,)+))
            }
        }
    };
}
tuple_key!(A);
tuple_key!(A, B);
tuple_key!(A, B, C);
tuple_key!(A, B, C, D);

/// A stored value.
pub trait Value: Sized {
    fn encode_value(&self) -> Vec<u8>;
    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl Value for String {
    fn encode_value(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(|e| CodecError::new("string value", e))
    }
}

impl Value for u64 {
    fn encode_value(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        let arr: [u8; 8] = bytes.try_into().map_err(|_| CodecError::new("u64 value", "length is not 8"))?;
        Ok(u64::from_be_bytes(arr))
    }
}

impl Value for Vec<u8> {
    fn encode_value(&self) -> Vec<u8> {
        self.clone()
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// A value stored as JSON (records, Matrix event content).
#[derive(Clone, Debug, PartialEq)]
pub struct Json<T>(pub T);

impl<T: Serialize + DeserializeOwned> Value for Json<T> {
    fn encode_value(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("values serialise to JSON")
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_json(bytes).map(Json)
    }
}

/// A stored JSON value read as `T`, which may be a partial view of the
/// stored record (fields it names, `IgnoredAny` for the rest): cheaper where
/// a hot read needs a few fields of many rows.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(bytes).map_err(|e| CodecError::new("JSON value", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_keys_round_trip() {
        let key = ("@alice:example.org".to_owned(), "DEVICE".to_owned(), 42u64);
        let bytes = key.encode();
        assert_eq!(<(String, String, u64)>::decode(&bytes).unwrap(), key);
    }

    #[test]
    fn prefix_of_tuple_is_byte_prefix() {
        let full = ("@al:x".to_owned(), "D1".to_owned()).encode();
        let prefix = ("@al:x".to_owned(),).encode();
        let other = ("@al:xy".to_owned(), "D1".to_owned()).encode();
        assert!(full.starts_with(&prefix));
        assert!(!other.starts_with(&prefix), "a longer user ID must not match the prefix");
    }

    #[test]
    fn integers_sort_numerically() {
        assert!(2u64.encode() < 10u64.encode());
        assert!(("a".to_owned(), 255u64).encode() < ("a".to_owned(), 256u64).encode());
    }

    #[test]
    fn truncated_keys_are_errors() {
        assert!(u64::decode(&[1, 2, 3]).is_err());
        assert!(String::decode(b"no-terminator").is_err());
        assert!(<(String,)>::decode(b"a\xFFextra").is_err());
    }

    #[test]
    fn json_values_round_trip() {
        let v = Json(serde_json::json!({"a": [1, 2]}));
        assert_eq!(Json::<serde_json::Value>::decode_value(&v.encode_value()).unwrap(), v);
        assert!(Json::<serde_json::Value>::decode_value(b"{").is_err());
    }
}
