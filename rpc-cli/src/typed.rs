//! Calls in bincode, driven by the method's signature.
//!
//! MessagePack says what each value is, so `rpc` can send JSON arguments and print any
//! result without knowing the method. bincode does not: the bytes of `1i64` and `1u64`
//! differ, and a result cannot be read back without its type. So with `--codec bincode`,
//! `rpc` asks the server for the method's signature first (`rpc.methods`, always over
//! MessagePack), parses the Rust types as written into a [`Ty`], and encodes each argument
//! and decodes the result by it.
//!
//! The types understood are those of the standard library and serde_bytes: integers,
//! floats, `bool`, `char`, `String`/`&str`, `()`, `Option`, `Vec` and the other sequences,
//! tuples, arrays, `HashMap`/`BTreeMap`, `ByteBuf`/`Bytes` (bin), through `Box`, `Arc`,
//! `Rc`, `Cow` and references; a return type `Result<T, E>` is read as `T` (the error comes
//! as an error reply). Anything else (a struct of the application, say) is
//! [`Ty::Unknown`], and a call that needs it fails with a message saying so: use MessagePack
//! for it.
//!
//! ```
//! use easyrpc_cli::typed::Ty;
//!
//! assert_eq!(Ty::parse("i64"), Ty::I64);
//! assert_eq!(Ty::parse("Vec < Option<String> >"), Ty::Seq(Box::new(Ty::Option(Box::new(Ty::Str)))));
//! assert_eq!(Ty::parse_return("std::io::Result<u32>"), Ty::U32);
//! assert!(matches!(Ty::parse("Point"), Ty::Unknown(_)));
//! ```

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, SerializeMap, SerializeSeq, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::json::{FLOAT, MAP};

