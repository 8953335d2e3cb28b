//! Code generation.
//!
//! Next to the function, a module named after it holds `NAME`, `method()` (for
//! `#[register]`), and the stubs `call` and `call_blocking`. Everything in it is named by
//! absolute path (`::easyrpc::__private::…`, `::core::result::Result`), so user items named
//! `Result` or `Box`, or a `#![no_implicit_prelude]`, change nothing.
//!
//! For a `Result<T, E>` whose `E` is written, the stubs return `easyrpc::CallError<E>`. Whether
//! the server sends `E` as the error's data (`E: Serialize`) and whether the stubs decode it
//! (`E: DeserializeOwned`) are chosen by autoref specialization on the concrete type, so `E`
//! needs neither.
//!
//! Type errors land on the user's own tokens: each body that needs a bound on a user type
//! first calls `::easyrpc::__private::assert_*::<T>()` with `T` as written, then uses `T` only
//! through `__private` functions bounded by the same trait. rustc reports a failed bound
//! once per span and predicate, and drops identical diagnostics, so a type that cannot be
//! sent gives one error, on the type, with the trait's `on_unimplemented` text, however
//! many generated items use it.
//!
//! When the signature is invalid, the function is still emitted as written, with a
//! stand-in module (`fallback`) whose items have the right names and types but no bodies:
//! code that uses `add::method()` or `add::call` gets no second error, and IDEs keep
//! completing.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Attribute, Ident, ItemFn, LitStr, Type, Visibility};

use crate::ast::{Function, Output, Role};
use crate::attr::{self, Declarations, Options, Place};
use crate::valid;

pub(crate) fn combine(errors: Vec<syn::Error>) -> TokenStream {
    let mut it = errors.into_iter();
    let Some(mut first) = it.next() else {
        return TokenStream::new();
    };
    for e in it {
        first.combine(e);
    }
    first.into_compile_error()
}

pub(crate) fn register(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Vec::new();
    let mut opts = Options::default();
    attr::parse_options(args, Place::Register, &mut opts, &mut errors);
    let item: ItemFn = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!("`#[register]` goes on a free `fn` or `async fn` with a body ({e})"),
            ));
            let errors = combine(errors);
            return quote!(#input #errors);
        }
    };
    let before = errors.len();
    valid::signature(&item.sig, Place::Register, &mut errors);
    attr::check_inline(&opts, &item.sig, &mut errors);
    let func = Function::from_signature(&item.sig);
    attr::check_streams(&opts, func.streams(), &mut errors);
    // `#[cfg]` written after `#[register]` must remove the module along with the function.
    let cfgs: Vec<_> = item.attrs.iter().filter(|a| a.path().is_ident("cfg")).collect();
    let module = if errors.len() == before {
        module(&item.vis, &cfgs, &func, &opts, Some(&doc_summary(&item.attrs)))
    } else {
        fallback(&item.vis, &cfgs, &func, &opts, true)
    };
    let errors = combine(errors);
    quote! {
        #item
        #module
        #errors
    }
}

pub(crate) fn declare(input: TokenStream) -> TokenStream {
    let decls: Declarations = match syn::parse2(input) {
        Ok(d) => d,
        Err(e) => return e.into_compile_error(),
    };
    let mut out = TokenStream::new();
    let mut errors = Vec::new();
    for d in decls.fns {
        let mut opts = Options::default();
        let mut attrs = Vec::new();
        for a in &d.attrs {
            if a.path().is_ident("rpc") {
                match a.meta.require_list() {
                    Ok(list) => {
                        attr::parse_options(list.tokens.clone(), Place::Declare, &mut opts, &mut errors)
                    }
                    Err(e) => errors.push(syn::Error::new(
                        e.span(),
                        "expected `#[rpc(name = \"...\")]`: options go in parentheses",
                    )),
                }
            } else {
                // Docs, `#[cfg]`, `#[deprecated]`: they apply to the generated module.
                attrs.push(a);
            }
        }
        // A `#[rpc(crate = ..)]` of its own wins over the block's `crate = ..;`.
        if opts.krate.is_none() {
            opts.krate.clone_from(&decls.krate);
        }
        let before = errors.len();
        valid::signature(&d.sig, Place::Declare, &mut errors);
        let func = Function::from_signature(&d.sig);
        out.extend(if errors.len() == before {
            module(&d.vis, &attrs, &func, &opts, None)
        } else {
            fallback(&d.vis, &attrs, &func, &opts, false)
        });
    }
    out.extend(combine(errors));
    out
}

/// What the full module and the fallback share.
struct Frame {
    /// `#[attrs] mod add`, for `#head { .. }`.
    head: TokenStream,
    /// `use super::*;` and `NAME`, the first items inside.
    prelude: TokenStream,
    /// The visibility of the items inside.
    item_vis: TokenStream,
}

