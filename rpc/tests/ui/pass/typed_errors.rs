//! Issue 11: a written error type is kept in the stubs' `CallError<E>`; an alias keeps
//! `easyrpc::Error`; `E` need not be `Serialize` nor `Deserialize`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum TodoError {
    NotFound(u64),
}

impl std::fmt::Display for TodoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TodoError::NotFound(id) => write!(f, "todo {id} not found"),
        }
    }
}

impl std::error::Error for TodoError {}

/// `Display` only.
#[derive(Debug)]
pub struct Opaque;

impl std::fmt::Display for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("opaque")
    }
}

/// `Serialize` but not `Deserialize`: sent as data, never decoded by the stubs.
#[derive(Debug, Serialize)]
pub struct SendOnly(&'static str);

impl std::fmt::Display for SendOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[easyrpc::register]
fn get(id: u64) -> Result<String, TodoError> {
    Err(TodoError::NotFound(id))
}

#[easyrpc::register]
async fn get_async(id: u64) -> Result<String, TodoError> {
    Err(TodoError::NotFound(id))
}

#[easyrpc::register]
fn opaque() -> Result<u8, Opaque> {
    Err(Opaque)
}

#[easyrpc::register]
fn send_only() -> Result<u8, SendOnly> {
    Err(SendOnly("no"))
}

#[easyrpc::register]
fn io_alias() -> std::io::Result<u8> {
    Ok(1)
}

mod client {
    easyrpc::declare! {
        pub fn get(id: u64) -> Result<String, super::TodoError>;
        pub fn io_alias() -> std::io::Result<u8>;
    }
}

async fn typed(c: &easyrpc::Client) -> Result<(), easyrpc::Error> {
    match get::call(c, 42).await {
        Ok(_) => {}
        Err(easyrpc::CallError::Handler(TodoError::NotFound(id))) => assert_eq!(id, 42),
        Err(easyrpc::CallError::Rpc(e)) => return Err(e),
    }
    let _: Result<String, easyrpc::CallError<TodoError>> = get_async::call(c, 1).await;
    let _: Result<String, easyrpc::CallError<TodoError>> = client::get::call(c, 1).await;
    let _: Result<u8, easyrpc::CallError<Opaque>> = opaque::call(c).await;
    let _: Result<u8, easyrpc::CallError<SendOnly>> = send_only::call(c).await;
    let _: Result<u8, easyrpc::Error> = io_alias::call(c).await;
    let _: Result<u8, easyrpc::Error> = client::io_alias::call(c).await;
    // `?` into `easyrpc::Error` and into a boxed error.
    let _: String = get::call(c, 1).await?;
    Ok(())
}

fn boxed(c: &easyrpc::BlockingClient) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let _: u8 = opaque::call_blocking(c)?;
    Ok(get::call_blocking(c, 1)?)
}

fn main() {
    let _ = [get::method(), get_async::method(), opaque::method(), send_only::method(), io_alias::method()];
    let _ = [via_macro::method(), via_macro_opaque::method()];
    let _ = typed;
    let _ = boxed;
}

/// The error type handed over by another macro, with its own hygiene.
macro_rules! fallible_service {
    ($name:ident, $e:ty) => {
        #[easyrpc::register]
        fn $name(x: u64) -> Result<u64, $e> {
            Ok(x)
        }
    };
}

fallible_service!(via_macro, TodoError);
fallible_service!(via_macro_opaque, Opaque);
