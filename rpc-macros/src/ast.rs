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
    /// Where the argument comes from.
    pub(crate) role: Role,
}

/// Where an argument's value comes from.
pub(crate) enum Role {
    /// The wire: the caller sends it.
    Wire,
    /// The server's state of this type: `State<T>` (not on the wire).
    State(Box<Type>),
    /// The call's `Context` (not on the wire).
    Context,
    /// The caller's stream of items of this type: `Streaming<T>` (sent as `rpc.item`s
    /// after the request, not among the wire arguments).
    Streaming(Box<Type>),
}

impl Role {
    /// What a type written as an argument is: `State<T>`, `Context` and `Streaming<T>` (by
    /// their last path segment, as `easyrpc::State<T>` or imported) are the framework's.
    pub(crate) fn of(ty: &Type) -> Role {
        let Type::Path(p) = ty else { return Role::Wire };
        if p.qself.is_some() {
            return Role::Wire;
        }
        let Some(last) = p.path.segments.last() else {
            return Role::Wire;
        };
        match &last.arguments {
            PathArguments::None if last.ident == "Context" => Role::Context,
            PathArguments::AngleBracketed(a)
                if (last.ident == "State" || last.ident == "Streaming") && a.args.len() == 1 =>
            {
                match &a.args[0] {
                    GenericArgument::Type(t) if last.ident == "State" => Role::State(Box::new(t.clone())),
                    GenericArgument::Type(t) => Role::Streaming(Box::new(t.clone())),
                    _ => Role::Wire,
                }
            }
            _ => Role::Wire,
        }
    }
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
    /// stubs return `easyrpc::Error`, the others `easyrpc::CallError<E>`.
    Fallible {
        ok: Type,
        err: Option<Box<Type>>,
        full: Box<Type>,
    },
    /// A result stream: `impl Stream<Item = I>` (async) or `impl Iterator<Item = I>` (sync),
    /// its items read as an output of their own (`Plain`, or `Fallible` for `Result` items:
    /// an `Err` ends the stream).
    Stream {
        item: Box<Output>,
        /// The item type as written (`Result<T, E>` included).
        written: Box<Type>,
    },
}

impl Output {
    /// The type the client receives.
    pub(crate) fn client_type(&self) -> proc_macro2::TokenStream {
        match self {
            Output::Unit => quote::quote!(()),
            Output::Plain(t) | Output::Fallible { ok: t, .. } => quote::quote!(#t),
            Output::Stream { item, .. } => item.client_type(),
        }
    }

    /// The output of a value (or an item) of type `ty`: `()`, a `Result` or anything else.
    fn of(ty: Type) -> Output {
        if matches!(&ty, Type::Tuple(t) if t.elems.is_empty()) {
            return Output::Unit;
        }
        match result_types(&ty) {
            Some((ok, err)) => Output::Fallible {
                ok,
                err: err.map(Box::new),
                full: Box::new(ty),
            },
            None => Output::Plain(ty),
        }
    }

    /// The function's own error type, when it is written out: the stubs then return
    /// `easyrpc::CallError<E>`.
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
    /// The item type of the caller's stream (`T` of a `Streaming<T>` argument), if any.
    pub(crate) fn arg_stream(&self) -> Option<&Type> {
        self.args.iter().find_map(|a| match &a.role {
            Role::Streaming(t) => Some(&**t),
            _ => None,
        })
    }

    /// How the function streams, for `rpc.methods`: `"result"`, `"args"`, `"both"`, or
    /// `None` when it does not.
    pub(crate) fn streams(&self) -> Option<&'static str> {
        match (
            matches!(self.output, Output::Stream { .. }),
            self.arg_stream().is_some(),
        ) {
            (true, true) => Some("both"),
            (true, false) => Some("result"),
            (false, true) => Some("args"),
            (false, false) => None,
        }
    }

    /// The arguments on the wire, in order.
    pub(crate) fn wire_args(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|a| matches!(a.role, Role::Wire))
    }

    /// A free function, seen from its generated module (its types rebased).
    pub(crate) fn from_signature(sig: &Signature) -> Function {
        Function::read(sig, true)
    }

    /// A method of an impl-block service: its generated items sit beside the impl, so its
    /// types are kept as written.
    pub(crate) fn from_method(sig: &Signature) -> Function {
        Function::read(sig, false)
    }

    fn read(sig: &Signature, rebased: bool) -> Function {
        let rebase = |t: &Type| if rebased { rebase(t) } else { t.clone() };
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
                    let ty = rebase(&pt.ty);
                    args.push(Arg {
                        ident,
                        role: Role::of(&ty),
                        ty,
                    });
                }
            }
        }
        let output = match &sig.output {
            ReturnType::Default => Output::Unit,
            ReturnType::Type(_, ty) => match stream_item(ty) {
                Some((_, item)) => {
                    let item = rebase(item);
                    Output::Stream {
                        item: Box::new(match Output::of(item.clone()) {
                            // A stream of `()`: items are still sent, each a `nil`.
                            Output::Unit => Output::Plain(item.clone()),
                            other => other,
                        }),
                        written: Box::new(item),
                    }
                }
                None => Output::of(rebase(ty)),
            },
        };
        let mut generics = sig.generics.clone();
        if rebased {
            Rebase.visit_generics_mut(&mut generics);
        }
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

/// A result stream's trait (`Stream` or `Iterator`, by the last path segment of the bound)
/// and item type: `impl Stream<Item = T>` or `impl Iterator<Item = T> + Send`.
pub(crate) fn stream_item(ty: &Type) -> Option<(&Ident, &Type)> {
    let Type::ImplTrait(it) = ty else { return None };
    it.bounds.iter().find_map(|b| {
        let syn::TypeParamBound::Trait(t) = b else {
            return None;
        };
        let last = t.path.segments.last()?;
        if last.ident != "Stream" && last.ident != "Iterator" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        args.args.iter().find_map(|a| match a {
            GenericArgument::AssocType(at) if at.ident == "Item" && at.generics.is_none() => {
                Some((&last.ident, &at.ty))
            }
            _ => None,
        })
    })
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
