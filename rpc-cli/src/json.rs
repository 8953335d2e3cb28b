//! JSON ⇄ MessagePack: how `rpc` reads arguments and prints results.
//!
//! JSON has no bytes, no map keys other than strings, no extension types and no NaN or
//! infinities; MessagePack has all four. They travel as one-key JSON objects whose key
//! starts with `$`:
//!
//! | MessagePack | JSON |
//! | --- | --- |
//! | bin | `{"$bin": "<base64>"}` (standard alphabet, with padding) |
//! | map with a key that is not a str | `{"$map": [[key, value], ...]}` |
//! | ext | `{"$ext": [type, "<base64>"]}` |
//! | float NaN, ±infinity | `{"$float": "NaN"}`, `{"$float": "inf"}`, `{"$float": "-inf"}` |
//!
//! A map whose keys are all str prints as a JSON object, except a one-entry map whose key is
//! one of these four names (a server's map that would read back as bin, say): it takes the
//! `$map` form too, so that what is printed reads back as the same value.
//!
//! Integers stay integers (anything in the `i64` or `u64` range), and a number with a
//! fraction or an exponent (`1.0`, `1e3`) is a float (f64). A str whose bytes are not UTF-8
//! prints with U+FFFD in place of the bad bytes.
//!
//! ```
//! use easyrpc_cli::json::{to_json, to_msgpack};
//! use serde_json::json;
//!
//! let v = to_msgpack(&json!([1, -2, 2.5, "text", {"$bin": "AAEC"}]))?;
//! assert_eq!(
//!     v,
//!     rmpv::Value::Array(vec![
//!         1.into(),
//!         (-2).into(),
//!         2.5.into(),
//!         "text".into(),
//!         rmpv::Value::Binary(vec![0, 1, 2]),
//!     ])
//! );
//! assert_eq!(to_json(&v), json!([1, -2, 2.5, "text", {"$bin": "AAEC"}]));
//!
//! // A map with integer keys.
//! let m = rmpv::Value::Map(vec![(1.into(), "one".into())]);
//! assert_eq!(to_json(&m), json!({"$map": [[1, "one"]]}));
//! assert_eq!(to_msgpack(&to_json(&m))?, m);
//! # Ok::<(), easyrpc_cli::json::JsonError>(())
//! ```

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{Map, Number, Value as Json};

/// The key of bin in JSON: `{"$bin": "<base64>"}`.
pub const BIN: &str = "$bin";
/// The key of a map with keys other than str: `{"$map": [[key, value], ...]}`.
pub const MAP: &str = "$map";
/// The key of an extension value: `{"$ext": [type, "<base64>"]}`.
pub const EXT: &str = "$ext";
/// The key of a float JSON cannot write: `{"$float": "NaN" | "inf" | "-inf"}`.
pub const FLOAT: &str = "$float";

/// A JSON value that does not stand for any MessagePack value: a malformed `$` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

fn err(msg: impl Into<String>) -> JsonError {
    JsonError(msg.into())
}

/// The MessagePack value a JSON value stands for (the `$` forms of the module docs
/// included).
///
/// ```
/// let v = easyrpc_cli::json::to_msgpack(&serde_json::json!({"k": [1, 2.0]}))?;
/// let list = rmpv::Value::Array(vec![1.into(), 2.0.into()]);
/// assert_eq!(v, rmpv::Value::Map(vec![("k".into(), list)]));
/// # Ok::<(), easyrpc_cli::json::JsonError>(())
/// ```
///
/// # Errors
///
/// A `$` form that is malformed: bad base64, a `$map` that is not a list of pairs, an
/// extension type outside `-128..=127`, an unknown `$float`.
pub fn to_msgpack(json: &Json) -> Result<rmpv::Value, JsonError> {
    use rmpv::Value as V;
    Ok(match json {
        Json::Null => V::Nil,
        Json::Bool(b) => V::Boolean(*b),
        Json::Number(n) => number(n),
        Json::String(s) => V::String(s.as_str().into()),
        Json::Array(items) => V::Array(items.iter().map(to_msgpack).collect::<Result<_, _>>()?),
        Json::Object(map) => match special(map) {
            Some((BIN, v)) => V::Binary(base64(v, BIN)?),
            Some((MAP, v)) => {
                let Json::Array(pairs) = v else {
                    return Err(err("$map must be a list of [key, value] pairs"));
                };
                let mut entries = Vec::with_capacity(pairs.len());
                for pair in pairs {
                    match pair {
                        Json::Array(kv) if kv.len() == 2 => {
                            entries.push((to_msgpack(&kv[0])?, to_msgpack(&kv[1])?));
                        }
                        _ => return Err(err(format!("$map entry is not a [key, value] pair: {pair}"))),
                    }
                }
                V::Map(entries)
            }
            Some((EXT, v)) => match v {
                Json::Array(tv) if tv.len() == 2 => {
                    let ty = tv[0].as_i64().and_then(|t| i8::try_from(t).ok()).ok_or_else(|| {
                        err(format!("$ext type must be an integer in -128..=127: {}", tv[0]))
                    })?;
                    V::Ext(ty, base64(&tv[1], EXT)?)
                }
                _ => return Err(err("$ext must be [type, \"<base64>\"]")),
            },
            Some((FLOAT, v)) => V::F64(match v.as_str() {
                Some("NaN" | "nan") => f64::NAN,
                Some("inf" | "+inf" | "infinity") => f64::INFINITY,
                Some("-inf" | "-infinity") => f64::NEG_INFINITY,
                _ => return Err(err(format!("$float must be \"NaN\", \"inf\" or \"-inf\": {v}"))),
            }),
            _ => V::Map(
                map.iter()
                    .map(|(k, v)| Ok((V::String(k.as_str().into()), to_msgpack(v)?)))
                    .collect::<Result<_, JsonError>>()?,
            ),
        },
    })
}

