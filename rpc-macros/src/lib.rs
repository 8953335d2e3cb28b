//! The `#[register]` attribute and the `declare!` macro. Use them through the [`easyrpc`](https://docs.rs/easyrpc) crate,
//! which re-exports them: the generated code refers to `::easyrpc::__private`.
//!
//! # Layout
//!
//! - `attr.rs`: the options of `#[register(...)]` and `#[rpc(...)]`, and `declare!`'s input.
//! - `ast.rs`: a function signature, read (never rejected).
//! - `valid.rs`: the rules a signature must follow, each error on the token at fault.
//! - `expand.rs`: the generated module of stubs and the server registration, or its
//!   stand-in when there are errors.

mod ast;
mod attr;
mod expand;
mod service;
mod valid;

use proc_macro::TokenStream;

/// Serve a function over RPC and generate its typed client stubs.
///
/// See the [`easyrpc` crate](https://docs.rs/easyrpc) for the full documentation.
#[proc_macro_attribute]
pub fn register(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::register(args.into(), input.into()).into()
}

/// Generate typed client stubs from signatures alone, for a crate that calls a service
/// without containing its implementation.
///
/// See the [`easyrpc` crate](https://docs.rs/easyrpc) for the full documentation.
#[proc_macro]
pub fn declare(input: TokenStream) -> TokenStream {
    expand::declare(input.into()).into()
}

/// Serve every `pub` method taking `&self` of an impl block, with the instance shared by
/// all calls, and generate typed clients `{Type}Client` and `{Type}BlockingClient`.
///
/// See the [`easyrpc` crate](https://docs.rs/easyrpc) for the full documentation.
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    service::service(args.into(), input.into()).into()
}
