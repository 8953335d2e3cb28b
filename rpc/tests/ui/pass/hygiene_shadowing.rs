// User items named like the ones the generated code uses do not change its meaning.
#![allow(dead_code, non_snake_case, non_camel_case_types, unused_imports)]

mod core {}
mod std {}
mod serde {}

pub struct Result<T, E>(T, E);
pub enum Option {}
pub struct Box;
pub struct Method;
pub struct Client;
pub struct Reply;
pub struct Args;
pub struct Params;
pub const NAME: &str = "not the rpc name";
pub fn call() {}
pub fn method() {}

// Next to a `NAME` of the user's: the module's own `NAME` wins inside it.
#[easyrpc::register]
fn at_root(n: u8) -> u8 {
    n
}

pub mod shadowing {
    use super::{Args, Box, Client, Method, Option, Params, Reply, Result};

    pub trait Future {}
    pub trait Send {}
    pub trait Display {}
    pub type String = u8;

    /// Arguments named like the generated items, and like the function itself.
    #[easyrpc::register]
    pub fn lookup(NAME: ::std::string::String, method: u8, call: u8, lookup: u8) -> u8 {
        method + call + lookup + NAME.len() as u8
    }

    #[easyrpc::register]
    pub async fn wait(NAME: u8) -> ::core::result::Result<u8, ::std::string::String> {
        ::core::result::Result::Ok(NAME)
    }

    #[easyrpc::register]
    pub fn r#type(r#match: u8) -> u8 {
        r#match
    }

    easyrpc::declare! {
        pub fn remote(NAME: u8, method: u8) -> u8;
    }
}

fn main() {
    assert_eq!(shadowing::lookup("ab".to_owned(), 1, 2, 3), 8);
    assert_eq!(shadowing::lookup::NAME, "lookup");
    assert_eq!(shadowing::wait::NAME, "wait");
    // Served as `type`, not `r#type`.
    assert_eq!(shadowing::r#type::NAME, "type");
    assert_eq!(at_root::NAME, "at_root");
    assert_eq!(NAME, "not the rpc name");
    let _: easyrpc::Method = shadowing::lookup::method();
    let _: easyrpc::Method = shadowing::wait::method();
    let _ = shadowing::remote::call_blocking;
}
