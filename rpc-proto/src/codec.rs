//! Value codecs: how arguments and results are turned into bytes.
//!
//! MessagePack is the default and the only one a plain MessagePack-RPC peer speaks. bincode
//! is an opt-in codec for Rust-to-Rust calls, chosen per connection by the client's
//! [hello](crate::handshake); with it, messages are length-prefixed and values are bincode.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{DecodeError, EncodeError, ErrorCode, ServerError};
use crate::framer::value_len;

mod bounded;
mod scalar;

/// The serialization used on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack-RPC, as the public spec says. Structs are encoded as maps, so peers in
    /// other languages see field names.
    #[default]
    Msgpack,
    /// bincode 2 (standard configuration) in length-prefixed frames; Rust peers only.
    Bincode,
}

const BINCODE: bincode::config::Configuration = bincode::config::standard();

/// bincode's own cap on what one decoded value may claim.
///
/// bincode counts, against this limit, the declared length of every string, byte buffer
/// and collection it allocates for, and the in-memory size of every integer it reads,
/// before it allocates; over the limit is an error, not an allocation. The value is the
/// most any value that fits in a frame can claim (a frame holds at most `u32::MAX` bytes,
/// and bincode claims at most 16 bytes per byte read, for a `u128` in a one-byte varint),
/// so it never refuses a valid value; a declared length beyond it (such as anything above
/// `isize::MAX`, which used to panic with "capacity overflow") is an error. It is a
/// constant, so it cannot know the bytes actually present: [`bounded`] checks those.
const BINCODE_LIMIT: usize = (u32::MAX as usize).saturating_mul(16);

const BINCODE_DECODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<BINCODE_LIMIT>,
> = bincode::config::standard().with_limit::<BINCODE_LIMIT>();

/// How deeply arrays, maps and extensions may nest in one decoded msgpack value.
///
/// Decoding recurses once per level. rmp-serde's own limit (1024) is too high: in a debug
/// build a 2 MiB tokio worker stack overflows at about 550 levels of `rmpv::Value`, so a
/// 1 KiB message of nested arrays aborted the whole process. 128 is serde_json's default.
pub(crate) const MAX_DEPTH: usize = 128;

/// Decode one msgpack value that fills `bytes`, with the nesting limit [`MAX_DEPTH`] and
/// every declared count bounded by the bytes present ([`bounded`]).
pub(crate) fn msgpack_from_slice<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    bounded::deserialize(&mut de, bytes.len())
}

/// Decode one bincode value from the start of `bytes`, with every declared length bounded
/// by the bytes present ([`bounded`]) and by [`BINCODE_LIMIT`]; returns it and the bytes
/// it used.
///
/// The borrowing decoder: strings and bytes are checked against the input and copied out
/// in one `memcpy` (the owning one allocates the declared length before reading).
fn bincode_from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    let budget = bounded::Budget::new(bytes.len());
    let seed = bounded::BoundedSeed::<std::marker::PhantomData<T>>::new(&budget);
    Ok(bincode::serde::seed_decode_from_slice(
        seed,
        bytes,
        BINCODE_DECODE,
    )?)
}

impl Codec {
    /// The codec's number in the hello.
    pub fn id(self) -> u8 {
        match self {
            Codec::Msgpack => 0,
            Codec::Bincode => 1,
        }
    }

