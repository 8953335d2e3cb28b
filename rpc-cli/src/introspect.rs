//! What a server says about its methods: the answer to the reserved call
//! [`rpc.methods`](METHODS), read into [`MethodInfo`]s, and how `rpc list` and
//! `rpc describe` print them.
//!
//! The answer is an array of maps, one per method:
//! `{"name": str, "args": [[name, type], ...], "returns": str, "sync": bool,
//! "max_flow": int or nil, "doc": str}`, types as written in the Rust source (`"?"` when
//! unknown, for a closure) and `doc` the doc comment's summary (its first paragraph). Keys this crate
//! does not know are ignored; missing ones take a default (types `"?"`, no `max_flow`,
//! no doc), so that a newer or an older server is still read.
//!
//! ```
//! use easyrpc_cli::introspect::MethodInfo;
//! use rmpv::Value;
//!
//! let answer = Value::Array(vec![Value::Map(vec![
//!     ("name".into(), "add".into()),
//!     ("args".into(), Value::Array(vec![
//!         Value::Array(vec!["a".into(), "i64".into()]),
//!         Value::Array(vec!["b".into(), "i64".into()]),
//!     ])),
//!     ("returns".into(), "i64".into()),
//!     ("sync".into(), true.into()),
//!     ("max_flow".into(), Value::Nil),
//!     ("doc".into(), "Adds two numbers.".into()),
//! ])]);
//! let methods = MethodInfo::parse_all(&answer)?;
//! assert_eq!(methods[0].signature(), "add(a: i64, b: i64) -> i64");
//! # Ok::<(), easyrpc_cli::introspect::IntrospectError>(())
//! ```

use serde_json::{json, Value as Json};

/// The reserved call that lists a server's methods.
pub const METHODS: &str = "rpc.methods";

/// The type shown when the server does not know it (a method registered as a closure).
pub const UNKNOWN_TYPE: &str = "?";

/// An answer to `rpc.methods` that does not have the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected answer to rpc.methods: {0}")]
pub struct IntrospectError(pub String);

/// One method, as `rpc.methods` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MethodInfo {
    /// The name it is called by.
    pub name: String,
    /// Its wire arguments, in order: name and Rust type as written.
    pub args: Vec<(String, String)>,
    /// Its return type as written.
    pub returns: String,
    /// Whether it is a sync function (run on the server's blocking pool).
    pub sync: bool,
    /// How many calls of it may run at once, if limited.
    pub max_flow: Option<u64>,
    /// Its doc comment's summary, the first paragraph (may be empty).
    pub doc: String,
    /// How it streams: `""` (not at all), `"result"` (its result is a stream of
    /// `returns`), `"args"` (it takes a stream of items besides `args`) or `"both"`.
    pub streaming: String,
}

impl MethodInfo {
    /// The methods of an answer to `rpc.methods`, sorted by name.
    ///
    /// # Errors
    ///
    /// When the answer is not an array of maps each with a str `name`.
    pub fn parse_all(answer: &rmpv::Value) -> Result<Vec<MethodInfo>, IntrospectError> {
        let items = answer
            .as_array()
            .ok_or_else(|| IntrospectError(format!("not an array: {answer}")))?;
        let mut methods = items
            .iter()
            .map(MethodInfo::parse)
            .collect::<Result<Vec<_>, _>>()?;
        methods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(methods)
    }