fn frame(vis: &Visibility, attrs: &[&Attribute], f: &Function, opts: &Options) -> Frame {
    let ident = &f.ident;
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span()));
    // Items are as visible as the function; `pub(crate)` keeps `unreachable_pub` quiet for
    // private functions.
    let item_vis = match vis {
        Visibility::Public(_) => quote!(pub),
        _ => quote!(pub(crate)),
    };
    // After the user's own docs (from `declare!`), as a paragraph of its own.
    let mod_doc = format!(
        "{}RPC name, client stubs and server registration of `{}`, generated by `rpc`.",
        if attrs.iter().any(|a| a.path().is_ident("doc")) {
            "\n"
        } else {
            ""
        },
        ident.unraw()
    );
    Frame {
        head: quote! {
            #(#attrs)*
            #[doc = #mod_doc]
            #[allow(
                dead_code,
                deprecated,
                missing_docs,
                non_snake_case,
                unreachable_pub,
                clippy::too_many_arguments,
                clippy::unused_unit
            )]
            #vis mod #ident
        },
        prelude: quote! {
            #[allow(unused_imports)]
            use super::*;

            /// The name the function is served under.
            #item_vis const NAME: &str = #name;
        },
        item_vis,
    }
}

/// The span to put a bound on `ty` at: rustc then points at the type the user wrote.
fn span_of(ty: &Type) -> Span {
    ty.span()
}

/// `::easyrpc::__private::#f::<#ty>` (`k` the framework's path), spanned on `ty`.
pub(crate) fn on(k: &TokenStream, ty: &Type, f: &str) -> TokenStream {
    let f = Ident::new(f, Span::call_site());
    let k = at(k, span_of(ty));
    quote_spanned!(span_of(ty)=> #k::__private::#f::<#ty>)
}

/// The framework's path `k` with every token spanned at `span`, for a `quote_spanned!`: an
/// error on the generated expression then points at `span` from its first token on.
pub(crate) fn at(k: &TokenStream, span: Span) -> TokenStream {
    k.clone()
        .into_iter()
        .map(|mut t| {
            t.set_span(span);
            t
        })
        .collect()
}

/// The module of a valid function: its name, stubs and (with `server`) registration.
/// With `server` (the doc summary of the function), `method()` too.
fn module(
    vis: &Visibility,
    attrs: &[&Attribute],
    f: &Function,
    opts: &Options,
    server: Option<&str>,
) -> TokenStream {
    let Frame {
        head,
        prelude,
        item_vis,
    } = frame(vis, attrs, f, opts);
    let k = &opts.krate();
    let ident = &f.ident;
    // The stubs take the function's own argument names, except `NAME`, which would be a
    // pattern matching the constant.
    let args = stub_args(k, f, true);
    let StubCalls {
        assert_out,
        async_ret,
        call_async,
        blocking_ret,
        call_blocking,
        blocking_lifetime,
    } = stub_calls(k, f, &args, &quote!(__rpc_client), &quote!(self::NAME));
    let blocking_generics = blocking_lifetime.as_ref().map(|lt| quote!(<#lt>));
    let params_struct = params_struct(k, &args.wire_types);
    let (async_params, blocking_params) = (&args.async_params, &args.blocking_params);
    let stub_doc = format!("Call `{}` on a server, through an async client.", ident.unraw());
    let blocking_doc = format!("Call `{}` on a server, through a blocking client.", ident.unraw());
    let errors_doc = if f.output.written_error().is_some() {
        "When the call fails or the server answers with an error: the function's own error is \
         `CallError::Handler` when the server sent it as data."
    } else {
        "When the call fails or the server answers with an error."
    };
    let registration = server.map(|doc| registration(f, opts, &item_vis, doc));
    let async_stub = ASYNC.then(|| {
        quote! {
            #[doc = #stub_doc]
            ///
            /// # Errors
            ///
            #[doc = #errors_doc]
            #item_vis async fn call(
                __rpc_client: &#k::Client,
                #(#async_params),*
            ) -> #async_ret {
                #assert_out
                #call_async
            }
        }
    });
    let blocking_stub = call_blocking.map(|call_blocking| {
        quote! {
            #[doc = #blocking_doc]
            ///
            /// # Errors
            ///
            #[doc = #errors_doc]
            #item_vis fn call_blocking #blocking_generics(
                __rpc_client: & #blocking_lifetime #k::BlockingClient,
                #(#blocking_params),*
            ) -> #blocking_ret {
                #assert_out
                #call_blocking
            }
        }
    });
    // Without stubs (a facade built with neither client), nothing builds the params.
    let params_struct = (ASYNC || BLOCKING).then_some(params_struct);

    quote! {
        #head {
            #prelude

            #registration

            #async_stub

            #blocking_stub

            #params_struct
        }
    }
}

/// Whether to generate the async stubs (`call`, `{Type}Client`): the facade's `async`
/// feature, forwarded here. Generated code cannot be `#[cfg]`'d on the facade's features
/// (a `cfg` is evaluated in the user's crate), so the macro decides.
pub(crate) const ASYNC: bool = cfg!(feature = "async");