    /// The codec with this number.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::Msgpack),
            1 => Some(Codec::Bincode),
            _ => None,
        }
    }

    /// Append the encoding of `value` to `out`. On error `out` is left as it was.
    ///
    /// # Errors
    ///
    /// When the value's `Serialize` implementation fails.
    #[inline]
    pub fn encode<T: Serialize + ?Sized>(self, out: &mut Vec<u8>, value: &T) -> Result<(), EncodeError> {
        let start = out.len();
        let r = match self {
            // Scalars straight into the buffer; anything else through rmp-serde.
            Codec::Msgpack => match scalar::encode(out, value) {
                Ok(()) => return Ok(()),
                Err(scalar::NotScalar) => rmp_serde::encode::write_named(&mut crate::blob::Sink(out), value)
                    .map_err(EncodeError::from),
            },
            Codec::Bincode => match scalar::bincode_encode(out, value) {
                Ok(()) => return Ok(()),
                Err(scalar::NotScalar) => {
                    bincode::serde::encode_into_std_write(value, &mut crate::blob::Sink(out), BINCODE)
                        .map(drop)
                        .map_err(EncodeError::from)
                }
            },
        };
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    /// Decode one value that fills `bytes` exactly.
    ///
    /// # Errors
    ///
    /// When the bytes are not a valid encoding of `T`, or are followed by more bytes; in
    /// msgpack, also when arrays, maps or extensions nest more than 127 levels deep.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        let (v, n) = self.decode_prefix(bytes)?;
        if n != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - n));
        }
        Ok(v)
    }

    /// Decode a value that `bytes` is already known to hold exactly: the last element of a
    /// message that [`Framer`](crate::Framer) delimited and
    /// [`Message::parse`](crate::Message::parse) split, whose length the framer counted.
    /// This skips the walk [`Codec::decode`] makes to rule out trailing bytes (bytes after
    /// the value would be ignored rather than reported); the nesting limit still holds.
    ///
    /// # Errors
    ///
    /// As [`Codec::decode`], except for trailing bytes.
    pub fn decode_framed<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        match self {
            Codec::Msgpack => match scalar::decode_prefix(bytes) {
                Ok((v, _)) => Ok(v),
                Err(scalar::NotScalar) => Ok(msgpack_from_slice(bytes)?),
            },
            Codec::Bincode => self.decode(bytes),
        }
    }

    /// Decode one value from the start of `bytes`; returns it and the bytes it used.
    ///
    /// # Errors
    ///
    /// When the bytes do not start with a valid encoding of `T`; in msgpack, also when
    /// arrays, maps or extensions nest more than 127 levels deep.
    pub fn decode_prefix<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<(T, usize), DecodeError> {
        match self {
            Codec::Msgpack => {
                if let Ok(decoded) = scalar::decode_prefix(bytes) {
                    return Ok(decoded);
                }
                let n = value_len(bytes)?;
                Ok((msgpack_from_slice(&bytes[..n])?, n))
            }
            Codec::Bincode => {
                if let Ok(decoded) = scalar::bincode_decode_prefix(bytes) {
                    return Ok(decoded);
                }
                bincode_from_slice(bytes)
            }
        }
    }
}

/// A value that can encode itself with any codec: every `Serialize` type is one.
///
/// This is how a handler's result reaches the connection without being encoded twice: the
/// connection encodes it straight into its write buffer.
pub trait EncodeValue: Send {
    /// Append the encoding of `self` to `out`; on error `out` is left as it was.
    ///
    /// # Errors
    ///
    /// When serialization fails.
    fn encode_value(&self, codec: Codec, out: &mut Vec<u8>) -> Result<(), EncodeError>;
}

impl<T: Serialize + Send + ?Sized> EncodeValue for T {
    fn encode_value(&self, codec: Codec, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        codec.encode(out, self)
    }
}

/// Writes a call's parameters: a count, then each argument.
#[derive(Debug)]
pub struct ParamsEncoder<'a> {
    codec: Codec,
    out: &'a mut Vec<u8>,
}