    /// One method's map.
    ///
    /// # Errors
    ///
    /// When it is not a map with a str `name`, or a known key holds a value of the wrong
    /// kind.
    pub fn parse(item: &rmpv::Value) -> Result<MethodInfo, IntrospectError> {
        let entries = item
            .as_map()
            .ok_or_else(|| IntrospectError(format!("a method is not a map: {item}")))?;
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v)
        };
        let bad = |key: &str, v: &rmpv::Value| IntrospectError(format!("{key} of a method: {v}"));
        let string = |key: &str, default: &str| match get(key) {
            None | Some(rmpv::Value::Nil) => Ok(default.to_owned()),
            Some(rmpv::Value::String(s)) => Ok(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            Some(v) => Err(bad(key, v)),
        };
        let name = match get("name") {
            Some(rmpv::Value::String(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            _ => return Err(IntrospectError(format!("a method has no name: {item}"))),
        };
        let args = match get("args") {
            None | Some(rmpv::Value::Nil) => Vec::new(),
            Some(rmpv::Value::Array(args)) => args
                .iter()
                .map(|a| match a.as_array().map(Vec::as_slice) {
                    Some([n, t]) => match (n.as_str(), t.as_str()) {
                        (Some(n), Some(t)) => Ok((n.to_owned(), t.to_owned())),
                        _ => Err(bad("args", a)),
                    },
                    _ => Err(bad("args", a)),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(bad("args", v)),
        };
        let sync = match get("sync") {
            None | Some(rmpv::Value::Nil) => false,
            Some(rmpv::Value::Boolean(b)) => *b,
            Some(v) => return Err(bad("sync", v)),
        };
        let max_flow = match get("max_flow") {
            None | Some(rmpv::Value::Nil) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| bad("max_flow", v))?),
        };
        Ok(MethodInfo {
            name,
            args,
            returns: string("returns", UNKNOWN_TYPE)?,
            sync,
            max_flow,
            doc: string("doc", "")?,
            streaming: string("streaming", "")?,
        })
    }

    /// The signature as `rpc list` prints it, as the server's own `MethodDescription`
    /// does: `add(a: i64, b: i64) -> i64`, `ping() -> ()`.
    ///
    /// ```
    /// # use easyrpc_cli::introspect::MethodInfo;
    /// # let mut m = MethodInfo::parse(&rmpv::Value::Map(vec![("name".into(), "ping".into())]))?;
    /// m.returns = "()".into();
    /// assert_eq!(m.signature(), "ping() -> ()");
    /// # Ok::<(), easyrpc_cli::introspect::IntrospectError>(())
    /// ```
    ///
    /// A streaming method is marked: `countdown(n: u64) -> stream of u64` for a result
    /// stream, `sum(offset: i64, +stream) -> i64` for a method that takes one.
    pub fn signature(&self) -> String {
        let mut args: Vec<String> = self.args.iter().map(|(n, t)| format!("{n}: {t}")).collect();
        if matches!(self.streaming.as_str(), "args" | "both") {
            args.push("+stream".to_owned());
        }
        let stream = if matches!(self.streaming.as_str(), "result" | "both") {
            "stream of "
        } else {
            ""
        };
        format!("{}({}) -> {stream}{}", self.name, args.join(", "), self.returns)
    }

    /// What `rpc describe` prints: the signature, then how it runs, then its doc summary.
    ///
    /// ```text
    /// fib_sync(n: u64) -> u64
    ///   sync (runs on the blocking pool), max_flow 100
    ///   Fibonacci, recursively: CPU-bound, so it runs on the blocking pool. At most 100 run
    /// ```
    pub fn description(&self) -> String {
        let kind = if self.sync {
            "sync (runs on the blocking pool)"
        } else {
            "async"
        };
        let flow = match self.max_flow {
            Some(n) => format!("max_flow {n}"),
            None => "no max_flow".to_owned(),
        };
        let streams = match self.streaming.as_str() {
            "result" => ", streams its result (rpc call prints one JSON line per item)",
            "args" => ", takes a stream (rpc call reads its items from stdin, one JSON value per line)",
            "both" => ", two-way stream (items from stdin, results as JSON lines)",
            _ => "",
        };
        let mut s = format!("{}\n  {kind}, {flow}{streams}\n", self.signature());
        if !self.doc.is_empty() {
            s.push_str(&format!("  {}\n", self.doc));
        }
        s
    }

    /// The method as JSON, in the shape of the server's answer (plus `signature`;
    /// `streaming` only for a streaming method).
    pub fn to_json(&self) -> Json {
        let mut j = json!({
            "name": self.name,
            "args": self.args.iter().map(|(n, t)| json!([n, t])).collect::<Vec<_>>(),
            "returns": self.returns,
            "sync": self.sync,
            "max_flow": self.max_flow,
            "doc": self.doc,
            "signature": self.signature(),
        });
        // As the server's answer has it: only for a streaming method.
        if !self.streaming.is_empty() {
            j["streaming"] = Json::from(self.streaming.as_str());
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as V;

    fn method(name: &str, args: &[(&str, &str)], returns: &str, sync: bool, max_flow: Option<u64>) -> V {
        V::Map(vec![
            ("name".into(), name.into()),
            (
                "args".into(),
                V::Array(
                    args.iter()
                        .map(|(n, t)| V::Array(vec![(*n).into(), (*t).into()]))
                        .collect(),
                ),
            ),
            ("returns".into(), returns.into()),
            ("sync".into(), sync.into()),
            ("max_flow".into(), max_flow.map_or(V::Nil, V::from)),
            ("doc".into(), "".into()),
            ("added_later".into(), 1.into()),
        ])
    }

    #[test]
    fn methods_are_sorted_and_printed_as_signatures() {
        let answer = V::Array(vec![
            method("fib_sync", &[("n", "u64")], "u64", true, Some(100)),
            method("add", &[("a", "i64"), ("b", "i64")], "i64", true, None),
            method("closure", &[("0", "?")], "?", false, None),
            method("unit", &[], "()", false, None),
        ]);
        let sigs: Vec<String> = MethodInfo::parse_all(&answer)
            .unwrap()
            .iter()
            .map(MethodInfo::signature)
            .collect();
        assert_eq!(
            sigs,
            [
                "add(a: i64, b: i64) -> i64",
                "closure(0: ?) -> ?",
                "fib_sync(n: u64) -> u64",
                "unit() -> ()"
            ]
        );
        let m = MethodInfo::parse(&method("fib_sync", &[("n", "u64")], "u64", true, Some(100))).unwrap();
        assert_eq!(
            m.description(),
            "fib_sync(n: u64) -> u64\n  sync (runs on the blocking pool), max_flow 100\n"
        );
        assert_eq!(m.to_json()["max_flow"], 100);
    }

    #[test]
    fn missing_keys_take_defaults_and_wrong_shapes_are_errors() {
        let m = MethodInfo::parse(&V::Map(vec![("name".into(), "x".into())])).unwrap();
        assert_eq!((m.returns.as_str(), m.sync, m.max_flow), ("?", false, None));
        assert!(MethodInfo::parse_all(&V::from("nope")).is_err());
        assert!(MethodInfo::parse(&V::Map(vec![])).is_err());
        assert!(MethodInfo::parse(&V::Map(vec![
            ("name".into(), "x".into()),
            ("args".into(), 1.into())
        ]))
        .is_err());
    }
}