/// A JSON number as an integer when it is one, as f64 otherwise.
fn number(n: &Number) -> rmpv::Value {
    if let Some(u) = n.as_u64() {
        rmpv::Value::from(u)
    } else if let Some(i) = n.as_i64() {
        rmpv::Value::from(i)
    } else {
        // serde_json (without arbitrary precision) holds every other number as an f64.
        rmpv::Value::F64(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// The `$` form a one-key object is, if it is one.
fn special(map: &Map<String, Json>) -> Option<(&'static str, &Json)> {
    if map.len() != 1 {
        return None;
    }
    let (k, v) = map.iter().next()?;
    [BIN, MAP, EXT, FLOAT]
        .into_iter()
        .find(|s| k.as_str() == *s)
        .map(|s| (s, v))
}

/// The bytes of a `$bin` (or `$ext`) string.
pub(crate) fn base64(v: &Json, what: &str) -> Result<Vec<u8>, JsonError> {
    let s = v
        .as_str()
        .ok_or_else(|| err(format!("{what} must hold a base64 string: {v}")))?;
    BASE64
        .decode(s.trim())
        .map_err(|e| err(format!("{what}: invalid base64: {e}")))
}

/// `{"$bin": "<base64>"}`.
///
/// ```
/// assert_eq!(easyrpc_cli::json::bin(b"hi"), serde_json::json!({"$bin": "aGk="}));
/// ```
pub fn bin(bytes: &[u8]) -> Json {
    let mut m = Map::new();
    m.insert(BIN.to_owned(), Json::String(BASE64.encode(bytes)));
    Json::Object(m)
}

/// One `$` form: `{key: value}`.
fn tagged(key: &str, value: Json) -> Json {
    let mut m = Map::new();
    m.insert(key.to_owned(), value);
    Json::Object(m)
}

/// A float as JSON: a number, or the `$float` form for NaN and infinities.
pub(crate) fn float(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => tagged(FLOAT, "NaN".into()),
        None if f > 0.0 => tagged(FLOAT, "inf".into()),
        None => tagged(FLOAT, "-inf".into()),
    }
}

/// The JSON form of a MessagePack value (the `$` forms of the module docs for what JSON
/// cannot say).
///
/// ```
/// let v = rmpv::Value::Array(vec![rmpv::Value::Binary(b"hi".to_vec()), rmpv::Value::Nil]);
/// assert_eq!(easyrpc_cli::json::to_json(&v), serde_json::json!([{"$bin": "aGk="}, null]));
/// ```
pub fn to_json(v: &rmpv::Value) -> Json {
    use rmpv::Value as V;
    match v {
        V::Nil => Json::Null,
        V::Boolean(b) => Json::Bool(*b),
        V::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::from(u),
            (None, Some(i)) => Json::from(i),
            // An rmpv integer is always one or the other.
            (None, None) => Json::Null,
        },
        // The shortest decimal that reads back as the same f32 (0.1, not 0.10000000149).
        V::F32(f) => float(f.to_string().parse().unwrap_or(f64::from(*f))),
        V::F64(f) => float(*f),
        V::String(s) => Json::String(match s.as_str() {
            Some(s) => s.to_owned(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        }),
        V::Binary(b) => bin(b),
        V::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        V::Map(entries) => {
            let all_str = entries.iter().all(|(k, _)| k.as_str().is_some());
            let unique = {
                let mut keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();
                keys.sort_unstable();
                keys.windows(2).all(|w| w[0] != w[1])
            };
            let ambiguous = entries.len() == 1
                && entries[0]
                    .0
                    .as_str()
                    .is_some_and(|k| [BIN, MAP, EXT, FLOAT].contains(&k));
            if all_str && unique && !ambiguous {
                Json::Object(
                    entries
                        .iter()
                        // Unwrap-free: every key was just checked to be a UTF-8 str.
                        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), to_json(v))))
                        .collect(),
                )
            } else {
                tagged(
                    MAP,
                    Json::Array(
                        entries
                            .iter()
                            .map(|(k, v)| Json::Array(vec![to_json(k), to_json(v)]))
                            .collect(),
                    ),
                )
            }
        }
        V::Ext(ty, data) => tagged(
            EXT,
            Json::Array(vec![Json::from(*ty), Json::String(BASE64.encode(data))]),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as V;
    use serde_json::json;

    fn round_trip(v: V) {
        let j = to_json(&v);
        let back = to_msgpack(&j).unwrap_or_else(|e| panic!("{j}: {e}"));
        // NaN is not equal to itself: compare the JSON forms.
        assert_eq!(to_json(&back), j, "{v:?} -> {j} -> {back:?}");
    }

    #[test]
    fn integers_stay_integers_and_floats_floats() {
        let v = to_msgpack(&json!([0, 1, -1, u64::MAX, i64::MIN, 1.0, 1e3, -0.5])).unwrap();
        assert_eq!(
            v,
            V::Array(vec![
                V::from(0u64),
                V::from(1u64),
                V::from(-1i64),
                V::from(u64::MAX),
                V::from(i64::MIN),
                V::F64(1.0),
                V::F64(1000.0),
                V::F64(-0.5),
            ])
        );
        assert!(v.as_array().unwrap()[0].is_u64());
        assert!(v.as_array().unwrap()[5].is_f64());
    }

    #[test]
    fn every_msgpack_value_round_trips() {
        for v in [
            V::Nil,
            V::Boolean(true),
            V::from(u64::MAX),
            V::from(i64::MIN),
            V::F32(0.1),
            V::F64(f64::NAN),
            V::F64(f64::INFINITY),
            V::F64(f64::NEG_INFINITY),
            V::from("text"),
            V::Binary(vec![]),
            V::Binary((0..=255).collect()),
            V::Ext(-5, vec![1, 2, 3]),
            V::Array(vec![V::from(1), V::Array(vec![])]),
            V::Map(vec![(V::from("a"), V::from(1)), (V::from("b"), V::Nil)]),
            V::Map(vec![(V::from(1), V::from("one")), (V::Nil, V::Boolean(false))]),
            V::Map(vec![(V::Binary(vec![1]), V::from(2))]),
            // Would read back as bin if printed as an object.
            V::Map(vec![(V::from("$bin"), V::from("AAEC"))]),
            V::Map(vec![(V::from("$map"), V::Array(vec![]))]),
            // Duplicate keys: an object would lose one.
            V::Map(vec![(V::from("k"), V::from(1)), (V::from("k"), V::from(2))]),
        ] {
            round_trip(v);
        }
    }

    #[test]
    fn the_forms_print_as_documented() {
        assert_eq!(to_json(&V::F32(0.1)), json!(0.1));
        assert_eq!(to_json(&V::F64(f64::NAN)), json!({"$float": "NaN"}));
        assert_eq!(to_json(&V::Ext(1, vec![255])), json!({"$ext": [1, "/w=="]}));
        assert_eq!(
            to_json(&V::Map(vec![(V::from("$bin"), V::from("x"))])),
            json!({"$map": [["$bin", "x"]]})
        );
        // Two keys, one of them `$bin`: an ordinary object.
        assert_eq!(
            to_msgpack(&json!({"$bin": "AA==", "other": 1})).unwrap(),
            V::Map(vec![
                (V::from("$bin"), V::from("AA==")),
                (V::from("other"), V::from(1))
            ])
        );
        // Invalid UTF-8 in a str: printed lossily.
        let bad = rmpv::decode::read_value(&mut &[0xa2, b'a', 0xff][..]).unwrap();
        assert!(bad.as_str().is_none());
        assert_eq!(to_json(&bad), json!("a\u{fffd}"));
    }

    #[test]
    fn malformed_forms_are_errors() {
        for (j, want) in [
            (json!({"$bin": "not base64!"}), "invalid base64"),
            (json!({"$bin": 5}), "base64 string"),
            (json!({"$map": [[1]]}), "pair"),
            (json!({"$map": {}}), "list of"),
            (json!({"$ext": [300, ""]}), "-128..=127"),
            (json!({"$float": "big"}), "NaN"),
        ] {
            let e = to_msgpack(&j).unwrap_err();
            assert!(e.0.contains(want), "{j}: {e}");
        }
    }
}