impl<'a> ParamsEncoder<'a> {
    /// An encoder appending to `out`.
    #[inline]
    pub fn new(codec: Codec, out: &'a mut Vec<u8>) -> ParamsEncoder<'a> {
        ParamsEncoder { codec, out }
    }

    /// Write the number of arguments; call it once, before the arguments.
    #[inline]
    pub fn count(&mut self, n: usize) {
        match self.codec {
            Codec::Msgpack => crate::wire::write_array_len(self.out, n as u32),
            Codec::Bincode => self.out.extend_from_slice(&(n as u32).to_le_bytes()),
        }
    }

    /// Write one argument that encodes itself (a handler's value).
    ///
    /// # Errors
    ///
    /// When serialization fails.
    #[inline]
    pub fn push_encoded<V: EncodeValue + ?Sized>(&mut self, value: &V) -> Result<(), EncodeError> {
        value.encode_value(self.codec, self.out)
    }

    /// Write one argument.
    ///
    /// # Errors
    ///
    /// When serialization fails.
    #[inline]
    pub fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        self.codec.encode(self.out, value)
    }
}

/// The parameters of a call: tuples of `Serialize` values, slices and `Vec`s of them
/// (`Vec<rmpv::Value>` for dynamic calls).
pub trait Params {
    /// Write the count and the arguments.
    ///
    /// # Errors
    ///
    /// When serialization fails.
    fn encode_params(&self, enc: &mut ParamsEncoder<'_>) -> Result<(), EncodeError>;
}

// The forwarders below are on every call's path: `#[inline]` so that they are inlined
// wherever the call is compiled, whatever codegen unit the compiler put them in (left out
// of line, they cost the async client about 40 instructions per call under callgrind).
impl<P: Params + ?Sized> Params for &P {
    #[inline]
    fn encode_params(&self, enc: &mut ParamsEncoder<'_>) -> Result<(), EncodeError> {
        (**self).encode_params(enc)
    }
}

impl<T: Serialize> Params for [T] {
    #[inline]
    fn encode_params(&self, enc: &mut ParamsEncoder<'_>) -> Result<(), EncodeError> {
        enc.count(self.len());
        self.iter().try_for_each(|v| enc.push(v))
    }
}

impl<T: Serialize> Params for Vec<T> {
    #[inline]
    fn encode_params(&self, enc: &mut ParamsEncoder<'_>) -> Result<(), EncodeError> {
        self.as_slice().encode_params(enc)
    }
}

macro_rules! tuple_params {
    ($n:expr; $($t:ident $i:tt),*) => {
        impl<$($t: Serialize),*> Params for ($($t,)*) {
            #[allow(unused_variables)]
            fn encode_params(&self, enc: &mut ParamsEncoder<'_>) -> Result<(), EncodeError> {
                enc.count($n);
                $(enc.push(&self.$i)?;)*
                Ok(())
            }
        }

        impl<$($t: DeserializeOwned),*> FromArgs for ($($t,)*) {
            #[allow(unused_variables)]
            fn from_args(args: &mut Args<'_>) -> Result<Self, ServerError> {
                args.expect($n)?;
                Ok(($(args.next::<$t>(stringify!($i))?,)*))
            }
        }
    };
}

tuple_params!(0;);
tuple_params!(1; A 0);
tuple_params!(2; A 0, B 1);
tuple_params!(3; A 0, B 1, C 2);
tuple_params!(4; A 0, B 1, C 2, D 3);
tuple_params!(5; A 0, B 1, C 2, D 3, E 4);
tuple_params!(6; A 0, B 1, C 2, D 3, E 4, F 5);
tuple_params!(7; A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_params!(8; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_params!(9; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_params!(10; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_params!(11; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_params!(12; A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

/// Reads a call's parameters: the count, then each argument in turn.
///
/// Errors are [`ErrorCode::InvalidParams`] wire errors naming the argument.
#[derive(Debug, Clone)]
pub struct Args<'a> {
    codec: Codec,
    rest: &'a [u8],
    count: Option<usize>,
    index: usize,
}

impl<'a> Args<'a> {
    /// The arguments in `params` (the raw params value of a request).
    pub fn new(codec: Codec, params: &'a [u8]) -> Args<'a> {
        Args {
            codec,
            rest: params,
            count: None,
            index: 0,
        }
    }

    /// The codec the arguments are encoded with.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The raw bytes of the arguments not decoded yet (after the count, once it was read):
    /// the last argument's encoding, once the others are decoded.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// The number of arguments the caller sent.
    ///
    /// # Errors
    ///
    /// When the params are not an array.
    // `len`, `expect` and `next` are inlined into each caller (a typed call's `FromArgs`)
    // with only their common case, a scalar in a short msgpack array or in bincode's
    // counted sequence; the rest, and every
    // error, is out of line. As plain calls, each saving registers for its error paths
    // and returning through memory, they were a sixth of the server's instructions for a
    // pipelined `add(1, 2)`.
    #[inline]
    pub fn len(&mut self) -> Result<usize, ServerError> {
        if let Some(n) = self.count {
            return Ok(n);
        }
        match (self.codec, self.rest.first()) {
            (Codec::Msgpack, Some(&m @ 0x90..=0x9f)) => {
                let n = usize::from(m & 0x0f);
                self.rest = &self.rest[1..];
                self.count = Some(n);
                Ok(n)
            }
            (Codec::Bincode, _) => match self.rest.split_first_chunk::<4>() {
                Some((head, rest)) => {
                    let n = u32::from_le_bytes(*head) as usize;
                    self.rest = rest;
                    self.count = Some(n);
                    Ok(n)
                }
                None => Err(invalid("params are truncated")),
            },
            _ => self.read_len(),
        }
    }

    /// [`Args::len`] for the first time, for a msgpack array longer than a fixarray.
    #[inline(never)]
    fn read_len(&mut self) -> Result<usize, ServerError> {
        let (n, used) =
            crate::wire::read_array_len(self.rest).ok_or_else(|| invalid("params must be an array"))?;
        self.rest = &self.rest[used..];
        // Every msgpack value takes at least a byte: a count the bytes cannot hold is a lie
        // (params that a framer delimited never have one), refused before anything is
        // sized by it.
        if n > self.rest.len() {
            return Err(invalid(format!(
                "params declare {n} arguments but hold only {} bytes",
                self.rest.len()
            )));
        }
        self.count = Some(n);
        Ok(n)
    }

    /// Whether the caller sent no arguments.
    ///
    /// # Errors
    ///
    /// When the params are not an array.
    pub fn is_empty(&mut self) -> Result<bool, ServerError> {
        Ok(self.len()? == 0)
    }

    /// Check that the caller sent exactly `n` arguments.
    ///
    /// # Errors
    ///
    /// "expected N arguments, got M".
    #[inline]
    pub fn expect(&mut self, n: usize) -> Result<(), ServerError> {
        let got = self.len()?;
        if got != n {
            return Err(wrong_count(n, got));
        }
        Ok(())
    }

    /// Decode the next argument; `name` is used in the error message.
    ///
    /// # Errors
    ///
    /// When there is no next argument or it is not a `T`.
    #[inline]
    pub fn next<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, ServerError> {
        if self.count.is_some_and(|count| self.index < count) {
            let scalar = match self.codec {
                Codec::Msgpack => scalar::decode_prefix(self.rest),
                Codec::Bincode => scalar::bincode_decode_prefix(self.rest),
            };
            if let Ok((v, used)) = scalar {
                self.rest = &self.rest[used..];
                self.index += 1;
                return Ok(v);
            }
        }
        self.decode_next(name)
    }

    /// [`Args::next`] for anything but a msgpack scalar, and its errors.
    #[inline(never)]
    fn decode_next<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, ServerError> {
        let count = self.len()?;
        if self.index >= count {
            return Err(invalid(format!("missing argument {} ({name})", self.index)));
        }
        match self.codec.decode_prefix::<T>(self.rest) {
            Ok((v, used)) => {
                self.rest = &self.rest[used..];
                self.index += 1;
                Ok(v)
            }
            Err(e) => Err(argument_error::<T>(self.codec, self.index, name, self.rest, &e)),
        }
    }

    /// All arguments as dynamic MessagePack values.
    ///
    /// # Errors
    ///
    /// With the bincode codec, which does not describe its own values.
    pub fn values(&mut self) -> Result<Vec<rmpv::Value>, ServerError> {
        if self.codec != Codec::Msgpack {
            return Err(invalid("dynamic values need the msgpack codec"));
        }
        let n = self.len()?;
        (0..n).map(|i| self.next::<rmpv::Value>(&i.to_string())).collect()
    }
}

// Out of line, as the errors of the inlined `Args` methods are: built in place, a
// `ServerError` (40 bytes since it carries data) made LLVM stop inlining `Args::len` into
// `FromArgs` (callgrind: 11 instructions more per call).
#[cold]
#[inline(never)]
fn invalid(msg: impl Into<String>) -> ServerError {
    ServerError::new(ErrorCode::InvalidParams, msg)
}

/// The error of an argument that did not decode as a `T`, in words: "argument 0 (a):
/// expected i64, got a string", not the decoder's msgpack markers.
#[cold]
#[inline(never)]
fn argument_error<T>(codec: Codec, index: usize, name: &str, value: &[u8], e: &DecodeError) -> ServerError {
    let expected = short_type_name(std::any::type_name::<T>());
    let got = match codec {
        Codec::Msgpack => value.first().map(|&m| msgpack_kind(m)),
        Codec::Bincode => None,
    };
    let mismatch = matches!(
        e,
        DecodeError::Msgpack(rmp_serde::decode::Error::TypeMismatch(_) | rmp_serde::decode::Error::Syntax(_))
    );
    match got {
        Some(got) if mismatch => invalid(format!(
            "argument {index} ({name}): expected {expected}, got {got}"
        )),
        _ => invalid(format!("argument {index} ({name}): expected {expected}: {e}")),
    }
}

/// `alloc::vec::Vec<alloc::string::String>` as `Vec<String>`.
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or(&word));
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or(&word));
    out
}

/// What a msgpack value is, from its first byte.
fn msgpack_kind(marker: u8) -> &'static str {
    match marker {
        0x00..=0x7f | 0xcc..=0xcf | 0xd0..=0xd3 | 0xe0..=0xff => "an integer",
        0x80..=0x8f | 0xde | 0xdf => "a map",
        0x90..=0x9f | 0xdc | 0xdd => "an array",
        0xa0..=0xbf | 0xd9..=0xdb => "a string",
        0xc0 => "nil",
        0xc2 | 0xc3 => "a boolean",
        0xc4..=0xc6 => "binary data",
        0xca | 0xcb => "a float",
        0xc7..=0xc9 | 0xd4..=0xd8 => "an extension value",
        0xc1 => "an invalid byte",
    }
}

/// Out of line: [`Args::expect`] is inlined, and this error is rare.
#[cold]
#[inline(never)]
fn wrong_count(n: usize, got: usize) -> ServerError {
    invalid(format!(
        "expected {n} argument{}, got {got}",
        if n == 1 { "" } else { "s" }
    ))
}

/// A tuple of arguments decoded from [`Args`], with a count check.
pub trait FromArgs: Sized {
    /// Decode from `args`.
    ///
    /// # Errors
    ///
    /// [`ErrorCode::InvalidParams`] on a wrong count or type.
    fn from_args(args: &mut Args<'_>) -> Result<Self, ServerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_of_the_wrong_type_is_named_in_words() {
        let mut out = Vec::new();
        ("x", 1.5f64, vec!["a".to_string()], ())
            .encode_params(&mut ParamsEncoder::new(Codec::Msgpack, &mut out))
            .unwrap();
        let mut args = Args::new(Codec::Msgpack, &out);
        args.expect(4).unwrap();
        let e = args.next::<i64>("a").unwrap_err();
        assert_eq!(e.message, "argument 0 (a): expected i64, got a string");
        assert_eq!(e.kind(), ErrorCode::InvalidParams);
        let mut args = Args::new(Codec::Msgpack, &out);
        args.expect(4).unwrap();
        args.next::<String>("a").unwrap();
        let e = args.next::<bool>("b").unwrap_err();
        assert_eq!(e.message, "argument 1 (b): expected bool, got a float");
        args.next::<f64>("b").unwrap();
        let e = args.next::<Vec<u64>>("c").unwrap_err();
        assert!(
            e.message.starts_with("argument 2 (c): expected Vec<u64>"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("marker"), "{}", e.message);
        assert_eq!(
            short_type_name("alloc::vec::Vec<alloc::string::String>"),
            "Vec<String>"
        );
        assert_eq!(
            short_type_name("core::option::Option<(i64, u8)>"),
            "Option<(i64, u8)>"
        );
    }

    fn params<P: Params>(codec: Codec, p: P) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode_params(&mut ParamsEncoder::new(codec, &mut out)).unwrap();
        out
    }

    #[test]
    fn tuple_params_are_a_msgpack_array() {
        assert_eq!(params(Codec::Msgpack, (2, 3)), [0x92, 0x02, 0x03]);
        assert_eq!(params(Codec::Msgpack, ()), [0x90]);
    }

    #[test]
    fn args_round_trip_both_codecs() {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let p = params(codec, (1i64, "two".to_string(), vec![3u8, 4]));
            let mut args = Args::new(codec, &p);
            let (a, b, c): (i64, String, Vec<u8>) = FromArgs::from_args(&mut args).unwrap();
            assert_eq!((a, b.as_str(), c), (1, "two", vec![3, 4]));
        }
    }

    #[test]
    fn wrong_count_and_type() {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            let p = params(codec, (1i64, 2i64, 3i64));
            let e = <(i64, i64)>::from_args(&mut Args::new(codec, &p)).unwrap_err();
            assert_eq!(e.kind(), ErrorCode::InvalidParams);
            assert!(e.message.contains("expected 2 arguments, got 3"), "{e}");
        }
        let p = params(Codec::Msgpack, ("x", 2i64));
        let e = <(i64, i64)>::from_args(&mut Args::new(Codec::Msgpack, &p)).unwrap_err();
        assert!(e.message.starts_with("argument 0"), "{e}");
    }

    #[test]
    fn params_not_array() {
        let e = <(i64,)>::from_args(&mut Args::new(Codec::Msgpack, &[0x05])).unwrap_err();
        assert_eq!(e.kind(), ErrorCode::InvalidParams);
    }

    #[test]
    fn nesting_is_limited() {
        let nested = |depth: usize| {
            let mut v = vec![0x91; depth - 1];
            v.push(0x90);
            v
        };
        let deepest = nested(MAX_DEPTH - 1);
        let v: rmpv::Value = Codec::Msgpack.decode(&deepest).unwrap();
        let mut back = Vec::new();
        Codec::Msgpack.encode(&mut back, &v).unwrap();
        assert_eq!(back, deepest);
        for depth in [MAX_DEPTH, 100_000] {
            let e = Codec::Msgpack.decode::<rmpv::Value>(&nested(depth)).unwrap_err();
            assert!(e.to_string().contains("depth"), "{e}");
        }
        // The same limit for the error value of a response.
        let e = crate::decode_error(Codec::Msgpack, &nested(100_000));
        assert_eq!(e.kind(), ErrorCode::Unknown);
    }

    #[test]
    fn structs_are_maps_in_msgpack() {
        #[derive(serde::Serialize)]
        struct P {
            x: u8,
        }
        let mut out = Vec::new();
        Codec::Msgpack.encode(&mut out, &P { x: 1 }).unwrap();
        assert_eq!(out, [0x81, 0xa1, b'x', 0x01]);
    }
}
