//! What the fuzz targets share: the representative argument types, and decoding a value
//! into each of them through every entry point.

use std::collections::HashMap;

use easyrpc_proto::{Args, Codec, FromArgs};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A struct nested in [`Outer`]: strings, bytes, an option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inner {
    /// A vector of strings.
    pub tags: Vec<String>,
    /// A byte buffer (msgpack bin).
    pub data: ByteBuf,
    /// An optional float.
    pub score: Option<f64>,
}

/// A struct with every kind of field a handler argument tends to have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outer {
    /// A string.
    pub name: String,
    /// An integer.
    pub id: u64,
    /// A nested struct.
    pub inner: Inner,
    /// A map.
    pub counts: HashMap<String, i32>,
    /// An enum.
    pub choice: Choice,
}

/// An enum with every kind of variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Choice {
    /// A unit variant.
    Unit,
    /// A newtype variant.
    Text(String),
    /// A tuple variant.
    Pair(i8, Vec<u16>),
    /// A struct variant holding structs.
    Named {
        /// Nested structs.
        v: Vec<Inner>,
    },
}

/// A sample [`Outer`], for the seed corpus.
pub fn sample() -> Outer {
    Outer {
        name: "name".into(),
        id: 300,
        inner: Inner {
            tags: vec!["a".into(), "bc".into()],
            data: ByteBuf::from(vec![1, 2, 3]),
            score: Some(0.5),
        },
        counts: HashMap::from([("k".to_string(), -1)]),
        choice: Choice::Named {
            v: vec![Inner {
                tags: vec![],
                data: ByteBuf::new(),
                score: None,
            }],
        },
    }
}

/// Decode `bytes` as every representative type, through `decode`, `decode_framed` and
/// `decode_prefix`, and as the arguments of a call. Errors are expected; panics, aborts
/// and allocations larger than libFuzzer's `-malloc_limit_mb` are the findings.
pub fn decode_all(codec: Codec, bytes: &[u8]) {
    macro_rules! each {
        ($($t:ty),*) => {
            $(
                let _ = codec.decode::<$t>(bytes);
                let _ = codec.decode_framed::<$t>(bytes);
                if let Ok((_, n)) = codec.decode_prefix::<$t>(bytes) {
                    assert!(n <= bytes.len());
                }
            )*
        };
    }
    each!(
        String,
        ByteBuf,
        Vec<u8>,
        Vec<String>,
        HashMap<String, u32>,
        Outer,
        Choice,
        (i64, String),
        Option<Vec<()>>,
        Vec<Vec<()>>,
        u64,
        f64,
        rmpv::Value
    );
    decode_args(codec, bytes);
}

/// Decode `params` as the arguments of a few calls.
pub fn decode_args(codec: Codec, params: &[u8]) {
    let _ = <(i64, i64)>::from_args(&mut Args::new(codec, params));
    let _ = <(String, ByteBuf, Outer)>::from_args(&mut Args::new(codec, params));
    let _ = <(Choice, HashMap<String, u32>, Vec<String>)>::from_args(&mut Args::new(codec, params));
    let _ = Args::new(codec, params).values();
}

/// The codec a control byte's low bit picks: 0 msgpack, 1 bincode.
pub fn codec(ctl: u8) -> Codec {
    if ctl & 1 == 0 {
        Codec::Msgpack
    } else {
        Codec::Bincode
    }
}
