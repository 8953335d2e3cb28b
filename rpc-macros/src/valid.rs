//! The rules a served or declared signature must follow. Every broken rule adds an error
//! spanned on the token at fault; nothing stops at the first.
//!
//! What the type system can check (`Serialize`, `DeserializeOwned`, `Send`, `Display`) is
//! left to the bounds that `expand.rs` places on the user's own types; what it reports
//! poorly (references, borrowed lifetimes, `impl Trait`) is checked here, by syntax.

use std::fmt::Display;

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::visit::Visit;
use syn::{FnArg, Pat, ReturnType, Signature, Type};

use crate::ast::{stream_item, Role};
use crate::attr::Place;

fn error(errors: &mut Vec<syn::Error>, tokens: impl ToTokens, msg: impl Display) {
    errors.push(syn::Error::new_spanned(tokens, msg));
}

/// Check `sig`, adding one error per broken rule to `errors`.
pub(crate) fn signature(sig: &Signature, place: Place, errors: &mut Vec<syn::Error>) {
    // "a registered function" or "a declared function".
    let what = place.function();
    if let Some(u) = &sig.unsafety {
        error(
            errors,
            u,
            format_args!(
                "{what} cannot be `unsafe`: remote callers cannot uphold its contract; make it a \
                 safe `fn` that checks its arguments"
            ),
        );
    }
    if let Some(abi) = &sig.abi {
        error(
            errors,
            abi,
            format_args!("{what} cannot have an `extern` ABI: make it a plain `fn`"),
        );
    }
    if !sig.generics.params.is_empty() {
        error(
            errors,
            &sig.generics,
            format_args!(
                "{what} cannot be generic: the server must know the concrete types to decode the \
                 arguments into; use concrete types such as `i64`, `String` or a struct deriving \
                 `Serialize` and `Deserialize`"
            ),
        );
    }
    if let Some(w) = &sig.generics.where_clause {
        error(
            errors,
            w,
            format_args!("{what} cannot have a `where` clause: its types must be concrete"),
        );
    }
    if let Some(v) = &sig.variadic {
        error(errors, v, format_args!("{what} cannot be variadic"));
    }
    let mut streams = 0;
    for input in &sig.inputs {
        let pt = match input {
            FnArg::Receiver(r) if matches!(place, Place::Service) => {
                let shared_ref = r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none();
                if !shared_ref {
                    let msg = if r.mutability.is_some() && r.reference.is_some() {
                        "a service method takes `&self`, not `&mut self`: the service is shared by every \
                         call at once; keep what changes behind a `Mutex` or an atomic"
                    } else {
                        "a service method takes `&self`: the service is shared by every call (an `Arc`), \
                         never consumed by one"
                    };
                    error(errors, r, msg);
                }
                continue;
            }
            FnArg::Receiver(r) => {
                error(
                    errors,
                    r,
                    format_args!(
                        "{what} cannot take `self`: the server has no instance to call it on; make \
                         it a free function taking `State<T>`, or serve an impl block with \
                         `#[easyrpc::service]`"
                    ),
                );
                continue;
            }
            FnArg::Typed(pt) => pt,
        };
        match &*pt.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
                // `__rpc_args`, `__RpcParams`: the generated code's own names.
                if p.ident
                    .unraw()
                    .to_string()
                    .to_ascii_lowercase()
                    .starts_with("__rpc")
                {
                    error(
                        errors,
                        &p.ident,
                        "argument names starting with `__rpc` are reserved for the generated code",
                    );
                }
            }
            other => error(
                errors,
                other,
                format_args!(
                    "patterns are not allowed in the arguments of {what}: the stubs need a name for \
                     each argument; write `name: {}` and destructure it in the body",
                    show(&pt.ty)
                ),
            ),
        }
        match Role::of(&pt.ty) {
            Role::Streaming(item) => {
                streams += 1;
                if streams > 1 {
                    error(
                        errors,
                        &pt.ty,
                        format_args!(
                            "{what} takes at most one `Streaming<T>` argument: a call carries one \
                             stream from its caller; send a tuple or a struct per item to carry more"
                        ),
                    );
                }
                wire_type(&item, Position::Argument, what, errors);
            }
            _ => wire_type(&pt.ty, Position::Argument, what, errors),
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        match stream_item(ty) {
            Some((trait_, item)) => {
                let is_async = sig.asyncness.is_some();
                // `declare!` only makes stubs: either spelling says "a result stream".
                if !matches!(place, Place::Declare) {
                    if is_async && trait_ == "Iterator" {
                        error(
                            errors,
                            trait_,
                            "an async function streams its result as `impl Stream<Item = T>`; \
                             `impl Iterator<Item = T>` is for sync functions (driven on the blocking pool)",
                        );
                    } else if !is_async && trait_ == "Stream" {
                        error(
                            errors,
                            trait_,
                            "a sync function streams its result as `impl Iterator<Item = T>` (driven \
                             on the blocking pool); make it an `async fn` to return `impl Stream<Item = T>`",
                        );
                    }
                }
                wire_type(item, Position::Return, what, errors);
            }
            None => wire_type(ty, Position::Return, what, errors),
        }
    }
}

