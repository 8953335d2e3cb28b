//! A serde serializer for the values most calls carry — integers, floats, booleans,
//! strings, bytes, `()` and `Option`s of them — writing MessagePack straight into the
//! buffer, byte for byte as rmp-serde writes them, without rmp-serde's per-value setup.
//!
//! Anything else (sequences, maps, structs, enums, 128-bit integers, extensions) makes it
//! stop with [`NotScalar`] before it has written a byte, and the caller encodes the value
//! with rmp-serde instead. The tests check the bytes against rmp-serde's for every marker
//! boundary.

use std::fmt;

use serde::ser::{Impossible, Serialize, Serializer};

use crate::wire::{write_bin, write_str, write_uint};

/// The value is not one this serializer writes: use rmp-serde.
#[derive(Debug)]
pub(crate) struct NotScalar;

impl fmt::Display for NotScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a scalar value")
    }
}

impl std::error::Error for NotScalar {}

impl serde::ser::Error for NotScalar {
    fn custom<T: fmt::Display>(_msg: T) -> NotScalar {
        NotScalar
    }
}

/// Write `value` if it is a scalar; `Err(NotScalar)` (with nothing written) otherwise.
#[inline]
pub(crate) fn encode<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), NotScalar> {
    value.serialize(Scalar(out))
}

/// The `Serializer` methods for everything that is not a scalar: each refuses, having
/// written nothing.
macro_rules! refuse_the_rest {
    () => {
        fn serialize_i128(self, _: i128) -> Result<(), NotScalar> {
            Err(NotScalar)
        }

        fn serialize_u128(self, _: u128) -> Result<(), NotScalar> {
            Err(NotScalar)
        }

        fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotScalar> {
            Err(NotScalar)
        }

        fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), NotScalar> {
            Err(NotScalar)
        }

        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<(), NotScalar> {
            // rmp-serde gives some newtype names a meaning (extensions).
            Err(NotScalar)
        }

        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<(), NotScalar> {
            Err(NotScalar)
        }

        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotScalar> {
            Err(NotScalar)
        }

        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotScalar> {
            Err(NotScalar)
        }

        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, NotScalar> {
            Err(NotScalar)
        }

        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, NotScalar> {
            Err(NotScalar)
        }

        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotScalar> {
            Err(NotScalar)
        }

        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, NotScalar> {
            Err(NotScalar)
        }

        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, NotScalar> {
            Err(NotScalar)
        }
    };
}

macro_rules! impossible_compounds {
    () => {
        type Ok = ();
        type Error = NotScalar;
        type SerializeSeq = Impossible<(), NotScalar>;
        type SerializeTuple = Impossible<(), NotScalar>;
        type SerializeTupleStruct = Impossible<(), NotScalar>;
        type SerializeTupleVariant = Impossible<(), NotScalar>;
        type SerializeMap = Impossible<(), NotScalar>;
        type SerializeStruct = Impossible<(), NotScalar>;
        type SerializeStructVariant = Impossible<(), NotScalar>;
    };
}

struct Scalar<'a>(&'a mut Vec<u8>);

#[inline]
fn sint(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as u8);
    } else if v >= -128 {
        out.extend_from_slice(&[0xd0, v as u8]);
    } else if v >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= -2_147_483_648 {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Over 4 GiB: let rmp-serde report it.
fn fits(n: usize) -> Result<(), NotScalar> {
    u32::try_from(n).map(drop).map_err(|_| NotScalar)
}

impl Serializer for Scalar<'_> {
    impossible_compounds!();

    fn is_human_readable(&self) -> bool {
        // As rmp-serde's default configuration.
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), NotScalar> {
        self.0.push(if v { 0xc3 } else { 0xc2 });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), NotScalar> {
        self.serialize_i64(i64::from(v))
    }

    fn serialize_i16(self, v: i16) -> Result<(), NotScalar> {
        self.serialize_i64(i64::from(v))
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), NotScalar> {
        self.serialize_i64(i64::from(v))
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), NotScalar> {
        sint(self.0, v);
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), NotScalar> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u16(self, v: u16) -> Result<(), NotScalar> {
        self.serialize_u64(u64::from(v))
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), NotScalar> {
        self.serialize_u64(u64::from(v))
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), NotScalar> {
        write_uint(self.0, v);
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), NotScalar> {
        self.0.push(0xca);
        self.0.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), NotScalar> {
        self.0.push(0xcb);
        self.0.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), NotScalar> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), NotScalar> {
        fits(v.len())?;
        write_str(self.0, v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), NotScalar> {
        fits(v.len())?;
        write_bin(self.0, v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), NotScalar> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotScalar> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), NotScalar> {
        self.0.push(0xc0);
        Ok(())
    }

    // Everything else is rmp-serde's to write.
    refuse_the_rest!();
}

