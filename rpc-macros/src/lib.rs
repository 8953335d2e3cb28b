//! The `#[register]` attribute and the `declare!` macro. Use them through the `rpc` crate,
//! which re-exports them: the generated code refers to `::rpc::__private`.
//!
//! # Layout
//!
//! - `attr.rs`: the options of `#[register(...)]` and `#[rpc(...)]`.
//! - `ast.rs`: a function signature, checked (`valid` rules live beside the parsing).
//! - `expand.rs`: the generated module of stubs and the server registration.

mod ast;
mod attr;
mod expand;

use proc_macro::TokenStream;

/// Serve a function over RPC and generate its typed client stubs.
///
/// See the `rpc` crate for the full documentation.
#[proc_macro_attribute]
pub fn register(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::register(args.into(), input.into()).into()
}

/// Generate typed client stubs from signatures alone, for a crate that calls a service
/// without containing its implementation.
///
/// See the `rpc` crate for the full documentation.
#[proc_macro]
pub fn declare(input: TokenStream) -> TokenStream {
    expand::declare(input.into()).into()
}
