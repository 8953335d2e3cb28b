//! A function signature as `#[register]` sees it, with every rule checked.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Signature, Type};

/// One argument: a plain name and a type.
pub(crate) struct Arg {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

/// What the function returns.
pub(crate) enum Output {
    /// Nothing, that is `()`.
    Unit,
    /// A value of this type.
    Plain(Type),
    /// `Result<T, E>` (any type whose last path segment is `Result`): `T` on success,
    /// `E`'s `Display` as a handler error.
    Fallible { ok: Type, full: Type },
}

pub(crate) struct Function {
    pub(crate) ident: Ident,
    pub(crate) is_async: bool,
    pub(crate) async_span: Span,
    pub(crate) args: Vec<Arg>,
    pub(crate) output: Output,
}

impl Output {
    /// The type the client receives.
    pub(crate) fn client_type(&self) -> proc_macro2::TokenStream {
        match self {
            Output::Unit => quote::quote!(()),
            Output::Plain(t) | Output::Fallible { ok: t, .. } => quote::quote!(#t),
        }
    }
}

/// Check `sig` and collect every error at once.
pub(crate) fn function(sig: &Signature, errors: &mut Vec<syn::Error>) -> Option<Function> {
    let before = errors.len();
    if let Some(c) = &sig.constness {
        errors.push(syn::Error::new_spanned(c, "a registered function cannot be `const`"));
    }
    if let Some(u) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            u,
            "a registered function cannot be `unsafe`: remote callers cannot uphold its contract",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(abi, "a registered function cannot have an `extern` ABI"));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a registered function cannot be generic: its argument and return types must be concrete, \
             so the server knows how to decode them",
        ));
    }
    if let Some(w) = &sig.generics.where_clause {
        errors.push(syn::Error::new_spanned(w, "a registered function cannot have a `where` clause"));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(v, "a registered function cannot be variadic"));
    }
    let mut args = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => errors.push(syn::Error::new_spanned(
                r,
                "a registered function cannot take `self`: register a free function \
                 (a method needs an instance the server does not have)",
            )),
            FnArg::Typed(pt) => {
                let ident = match &*pt.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
                    other => {
                        errors.push(syn::Error::new_spanned(
                            other,
                            "patterns are not allowed in the arguments of a registered function; \
                             use a plain name such as `point: Point`",
                        ));
                        continue;
                    }
                };
                if ident.to_string().starts_with("__rpc") {
                    errors.push(syn::Error::new_spanned(&ident, "names starting with `__rpc` are reserved"));
                }
                if let Type::ImplTrait(_) = &*pt.ty {
                    errors.push(syn::Error::new_spanned(
                        &pt.ty,
                        "`impl Trait` arguments are not allowed: use a concrete type that implements \
                         `serde::de::DeserializeOwned`",
                    ));
                }
                args.push(Arg {
                    ident,
                    ty: (*pt.ty).clone(),
                });
            }
        }
    }
    let output = match &sig.output {
        ReturnType::Default => Output::Unit,
        ReturnType::Type(_, ty) => {
            if let Type::ImplTrait(_) = &**ty {
                errors.push(syn::Error::new_spanned(
                    ty,
                    "`impl Trait` return types are not allowed: return a concrete type that \
                     implements `serde::Serialize`",
                ));
            }
            match result_ok_type(ty) {
                Some(ok) => Output::Fallible {
                    ok,
                    full: (**ty).clone(),
                },
                None => Output::Plain((**ty).clone()),
            }
        }
    };
    (errors.len() == before).then(|| Function {
        ident: sig.ident.clone(),
        is_async: sig.asyncness.is_some(),
        async_span: sig.asyncness.map_or(sig.fn_token.span(), |a| a.span()),
        args,
        output,
    })
}

/// `T` when `ty` is `Result<T, ..>` (by its last path segment's name).
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}