/// A Rust type as far as its serde encoding goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ty {
    /// `()`.
    Unit,
    /// `bool`.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64` (and `isize`).
    I64,
    /// `i128`.
    I128,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64` (and `usize`).
    U64,
    /// `u128`.
    U128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `char`.
    Char,
    /// `String`, `str`.
    Str,
    /// Bytes serialized as bytes: `ByteBuf`, `Bytes`.
    Bytes,
    /// `Option<T>`.
    Option(Box<Ty>),
    /// `Vec<T>`, `VecDeque<T>`, sets, slices.
    Seq(Box<Ty>),
    /// Tuples, and arrays `[T; N]`.
    Tuple(Vec<Ty>),
    /// `HashMap<K, V>`, `BTreeMap<K, V>`.
    Map(Box<Ty>, Box<Ty>),
    /// A type this module does not know, as written.
    Unknown(String),
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, ts: &[Ty]| -> fmt::Result {
            for (i, t) in ts.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{t}")?;
            }
            Ok(())
        };
        match self {
            Ty::Unit => f.write_str("()"),
            Ty::Bool => f.write_str("bool"),
            Ty::I8 => f.write_str("i8"),
            Ty::I16 => f.write_str("i16"),
            Ty::I32 => f.write_str("i32"),
            Ty::I64 => f.write_str("i64"),
            Ty::I128 => f.write_str("i128"),
            Ty::U8 => f.write_str("u8"),
            Ty::U16 => f.write_str("u16"),
            Ty::U32 => f.write_str("u32"),
            Ty::U64 => f.write_str("u64"),
            Ty::U128 => f.write_str("u128"),
            Ty::F32 => f.write_str("f32"),
            Ty::F64 => f.write_str("f64"),
            Ty::Char => f.write_str("char"),
            Ty::Str => f.write_str("String"),
            Ty::Bytes => f.write_str("ByteBuf"),
            Ty::Option(t) => write!(f, "Option<{t}>"),
            Ty::Seq(t) => write!(f, "Vec<{t}>"),
            Ty::Tuple(ts) => {
                f.write_str("(")?;
                list(f, ts)?;
                f.write_str(if ts.len() == 1 { ",)" } else { ")" })
            }
            Ty::Map(k, v) => write!(f, "Map<{k}, {v}>"),
            Ty::Unknown(s) => f.write_str(s),
        }
    }
}

impl Ty {
    /// The type a Rust type as written stands for; [`Ty::Unknown`] for what this module
    /// does not know (whitespace and paths are allowed: `std::vec::Vec < u8 >`).
    pub fn parse(written: &str) -> Ty {
        let tokens = tokenize(written);
        let mut p = Parser {
            tokens: &tokens,
            at: 0,
        };
        match p.ty() {
            Some(t) if p.at == tokens.len() => t,
            _ => Ty::Unknown(written.trim().to_owned()),
        }
    }

    /// The type of what a method returns: as [`Ty::parse`], with `Result<T, E>` (and the
    /// one-argument `io::Result<T>` kind) read as `T`, since the error comes as an error
    /// reply.
    pub fn parse_return(written: &str) -> Ty {
        let tokens = tokenize(written);
        let mut p = Parser {
            tokens: &tokens,
            at: 0,
        };
        match p.ty_or_result() {
            Some(t) if p.at == tokens.len() => t,
            _ => Ty::Unknown(written.trim().to_owned()),
        }
    }

    /// The first type in this one this module does not know, if any.
    pub fn unknown(&self) -> Option<&str> {
        match self {
            Ty::Unknown(s) => Some(s),
            Ty::Option(t) | Ty::Seq(t) => t.unknown(),
            Ty::Tuple(ts) => ts.iter().find_map(Ty::unknown),
            Ty::Map(k, v) => k.unknown().or_else(|| v.unknown()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Num(usize),
    Punct(char),
}

fn tokenize(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_alphabetic() || c == '_' || c == '\'' {
            let mut id = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || (c == '\'' && id.is_empty()) {
                    id.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Ident(id));
        } else if c.is_ascii_digit() {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d as usize);
                chars.next();
            }
            out.push(Tok::Num(n));
        } else {
            out.push(Tok::Punct(c));
            chars.next();
        }
    }
    out
}

struct Parser<'a> {
    tokens: &'a [Tok],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn ty_or_result(&mut self) -> Option<Ty> {
        let start = self.at;
        if let Some((name, args)) = self.path() {
            if name == "Result" && !args.is_empty() {
                return Some(args[0].clone());
            }
        }
        self.at = start;
        self.ty()
    }

    fn ty(&mut self) -> Option<Ty> {
        match self.peek()? {
            Tok::Punct('&') => {
                self.at += 1;
                if let Some(Tok::Ident(id)) = self.peek() {
                    if id.starts_with('\'') {
                        self.at += 1;
                    }
                }
                if self.peek() == Some(&Tok::Ident("mut".into())) {
                    self.at += 1;
                }
                self.ty()
            }
            Tok::Punct('(') => {
                self.at += 1;
                let mut items = Vec::new();
                let mut trailing_comma = false;
                while !self.eat(')') {
                    items.push(self.ty()?);
                    trailing_comma = self.eat(',');
                    if !trailing_comma && self.peek() != Some(&Tok::Punct(')')) {
                        return None;
                    }
                }
                Some(match items.len() {
                    0 => Ty::Unit,
                    1 if !trailing_comma => items.remove(0),
                    _ => Ty::Tuple(items),
                })
            }
            Tok::Punct('[') => {
                self.at += 1;
                let t = self.ty()?;
                if self.eat(']') {
                    return Some(Ty::Seq(Box::new(t)));
                }
                if !self.eat(';') {
                    return None;
                }
                let Some(&Tok::Num(n)) = self.peek() else {
                    return None;
                };
                self.at += 1;
                self.eat(']').then(|| Ty::Tuple(vec![t; n]))
            }
            Tok::Punct(':') | Tok::Ident(_) => {
                let (name, mut args) = self.path()?;
                let known = match (name.as_str(), args.len()) {
                    ("bool", 0) => Ty::Bool,
                    ("i8", 0) => Ty::I8,
                    ("i16", 0) => Ty::I16,
                    ("i32", 0) => Ty::I32,
                    // serde writes isize and usize as 64-bit.
                    ("i64" | "isize", 0) => Ty::I64,
                    ("i128", 0) => Ty::I128,
                    ("u8", 0) => Ty::U8,
                    ("u16", 0) => Ty::U16,
                    ("u32", 0) => Ty::U32,
                    ("u64" | "usize", 0) => Ty::U64,
                    ("u128", 0) => Ty::U128,
                    ("f32", 0) => Ty::F32,
                    ("f64", 0) => Ty::F64,
                    ("char", 0) => Ty::Char,
                    ("String" | "str", 0) => Ty::Str,
                    ("ByteBuf" | "Bytes" | "BytesMut", 0) => Ty::Bytes,
                    ("Option", 1) => Ty::Option(Box::new(args.remove(0))),
                    ("Vec" | "VecDeque" | "LinkedList" | "HashSet" | "BTreeSet" | "BinaryHeap", 1 | 2) => {
                        Ty::Seq(Box::new(args.remove(0)))
                    }
                    ("HashMap" | "BTreeMap", 2 | 3) => {
                        let k = args.remove(0);
                        Ty::Map(Box::new(k), Box::new(args.remove(0)))
                    }
                    ("Box" | "Arc" | "Rc" | "Cow", 1) => args.remove(0),
                    _ => Ty::Unknown(name),
                };
                Some(known)
            }
            _ => None,
        }
    }

    /// A path (`a::b::Name<Args>`): its last segment's name and generic arguments
    /// (lifetimes skipped).
    fn path(&mut self) -> Option<(String, Vec<Ty>)> {
        let mut name = None;
        loop {
            if self.eat(':') {
                if !self.eat(':') {
                    return None;
                }
                continue;
            }
            match self.peek() {
                Some(Tok::Ident(id)) if !id.starts_with('\'') && (name.is_none() || self.after_colons()) => {
                    name = Some(id.clone());
                    self.at += 1;
                }
                _ => break,
            }
        }
        let name = name?;
        let mut args = Vec::new();
        if self.eat('<') {
            while !self.eat('>') {
                match self.peek() {
                    Some(Tok::Ident(id)) if id.starts_with('\'') => self.at += 1,
                    _ => args.push(self.ty()?),
                }
                if !self.eat(',') && self.peek() != Some(&Tok::Punct('>')) {
                    return None;
                }
            }
        }
        Some((name, args))
    }

    /// Whether the previous two tokens were `::`.
    fn after_colons(&self) -> bool {
        self.at >= 2
            && self.tokens[self.at - 1] == Tok::Punct(':')
            && self.tokens[self.at - 2] == Tok::Punct(':')
    }
}

/// An argument to encode: a JSON value (as [`crate::json`] reads them) by its type.
#[derive(Debug, Clone, Copy)]
pub struct Typed<'a> {
    /// The type.
    pub ty: &'a Ty,
    /// The value.
    pub value: &'a Json,
}

/// An owned [`Typed`]: what a call's `Vec` of arguments holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedArg {
    /// The type.
    pub ty: Ty,
    /// The value.
    pub value: Json,
}

impl Serialize for TypedArg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Typed {
            ty: &self.ty,
            value: &self.value,
        }
        .serialize(s)
    }
}

impl Typed<'_> {
    /// Whether the value fits the type, and if not, why: `expected i64, got "1"`.
    ///
    /// ```
    /// use easyrpc_cli::typed::{Ty, Typed};
    ///
    /// let (ty, value) = (Ty::U8, serde_json::json!(256));
    /// assert_eq!(Typed { ty: &ty, value: &value }.check(), Err("expected u8, got 256".to_owned()));
    /// ```
    ///
    /// # Errors
    ///
    /// The first mismatch, in words.
    pub fn check(&self) -> Result<(), String> {
        /// Drops what it is given: only the walk over the value matters.
        struct Discard;
        impl bincode::enc::write::Writer for Discard {
            fn write(&mut self, _: &[u8]) -> Result<(), bincode::error::EncodeError> {
                Ok(())
            }
        }
        match bincode::serde::encode_into_writer(self, Discard, bincode::config::standard()) {
            Ok(()) => Ok(()),
            Err(bincode::error::EncodeError::OtherString(s)) => Err(s),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn mismatch<E: ser::Error>(ty: &Ty, v: &Json) -> E {
    E::custom(format!("expected {ty}, got {v}"))
}

impl Serialize for Typed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (ty, v) = (self.ty, self.value);
        let int = || v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from));
        macro_rules! int {
            ($t:ty, $method:ident) => {
                match int().and_then(|i| <$t>::try_from(i).ok()) {
                    Some(i) => s.$method(i),
                    None => Err(mismatch(ty, v)),
                }
            };
        }
        match ty {
            Ty::Unit if v.is_null() => s.serialize_unit(),
            Ty::Bool => match v.as_bool() {
                Some(b) => s.serialize_bool(b),
                None => Err(mismatch(ty, v)),
            },
            Ty::I8 => int!(i8, serialize_i8),
            Ty::I16 => int!(i16, serialize_i16),
            Ty::I32 => int!(i32, serialize_i32),
            Ty::I64 => int!(i64, serialize_i64),
            Ty::I128 => int!(i128, serialize_i128),
            Ty::U8 => int!(u8, serialize_u8),
            Ty::U16 => int!(u16, serialize_u16),
            Ty::U32 => int!(u32, serialize_u32),
            Ty::U64 => int!(u64, serialize_u64),
            Ty::U128 => int!(u128, serialize_u128),
            Ty::F32 => s.serialize_f32(float(v).ok_or_else(|| mismatch(ty, v))? as f32),
            Ty::F64 => s.serialize_f64(float(v).ok_or_else(|| mismatch(ty, v))?),
            Ty::Char => {
                let mut chars = v.as_str().map(str::chars).ok_or_else(|| mismatch(ty, v))?;
                match (chars.next(), chars.next()) {
                    (Some(c), None) => s.serialize_char(c),
                    _ => Err(mismatch(ty, v)),
                }
            }
            Ty::Str => s.serialize_str(v.as_str().ok_or_else(|| mismatch(ty, v))?),
            Ty::Bytes => s.serialize_bytes(&bytes(v).ok_or_else(|| mismatch(ty, v))?),
            Ty::Option(_) if v.is_null() => s.serialize_none(),
            Ty::Option(t) => s.serialize_some(&Typed { ty: t, value: v }),
            // In bincode a sequence of u8 is written as bytes are: `{"$bin": ...}` will do.
            Ty::Seq(t) if **t == Ty::U8 && v.is_object() => {
                s.serialize_bytes(&bytes(v).ok_or_else(|| mismatch(ty, v))?)
            }
            Ty::Seq(t) => {
                let items = v.as_array().ok_or_else(|| mismatch(ty, v))?;
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for value in items {
                    seq.serialize_element(&Typed { ty: t, value })?;
                }
                seq.end()
            }
            Ty::Tuple(ts) => {
                let items = v
                    .as_array()
                    .filter(|items| items.len() == ts.len())
                    .ok_or_else(|| mismatch(ty, v))?;
                let mut tuple = s.serialize_tuple(ts.len())?;
                for (ty, value) in ts.iter().zip(items) {
                    tuple.serialize_element(&Typed { ty, value })?;
                }
                tuple.end()
            }
            Ty::Map(kt, vt) => {
                let pairs = map_pairs(kt, v).ok_or_else(|| mismatch(ty, v))?;
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, value) in &pairs {
                    map.serialize_entry(&Typed { ty: kt, value: k }, &Typed { ty: vt, value })?;
                }
                map.end()
            }
            Ty::Unknown(name) => Err(ser::Error::custom(format!(
                "cannot encode a {name} in bincode without knowing its fields; use --codec msgpack"
            ))),
            _ => Err(mismatch(ty, v)),
        }
    }
}