/// Whether to generate the blocking stubs (`call_blocking`, `{Type}BlockingClient`): the
/// facade's `blocking` feature.
pub(crate) const BLOCKING: bool = cfg!(feature = "blocking");

/// Whether the blocking client has streaming calls (`BlockingClient::call_stream`,
/// `call_upload`, `call_bidi`): without them, streaming functions get async stubs only.
pub(crate) const BLOCKING_STREAMS: bool = true;

/// The lifetime of a blocking two-way stub: its items' iterator is read while the returned
/// `BlockingItems` is, which borrows the client.
pub(crate) fn blocking_lifetime() -> syn::Lifetime {
    syn::Lifetime::new("'__rpc", Span::call_site())
}

/// The parameters of a function's stubs: its wire arguments and its `Streaming<U>`, in the
/// order written, each with the name it is bound to.
pub(crate) struct StubArgs<'f> {
    /// `name: Type` (or `name: impl Stream<Item = U> + ..` for the argument stream).
    pub(crate) async_params: Vec<TokenStream>,
    /// `name: Type` (or `name: impl IntoIterator<Item = U>`).
    pub(crate) blocking_params: Vec<TokenStream>,
    /// The wire arguments, for `__RpcParams`.
    pub(crate) wire_binds: Vec<Ident>,
    pub(crate) wire_types: Vec<&'f Type>,
    /// The argument stream's name and item type.
    pub(crate) items: Option<(Ident, &'f Type)>,
}