impl serde::de::Error for NotScalar {
    fn custom<T: fmt::Display>(_msg: T) -> NotScalar {
        NotScalar
    }
}

/// Decode a scalar from the start of `bytes`, returning it and the bytes it used, when the
/// value there is a scalar and `T` asks for one (an integer, float, bool, string, bytes,
/// `()`, or an `Option` of these). `Err(NotScalar)` otherwise, and for anything the type
/// refuses: the caller then decodes with rmp-serde, which says what was wrong. The
/// visitor sees the same calls as rmp-serde makes for these markers.
#[inline]
pub(crate) fn decode_prefix<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), NotScalar> {
    let mut de = ScalarDe { bytes, pos: 0 };
    let v = T::deserialize(&mut de)?;
    Ok((v, de.pos))
}

struct ScalarDe<'de> {
    bytes: &'de [u8],
    pos: usize,
}

impl<'de> ScalarDe<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8], NotScalar> {
        // A declared length is at most `u32::MAX`, but on a 32-bit target that plus the
        // position can still overflow.
        let end = self.pos.checked_add(n).ok_or(NotScalar)?;
        let b = self.bytes.get(self.pos..end).ok_or(NotScalar)?;
        self.pos = end;
        Ok(b)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], NotScalar> {
        let b = self.take(N)?;
        b.try_into().map_err(|_| NotScalar)
    }

    fn len(&mut self, width: usize) -> Result<usize, NotScalar> {
        Ok(match width {
            1 => usize::from(self.be::<1>()?[0]),
            2 => usize::from(u16::from_be_bytes(self.be()?)),
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }

    /// Read one scalar and hand it to the visitor.
    fn scalar<V: serde::de::Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, NotScalar> {
        let m = *self.bytes.get(self.pos).ok_or(NotScalar)?;
        self.pos += 1;
        match m {
            0x00..=0x7f => visitor.visit_u8(m),
            0xe0..=0xff => visitor.visit_i8(m as i8),
            0xc0 => visitor.visit_unit(),
            0xc2 => visitor.visit_bool(false),
            0xc3 => visitor.visit_bool(true),
            0xcc => visitor.visit_u8(self.be::<1>()?[0]),
            0xcd => visitor.visit_u16(u16::from_be_bytes(self.be()?)),
            0xce => visitor.visit_u32(u32::from_be_bytes(self.be()?)),
            0xcf => visitor.visit_u64(u64::from_be_bytes(self.be()?)),
            0xd0 => visitor.visit_i8(i8::from_be_bytes(self.be()?)),
            0xd1 => visitor.visit_i16(i16::from_be_bytes(self.be()?)),
            0xd2 => visitor.visit_i32(i32::from_be_bytes(self.be()?)),
            0xd3 => visitor.visit_i64(i64::from_be_bytes(self.be()?)),
            0xca => visitor.visit_f32(f32::from_be_bytes(self.be()?)),
            0xcb => visitor.visit_f64(f64::from_be_bytes(self.be()?)),
            0xa0..=0xbf | 0xd9..=0xdb => {
                let n = match m {
                    0xd9 => self.len(1)?,
                    0xda => self.len(2)?,
                    0xdb => self.len(4)?,
                    _ => usize::from(m & 0x1f),
                };
                // Not UTF-8: rmp-serde decides what that means.
                let s = std::str::from_utf8(self.take(n)?).map_err(|_| NotScalar)?;
                visitor.visit_borrowed_str(s)
            }
            0xc4..=0xc6 => {
                let n = self.len(1 << (m - 0xc4))?;
                visitor.visit_borrowed_bytes(self.take(n)?)
            }
            // Arrays, maps, extensions, 0xc1.
            _ => Err(NotScalar),
        }
    }
}

macro_rules! scalar_methods {
    ($($method:ident)*) => {
        $(
            fn $method<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
                self.scalar(visitor)
            }
        )*
    };
}