/// A float: a number, or the `$float` form.
fn float(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::Object(m) if m.len() == 1 => match m.get(FLOAT)?.as_str()? {
            "NaN" | "nan" => Some(f64::NAN),
            "inf" | "+inf" | "infinity" => Some(f64::INFINITY),
            "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// Bytes: `{"$bin": ...}`, or an array of integers 0..=255.
fn bytes(v: &Json) -> Option<Vec<u8>> {
    match v {
        Json::Object(m) if m.len() == 1 => crate::json::base64(m.get(crate::json::BIN)?, "$bin").ok(),
        Json::Array(items) => items.iter().map(|i| u8::try_from(i.as_u64()?).ok()).collect(),
        _ => None,
    }
}

/// The entries of a map argument: a JSON object (keys converted to the key type: `"1"`
/// for an integer key), or the `$map` form.
fn map_pairs(kt: &Ty, v: &Json) -> Option<Vec<(Json, Json)>> {
    let m = v.as_object()?;
    if let (1, Some(Json::Array(pairs))) = (m.len(), m.get(MAP)) {
        return pairs
            .iter()
            .map(|p| match p.as_array()?.as_slice() {
                [k, v] => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect();
    }
    m.iter()
        .map(|(k, v)| {
            let key = match kt {
                Ty::Str | Ty::Char => Json::String(k.clone()),
                _ => serde_json::from_str(k).ok()?,
            };
            Some((key, v.clone()))
        })
        .collect()
}

/// Decodes a value of a [`Ty`] into JSON, with the forms of [`crate::json`].
#[derive(Debug, Clone, Copy)]
pub struct TySeed<'a>(pub &'a Ty);

impl<'de> DeserializeSeed<'de> for TySeed<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        let v = JsonVisitor(self.0);
        match self.0 {
            Ty::Unit => d.deserialize_unit(v),
            Ty::Bool => d.deserialize_bool(v),
            Ty::I8 => d.deserialize_i8(v),
            Ty::I16 => d.deserialize_i16(v),
            Ty::I32 => d.deserialize_i32(v),
            Ty::I64 => d.deserialize_i64(v),
            Ty::I128 => d.deserialize_i128(v),
            Ty::U8 => d.deserialize_u8(v),
            Ty::U16 => d.deserialize_u16(v),
            Ty::U32 => d.deserialize_u32(v),
            Ty::U64 => d.deserialize_u64(v),
            Ty::U128 => d.deserialize_u128(v),
            Ty::F32 => d.deserialize_f32(v),
            Ty::F64 => d.deserialize_f64(v),
            Ty::Char => d.deserialize_char(v),
            Ty::Str => d.deserialize_string(v),
            Ty::Bytes => d.deserialize_byte_buf(v),
            Ty::Option(_) => d.deserialize_option(v),
            Ty::Seq(_) => d.deserialize_seq(v),
            Ty::Tuple(ts) => d.deserialize_tuple(ts.len(), v),
            Ty::Map(..) => d.deserialize_map(v),
            Ty::Unknown(name) => Err(de::Error::custom(format!(
                "cannot decode a {name} from bincode without knowing its fields; use --codec msgpack"
            ))),
        }
    }
}

struct JsonVisitor<'a>(&'a Ty);

