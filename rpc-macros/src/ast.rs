//! A function signature as `#[register]` and `declare!` see it.
//!
//! Reading a signature never fails: a receiver or a pattern is kept as it is, so that even
//! an invalid function gets a stand-in module (see `expand::fallback`). `valid.rs` decides
//! whether the signature is acceptable.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::visit_mut::VisitMut;
use syn::{FnArg, GenericArgument, Ident, Pat, PathArguments, ReturnType, Signature, Type};

/// One argument.
pub(crate) struct Arg {
    /// The argument's name; `None` when it is a pattern such as `(a, b)`.
    pub(crate) ident: Option<Ident>,
    /// The argument's type, as the generated module must spell it (see [`rebase`]).
    pub(crate) ty: Type,
}

impl Arg {
    /// The name callers see in errors, without any `r#`.
    pub(crate) fn name(&self, index: usize) -> String {
        self.ident
            .as_ref()
            .map_or_else(|| format!("argument {index}"), |i| i.unraw().to_string())
    }
}

/// What the function returns.
pub(crate) enum Output {
    /// Nothing, that is `()`.
    Unit,
    /// A value of this type.
    Plain(Type),
    /// `Result<T, E>` (any type whose last path segment is `Result`): `T` on success,
    /// `E`'s `Display` as a handler error, with `E` itself as its data when `E` is
    /// `Serialize`. `err` is `None` for aliases that fix `E`, such as `io::Result<T>`: their
    /// stubs return `rpc::Error`, the others `rpc::CallError<E>`.
    Fallible {
        ok: Type,
        err: Option<Box<Type>>,
        full: Box<Type>,
    },
}

impl Output {
    /// The type the client receives.
    pub(crate) fn client_type(&self) -> proc_macro2::TokenStream {
        match self {
            Output::Unit => quote::quote!(()),
            Output::Plain(t) | Output::Fallible { ok: t, .. } => quote::quote!(#t),
        }
    }

    /// The function's own error type, when it is written out: the stubs then return
    /// `rpc::CallError<E>`.
    pub(crate) fn written_error(&self) -> Option<&Type> {
        match self {
            Output::Fallible { err: Some(e), .. } => Some(e),
            _ => None,
        }
    }
}

/// A function, read from its signature.
pub(crate) struct Function {
    pub(crate) ident: Ident,
    pub(crate) is_async: bool,
    /// `async`, or `fn` for a sync function: where "this future is not `Send`" points.
    pub(crate) async_span: Span,
    /// Whether the signature has a `self` receiver: then it sits in an `impl` block, where
    /// no module can be generated.
    pub(crate) has_receiver: bool,
    pub(crate) generics: syn::Generics,
    pub(crate) args: Vec<Arg>,
    pub(crate) output: Output,
}

impl Function {
    pub(crate) fn from_signature(sig: &Signature) -> Function {
        let mut has_receiver = false;
        let mut args = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(_) => has_receiver = true,
                FnArg::Typed(pt) => {
                    let ident = match &*pt.pat {
                        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(p.ident.clone()),
                        _ => None,
                    };
                    args.push(Arg {
                        ident,
                        ty: rebase(&pt.ty),
                    });
                }
            }
        }
        let output = match &sig.output {
            ReturnType::Default => Output::Unit,
            ReturnType::Type(_, ty) if matches!(&**ty, Type::Tuple(t) if t.elems.is_empty()) => Output::Unit,
            ReturnType::Type(_, ty) => {
                let ty = rebase(ty);
                match result_types(&ty) {
                    Some((ok, err)) => Output::Fallible {
                        ok,
                        err: err.map(Box::new),
                        full: Box::new(ty),
                    },
                    None => Output::Plain(ty),
                }
            }
        };
        let mut generics = sig.generics.clone();
        Rebase.visit_generics_mut(&mut generics);
        Function {
            ident: sig.ident.clone(),
            is_async: sig.asyncness.is_some(),
            async_span: sig.asyncness.map_or(sig.fn_token.span, |a| a.span),
            has_receiver,
            generics,
            args,
            output,
        }
    }
}

/// `T` and, when written out, `E` of a `Result<T, E>` (recognised by its last path
/// segment's name).
fn result_types(ty: &Type) -> Option<(Type, Option<Type>)> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let ok = types.next()?;
    Some((ok, types.next()))
}

/// `ty` as seen from the generated module, one level below the function: `self::T` becomes
/// `super::T` and `super::T` becomes `super::super::T`. Everything else resolves the same
/// through the module's `use super::*`.
pub(crate) fn rebase(ty: &Type) -> Type {
    let mut ty = ty.clone();
    Rebase.visit_type_mut(&mut ty);
    ty
}

struct Rebase;

impl VisitMut for Rebase {
    fn visit_path_mut(&mut self, path: &mut syn::Path) {
        if path.leading_colon.is_none() {
            if let Some(first) = path.segments.first_mut() {
                if first.ident == "self" {
                    first.ident = Ident::new("super", first.ident.span());
                } else if first.ident == "super" {
                    let span = first.ident.span();
                    path.segments.insert(0, Ident::new("super", span).into());
                }
            }
        }
        syn::visit_mut::visit_path_mut(self, path);
    }

    // Paths inside a macro's tokens are left alone: their meaning is the macro's business.
    fn visit_macro_mut(&mut self, _: &mut syn::Macro) {}
}