#[derive(Clone, Copy)]
enum Position {
    Argument,
    Return,
}

/// Reject what cannot cross the wire inside `ty`: borrowed data and `impl Trait`.
fn wire_type(ty: &Type, position: Position, what: &str, errors: &mut Vec<syn::Error>) {
    struct Finder<'e> {
        position: Position,
        what: &'e str,
        errors: &'e mut Vec<syn::Error>,
    }

    impl<'ast> Visit<'ast> for Finder<'_> {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            let (instead, what) = (owned_alternative(&r.elem), self.what);
            let msg = match self.position {
                Position::Argument => format!(
                    "{what} cannot take a reference: arguments are decoded into \
                     owned values; use {instead}"
                ),
                Position::Return => format!(
                    "{what} cannot return a reference: the stubs decode the result \
                     into an owned value; return {instead}"
                ),
            };
            error(self.errors, r, msg);
            // Not inside: one error per reference, not one more for its lifetime.
        }

        fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
            if l.ident != "static" {
                let part = match self.position {
                    Position::Argument => "an argument",
                    Position::Return => "the return type",
                };
                error(
                    self.errors,
                    l,
                    format_args!(
                        "{part} of {} cannot borrow (`{l}`): use an owned type, or `'static`",
                        self.what
                    ),
                );
            }
        }

        fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
            let msg = match self.position {
                Position::Argument => {
                    "`impl Trait` arguments are not allowed: the server must know the concrete type \
                     to decode into; use a concrete type that implements `serde::Deserialize`"
                }
                Position::Return => {
                    "`impl Trait` return types are not allowed, except a result stream: return a \
                     concrete type that implements `serde::Serialize`, or stream items with \
                     `impl Stream<Item = T>` (async fn) or `impl Iterator<Item = T>` (sync fn)"
                }
            };
            error(self.errors, t, msg);
        }

        // A function pointer's own arguments are not the wire's business (and a function
        // pointer cannot be sent anyway: the trait bounds say so).
        fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}
    }

    Finder {
        position,
        what,
        errors,
    }
    .visit_type(ty);
}

/// The owned type to use instead of a reference to `elem`, in words.
fn owned_alternative(elem: &Type) -> String {
    match elem {
        Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => "`String` instead of `&str`".into(),
        Type::Path(p) if p.qself.is_none() && p.path.is_ident("Path") => {
            "`PathBuf` instead of `&Path`".into()
        }
        Type::Slice(s) if show(&s.elem) == "u8" => {
            "`Vec<u8>` (or `serde_bytes::ByteBuf`) instead of `&[u8]`".into()
        }
        Type::Slice(s) => format!("`Vec<{0}>` instead of `&[{0}]`", show(&s.elem)),
        other => format!("`{0}` instead of `&{0}`", show(other)),
    }
}

/// `ty` as the user would write it (roughly: `quote` puts spaces between all tokens).
pub(crate) fn show(ty: &Type) -> String {
    let mut s = ty.to_token_stream().to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("& ", "&"),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" ;", ";"),
    ] {
        s = s.replace(from, to);
    }
    s
}
