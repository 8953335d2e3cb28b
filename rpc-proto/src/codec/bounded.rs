//! Bounds on what a decoder does with the lengths and counts a peer declares.
//!
//! [`Bounded`] wraps a serde `Deserializer` (bincode's or rmp-serde's) and every
//! deserializer, visitor, sequence, map and enum it hands out, so that the whole value is
//! decoded under three rules, all checked before anything is allocated:
//!
//! - **Strings and byte buffers are borrowed, then copied.** `deserialize_string` and
//!   `deserialize_byte_buf` become `deserialize_str` and `deserialize_bytes`: the decoder
//!   hands out a slice of the input (checking that the declared length is there), and the
//!   visitor copies exactly that many bytes. bincode's owning path instead allocates the
//!   declared length first (`vec![0; len]`) and reads into it afterwards: a 9-byte input
//!   declaring 2^40 bytes aborted the process (issue 17).
//! - **A counted sequence or map may not declare more elements than bytes are left.**
//!   The budget starts at the input's length, and every element of a sequence or entry of
//!   a map whose count came from the input uses one. Each such element starts at a byte of
//!   its own (a msgpack value always takes a byte; in bincode a nested sequence or map
//!   starts with its count), so valid input never runs out; zero-sized elements (`()` in
//!   bincode, which takes no bytes) do, which bounds the time a `Vec<()>` declaring 2^40
//!   elements can take. A count over the budget is refused before the first element, and
//!   the size hint the visitor preallocates from never exceeds the budget (serde caps it at
//!   1 MiB per container; this caps it by the input).
//! - **Nesting is limited** to [`MAX_NESTING`] levels, so a recursive type cannot recurse
//!   once per input byte (bincode has no depth limit of its own).
//!
//! Tuples, structs and enum variants have arity fixed by the type, not the input: they use
//! no budget (their fields may be zero-sized).

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// How deeply values may nest, counting every level the wrapper sees (sequences, maps,
/// enums, options, newtypes). Above msgpack's own array and map limit
/// ([`MAX_DEPTH`](super::MAX_DEPTH)), so that one still decides for msgpack.
pub(crate) const MAX_NESTING: usize = 256;

/// The number of counted elements the rest of the value may still hold.
#[derive(Debug)]
pub(crate) struct Budget {
    left: Cell<usize>,
}

impl Budget {
    /// A budget for an input of `len` bytes.
    pub(crate) fn new(len: usize) -> Budget {
        Budget { left: Cell::new(len) }
    }

    fn left(&self) -> usize {
        self.left.get()
    }

    /// Use one element's worth.
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom("more elements than the input has bytes")),
        }
    }

    /// Refuse a declared count that the input cannot hold.
    fn check<E: de::Error>(&self, declared: usize) -> Result<(), E> {
        if declared > self.left.get() {
            return Err(E::custom(format_args!(
                "declared length {declared} exceeds the {} bytes remaining",
                self.left.get()
            )));
        }
        Ok(())
    }
}

fn nest<E: de::Error>(depth: usize) -> Result<usize, E> {
    if depth >= MAX_NESTING {
        return Err(E::custom(format_args!(
            "nesting depth exceeds {MAX_NESTING} levels"
        )));
    }
    Ok(depth + 1)
}

/// Decode a `T` from `de` under the bounds, with a budget for an input of `len` bytes.
#[inline]
pub(crate) fn deserialize<'de, T, D>(de: D, len: usize) -> Result<T, D::Error>
where
    T: de::Deserialize<'de>,
    D: Deserializer<'de>,
{
    let budget = Budget::new(len);
    T::deserialize(Bounded {
        de,
        budget: &budget,
        depth: 0,
    })
}

/// A seed for `T` that decodes under the bounds (for decoders that take a seed).
pub(crate) struct BoundedSeed<'b, S> {
    seed: S,
    budget: &'b Budget,
    depth: usize,
}

impl<'b, T> BoundedSeed<'b, std::marker::PhantomData<T>> {
    /// A seed for a whole value of `T`.
    pub(crate) fn new(budget: &'b Budget) -> Self {
        BoundedSeed {
            seed: std::marker::PhantomData,
            budget,
            depth: 0,
        }
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for BoundedSeed<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Bounded {
            de,
            budget: self.budget,
            depth: self.depth,
        })
    }
}

/// A deserializer under the bounds.
struct Bounded<'b, D> {
    de: D,
    budget: &'b Budget,
    depth: usize,
}

impl<'b, D> Bounded<'b, D> {
    fn visitor<V>(&self, visitor: V, counted: bool) -> BoundedVisitor<'b, V> {
        BoundedVisitor {
            visitor,
            budget: self.budget,
            depth: self.depth,
            counted,
        }
    }
}