impl<'de> Visitor<'de> for JsonVisitor<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {}", self.0)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Json, E> {
        Ok(Json::from(i))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Json, E> {
        Ok(Json::from(u))
    }

    fn visit_i128<E: de::Error>(self, i: i128) -> Result<Json, E> {
        // Beyond 64 bits JSON parsers lose digits: the decimal string instead.
        Ok(i64::try_from(i).map_or_else(|_| Json::String(i.to_string()), Json::from))
    }

    fn visit_u128<E: de::Error>(self, u: u128) -> Result<Json, E> {
        Ok(u64::try_from(u).map_or_else(|_| Json::String(u.to_string()), Json::from))
    }

    fn visit_f32<E: de::Error>(self, f: f32) -> Result<Json, E> {
        Ok(crate::json::float(f.to_string().parse().unwrap_or(f64::from(f))))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Json, E> {
        Ok(crate::json::float(f))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Json, E> {
        Ok(crate::json::bin(b))
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        let inner = match self.0 {
            Ty::Option(t) => t,
            t => t,
        };
        TySeed(inner).deserialize(d)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            let ty = match self.0 {
                Ty::Seq(t) => t,
                Ty::Tuple(ts) => match ts.get(items.len()) {
                    Some(t) => t,
                    None => break,
                },
                other => {
                    return Err(de::Error::custom(format!(
                        "a sequence where a {other} was expected"
                    )))
                }
            };
            match seq.next_element_seed(TySeed(ty))? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let Ty::Map(kt, vt) = self.0 else {
            return Err(de::Error::custom(format!(
                "a map where a {} was expected",
                self.0
            )));
        };
        let mut pairs = Vec::new();
        while let Some(k) = map.next_key_seed(TySeed(kt))? {
            pairs.push((k, map.next_value_seed(TySeed(vt))?));
        }
        // As crate::json prints maps: an object when every key is a string.
        let keys_are_strings = pairs.iter().all(|(k, _)| k.is_string());
        Ok(if keys_are_strings {
            Json::Object(
                pairs
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v)))
                    .collect(),
            )
        } else {
            let mut m = serde_json::Map::new();
            m.insert(
                MAP.to_owned(),
                Json::Array(pairs.into_iter().map(|(k, v)| Json::Array(vec![k, v])).collect()),
            );
            Json::Object(m)
        })
    }
}

