//! The error of a call to a function with an error type of its own.

use std::fmt;

use easyrpc_proto::{ErrorCode, ServerError};
use serde::de::DeserializeOwned;

use crate::Error;

/// Why a call to a function returning `Result<T, E>` failed: the function's own error
/// ([`CallError::Handler`]), or anything else ([`CallError::Rpc`]).
///
/// The typed stubs of a function whose error type is written out (`-> Result<T, E>`, not an
/// alias such as `io::Result<T>`) return `Result<T, CallError<E>>`. A server built with
/// `rpc` sends an `E` that is `Serialize` as the error's data (`[3, message, data]`), and the
/// stub decodes it back, so the caller can `match` on it:
///
/// ```no_run
/// # #[derive(Debug, serde::Deserialize)]
/// # enum TodoError { NotFound(u64) }
/// # impl std::fmt::Display for TodoError {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("x") }
/// # }
/// # async fn demo(client: &easyrpc_client::Client) -> Result<(), easyrpc_client::Error> {
/// use easyrpc_client::CallError;
///
/// // What `get::call(&client, 42).await` does for `fn get(id: u64) -> Result<String, TodoError>`.
/// let reply: Result<String, CallError<TodoError>> =
///     client.call("get", (42,)).await.map_err(CallError::from_error);
/// match reply {
///     Ok(title) => println!("{title}"),
///     Err(CallError::Handler(TodoError::NotFound(id))) => println!("no todo {id}"),
///     Err(CallError::Rpc(e)) => return Err(e), // transport, timeout, overloaded...
/// }
/// # Ok(()) }
/// ```
///
/// `?` turns it into an [`Error`] (a handler error becomes [`Error::Remote`] with `E`'s
/// message), so code that propagates `easyrpc::Error` keeps compiling.
///
/// `Handler` occurs only when `E` is `DeserializeOwned` and the server sent the error's
/// data in that type; an error without data (an older or a third-party server, or a
/// function whose `E` is not `Serialize`) stays [`CallError::Rpc`] with its message, as
/// [`Error::Remote`].
#[derive(Debug)]
pub enum CallError<E> {
    /// The function ran and returned `Err(e)`: `e`, decoded from the error's data.
    Handler(E),
    /// Anything else: the call did not reach the function or did not come back (transport,
    /// timeout, overloaded, bad arguments...), or the error carried no `E`.
    Rpc(Error),
}

impl<E: DeserializeOwned> CallError<E> {
    /// `error` as a `CallError<E>`: a [`ErrorCode::HandlerError`] whose data decodes as an
    /// `E` becomes [`CallError::Handler`], anything else (an error without data, or with data
    /// that is not an `E`) [`CallError::Rpc`].
    pub fn from_error(error: Error) -> CallError<E> {
        if let Error::Remote(remote) = &error {
            if remote.kind() == ErrorCode::HandlerError {
                if let Some(Ok(e)) = remote.decode_data::<E>() {
                    return CallError::Handler(e);
                }
            }
        }
        CallError::Rpc(error)
    }
}

impl<E: DeserializeOwned> From<Error> for CallError<E> {
    /// As [`CallError::from_error`].
    fn from(error: Error) -> CallError<E> {
        CallError::from_error(error)
    }
}

impl<E> CallError<E> {
    /// The function's own error, if that is what this is.
    pub fn handler(&self) -> Option<&E> {
        match self {
            CallError::Handler(e) => Some(e),
            CallError::Rpc(_) => None,
        }
    }

    /// The function's own error, if that is what this is.
    pub fn into_handler(self) -> Option<E> {
        match self {
            CallError::Handler(e) => Some(e),
            CallError::Rpc(_) => None,
        }
    }

    /// The other error, if that is what this is.
    pub fn rpc(&self) -> Option<&Error> {
        match self {
            CallError::Handler(_) => None,
            CallError::Rpc(e) => Some(e),
        }
    }

    /// The error's code: [`ErrorCode::HandlerError`] for [`CallError::Handler`], and
    /// [`Error::code`] otherwise.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Handler(_) => Some(ErrorCode::HandlerError),
            CallError::Rpc(e) => e.code(),
        }
    }

    /// The remote error of a [`CallError::Rpc`], if the server answered with one (a
    /// [`CallError::Handler`] has none: its `E` is the whole answer).
    pub fn remote(&self) -> Option<&ServerError> {
        self.rpc().and_then(Error::remote)
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Handler(e) => e.fmt(f),
            CallError::Rpc(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Handler(_) => None,
            CallError::Rpc(e) => std::error::Error::source(e),
        }
    }
}

impl<E: fmt::Display> From<CallError<E>> for Error {
    /// [`CallError::Rpc`] as it is; [`CallError::Handler`] as the [`Error::Remote`]
    /// handler error the server sent, without its data (the message is `E`'s).
    fn from(e: CallError<E>) -> Error {
        match e {
            CallError::Handler(e) => {
                Error::Remote(Box::new(ServerError::new(ErrorCode::HandlerError, e.to_string())))
            }
            CallError::Rpc(e) => e,
        }
    }
}
