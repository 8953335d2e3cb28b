//! Regression tests for issue 17: a value that declares a length larger than the bytes
//! present is a decode error, never an allocation of that length.
//!
//! Before the fix, `Codec::Bincode.decode::<String>(&[0xfd, 0, 0, 0, 0, 0, 1, 0, 0])`
//! aborted the process (`memory allocation of 1099511627776 bytes failed`), a declared
//! length above `isize::MAX` panicked with "capacity overflow", and a `Vec<()>` declaring
//! 2^40 elements spun for 2^40 iterations.

use std::collections::HashMap;
use std::fmt::Debug;

use easyrpc_proto::{decode_error, Args, Codec, ErrorCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// bincode's varint marker for a u64 in the next 8 bytes, little-endian.
fn bincode_len(n: u64) -> Vec<u8> {
    let mut v = vec![0xfd];
    v.extend_from_slice(&n.to_le_bytes());
    v
}

const TERA: u64 = 1 << 40;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Inner {
    tags: Vec<String>,
    data: ByteBuf,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Outer {
    name: String,
    inner: Inner,
    counts: HashMap<String, u32>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Choice {
    Text(String),
    Numbers { v: Vec<u32> },
}

/// Every decode path refuses `bytes` as a `T` with an error (the test would abort, panic
/// or hang before the fix).
fn refused<T: DeserializeOwned + Debug>(codec: Codec, bytes: &[u8]) {
    let what = std::any::type_name::<T>();
    assert!(codec.decode::<T>(bytes).is_err(), "decode {what} {codec:?}");
    assert!(
        codec.decode_framed::<T>(bytes).is_err(),
        "decode_framed {what} {codec:?}"
    );
    assert!(
        codec.decode_prefix::<T>(bytes).is_err(),
        "decode_prefix {what} {codec:?}"
    );
    // As the one argument of a call: an invalid-params error naming it.
    let mut params = match codec {
        Codec::Msgpack => vec![0x91],
        _ => 1u32.to_le_bytes().to_vec(),
    };
    params.extend_from_slice(bytes);
    let e = Args::new(codec, &params).next::<T>("x").unwrap_err();
    assert_eq!(e.kind(), ErrorCode::InvalidParams, "{what} {codec:?}: {e}");
    assert!(e.message.starts_with("argument 0 (x)"), "{e}");
}

#[test]
fn issue17_bincode_string_declaring_a_terabyte() {
    // The exact in-process reproduction of the issue.
    let e = Codec::Bincode
        .decode::<String>(&[0xfd, 0, 0, 0, 0, 0, 1, 0, 0])
        .unwrap_err();
    eprintln!("{e}");
    refused::<String>(Codec::Bincode, &bincode_len(TERA));
}

#[test]
fn issue17_bincode_lengths_above_isize_max() {
    for n in [u64::MAX, u64::MAX / 2 + 1, u64::from(u32::MAX)] {
        let len = bincode_len(n);
        refused::<String>(Codec::Bincode, &len);
        refused::<Vec<u8>>(Codec::Bincode, &len);
        refused::<ByteBuf>(Codec::Bincode, &len);
        refused::<Vec<String>>(Codec::Bincode, &len);
        refused::<HashMap<String, u64>>(Codec::Bincode, &len);
    }
}

#[test]
fn issue17_bincode_every_shape_declaring_a_terabyte() {
    let len = bincode_len(TERA);
    refused::<Vec<u8>>(Codec::Bincode, &len);
    refused::<ByteBuf>(Codec::Bincode, &len);
    refused::<Vec<String>>(Codec::Bincode, &len);
    refused::<HashMap<String, u32>>(Codec::Bincode, &len);
    refused::<HashMap<u8, ()>>(Codec::Bincode, &len);
    refused::<Option<String>>(Codec::Bincode, &[&[1][..], &len].concat());
    // Zero-sized elements take no bytes: 2^40 of them would be 2^40 iterations.
    refused::<Vec<()>>(Codec::Bincode, &len);
    refused::<Vec<Vec<()>>>(Codec::Bincode, &[&[2, 0xfb, 0xff, 0xff][..], &len].concat());
    // A valid start, then a hostile length one level down, at every field of a struct.
    let ok = Outer {
        name: "ab".into(),
        inner: Inner {
            tags: vec!["t".into()],
            data: ByteBuf::from(vec![1, 2, 3]),
        },
        counts: HashMap::from([("k".to_string(), 1)]),
    };
    let mut good = Vec::new();
    Codec::Bincode.encode(&mut good, &ok).unwrap();
    assert_eq!(Codec::Bincode.decode::<Outer>(&good).unwrap(), ok);
    let name = [&len[..]].concat();
    let tags = [&[2, b'a', b'b'][..], &len].concat();
    let tag = [&[2, b'a', b'b', 1][..], &len].concat();
    let data = [&[2, b'a', b'b', 0][..], &len].concat();
    let counts = [&[2, b'a', b'b', 0, 0][..], &len].concat();
    for bytes in [name, tags, tag, data, counts] {
        refused::<Outer>(Codec::Bincode, &bytes);
    }
    // Enums: a newtype variant holding a string, a struct variant holding a vector.
    refused::<Choice>(Codec::Bincode, &[&[0][..], &len].concat());
    refused::<Choice>(Codec::Bincode, &[&[1][..], &len].concat());
    // Tuples of them.
    refused::<(u8, String)>(Codec::Bincode, &[&[7][..], &len].concat());
}

#[test]
fn issue17_msgpack_every_shape_declaring_4_gib() {
    let str32 = [0xdb, 0xff, 0xff, 0xff, 0xff];
    let bin32 = [0xc6, 0xff, 0xff, 0xff, 0xff];
    let array32 = [0xdd, 0xff, 0xff, 0xff, 0xff];
    let map32 = [0xdf, 0xff, 0xff, 0xff, 0xff];
    let m = Codec::Msgpack;
    refused::<String>(m, &str32);
    refused::<Vec<u8>>(m, &array32);
    refused::<ByteBuf>(m, &bin32);
    refused::<Vec<String>>(m, &array32);
    refused::<Vec<()>>(m, &array32);
    refused::<HashMap<String, u32>>(m, &map32);
    refused::<rmpv::Value>(m, &array32);
    refused::<rmpv::Value>(m, &map32);
    refused::<rmpv::Value>(m, &str32);
    refused::<rmpv::Value>(m, &bin32);
    refused::<rmpv::Value>(m, &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01]);
    // {"name": "ab", "inner": {"tags": array32 ...
    let nested = [
        &[0x83, 0xa4][..],
        b"name",
        &[0xa2, b'a', b'b', 0xa5],
        b"inner",
        &[0x82, 0xa4],
        b"tags",
        &array32,
    ]
    .concat();
    refused::<Outer>(m, &nested);
    refused::<Outer>(m, &map32);
    // {"Text": str32 ...}, {"Numbers": {"v": array32 ...}}
    refused::<Choice>(m, &[&[0x81, 0xa4][..], b"Text", &str32].concat());
    refused::<Choice>(
        m,
        &[&[0x81, 0xa7][..], b"Numbers", &[0x81, 0xa1, b'v'], &array32].concat(),
    );
}

#[test]
fn issue17_decode_error_with_a_hostile_length_is_an_error_value() {
    // [code 1, message declaring 2^40 bytes]
    let bincode = [&[0x02][..], &bincode_len(TERA)].concat();
    let e = decode_error(Codec::Bincode, &bincode);
    assert_eq!(e.kind(), ErrorCode::Unknown, "{e}");
    assert!(e.message.starts_with("undecodable error value"), "{e}");
    let e = decode_error(Codec::Bincode, &[&[0x02][..], &bincode_len(u64::MAX)].concat());
    assert_eq!(e.kind(), ErrorCode::Unknown, "{e}");
    // [1, str32 of 4 GiB - 1 with nothing after it]
    let e = decode_error(Codec::Msgpack, &[0x92, 0x01, 0xdb, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(e.kind(), ErrorCode::Unknown, "{e}");
}

#[test]
fn issue17_values_refuses_a_count_larger_than_the_params() {
    // array32 declaring 4 Gi arguments, with none present.
    let e = Args::new(Codec::Msgpack, &[0xdd, 0xff, 0xff, 0xff, 0xff])
        .values()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorCode::InvalidParams, "{e}");
}

#[test]
fn issue17_values_that_fit_still_decode() {
    // The bounds refuse nothing that is really there.
    let m = Codec::Msgpack;
    let b = Codec::Bincode;
    for codec in [m, b] {
        let big = "x".repeat(100_000);
        let mut out = Vec::new();
        codec.encode(&mut out, &big).unwrap();
        assert_eq!(codec.decode::<String>(&out).unwrap(), big);
        let v: Vec<Vec<u8>> = vec![vec![1; 300], vec![], vec![2; 70_000]];
        out.clear();
        codec.encode(&mut out, &v).unwrap();
        assert_eq!(codec.decode::<Vec<Vec<u8>>>(&out).unwrap(), v);
        let map: HashMap<String, Vec<u32>> = (0..500).map(|i| (i.to_string(), vec![i; 3])).collect();
        out.clear();
        codec.encode(&mut out, &map).unwrap();
        assert_eq!(codec.decode::<HashMap<String, Vec<u32>>>(&out).unwrap(), map);
        // Zero-sized elements take no bytes in bincode: as many as the bytes left are
        // accepted (one here), more are refused (the documented limit).
        let units = vec![(); if codec == b { 1 } else { 5 }];
        out.clear();
        codec.encode(&mut out, &units).unwrap();
        assert_eq!(codec.decode::<Vec<()>>(&out).unwrap(), units);
        if codec == b {
            assert!(codec.decode::<Vec<()>>(&[2]).is_err());
        }
        for c in [Choice::Text("t".into()), Choice::Numbers { v: vec![1, 2, 3] }] {
            out.clear();
            codec.encode(&mut out, &c).unwrap();
            assert_eq!(codec.decode::<Choice>(&out).unwrap(), c);
        }
    }
}

/// A recursive type: in bincode each level is one byte (the option's tag).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Chain(Option<Box<Chain>>);

#[test]
fn issue17_bincode_nesting_is_limited() {
    // 100 000 levels in 100 001 bytes: an error, not a stack overflow.
    let mut deep = vec![1u8; 100_000];
    deep.push(0);
    let e = Codec::Bincode.decode::<Chain>(&deep).unwrap_err();
    assert!(e.to_string().contains("depth"), "{e}");
    // A chain of 100 still decodes.
    let mut ok = vec![1u8; 100];
    ok.push(0);
    let mut chain = Chain(None);
    for _ in 0..100 {
        chain = Chain(Some(Box::new(chain)));
    }
    assert_eq!(Codec::Bincode.decode::<Chain>(&ok).unwrap(), chain);
}