/// Deserializer methods that hand the visitor on, wrapped; `counted` says whether a
/// sequence or map the visitor is given has a count from the input.
macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*) $counted:expr;)*) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let v = self.visitor(visitor, $counted);
                self.de.$method($($arg,)* v)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any() true;
        deserialize_bool() true;
        deserialize_i8() true;
        deserialize_i16() true;
        deserialize_i32() true;
        deserialize_i64() true;
        deserialize_i128() true;
        deserialize_u8() true;
        deserialize_u16() true;
        deserialize_u32() true;
        deserialize_u64() true;
        deserialize_u128() true;
        deserialize_f32() true;
        deserialize_f64() true;
        deserialize_char() true;
        deserialize_str() true;
        deserialize_bytes() true;
        deserialize_option() true;
        deserialize_unit() true;
        deserialize_unit_struct(name: &'static str) true;
        deserialize_newtype_struct(name: &'static str) true;
        deserialize_seq() true;
        deserialize_tuple(len: usize) false;
        deserialize_tuple_struct(name: &'static str, len: usize) false;
        deserialize_map() true;
        deserialize_struct(name: &'static str, fields: &'static [&'static str]) false;
        deserialize_enum(name: &'static str, variants: &'static [&'static str]) true;
        deserialize_identifier() true;
        deserialize_ignored_any() true;
    }

    /// Borrowed, then copied by the visitor: see the module docs.
    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let v = self.visitor(visitor, true);
        self.de.deserialize_str(v)
    }

    /// Borrowed, then copied by the visitor: see the module docs.
    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let v = self.visitor(visitor, true);
        self.de.deserialize_bytes(v)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor whose nested deserializers, sequences, maps and enums are under the bounds.
struct BoundedVisitor<'b, V> {
    visitor: V,
    budget: &'b Budget,
    depth: usize,
    counted: bool,
}

macro_rules! visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            #[inline]
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.visitor.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for BoundedVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let depth = nest(self.depth)?;
        self.visitor.visit_some(Bounded {
            de,
            budget: self.budget,
            depth,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let depth = nest(self.depth)?;
        self.visitor.visit_newtype_struct(Bounded {
            de,
            budget: self.budget,
            depth,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let depth = nest(self.depth)?;
        // An access without a size hint (a msgpack extension's tag and data) decides its
        // own length; only a count read from the input is checked.
        let counted = self.counted && seq.size_hint().is_some();
        if counted {
            self.budget.check(seq.size_hint().unwrap_or(0))?;
        }
        self.visitor.visit_seq(BoundedSeq {
            seq,
            budget: self.budget,
            depth,
            counted,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let depth = nest(self.depth)?;
        let counted = self.counted && map.size_hint().is_some();
        if counted {
            self.budget.check(map.size_hint().unwrap_or(0))?;
        }
        self.visitor.visit_map(BoundedMap {
            map,
            budget: self.budget,
            depth,
            counted,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let depth = nest(self.depth)?;
        self.visitor.visit_enum(BoundedEnum {
            data,
            budget: self.budget,
            depth,
        })
    }
}

struct BoundedSeq<'b, A> {
    seq: A,
    budget: &'b Budget,
    depth: usize,
    counted: bool,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for BoundedSeq<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        let seed = BoundedSeed {
            seed,
            budget: self.budget,
            depth: self.depth,
        };
        let next = self.seq.next_element_seed(seed)?;
        if self.counted && next.is_some() {
            self.budget.take::<A::Error>()?;
        }
        Ok(next)
    }

    fn size_hint(&self) -> Option<usize> {
        let hint = self.seq.size_hint();
        if self.counted {
            hint.map(|n| n.min(self.budget.left()))
        } else {
            hint
        }
    }
}

struct BoundedMap<'b, A> {
    map: A,
    budget: &'b Budget,
    depth: usize,
    counted: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for BoundedMap<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let seed = BoundedSeed {
            seed,
            budget: self.budget,
            depth: self.depth,
        };
        let next = self.map.next_key_seed(seed)?;
        if self.counted && next.is_some() {
            self.budget.take::<A::Error>()?;
        }
        Ok(next)
    }

    #[inline]
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.map.next_value_seed(BoundedSeed {
            seed,
            budget: self.budget,
            depth: self.depth,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        let hint = self.map.size_hint();
        if self.counted {
            hint.map(|n| n.min(self.budget.left()))
        } else {
            hint
        }
    }
}

struct BoundedEnum<'b, A> {
    data: A,
    budget: &'b Budget,
    depth: usize,
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for BoundedEnum<'b, A> {
    type Error = A::Error;
    type Variant = BoundedVariant<'b, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self::Variant), A::Error> {
        let seed = BoundedSeed {
            seed,
            budget: self.budget,
            depth: self.depth,
        };
        let (value, variant) = self.data.variant_seed(seed)?;
        let variant = BoundedVariant {
            variant,
            budget: self.budget,
            depth: self.depth,
        };
        Ok((value, variant))
    }
}

struct BoundedVariant<'b, A> {
    variant: A,
    budget: &'b Budget,
    depth: usize,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for BoundedVariant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.variant.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.variant.newtype_variant_seed(BoundedSeed {
            seed,
            budget: self.budget,
            depth: self.depth,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let v = BoundedVisitor {
            visitor,
            budget: self.budget,
            depth: self.depth,
            counted: false,
        };
        self.variant.tuple_variant(len, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let v = BoundedVisitor {
            visitor,
            budget: self.budget,
            depth: self.depth,
            counted: false,
        };
        self.variant.struct_variant(fields, v)
    }
}
