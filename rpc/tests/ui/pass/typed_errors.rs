//! Issue 11: a written error type is kept in the stubs' `CallError<E>`; an alias keeps
//! `rpc::Error`; `E` need not be `Serialize` nor `Deserialize`.

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

#[rpc::register]
fn get(id: u64) -> Result<String, TodoError> {
    Err(TodoError::NotFound(id))
}

#[rpc::register]
async fn get_async(id: u64) -> Result<String, TodoError> {
    Err(TodoError::NotFound(id))
}

#[rpc::register]
fn opaque() -> Result<u8, Opaque> {
    Err(Opaque)
}

#[rpc::register]
fn send_only() -> Result<u8, SendOnly> {
    Err(SendOnly("no"))
}

#[rpc::register]
fn io_alias() -> std::io::Result<u8> {
    Ok(1)
}

mod client {
    rpc::declare! {
        pub fn get(id: u64) -> Result<String, super::TodoError>;
        pub fn io_alias() -> std::io::Result<u8>;
    }
}

async fn typed(c: &rpc::Client) -> Result<(), rpc::Error> {
    match get::call(c, 42).await {
        Ok(_) => {}
        Err(rpc::CallError::Handler(TodoError::NotFound(id))) => assert_eq!(id, 42),
        Err(rpc::CallError::Rpc(e)) => return Err(e),
    }
    let _: Result<String, rpc::CallError<TodoError>> = get_async::call(c, 1).await;
    let _: Result<String, rpc::CallError<TodoError>> = client::get::call(c, 1).await;
    let _: Result<u8, rpc::CallError<Opaque>> = opaque::call(c).await;
    let _: Result<u8, rpc::CallError<SendOnly>> = send_only::call(c).await;
    let _: Result<u8, rpc::Error> = io_alias::call(c).await;
    let _: Result<u8, rpc::Error> = client::io_alias::call(c).await;
    // `?` into `rpc::Error` and into a boxed error.
    let _: String = get::call(c, 1).await?;
    Ok(())
}

fn boxed(c: &rpc::BlockingClient) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
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
        #[rpc::register]
        fn $name(x: u64) -> Result<u64, $e> {
            Ok(x)
        }
    };
}

fallible_service!(via_macro, TodoError);
fallible_service!(via_macro_opaque, Opaque);
