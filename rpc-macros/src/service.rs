//! `#[service]` on an impl block: every `pub` method taking `&self` is served, with the
//! instance shared by all calls; typed clients `{Type}Client` (async) and
//! `{Type}BlockingClient` are generated beside it.
//!
//! The generated items sit beside the impl block (a module cannot go inside one), so the
//! types are used as written, without the rebasing `#[register]` does.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ImplItem, ImplItemFn, ItemImpl, Lit, LitStr, Meta, Token, Type, Visibility};

use crate::ast::Function;
use crate::attr::{self, Options, Place};
use crate::expand::{
    combine, doc_summary, method_expr, params_struct, stub_args, stub_calls, StubCalls, Target,
};
use crate::valid;

/// The options of `#[service(..)]`.
#[derive(Default)]
struct ServiceOptions {
    /// `prefix = "kv"`: methods are served as `kv.NAME`.
    prefix: Option<String>,
    /// `crate = "path"`: where the framework is, for a dependency renamed in Cargo.toml.
    krate: Option<syn::Path>,
}

/// `prefix = "kv"`, `crate = "my_rpc"`.
fn parse_options(args: TokenStream, errors: &mut Vec<syn::Error>) -> ServiceOptions {
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(m) => m,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!("{e}; expected `#[service]` or `#[service(prefix = \"kv\")]`"),
            ));
            return ServiceOptions::default();
        }
    };
    let mut opts = ServiceOptions::default();
    for meta in metas {
        match &meta {
            Meta::NameValue(nv) if nv.path.is_ident("crate") => match attr::crate_option(&nv.value) {
                Ok(path) => opts.krate = Some(path),
                Err(e) => errors.push(e),
            },
            Meta::NameValue(nv) if nv.path.is_ident("prefix") => match &nv.value {
                Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) if !s.value().is_empty() => {
                    opts.prefix = Some(s.value())
                }
                other => errors.push(syn::Error::new_spanned(
                    other,
                    "`prefix` takes a non-empty string, as in `prefix = \"kv\"`",
                )),
            },
            other => errors.push(syn::Error::new_spanned(
                other,
                "unknown option; expected `prefix = \"...\"` or `crate = \"...\"`",
            )),
        }
    }
    opts
}

/// A served method: its function, options and RPC name.
struct Served {
    func: Function,
    opts: Options,
    name: LitStr,
    docs: Vec<syn::Attribute>,
}