impl<'de> serde::de::Deserializer<'de> for &mut ScalarDe<'de> {
    type Error = NotScalar;

    scalar_methods! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        if self.bytes.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    // Everything else is rmp-serde's to decode (`deserialize_any` included: dynamic values
    // may hold extensions).
    serde::forward_to_deserialize_any! {
        i128 u128 unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, NotScalar> {
        Err(NotScalar)
    }
}

/// bincode (standard configuration: little-endian, variable-length integers): write
/// `value` if it is a scalar, byte for byte as bincode would; `Err(NotScalar)` (with
/// nothing written) otherwise.
pub(crate) fn bincode_encode<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), NotScalar> {
    value.serialize(BincodeScalar(out))
}

struct BincodeScalar<'a>(&'a mut Vec<u8>);

/// bincode's variable-length unsigned integer.
#[inline]
fn varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else {
        wide_varint(out, v);
    }
}

fn wide_varint(out: &mut Vec<u8>, v: u64) {
    if v <= 0xffff {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= 0xffff_ffff {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

impl Serializer for BincodeScalar<'_> {
    impossible_compounds!();

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), NotScalar> {
        self.0.push(u8::from(v));
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), NotScalar> {
        self.0.push(v as u8);
        Ok(())
    }

    fn serialize_i16(self, v: i16) -> Result<(), NotScalar> {
        self.serialize_i64(i64::from(v))
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), NotScalar> {
        self.serialize_i64(i64::from(v))
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), NotScalar> {
        varint(self.0, zigzag(v));
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), NotScalar> {
        self.0.push(v);
        Ok(())
    }

    fn serialize_u16(self, v: u16) -> Result<(), NotScalar> {
        self.serialize_u64(u64::from(v))
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), NotScalar> {
        self.serialize_u64(u64::from(v))
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), NotScalar> {
        varint(self.0, v);
        Ok(())
    }

    fn serialize_f32(self, v: f32) -> Result<(), NotScalar> {
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), NotScalar> {
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn serialize_char(self, _: char) -> Result<(), NotScalar> {
        Err(NotScalar)
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), NotScalar> {
        self.serialize_bytes(v.as_bytes())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), NotScalar> {
        varint(self.0, v.len() as u64);
        if !crate::blob::take_shared(self.0, v) {
            self.0.extend_from_slice(v);
        }
        Ok(())
    }

    fn serialize_none(self) -> Result<(), NotScalar> {
        self.0.push(0);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotScalar> {
        let start = self.0.len();
        self.0.push(1);
        let r = value.serialize(BincodeScalar(&mut *self.0));
        if r.is_err() {
            // Nothing written on refusal, the tag included.
            self.0.truncate(start);
        }
        r
    }

    fn serialize_unit(self) -> Result<(), NotScalar> {
        Ok(())
    }

    // Everything else is bincode's to write.
    refuse_the_rest!();
}

/// bincode (standard configuration): decode a scalar from the start of `bytes`, with the
/// same visitor calls as bincode's serde decoder, and strings and bytes with one copy
/// (bincode's own decoder zero-fills a byte buffer, then copies into it). Any other type,
/// or anything bincode would refuse: `Err(NotScalar)`, for bincode to decode (and explain).
pub(crate) fn bincode_decode_prefix<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), NotScalar> {
    let mut de = BincodeDe { bytes, pos: 0 };
    let v = T::deserialize(&mut de)?;
    Ok((v, de.pos))
}

struct BincodeDe<'de> {
    bytes: &'de [u8],
    pos: usize,
}

impl<'de> BincodeDe<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8], NotScalar> {
        let end = self.pos.checked_add(n).ok_or(NotScalar)?;
        let b = self.bytes.get(self.pos..end).ok_or(NotScalar)?;
        self.pos = end;
        Ok(b)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], NotScalar> {
        self.take(N)?.try_into().map_err(|_| NotScalar)
    }

    fn byte(&mut self) -> Result<u8, NotScalar> {
        Ok(self.fixed::<1>()?[0])
    }

    /// A variable-length integer of at most `max` (bincode refuses wider forms).
    fn varint(&mut self, max: u64) -> Result<u64, NotScalar> {
        let v = match self.byte()? {
            b @ 0..=250 => u64::from(b),
            251 => u64::from(u16::from_le_bytes(self.fixed()?)),
            252 if max > 0xffff => u64::from(u32::from_le_bytes(self.fixed()?)),
            253 if max > 0xffff_ffff => u64::from_le_bytes(self.fixed()?),
            _ => return Err(NotScalar),
        };
        if v > max {
            return Err(NotScalar);
        }
        Ok(v)
    }

    fn signed(&mut self, max: u64) -> Result<i64, NotScalar> {
        let z = self.varint(max)?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn payload(&mut self) -> Result<&'de [u8], NotScalar> {
        let n = usize::try_from(self.varint(u64::MAX)?).map_err(|_| NotScalar)?;
        self.take(n)
    }
}