thread_local! {
    /// The type [`TypedResult`] decodes on this thread.
    static RESULT: RefCell<Option<Rc<Ty>>> = const { RefCell::new(None) };
}

/// Set the type [`TypedResult`] decodes on the calling thread (`None`: none).
///
/// The clients decode a result through `DeserializeOwned`, which carries no state, while a
/// bincode result can only be read knowing its type: the type goes through this
/// thread-local. The blocking client decodes on the calling thread; the async client on
/// whichever runtime thread polls the call, so a runtime for bincode calls sets it on
/// every worker (`on_thread_start`).
pub fn set_result_type(ty: Option<Ty>) {
    RESULT.with(|r| *r.borrow_mut() = ty.map(Rc::new));
}

/// Whether [`set_result_type`] set a type on this thread.
pub fn has_result_type() -> bool {
    RESULT.with(|r| r.borrow().is_some())
}

/// A result decoded by the type [`set_result_type`] set on this thread, as JSON.
///
/// ```
/// use easyrpc_cli::typed::{set_result_type, Ty, TypedResult};
/// use easyrpc_client::Codec;
///
/// let mut bytes = Vec::new();
/// Codec::Bincode.encode(&mut bytes, &(-5i64, "x"))?;
/// set_result_type(Some(Ty::parse("(i64, String)")));
/// let TypedResult(v) = Codec::Bincode.decode(&bytes)?;
/// assert_eq!(v, serde_json::json!([-5, "x"]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TypedResult(pub Json);