pub(crate) fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Vec::new();
    let ServiceOptions { prefix, krate } = parse_options(args, &mut errors);
    let mut item: ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!("`#[service]` goes on an inherent `impl Type {{ .. }}` block ({e})"),
            ));
            let errors = combine(errors);
            return quote!(#input #errors);
        }
    };
    if let Some((_, path, _)) = &item.trait_ {
        errors.push(syn::Error::new_spanned(
            path,
            "`#[service]` goes on an inherent impl block (`impl Kv { .. }`), not a trait impl",
        ));
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &item.generics,
            "a service cannot be generic: the server serves one concrete type",
        ));
    }
    let self_ty = item.self_ty.clone();
    let type_ident = match &*self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    };
    let Some(type_ident) = type_ident else {
        errors.push(syn::Error::new_spanned(
            &self_ty,
            "`#[service]` needs a named type (`impl Kv { .. }`)",
        ));
        let errors = combine(errors);
        return quote!(#input #errors);
    };

    let mut served = Vec::new();
    for it in &mut item.items {
        let ImplItem::Fn(m) = it else { continue };
        // `#[rpc(..)]` options are ours: taken off the method in any case.
        let mut opts = Options {
            krate: krate.clone(),
            ..Options::default()
        };
        let mut rpc_attrs = Vec::new();
        m.attrs.retain(|a| {
            if a.path().is_ident("rpc") {
                rpc_attrs.push(a.clone());
                false
            } else {
                true
            }
        });
        let is_served = matches!(m.vis, Visibility::Public(_)) && m.sig.receiver().is_some();
        if !is_served {
            for a in &rpc_attrs {
                errors.push(syn::Error::new_spanned(
                    a,
                    "`#[rpc(..)]` on a method that is not served: only `pub` methods taking `&self` are",
                ));
            }
            continue;
        }
        for a in &rpc_attrs {
            match a.meta.require_list() {
                Ok(list) => attr::parse_options(list.tokens.clone(), Place::Service, &mut opts, &mut errors),
                Err(e) => errors.push(syn::Error::new(
                    e.span(),
                    "expected `#[rpc(name = \"...\")]`: options go in parentheses",
                )),
            }
        }
        served.push(read_method(m, opts, prefix.as_deref(), &mut errors));
    }
    let served: Vec<Served> = served.into_iter().flatten().collect();

    if !errors.is_empty() {
        // The impl as written, and no generated items: code using the clients gets errors
        // of its own, after these.
        let errors = combine(errors);
        return quote!(#item #errors);
    }

    let methods: Vec<TokenStream> = served
        .iter()
        .map(|s| {
            let name = &s.name;
            method_expr(
                &s.func,
                &s.opts,
                &quote!(#name),
                Target::Method,
                &doc_summary(&s.docs),
            )
        })
        .collect();
    let k = &Options {
        krate,
        ..Options::default()
    }
    .krate();
    let client = format_ident!("{}Client", type_ident);
    let blocking = format_ident!("{}BlockingClient", type_ident);
    let stubs: Vec<(TokenStream, TokenStream)> = served.iter().map(stub).collect();
    let (async_stubs, blocking_stubs): (Vec<_>, Vec<_>) = stubs.into_iter().unzip();
    let client_doc = format!(
        "Calls the `{type_ident}` service through an async client (generated by `#[easyrpc::service]`)."
    );
    let blocking_doc = format!(
        "Calls the `{type_ident}` service through a blocking client (generated by `#[easyrpc::service]`)."
    );
    let async_client = crate::expand::ASYNC.then(|| {
        quote! {
            #[doc = #client_doc]
            #[derive(Debug, Clone)]
            #[allow(unreachable_pub, dead_code)]
            pub struct #client {
                client: #k::Client,
            }

            #[allow(unreachable_pub, dead_code, clippy::too_many_arguments)]
            impl #client {
                /// Call the service through `client`.
                pub fn new(client: #k::Client) -> Self {
                    #client { client }
                }

                /// The client the calls go through.
                pub fn client(&self) -> &#k::Client {
                    &self.client
                }

                #(#async_stubs)*
            }
        }
    });
    let blocking_client = crate::expand::BLOCKING.then(|| {
        quote! {
            #[doc = #blocking_doc]
            #[derive(Debug)]
            #[allow(unreachable_pub, dead_code)]
            pub struct #blocking {
                client: #k::BlockingClient,
            }

            #[allow(unreachable_pub, dead_code, clippy::too_many_arguments)]
            impl #blocking {
                /// Call the service through `client`.
                pub fn new(client: #k::BlockingClient) -> Self {
                    #blocking { client }
                }

                /// The client the calls go through.
                pub fn client(&self) -> &#k::BlockingClient {
                    &self.client
                }

                #(#blocking_stubs)*
            }
        }
    });
    quote! {
        #item

        impl #k::__private::Service for #self_ty {
            fn methods(self: ::std::sync::Arc<Self>) -> ::std::vec::Vec<#k::__private::Method> {
                let __rpc_service = self;
                ::std::vec![#(#methods),*]
            }
        }

        #async_client

        #blocking_client
    }
}

fn read_method(
    m: &ImplItemFn,
    opts: Options,
    prefix: Option<&str>,
    errors: &mut Vec<syn::Error>,
) -> Option<Served> {
    let before = errors.len();
    valid::signature(&m.sig, Place::Service, errors);
    attr::check_inline(&opts, &m.sig, errors);
    let func = Function::from_method(&m.sig);
    attr::check_streams(&opts, func.streams(), errors);
    if errors.len() != before {
        return None;
    }
    let base = func.ident.unraw().to_string();
    let name = match (&opts.name, prefix) {
        (Some(n), _) => n.clone(),
        (None, Some(p)) => LitStr::new(&format!("{p}.{base}"), func.ident.span()),
        (None, None) => LitStr::new(&base, func.ident.span()),
    };
    let docs = m
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    Some(Served {
        func,
        opts,
        name,
        docs,
    })
}

/// The async and blocking client methods of one served method.
fn stub(s: &Served) -> (TokenStream, TokenStream) {
    let f = &s.func;
    let ident = &f.ident;
    let name = &s.name;
    let docs = &s.docs;
    let k = &s.opts.krate();
    let args = stub_args(k, f, false);
    let StubCalls {
        assert_out,
        async_ret,
        call_async,
        blocking_ret,
        call_blocking,
        blocking_lifetime,
    } = stub_calls(k, f, &args, &quote!(&self.client), &quote!(#name));
    let blocking_generics = blocking_lifetime.as_ref().map(|lt| quote!(<#lt>));
    let params_ty = params_struct(k, &args.wire_types);
    let (async_params, blocking_params) = (&args.async_params, &args.blocking_params);
    let doc_name = format!("Calls `{}` on the server.", name.value());
    let blocking = call_blocking.map(|call_blocking| {
        quote! {
            #(#docs)*
            #[doc = ""]
            #[doc = #doc_name]
            pub fn #ident #blocking_generics(& #blocking_lifetime self, #(#blocking_params),*) -> #blocking_ret {
                #assert_out
                #params_ty
                #call_blocking
            }
        }
    });
    (
        quote! {
            #(#docs)*
            #[doc = ""]
            #[doc = #doc_name]
            pub async fn #ident(&self, #(#async_params),*) -> #async_ret {
                #assert_out
                #params_ty
                #call_async
            }
        },
        blocking.unwrap_or_default(),
    )
}