impl<'de> serde::de::Deserializer<'de> for &mut BincodeDe<'de> {
    type Error = NotScalar;

    fn deserialize_bool<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(NotScalar),
        }
    }

    fn deserialize_u8<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_u8(self.byte()?)
    }

    fn deserialize_i8<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_i8(self.byte()? as i8)
    }

    fn deserialize_u16<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_u16(self.varint(u64::from(u16::MAX))? as u16)
    }

    fn deserialize_u32<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_u32(self.varint(u64::from(u32::MAX))? as u32)
    }

    fn deserialize_u64<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_u64(self.varint(u64::MAX)?)
    }

    fn deserialize_i16<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_i16(self.signed(u64::from(u16::MAX))? as i16)
    }

    fn deserialize_i32<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_i32(self.signed(u64::from(u32::MAX))? as i32)
    }

    fn deserialize_i64<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_i64(self.signed(u64::MAX)?)
    }

    fn deserialize_f32<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_f32(f32::from_le_bytes(self.fixed()?))
    }

    fn deserialize_f64<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_f64(f64::from_le_bytes(self.fixed()?))
    }

    fn deserialize_bytes<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_borrowed_bytes(self.payload()?)
    }

    fn deserialize_byte_buf<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_borrowed_bytes(self.payload()?)
    }

    fn deserialize_str<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        let s = std::str::from_utf8(self.payload()?).map_err(|_| NotScalar)?;
        visitor.visit_borrowed_str(s)
    }

    fn deserialize_string<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(NotScalar),
        }
    }

    fn deserialize_unit<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, NotScalar> {
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, NotScalar> {
        Err(NotScalar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same<T: Serialize + fmt::Debug + ?Sized>(value: &T) {
        let mut ours = vec![0xee]; // something before: appends, never overwrites
        encode(&mut ours, value).unwrap_or_else(|_| panic!("{value:?} is a scalar"));
        let mut theirs = vec![0xee];
        rmp_serde::encode::write_named(&mut theirs, value).unwrap();
        assert_eq!(ours, theirs, "{value:?}");
    }

    fn refused<T: Serialize + fmt::Debug + ?Sized>(value: &T) {
        let mut out = vec![0xee];
        assert!(encode(&mut out, value).is_err(), "{value:?}");
        assert_eq!(out, [0xee], "{value:?}: nothing written before refusing");
    }

    #[test]
    fn integers_at_every_marker_boundary() {
        let edges: [i64; 22] = [
            0,
            1,
            0x7f,
            0x80,
            0xff,
            0x100,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            i64::MAX,
            -1,
            -31,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            -2_147_483_648,
            -2_147_483_649,
            i64::MIN,
        ];
        for v in edges {
            same(&v);
            if let Ok(v) = i32::try_from(v) {
                same(&v);
            }
            if let Ok(v) = i16::try_from(v) {
                same(&v);
            }
            if let Ok(v) = i8::try_from(v) {
                same(&v);
            }
            if let Ok(v) = u64::try_from(v) {
                same(&v);
                if let Ok(v) = u32::try_from(v) {
                    same(&v);
                }
                if let Ok(v) = u16::try_from(v) {
                    same(&v);
                }
                if let Ok(v) = u8::try_from(v) {
                    same(&v);
                }
            }
        }
        same(&u64::MAX);
    }

    #[test]
    fn floats_bools_unit_options_chars() {
        for v in [0.0f64, -1.5, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY] {
            same(&v);
            same(&(v as f32));
        }
        same(&true);
        same(&false);
        same(&());
        same(&None::<i64>);
        same(&Some(7u8));
        same(&Some(Some("x")));
        same(&rmpv::Value::from(-7));
        same(&rmpv::Value::from("text"));
        for c in ['a', 'é', '€', '🦀'] {
            same(&c);
        }
    }

    #[test]
    fn strings_and_bytes_at_every_length_boundary() {
        for n in [0, 1, 31, 32, 255, 256, 65535, 65536, 70_000] {
            let s = "x".repeat(n);
            same(s.as_str());
            same(&s);
            same(&serde_bytes::ByteBuf::from(vec![7u8; n]));
            same(serde_bytes::Bytes::new(&vec![7u8; n]));
        }
    }

    #[test]
    fn everything_else_is_left_to_rmp_serde() {
        #[derive(Debug, serde::Serialize)]
        struct Point {
            x: i32,
        }
        #[derive(Debug, serde::Serialize)]
        struct Unit;
        #[derive(Debug, serde::Serialize)]
        struct Wrapper(u8);
        #[derive(Debug, serde::Serialize)]
        enum E {
            A,
            B(u8),
        }
        refused(&Point { x: 1 });
        refused(&Unit);
        refused(&Wrapper(1));
        refused(&E::A);
        refused(&E::B(1));
        refused(&vec![1, 2]);
        refused(&(1, 2));
        refused(&std::collections::BTreeMap::from([(1, 2)]));
        refused(&1i128);
        refused(&1u128);
        refused(&Some(vec![1]));
        refused(&rmpv::Value::Ext(1, vec![1])); // an extension: rmp-serde knows how
    }

    fn decodes_same<T>(bytes: &[u8])
    where
        T: serde::de::DeserializeOwned + PartialEq + fmt::Debug,
    {
        let mut padded = bytes.to_vec();
        padded.push(0x91); // whatever follows is not read
        let theirs: T = rmp_serde::from_slice(bytes).unwrap();
        let (ours, n) = decode_prefix::<T>(&padded).unwrap_or_else(|_| panic!("{theirs:?} is a scalar"));
        assert_eq!((ours, n), (theirs, bytes.len()));
    }

    fn encoded<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn decodes_scalars_as_rmp_serde_does() {
        for v in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            -1,
            -32,
            -33,
            -129,
            -32769,
            i64::MIN,
            i64::MAX,
        ] {
            decodes_same::<i64>(&encoded(&v));
            decodes_same::<f64>(&encoded(&(v as f64)));
            decodes_same::<Option<i64>>(&encoded(&Some(v)));
        }
        for v in [0u64, 200, 70_000, u64::MAX] {
            decodes_same::<u64>(&encoded(&v));
        }
        decodes_same::<u8>(&encoded(&200u8));
        decodes_same::<i8>(&encoded(&-100i8));
        decodes_same::<bool>(&encoded(&true));
        decodes_same::<()>(&encoded(&()));
        decodes_same::<Option<u8>>(&encoded(&None::<u8>));
        decodes_same::<char>(&encoded(&'€'));
        decodes_same::<f32>(&encoded(&1.5f32));
        for n in [0, 31, 32, 255, 256, 65536] {
            decodes_same::<String>(&encoded(&"y".repeat(n)));
            decodes_same::<serde_bytes::ByteBuf>(&encoded(&serde_bytes::ByteBuf::from(vec![1u8; n])));
        }
    }

    #[test]
    fn leaves_everything_else_to_rmp_serde() {
        let no = |bytes: &[u8]| decode_prefix::<rmpv::Value>(bytes).is_err();
        assert!(no(&encoded(&1))); // dynamic values: deserialize_any
        assert!(decode_prefix::<Vec<u8>>(&encoded(&vec![1u8])).is_err());
        assert!(decode_prefix::<(i64, i64)>(&encoded(&(1, 2))).is_err());
        // Out of range, wrong type, truncated, not UTF-8: refused, for rmp-serde to explain.
        assert!(decode_prefix::<u8>(&encoded(&300)).is_err());
        assert!(decode_prefix::<i64>(&encoded(&"1")).is_err());
        assert!(decode_prefix::<String>(&encoded(&1)).is_err());
        assert!(decode_prefix::<i64>(&[0xd3, 0, 0]).is_err());
        assert!(decode_prefix::<String>(&[0xa2, 0xff, 0xfe]).is_err());
        assert!(decode_prefix::<i64>(&[]).is_err());
    }

    fn bincode_same<T>(value: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug,
    {
        let config = bincode::config::standard();
        let theirs = bincode::serde::encode_to_vec(value, config).unwrap();
        let mut ours = vec![0xee];
        bincode_encode(&mut ours, value).unwrap_or_else(|_| panic!("{value:?} is a scalar"));
        assert_eq!(&ours[1..], &theirs[..], "{value:?}");
        let mut padded = theirs.clone();
        padded.push(9); // what follows is not read
        let (back, n) = bincode_decode_prefix::<T>(&padded).unwrap_or_else(|_| panic!("{value:?} decodes"));
        assert_eq!((&back, n), (value, theirs.len()));
    }

    #[test]
    fn bincode_scalars_as_bincode_writes_and_reads_them() {
        for v in [
            0i64,
            1,
            -1,
            125,
            126,
            -126,
            127,
            250,
            251,
            -32768,
            32767,
            65535,
            1 << 31,
            -(1 << 31),
            i64::MAX,
            i64::MIN,
        ] {
            bincode_same(&v);
            if let Ok(v) = i32::try_from(v) {
                bincode_same(&v);
            }
            if let Ok(v) = i16::try_from(v) {
                bincode_same(&v);
            }
            if let Ok(v) = i8::try_from(v) {
                bincode_same(&v);
            }
            if let Ok(u) = u64::try_from(v) {
                bincode_same(&u);
                if let Ok(v) = u32::try_from(u) {
                    bincode_same(&v);
                }
                if let Ok(v) = u16::try_from(u) {
                    bincode_same(&v);
                }
                if let Ok(v) = u8::try_from(u) {
                    bincode_same(&v);
                }
            }
        }
        for v in [
            250u64,
            251,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ] {
            bincode_same(&v);
        }
        bincode_same(&true);
        bincode_same(&false);
        bincode_same(&1.5f64);
        bincode_same(&-2.25f32);
        bincode_same(&());
        bincode_same(&Some(300u32));
        bincode_same(&None::<u32>);
        for n in [0, 1, 250, 251, 252, 65535, 65536, 70_000] {
            bincode_same(&"z".repeat(n));
            bincode_same(&serde_bytes::ByteBuf::from(vec![3u8; n]));
        }
    }

    #[test]
    fn bincode_everything_else_is_left_to_bincode() {
        let mut out = vec![0xee];
        assert!(bincode_encode(&mut out, &(1, 2)).is_err());
        assert!(bincode_encode(&mut out, &Some(vec![1])).is_err());
        assert!(bincode_encode(&mut out, &'x').is_err());
        assert!(bincode_encode(&mut out, &1u128).is_err());
        assert_eq!(out, [0xee], "nothing written before refusing");
        // Out of range for the type, bad tags, truncated, bad UTF-8: refused.
        assert!(bincode_decode_prefix::<u16>(&[252, 0, 0, 1, 0]).is_err());
        assert!(bincode_decode_prefix::<u8>(&[]).is_err());
        assert!(bincode_decode_prefix::<bool>(&[2]).is_err());
        assert!(bincode_decode_prefix::<Option<u8>>(&[2, 1]).is_err());
        assert!(bincode_decode_prefix::<serde_bytes::ByteBuf>(&[3, 1, 2]).is_err());
        assert!(bincode_decode_prefix::<String>(&[2, 0xff, 0xfe]).is_err());
        assert!(bincode_decode_prefix::<Vec<u8>>(&[1, 5]).is_err());
        assert!(bincode_decode_prefix::<rmpv::Value>(&[1]).is_err());
    }
}