/// The stubs' parameters of `f`; with `avoid_name`, an argument named `NAME` (which would
/// be a pattern matching the module's constant) is renamed.
pub(crate) fn stub_args<'f>(k: &TokenStream, f: &'f Function, avoid_name: bool) -> StubArgs<'f> {
    let mut out = StubArgs {
        async_params: Vec::new(),
        blocking_params: Vec::new(),
        wire_binds: Vec::new(),
        wire_types: Vec::new(),
        items: None,
    };
    let stub_args = f
        .args
        .iter()
        .filter(|a| matches!(a.role, Role::Wire | Role::Streaming(_)));
    for (i, a) in stub_args.enumerate() {
        let bind = match &a.ident {
            Some(id) if !(avoid_name && id == "NAME") => id.clone(),
            _ => format_ident!("__rpc_arg{}", i),
        };
        match &a.role {
            Role::Streaming(u) => {
                out.async_params.push(
                    quote!(#bind: impl #k::__private::Stream<Item = #u> + ::core::marker::Send + 'static),
                );
                let bound = matches!(f.output, Output::Stream { .. }).then(|| {
                    let lt = blocking_lifetime();
                    quote!(, IntoIter: #lt)
                });
                out.blocking_params
                    .push(quote!(#bind: impl ::core::iter::IntoIterator<Item = #u #bound>));
                out.items = Some((bind, u));
            }
            _ => {
                let ty = &a.ty;
                out.async_params.push(quote!(#bind: #ty));
                out.blocking_params.push(quote!(#bind: #ty));
                out.wire_binds.push(bind);
                out.wire_types.push(ty);
            }
        }
    }
    out
}

/// What a stub does: the checks first, then the call, for each client (`call_blocking`
/// is `None` when the blocking client cannot make it).
pub(crate) struct StubCalls {
    pub(crate) assert_out: TokenStream,
    pub(crate) async_ret: TokenStream,
    pub(crate) call_async: TokenStream,
    pub(crate) blocking_ret: TokenStream,
    pub(crate) call_blocking: Option<TokenStream>,
    /// `'__rpc`, for a two-way stream's blocking stub: the client, the items and the
    /// returned iterator share it.
    pub(crate) blocking_lifetime: Option<syn::Lifetime>,
}

/// The calls of `f`'s stubs through `client` (an expression of type `&Client` or
/// `&BlockingClient`) to the method `name`, with `args` from [`stub_args`].
pub(crate) fn stub_calls(
    k: &TokenStream,
    f: &Function,
    args: &StubArgs<'_>,
    client: &TokenStream,
    name: &TokenStream,
) -> StubCalls {
    let binds = &args.wire_binds;
    let params = quote!(#client, #name, __RpcParams(#(&#binds,)* ::core::marker::PhantomData));
    let assert_items = args.items.as_ref().map(|(_, u)| {
        let assert = on(k, u, "assert_item");
        quote!(#assert();)
    });
    if let Output::Stream { item, .. } = &f.output {
        let t = match &**item {
            Output::Plain(t) | Output::Fallible { ok: t, .. } => t,
            // Not made by `ast` (a stream of `()` is `Plain`).
            Output::Unit | Output::Stream { .. } => unreachable!("a stream's item is a value"),
        };
        let assert_t = on(k, t, "assert_item");
        let ks = at(k, span_of(t));
        let (call_async, call_blocking) = match &args.items {
            None => (
                quote_spanned!(span_of(t)=> #ks::__private::call_stream::<_, #t>(#params).await),
                quote_spanned!(span_of(t)=> #ks::__private::call_stream_blocking::<_, #t>(#params)),
            ),
            Some((items, u)) => (
                quote_spanned!(span_of(t)=> #ks::__private::call_bidi::<_, #u, _, #t>(#params, #items).await),
                quote_spanned!(span_of(t)=> #ks::__private::call_bidi_blocking::<_, #u, _, #t>(#params, #items)),
            ),
        };
        let lifetime = args.items.as_ref().map(|_| blocking_lifetime());
        let lt = lifetime
            .clone()
            .unwrap_or_else(|| syn::Lifetime::new("'_", Span::call_site()));
        return StubCalls {
            assert_out: quote!(#assert_items #assert_t();),
            async_ret: quote!(::core::result::Result<#k::ItemStream<#t>, #k::Error>),
            call_async,
            blocking_ret: quote!(::core::result::Result<#k::BlockingItems<#lt, #t>, #k::Error>),
            call_blocking: (BLOCKING && BLOCKING_STREAMS).then_some(call_blocking),
            blocking_lifetime: lifetime,
        };
    }
    let (call, call_b, call_args) = match &args.items {
        None => (quote!(call), quote!(call_blocking), params.clone()),
        Some((items, _)) => (
            quote!(call_upload),
            quote!(call_upload_blocking),
            quote!(#params, #items),
        ),
    };
    let u = args.items.as_ref().map(|(_, u)| quote!(#u, _,));
    let (assert_out, call_async, call_blocking) = match &f.output {
        Output::Unit => (
            quote!(#assert_items),
            quote!(#k::__private::#call::<_, #u ()>(#call_args).await),
            quote!(#k::__private::#call_b::<_, #u ()>(#call_args)),
        ),
        Output::Plain(t) | Output::Fallible { ok: t, .. } => (
            {
                let assert = on(k, t, "assert_return");
                quote!(#assert_items #assert();)
            },
            // The whole call, `.await` included, on the type: the future's own bounds then
            // fail there too, and merge with `assert_return`'s error.
            {
                let k = at(k, span_of(t));
                quote_spanned!(span_of(t)=> #k::__private::#call::<_, #u #t>(#call_args).await)
            },
            {
                let k = at(k, span_of(t));
                quote_spanned!(span_of(t)=> #k::__private::#call_b::<_, #u #t>(#call_args))
            },
        ),
        Output::Stream { .. } => unreachable!("handled above"),
    };
    let (err_ty, call_async, call_blocking) = typed_error_stubs(k, f, call_async, call_blocking);
    let out_ty = f.output.client_type();
    let ret = quote!(::core::result::Result<#out_ty, #err_ty>);
    StubCalls {
        assert_out,
        async_ret: ret.clone(),
        call_async,
        blocking_ret: ret,
        call_blocking: (BLOCKING && (args.items.is_none() || BLOCKING_STREAMS)).then_some(call_blocking),
        blocking_lifetime: None,
    }
}

/// `__RpcParams`, the stubs' params: the wire arguments encoded by reference, each through
/// a function bounded on the type as written (one error, on the type, for a type that
/// cannot go). Build it with `__RpcParams(&a, &b, PhantomData)`.
pub(crate) fn params_struct(k: &TokenStream, types: &[&Type]) -> TokenStream {
    let count = types.len();
    let fields = (0..count).map(syn::Index::from);
    let assert_args = types.iter().map(|t| on(k, t, "assert_arg"));
    let push_args = types.iter().map(|t| on(k, t, "push_arg"));
    quote! {
        struct __RpcParams<'__rpc>(#(&'__rpc #types,)* ::core::marker::PhantomData<&'__rpc ()>);

        impl #k::__private::Params for __RpcParams<'_> {
            fn encode_params(
                &self,
                __rpc_enc: &mut #k::__private::ParamsEncoder<'_>,
            ) -> ::core::result::Result<(), #k::__private::EncodeError> {
                #(#assert_args();)*
                __rpc_enc.count(#count);
                #(#push_args(__rpc_enc, self.#fields)?;)*
                ::core::result::Result::Ok(())
            }
        }
    }
}

/// The stubs' error type and calls for `f`: with a written `E`, `CallError<E>`, the error's
/// data decoded into an `E` when `E` is `DeserializeOwned` (autoref specialization on the
/// concrete type: no bound is asked of `E`); otherwise `easyrpc::Error` and the calls as they are.
pub(crate) fn typed_error_stubs(
    k: &TokenStream,
    f: &Function,
    call_async: TokenStream,
    call_blocking: TokenStream,
) -> (TokenStream, TokenStream, TokenStream) {
    let Some(e) = f.output.written_error() else {
        return (quote!(#k::Error), call_async, call_blocking);
    };
    let k = &at(k, span_of(e));
    let to_call_error = quote_spanned! {span_of(e)=>
        |__rpc_e: #k::Error| {
            #[allow(unused_imports)]
            use #k::__private::{TypedStub as _, UntypedStub as _};
            (&#k::__private::StubError::<#e>::new()).call_error(__rpc_e)
        }
    };
    (
        quote!(#k::CallError<#e>),
        quote!(::core::result::Result::map_err(#call_async, #to_call_error)),
        quote!(::core::result::Result::map_err(#call_blocking, #to_call_error)),
    )
}

/// `method()`: decode the arguments, call the function, wrap the result.
fn registration(f: &Function, opts: &Options, item_vis: &TokenStream, doc: &str) -> TokenStream {
    let method = method_expr(f, opts, &quote!(self::NAME), Target::Free, doc);
    let k = opts.krate();
    quote! {
        /// The server-side registration: pass it to `Builder::register`.
        #item_vis fn method() -> #k::__private::Method {
            #method
        }
    }
}

/// What a [`method_expr`] calls.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// The free function `super::NAME`, from the generated module.
    Free,
    /// The method of that name on `__rpc_service`, an `Arc<Self>` in scope (an impl-block
    /// service).
    Method,
}

/// The expression making the [`Method`] of `f`, served under `name` (an expression of type
/// `&'static str`): decode the arguments, call the function, wrap the result; with the
/// checks on the user's types first.
pub(crate) fn method_expr(
    f: &Function,
    opts: &Options,
    name: &TokenStream,
    target: Target,
    doc: &str,
) -> TokenStream {
    let k = &opts.krate();
    let ident = &f.ident;
    // What `rpc.methods` says: the wire arguments and the return type as written.
    let described_args = f.wire_args().enumerate().map(|(i, a)| {
        let n = a.name(i);
        let t = type_text(&a.ty);
        quote!((#n, #t))
    });
    let returns = match &f.output {
        Output::Unit => "()".to_owned(),
        Output::Plain(t) => type_text(t),
        Output::Fallible { full, .. } => type_text(full),
        // The item type: `streams("result")` says it is a stream of them.
        Output::Stream { written, .. } => type_text(written),
    };
    let describe = quote!(.describe(&[#(#described_args),*], #returns, #doc));
    let count = f.wire_args().count();
    let locals: Vec<Ident> = (0..f.args.len())
        .map(|i| format_ident!("__rpc_arg{}", i))
        .collect();
    let checks = f.args.iter().map(|a| match &a.role {
        Role::Wire => on(k, &a.ty, "assert_arg"),
        Role::State(t) => on(k, t, "assert_state"),
        Role::Context => on(k, &a.ty, "assert_context"),
        Role::Streaming(u) => {
            let ours = on(k, &a.ty, "assert_streaming");
            let item = on(k, u, "assert_item");
            quote!(#ours(); #item)
        }
    });
    // Each argument in order: decoded from the wire, the state (taken when the server is
    // built), or the call's context.
    let mut wire_index = 0;
    let lets: Vec<TokenStream> = f
        .args
        .iter()
        .zip(&locals)
        .enumerate()
        .map(|(i, (a, local))| match &a.role {
            Role::Wire => {
                let next = on(k, &a.ty, "next_arg");
                let name = a.name(wire_index);
                wire_index += 1;
                quote!(let #local = #next(__rpc_args, #name)?;)
            }
            Role::State(_) => {
                let state = format_ident!("__rpc_state{}", i);
                quote!(let #local = ::core::clone::Clone::clone(&#state);)
            }
            Role::Context => quote!(let #local = __rpc_call.context();),
            // After every wire argument decoded: see below.
            Role::Streaming(_) => quote!(),
        })
        .collect();
    // The caller's stream is opened (and granted its first credit) once the arguments have
    // decoded, and before the result stream, as `Method::bidi_fn` does.
    let open_items = f.args.iter().zip(&locals).find_map(|(a, local)| match &a.role {
        Role::Streaming(_) => {
            let ty = &a.ty;
            let ks = at(k, span_of(ty));
            let open = quote_spanned!(span_of(ty)=> <#ty as #ks::__private::IsStreaming>::open);
            Some(quote!(let #local = #open(__rpc_call)?;))
        }
        _ => None,
    });
    let state_binds: Vec<TokenStream> = f
        .args
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match &a.role {
            Role::State(t) => {
                let state = format_ident!("__rpc_state{}", i);
                let get = on(k, t, "get_state");
                Some(quote!(let #state = #get(__rpc_states, #name)?;))
            }
            _ => None,
        })
        .collect();
    let takes_context = f
        .args
        .iter()
        .any(|a| matches!(a.role, Role::Context))
        .then(|| quote!(.takes_context()));
    // `reply(out)`: the `Reply` for the function's output `out`.
    let (out_checks, reply): (TokenStream, Box<dyn Fn(TokenStream) -> TokenStream>) = match &f.output {
        // Streams answer through `send_*` below.
        Output::Stream { item, .. } => {
            let checks = match &**item {
                Output::Plain(t) => on(k, t, "assert_item"),
                Output::Fallible { ok, err, .. } => {
                    let ok = on(k, ok, "assert_item");
                    let err = err.as_ref().map(|e| {
                        let e = on(k, e, "assert_error");
                        quote!(#e();)
                    });
                    quote!(#ok(); #err)
                }
                Output::Unit | Output::Stream { .. } => unreachable!("a stream's item is a value"),
            };
            (quote!(#checks();), Box::new(|_| quote!()))
        }
        Output::Unit => (
            quote!(),
            Box::new(|out| quote!({ #out; #k::__private::reply::<()>(()) })),
        ),
        Output::Plain(t) => {
            let assert = on(k, t, "assert_return");
            let reply = on(k, t, "reply");
            (quote!(#assert();), Box::new(move |out| quote!(#reply(#out))))
        }
        Output::Fallible { ok, err, full } => {
            let assert_ok = on(k, ok, "assert_return");
            let reply_ok = on(k, ok, "reply");
            // `E` is sent as the error's data when it is `Serialize`, as its message alone
            // otherwise: autoref specialization on `E`'s concrete type (inferred from the
            // function's output, so aliases such as `io::Result<T>` get it too).
            let (assert_err, span) = match err {
                Some(e) => {
                    let assert = on(k, e, "assert_error");
                    (quote!(#assert();), span_of(e))
                }
                // `io::Result<T>` and the like: `E` is not written, so the bound goes on the
                // whole type.
                None => (quote!(), span_of(full)),
            };
            // Spanned on `E`: a failed `Display` bound is then reported on `E`, where
            // `assert_error`'s identical error is, and rustc shows one. The error is bound
            // again inside, so that every local the block names has the block's own span
            // (`E` may come from another macro, with another hygiene context).
            let reply_err = move || {
                let bound = quote!(__rpc_err);
                let k = at(k, span);
                quote_spanned! {span=> {
                    #[allow(unused_imports)]
                    use #k::__private::{DisplayReply as _, TypedReply as _};
                    let __rpc_e = #bound;
                    (&#k::__private::ErrorReply::of(&__rpc_e)).reply_error(__rpc_e)
                }}
            };
            let (ok_path, err_path) = (
                quote_spanned!(span_of(full)=> ::core::result::Result::Ok),
                quote_spanned!(span_of(full)=> ::core::result::Result::Err),
            );
            (
                quote!(#assert_ok(); #assert_err),
                Box::new(move |out| {
                    let reply_err = reply_err();
                    quote! {
                        match #out {
                            #ok_path(__rpc_ok) => #reply_ok(__rpc_ok),
                            #err_path(__rpc_err) => #reply_err,
                        }
                    }
                }),
            )
        }
    };
    let max_flow = opts.max_flow.as_ref().map(|n| quote!(.max_flow(#n)));
    let max_flow_wait = opts
        .max_flow_wait
        .map(|(us, _)| quote!(.max_flow_wait(::core::time::Duration::from_micros(#us))));
    let streams = f.streams();
    // A streaming function never goes through the dedup cache (its items cannot be
    // replayed), whatever the server's default: `check_streams` refused the option.
    let unstable_network = match (opts.unstable_network, streams) {
        (_, Some(_)) => Some(quote!(.unstable_network(false))),
        (Some((on, _)), None) => Some(quote!(.unstable_network(#on))),
        (None, None) => None,
    };
    let streams = streams.map(|how| quote!(.streams(#how)));
    // A sync function's result stream: its iterator runs on the blocking pool, and
    // `rpc.methods` says the function is sync.
    let sync_items =
        (matches!(f.output, Output::Stream { .. }) && !f.is_async).then(|| quote!(.sync_items()));
    let inline = opts.inline.map(|(on, _)| quote!(.inline(#on)));
    let (ctor, job, reply_fn, span) = if let Output::Stream { item, .. } = &f.output {
        stream_job(k, f, item, &locals, name, target)
    } else if f.is_async {
        // Spanned on `async`: "this future is not `Send`" points there.
        let span = f.async_span;
        let reply = reply(quote!(__rpc_out));
        let job = match target {
            Target::Free => quote!(::core::result::Result::Ok(super::#ident(#(#locals),*))),
            Target::Method => quote! {
                let __rpc_this = ::std::sync::Arc::clone(&__rpc_service);
                ::core::result::Result::Ok(async move { __rpc_this.#ident(#(#locals),*).await })
            },
        };
        // The future's type is known here: the server runs it in a box it keeps from
        // one call to the next (no allocation for a call ready at its first poll). The
        // constructor's `Send` bound checks the future, spanned on `async`.
        (quote!(async_parts), job, quote!(, |__rpc_out| #reply), span)
    } else {
        let (this, call) = match target {
            Target::Free => (quote!(), quote!(super::#ident(#(#locals),*))),
            Target::Method => (
                quote!(let __rpc_this = ::std::sync::Arc::clone(&__rpc_service);),
                quote!(__rpc_this.#ident(#(#locals),*)),
            ),
        };
        let reply = reply(call);
        let job = quote! {
            #this
            ::core::result::Result::Ok(::std::boxed::Box::new(move || #reply))
        };
        (quote!(sync_parts), job, quote!(), Span::call_site())
    };
    // An async function's registration is spanned on `async`: the constructor's `Send`
    // bound on the future is what fails for a future that is not `Send`.
    let ks = at(k, span);
    let registration = quote_spanned! {span=>
        #ks::__private::Method::#ctor(
            #name,
            move |__rpc_args: &mut #ks::__private::Args<'_>, __rpc_call: &#ks::__private::Call<'_>| {
                __rpc_args.expect(#count)?;
                #(#lets)*
                #open_items
                #job
            }
            #reply_fn
        )
    };
    // A method's closure owns its own handle on the service.
    let registration = match target {
        Target::Free => registration,
        Target::Method => quote! {{
            let __rpc_service = ::std::sync::Arc::clone(&__rpc_service);
            #registration
        }},
    };
    // A function taking states is made when the server is built, from its states.
    let registration = if state_binds.is_empty() {
        registration
    } else {
        quote! {
            #k::__private::Method::bind(#name, move |__rpc_states: &#k::__private::States| {
                #(#state_binds)*
                ::core::result::Result::Ok(#registration)
            })
        }
    };
    // The whole expression owns a handle too: a `bind` closure moves it in.
    let own_handle = matches!(target, Target::Method)
        .then(|| quote!(let __rpc_service = ::std::sync::Arc::clone(&__rpc_service);));
    quote! {{
        #(#checks();)*
        #out_checks
        #own_handle
        #registration
        #takes_context
        #describe
        #max_flow
        #max_flow_wait
        #unstable_network
        #inline
        #streams
        #sync_items
    }}
}

/// The job of a function whose result is a stream: open the result stream, then send the
/// items of the function's stream (async) or iterator (sync, made and driven on the blocking
/// pool), ending with the call's reply. Returns what [`method_expr`] builds the method of.
fn stream_job(
    k: &TokenStream,
    f: &Function,
    item: &Output,
    locals: &[Ident],
    name: &TokenStream,
    target: Target,
) -> (TokenStream, TokenStream, TokenStream, Span) {
    let ident = &f.ident;
    let (t, fallible) = match item {
        Output::Plain(t) => (t, false),
        Output::Fallible { ok, .. } => (ok, true),
        Output::Unit | Output::Stream { .. } => unreachable!("a stream's item is a value"),
    };
    let (this, call) = match target {
        Target::Free => (quote!(), quote!(super::#ident(#(#locals),*))),
        Target::Method => (
            quote!(let __rpc_this = ::std::sync::Arc::clone(&__rpc_service);),
            quote!(__rpc_this.#ident(#(#locals),*)),
        ),
    };
    let ks = at(k, span_of(t));
    let job = if f.is_async {
        // The function's future and its stream live in one future, which owns what they
        // borrow (a method's `self`).
        let send = if fallible {
            quote_spanned!(span_of(t)=> #ks::__private::send_try_items::<#t, _, _>)
        } else {
            quote_spanned!(span_of(t)=> #ks::__private::send_items::<#t, _>)
        };
        // The call to `send_*` spanned on the item type, parentheses included: a bound it
        // fails is reported there (the arguments keep their own spans).
        // The future is spanned there too: what it must be (`Send`, its output) is checked
        // where it is made. Its one local is named with the same span, for any hygiene.
        let items = Ident::new("__rpc_items", span_of(t));
        let args = quote!(__rpc_out, #items);
        let sent = quote_spanned!(span_of(t)=> #send(#args));
        let fut = quote_spanned!(span_of(t)=> async move {
            let #items = #call.await;
            #sent.await
        });
        quote! {
            #this
            ::core::result::Result::Ok(#fut)
        }
    } else {
        let send = if fallible {
            quote_spanned!(span_of(t)=> #ks::__private::send_try_iter::<#t, _, _, _>)
        } else {
            quote_spanned!(span_of(t)=> #ks::__private::send_iter::<#t, _, _>)
        };
        // In a future of its own, spanned on the item type as above (the bound a future
        // returned by `send_iter` fails is otherwise reported on the attribute).
        let make = quote_spanned!(span_of(t)=> move || #call);
        let args = quote!(__rpc_out, #name, #make);
        let fut = quote_spanned!(span_of(t)=> async move { #send(#args).await });
        quote! {
            #this
            ::core::result::Result::Ok(#fut)
        }
    };
    let job = quote! {
        let __rpc_out = #k::__private::open_result(__rpc_call)?;
        #job
    };
    (
        quote!(async_parts),
        job,
        quote!(, ::core::convert::identity),
        f.async_span,
    )
}

/// A type as written, for people: `Vec<u8>`, not `Vec < u8 >`.
fn type_text(ty: &Type) -> String {
    let raw = quote!(#ty).to_string();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.peek().copied();
            // Keep a space only between two words (`dyn Trait`, `impl Send`) and after `,`.
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '\'');
            if (word(prev) && word(next)) || prev == Some(',') {
                out.push(' ');
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The summary of the doc comments in `attrs`: their first paragraph (up to the first blank
/// line), its lines joined by spaces, as rustdoc's summary is. One line of a long sentence
/// would stop in the middle of it.
pub(crate) fn doc_summary(attrs: &[Attribute]) -> String {
    let mut summary: Vec<String> = Vec::new();
    for a in attrs {
        if !a.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &a.meta {
            if let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            {
                // A `///` line is one attribute (an empty one for a blank line); a `/** */`
                // block is one with newlines.
                for line in s.value().split('\n').map(str::trim) {
                    match (line.is_empty(), summary.is_empty()) {
                        (true, true) => {}
                        (true, false) => return summary.join(" "),
                        (false, _) => summary.push(line.to_owned()),
                    }
                }
            }
        }
    }
    summary.join(" ")
}

/// The module of an invalid function: the same items with the types that can be kept and
/// no bodies. It never runs: the errors stop the build.
fn fallback(
    vis: &Visibility,
    attrs: &[&Attribute],
    f: &Function,
    opts: &Options,
    server: bool,
) -> TokenStream {
    // A `self` function sits in an `impl` block, where a module is not allowed.
    if f.has_receiver {
        return TokenStream::new();
    }
    let Frame {
        head,
        prelude,
        item_vis,
    } = frame(vis, attrs, f, opts);
    let k = opts.krate();
    let (impl_generics, _, where_clause) = f.generics.split_for_impl();
    let types: Vec<&Type> = f.wire_args().map(|a| &a.ty).collect();
    let out_ty = match &f.output {
        Output::Plain(t) | Output::Fallible { ok: t, .. } if borrows_or_hides(t) => quote!(()),
        Output::Stream { item, .. } if matches!(&**item, Output::Plain(t) | Output::Fallible { ok: t, .. } if borrows_or_hides(t)) =>
        {
            quote!(())
        }
        other => other.client_type(),
    };
    // A result stream's stubs return its items' stream.
    let (out_ty, blocking_out_ty) = match &f.output {
        Output::Stream { .. } => (
            quote!(#k::ItemStream<#out_ty>),
            quote!(#k::BlockingItems<'static, #out_ty>),
        ),
        _ => (out_ty.clone(), out_ty),
    };
    // The argument stream, as the stubs take it (when its item type can be kept).
    let items = f
        .arg_stream()
        .filter(|u| !borrows_or_hides(u))
        .map(|u| quote!(_: impl #k::__private::Stream<Item = #u> + ::core::marker::Send + 'static));
    let blocking_items = f
        .arg_stream()
        .filter(|u| !borrows_or_hides(u))
        .map(|u| quote!(_: impl ::core::iter::IntoIterator<Item = #u>));
    let err_ty = match f.output.written_error() {
        Some(e) if !borrows_or_hides(e) => quote!(#k::CallError<#e>),
        _ => quote!(#k::Error),
    };
    let method = server.then(|| {
        quote! {
            #item_vis fn method() -> #k::__private::Method {
                ::core::unreachable!()
            }
        }
    });
    let types2 = types.clone();
    let async_stub = ASYNC.then(|| {
        quote! {
            #item_vis async fn call #impl_generics(
                _: &#k::Client,
                #(_: #types,)*
                #items
            ) -> ::core::result::Result<#out_ty, #err_ty> #where_clause {
                ::core::unreachable!()
            }
        }
    });
    let blocking_stub = (BLOCKING && (f.streams().is_none() || BLOCKING_STREAMS)).then(|| {
        quote! {
            #item_vis fn call_blocking #impl_generics(
                _: &#k::BlockingClient,
                #(_: #types2,)*
                #blocking_items
            ) -> ::core::result::Result<#blocking_out_ty, #err_ty> #where_clause {
                ::core::unreachable!()
            }
        }
    });
    quote! {
        #head {
            #prelude
            #method

            #async_stub
            #blocking_stub
        }
    }
}

/// Whether `ty` holds a reference, a lifetime or an `impl Trait`: as a stand-in return
/// type it could raise an error of its own.
fn borrows_or_hides(ty: &Type) -> bool {
    struct Find(bool);
    impl<'ast> Visit<'ast> for Find {
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0 = true;
        }
        fn visit_lifetime(&mut self, _: &'ast syn::Lifetime) {
            self.0 = true;
        }
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut find = Find(false);
    find.visit_type(ty);
    find.0
}
