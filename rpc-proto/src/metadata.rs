//! Call metadata: string key/value pairs that travel with a request, like gRPC metadata.
//!
//! An extension: a client sends metadata only to a server that answered its hello, so a
//! plain MessagePack-RPC peer never sees it. On the wire it is a msgpack map of str to str,
//! whatever the connection's codec:
//!
//! - msgpack: key 2 of the request extension, `[0, msgid, method, params, {2: {"k": "v"}}]`;
//! - bincode: a request with tag 3 instead of 0, whose method name is followed by the map's
//!   length (u32, little-endian) and the map.
//!
//! It is part of the request, so it counts in the message size limit.

use std::fmt;

/// String key/value pairs sent with a call.
///
/// Keys are kept in the order they were inserted; inserting a key that is already there
/// replaces its value.
///
/// ```
/// use easyrpc_proto::Metadata;
///
/// let md = Metadata::new().with("authorization", "Bearer t0ken").with("request-id", "42");
/// let back = Metadata::decode(&md.encode()).unwrap();
/// assert_eq!(back.get("authorization"), Some("Bearer t0ken"));
/// assert_eq!(back, md);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pairs: Vec<(String, String)>,
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Metadata that is not a msgpack map of str to str.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("call metadata must be a msgpack map of str to str: {0}")]
pub struct MetadataError(&'static str);

impl Metadata {
    /// No pairs.
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Set `key` to `value`, replacing a value it had.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.pairs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.pairs.push((key, value)),
        }
    }

    /// [`Metadata::insert`], by value.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Metadata {
        self.insert(key, value);
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The pairs, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The wire form: a msgpack map of str to str.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Unwraps: writing to a Vec cannot fail, and a map or str longer than u32::MAX
        // cannot be held in memory as metadata.
        rmp::encode::write_map_len(&mut out, self.pairs.len() as u32).unwrap();
        for (k, v) in &self.pairs {
            rmp::encode::write_str(&mut out, k).unwrap();
            rmp::encode::write_str(&mut out, v).unwrap();
        }
        out
    }

    /// Read the wire form. Bounded by `bytes`: no length a peer declares is allocated
    /// before its bytes are there.
    ///
    /// # Errors
    ///
    /// When `bytes` is not exactly one msgpack map of UTF-8 str to UTF-8 str.
    pub fn decode(mut bytes: &[u8]) -> Result<Metadata, MetadataError> {
        let n = rmp::decode::read_map_len(&mut bytes).map_err(|_| MetadataError("not a map"))?;
        // Each pair takes at least two bytes.
        if n as usize > bytes.len() / 2 {
            return Err(MetadataError("truncated"));
        }
        let mut pairs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = read_str(&mut bytes)?;
            let v = read_str(&mut bytes)?;
            pairs.push((k, v));
        }
        if !bytes.is_empty() {
            return Err(MetadataError("bytes after the map"));
        }
        Ok(Metadata { pairs })
    }
}

fn read_str(bytes: &mut &[u8]) -> Result<String, MetadataError> {
    let n =
        rmp::decode::read_str_len(bytes).map_err(|_| MetadataError("a key or value is not a str"))? as usize;
    if n > bytes.len() {
        return Err(MetadataError("truncated"));
    }
    let (s, rest) = bytes.split_at(n);
    *bytes = rest;
    std::str::from_utf8(s)
        .map(str::to_owned)
        .map_err(|_| MetadataError("a str is not UTF-8"))
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Metadata {
        let mut md = Metadata::new();
        for (k, v) in iter {
            md.insert(k, v);
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_replace() {
        let mut md: Metadata = [("a", "1"), ("b", "2")].into_iter().collect();
        md.insert("a", "3");
        assert_eq!(md.iter().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
        assert_eq!(Metadata::decode(&md.encode()).unwrap(), md);
        assert_eq!(
            Metadata::decode(&Metadata::new().encode()).unwrap(),
            Metadata::new()
        );
    }

    #[test]
    fn hostile_forms_are_errors_without_allocation() {
        // A map32 declaring 2^32 - 1 pairs, with nothing behind it.
        assert!(Metadata::decode(&[0xdf, 0xff, 0xff, 0xff, 0xff]).is_err());
        // A str32 declaring 4 GiB.
        assert!(Metadata::decode(&[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Not a map, not strs, not UTF-8, trailing bytes.
        assert!(Metadata::decode(&[0x90]).is_err());
        assert!(Metadata::decode(&[0x81, 0x01, 0xa1, b'x']).is_err());
        assert!(Metadata::decode(&[0x81, 0xa1, 0xff, 0xa1, b'x']).is_err());
        assert!(Metadata::decode(&[0x80, 0x00]).is_err());
    }
}
