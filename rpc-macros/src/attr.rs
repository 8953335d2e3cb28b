//! Options of `#[register(...)]` and of `#[rpc(...)]` inside `declare!`.

use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::{LitInt, LitStr, Token};

/// The options a function can carry.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) name: Option<LitStr>,
    pub(crate) max_flow: Option<LitInt>,
}

/// Which options a position accepts.
#[derive(Clone, Copy)]
pub(crate) enum Place {
    Register,
    Declare,
}

impl Place {
    fn allowed(self) -> &'static str {
        match self {
            Place::Register => "`name`, `max_flow`",
            Place::Declare => "`name`",
        }
    }
}

pub(crate) fn parse_options(tokens: TokenStream, place: Place, errors: &mut Vec<syn::Error>) -> Options {
    let parser = |input: ParseStream<'_>| -> syn::Result<Options> {
        let mut opts = Options::default();
        while !input.is_empty() {
            let key: syn::Ident = input.parse()?;
            match (key.to_string().as_str(), place) {
                ("name", _) => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    if lit.value().is_empty() {
                        return Err(syn::Error::new_spanned(&lit, "the name cannot be empty"));
                    }
                    if lit.value().starts_with("rpc.") {
                        return Err(syn::Error::new_spanned(&lit, "names starting with `rpc.` are reserved"));
                    }
                    if opts.name.replace(lit).is_some() {
                        return Err(syn::Error::new_spanned(key, "`name` is given twice"));
                    }
                }
                ("max_flow", Place::Register) => {
                    input.parse::<Token![=]>()?;
                    let lit: LitInt = input.parse()?;
                    if lit.base10_parse::<u64>()? == 0 {
                        return Err(syn::Error::new_spanned(&lit, "`max_flow` must be at least 1"));
                    }
                    if opts.max_flow.replace(lit).is_some() {
                        return Err(syn::Error::new_spanned(key, "`max_flow` is given twice"));
                    }
                }
                (other, place) => {
                    return Err(syn::Error::new_spanned(
                        &key,
                        format!("unknown option `{other}`; expected one of: {}", place.allowed()),
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(opts)
    };
    match syn::parse::Parser::parse2(parser, tokens) {
        Ok(o) => o,
        Err(e) => {
            errors.push(e);
            Options::default()
        }
    }
}

/// One signature inside `declare!`: attributes, visibility, signature, `;`.
pub(crate) struct DeclaredFn {
    pub(crate) attrs: Vec<syn::Attribute>,
    pub(crate) vis: syn::Visibility,
    pub(crate) sig: syn::Signature,
}

impl Parse for DeclaredFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(syn::Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        input.parse::<Token![;]>()?;
        Ok(DeclaredFn { attrs, vis, sig })
    }
}

pub(crate) struct Declarations(pub(crate) Vec<DeclaredFn>);

impl Parse for Declarations {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut v = Vec::new();
        while !input.is_empty() {
            v.push(input.parse()?);
        }
        Ok(Declarations(v))
    }
}
