//! The arguments of a call as given on the command line: the words after the method name.
//!
//! - no word: no arguments;
//! - one word that is a JSON array: the whole list of arguments (`'[1, "two", {"$bin": "AAE="}]'`);
//! - otherwise one word per argument, each a JSON value (`1`, `'"two"'`, `'{"k": 1}'`) or
//!   `@FILE`: the file's bytes as one bin argument (`@-` reads standard input).
//!
//! To pass a single argument that is itself an array, wrap it: `'[[1, 2]]'`. A string that
//! starts with `@` is quoted JSON (`'"@home"'`), so it is never taken for a file.
//!
//! ```
//! use serde_json::json;
//!
//! let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
//! assert_eq!(easyrpc_cli::args::parse(&words(&["[1, 2]"]))?, vec![json!(1), json!(2)]);
//! assert_eq!(easyrpc_cli::args::parse(&words(&["1", "\"two\""]))?, vec![json!(1), json!("two")]);
//! assert_eq!(easyrpc_cli::args::parse(&words(&[]))?, Vec::<serde_json::Value>::new());
//! # Ok::<(), easyrpc_cli::args::ArgsError>(())
//! ```

use std::io::Read;
use std::path::PathBuf;

use serde_json::Value as Json;

/// Why the arguments could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    /// A word is not JSON (nor `@FILE`).
    #[error("argument {index} is not JSON: {word:?} ({source}); write strings in quotes, as '\"text\"'")]
    NotJson {
        /// Its position, from 1.
        index: usize,
        /// The word.
        word: String,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A file named by `@FILE` could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `@-` was given more than once: standard input can be read only once.
    #[error("@- (standard input) may be given only once")]
    StdinTwice,
}

/// The arguments the words stand for, as JSON values (a file's bytes as
/// `{"$bin": "<base64>"}`), ready for [`crate::json::to_msgpack`].
///
/// # Errors
///
/// A word that is not JSON, a file that cannot be read.
pub fn parse(words: &[String]) -> Result<Vec<Json>, ArgsError> {
    if let [word] = words {
        if word.trim_start().starts_with('[') {
            return match serde_json::from_str(word) {
                Ok(Json::Array(items)) => Ok(items),
                Ok(other) => Ok(vec![other]),
                Err(source) => Err(ArgsError::NotJson {
                    index: 1,
                    word: word.clone(),
                    source,
                }),
            };
        }
    }
    let mut stdin_read = false;
    words
        .iter()
        .enumerate()
        .map(|(i, word)| match word.strip_prefix('@') {
            Some("-") => {
                if std::mem::replace(&mut stdin_read, true) {
                    return Err(ArgsError::StdinTwice);
                }
                let mut bytes = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|source| ArgsError::File {
                        path: "-".into(),
                        source,
                    })?;
                Ok(crate::json::bin(&bytes))
            }
            Some(path) => std::fs::read(path)
                .map(|bytes| crate::json::bin(&bytes))
                .map_err(|source| ArgsError::File {
                    path: path.into(),
                    source,
                }),
            None => serde_json::from_str(word).map_err(|source| ArgsError::NotJson {
                index: i + 1,
                word: word.clone(),
                source,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_array_is_the_list_and_other_words_are_one_argument_each() {
        assert_eq!(parse(&words(&["[]"])).unwrap(), Vec::<Json>::new());
        assert_eq!(parse(&words(&[" [[1, 2]]"])).unwrap(), vec![json!([1, 2])]);
        assert_eq!(
            parse(&words(&["[1]", "2"])).unwrap(),
            vec![json!([1]), json!(2)],
            "two words: each is one argument"
        );
        assert_eq!(
            parse(&words(&["{\"$bin\": \"AA==\"}", "null", "\"@x\""])).unwrap(),
            vec![json!({"$bin": "AA=="}), Json::Null, json!("@x")]
        );
    }

    #[test]
    fn a_file_is_one_bin_argument() {
        let path = std::env::temp_dir().join(format!("rpc-cli-args-{}", std::process::id()));
        std::fs::write(&path, [0u8, 1, 2, 255]).unwrap();
        let at = format!("@{}", path.display());
        let got = parse(&words(&[&at, "3"]));
        let _ = std::fs::remove_file(&path);
        assert_eq!(got.unwrap(), vec![json!({"$bin": "AAEC/w=="}), json!(3)]);
    }

    #[test]
    fn errors_say_which_argument_and_why() {
        let e = parse(&words(&["1", "text"])).unwrap_err();
        assert!(
            e.to_string().starts_with("argument 2 is not JSON: \"text\""),
            "{e}"
        );
        let e = parse(&words(&["[1,"])).unwrap_err();
        assert!(matches!(e, ArgsError::NotJson { index: 1, .. }), "{e}");
        let e = parse(&words(&["@/no/such/file"])).unwrap_err();
        assert!(e.to_string().starts_with("cannot read /no/such/file"), "{e}");
    }
}