impl<'de> Deserialize<'de> for TypedResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TypedResult, D::Error> {
        let ty = RESULT
            .with(|r| r.borrow().clone())
            .ok_or_else(|| de::Error::custom("no result type set on this thread"))?;
        TySeed(&ty).deserialize(d).map(TypedResult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use easyrpc_client::Codec;
    use serde_bytes::ByteBuf;
    use serde_json::json;
    use std::collections::{BTreeMap, HashMap};

    fn box_(t: Ty) -> Box<Ty> {
        Box::new(t)
    }

    #[test]
    fn types_as_written_are_parsed() {
        for (written, want) in [
            ("i64", Ty::I64),
            ("usize", Ty::U64),
            ("&'a str", Ty::Str),
            ("&mut String", Ty::Str),
            ("std::string::String", Ty::Str),
            ("::std::string::String", Ty::Str),
            ("serde_bytes :: ByteBuf", Ty::Bytes),
            ("()", Ty::Unit),
            ("(i64)", Ty::I64),
            ("(i64,)", Ty::Tuple(vec![Ty::I64])),
            (
                "(u8, Option<bool>)",
                Ty::Tuple(vec![Ty::U8, Ty::Option(box_(Ty::Bool))]),
            ),
            ("[u8; 3]", Ty::Tuple(vec![Ty::U8; 3])),
            ("&[u32]", Ty::Seq(box_(Ty::U32))),
            ("Vec<Vec<u8>>", Ty::Seq(box_(Ty::Seq(box_(Ty::U8))))),
            ("HashMap<String, i64>", Ty::Map(box_(Ty::Str), box_(Ty::I64))),
            ("Arc<Cow<'static, str>>", Ty::Str),
            ("Point", Ty::Unknown("Point".into())),
            ("?", Ty::Unknown("?".into())),
            ("Vec<i64", Ty::Unknown("Vec<i64".into())),
            ("Result<i64, String>", Ty::Unknown("Result".into())),
        ] {
            assert_eq!(Ty::parse(written), want, "{written}");
        }
        assert_eq!(Ty::parse_return("Result<i64, MyError>"), Ty::I64);
        assert_eq!(Ty::parse_return("io::Result<Vec<u8>>"), Ty::Seq(box_(Ty::U8)));
        assert_eq!(Ty::parse_return("u32"), Ty::U32);
        assert_eq!(Ty::parse("Vec<Point>").unknown(), Some("Point"));
    }

    /// `value` encoded by type equals `want` encoded by serde, in both codecs, and decodes
    /// back to `value`.
    fn check<T: Serialize>(ty: &str, value: Json, want: T) {
        let ty = Ty::parse(ty);
        for codec in [Codec::Bincode, Codec::Msgpack] {
            let (mut got, mut expected) = (Vec::new(), Vec::new());
            codec
                .encode(
                    &mut got,
                    &Typed {
                        ty: &ty,
                        value: &value,
                    },
                )
                .unwrap();
            codec.encode(&mut expected, &want).unwrap();
            assert_eq!(got, expected, "{ty} {value} in {codec:?}");
            set_result_type(Some(ty.clone()));
            let TypedResult(back) = codec.decode(&expected).unwrap();
            assert_eq!(back, value, "{ty} in {codec:?}");
        }
        set_result_type(None);
    }

    #[test]
    fn values_are_encoded_and_decoded_as_their_rust_types() {
        check("i64", json!(-3), -3i64);
        check("u64", json!(u64::MAX), u64::MAX);
        check("i8", json!(-128), -128i8);
        check("u16", json!(700), 700u16);
        check("i128", json!(5), 5i128);
        check("f64", json!(2.5), 2.5f64);
        check("f32", json!(0.1), 0.1f32);
        check("bool", json!(true), true);
        check("char", json!("é"), 'é');
        check("String", json!("text"), "text");
        check("()", Json::Null, ());
        check("Option<u32>", Json::Null, None::<u32>);
        check("Option<u32>", json!(7), Some(7u32));
        check("ByteBuf", json!({"$bin": "AAEC"}), ByteBuf::from(vec![0, 1, 2]));
        check("Vec<u8>", json!([0, 1, 2]), vec![0u8, 1, 2]);
        check("Vec<String>", json!(["a", "b"]), vec!["a", "b"]);
        check("(i64, String)", json!([1, "x"]), (1i64, "x"));
        check("[u16; 2]", json!([1, 2]), [1u16, 2]);
        check(
            "BTreeMap<String, i64>",
            json!({"a": 1, "b": 2}),
            BTreeMap::from([("a", 1i64), ("b", 2)]),
        );
        check(
            "HashMap<u32, bool>",
            json!({"$map": [[7, true]]}),
            HashMap::from([(7u32, true)]),
        );
    }

    #[test]
    fn bincode_bytes_and_byte_sequences_take_either_form() {
        // bincode writes Vec<u8> as it writes bytes: `$bin` is accepted for it.
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let ty = Ty::parse("Vec<u8>");
        let value = json!({"$bin": "AAEC"});
        Codec::Bincode
            .encode(
                &mut got,
                &Typed {
                    ty: &ty,
                    value: &value,
                },
            )
            .unwrap();
        Codec::Bincode.encode(&mut want, &vec![0u8, 1, 2]).unwrap();
        assert_eq!(got, want);
        // A JSON object with integer-looking keys, for an integer-keyed map.
        let ty = Ty::parse("BTreeMap<u8, u8>");
        let value = json!({"1": 2});
        got.clear();
        want.clear();
        Codec::Bincode
            .encode(
                &mut got,
                &Typed {
                    ty: &ty,
                    value: &value,
                },
            )
            .unwrap();
        Codec::Bincode
            .encode(&mut want, &BTreeMap::from([(1u8, 2u8)]))
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn mismatches_and_unknown_types_are_errors() {
        for (ty, value, want) in [
            ("i64", json!("1"), "expected i64, got \"1\""),
            ("u8", json!(256), "expected u8, got 256"),
            ("(i64, i64)", json!([1]), "expected (i64, i64), got [1]"),
            ("Vec<u32>", json!([1, -1]), "expected u32, got -1"),
            (
                "Point",
                json!({"x": 1}),
                "cannot encode a Point in bincode without knowing its fields; use --codec msgpack",
            ),
        ] {
            let ty = Ty::parse(ty);
            assert_eq!(
                Typed {
                    ty: &ty,
                    value: &value
                }
                .check(),
                Err(want.to_owned()),
                "{ty}"
            );
            let mut out = Vec::new();
            assert!(Codec::Bincode
                .encode(
                    &mut out,
                    &Typed {
                        ty: &ty,
                        value: &value
                    }
                )
                .is_err());
        }
        let ty = Ty::parse("Option<(u8, String)>");
        assert_eq!(
            Typed {
                ty: &ty,
                value: &json!([1, "x"])
            }
            .check(),
            Ok(())
        );
        set_result_type(None);
        let e = Codec::Bincode.decode::<TypedResult>(&[1]).unwrap_err();
        assert!(e.to_string().contains("no result type"), "{e}");
    }
}
