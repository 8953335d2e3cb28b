//! Options of `#[register(...)]` and of `#[rpc(...)]` inside `declare!`, and the input of
//! `declare!`.

use proc_macro2::TokenStream;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitInt, LitStr, Token};

/// The options a function can carry.
#[derive(Default)]
pub(crate) struct Options {
    pub(crate) name: Option<LitStr>,
    /// Checked: a positive `usize`, written without a suffix.
    pub(crate) max_flow: Option<LitInt>,
    /// Checked: a duration such as `"50ms"`, in microseconds.
    pub(crate) max_flow_wait: Option<(u64, proc_macro2::Span)>,
    /// `unstable_network` (true) or `unstable_network = false`, with the key's span.
    pub(crate) unstable_network: Option<(bool, proc_macro2::Span)>,
    /// `inline` (true) or `inline = false`, with the key's span (only for sync functions).
    pub(crate) inline: Option<(bool, proc_macro2::Span)>,
    /// `crate = "path"`: where the framework is, for a dependency renamed in Cargo.toml.
    pub(crate) krate: Option<syn::Path>,
}

impl Options {
    /// The path the generated code names the framework by: `::easyrpc`, or the one given
    /// with `crate = "path"`.
    pub(crate) fn krate(&self) -> TokenStream {
        match &self.krate {
            Some(path) => quote::quote!(#path),
            None => quote::quote!(::easyrpc),
        }
    }
}

/// Which options a position accepts.
#[derive(Clone, Copy)]
pub(crate) enum Place {
    Register,
    Declare,
    /// A method of an impl-block service (`#[rpc(..)]` on it).
    Service,
}

impl Place {
    /// How errors name the function.
    pub(crate) fn function(self) -> &'static str {
        match self {
            Place::Register => "a registered function",
            Place::Declare => "a declared function",
            Place::Service => "a service method",
        }
    }

    fn allowed(self) -> &'static str {
        match self {
            Place::Register => {
                "`name = \"...\"`, `max_flow = N`, `max_flow_wait = \"50ms\"`, `unstable_network`, \
                 `inline`, `crate = \"path\"`"
            }
            Place::Service => {
                "`name = \"...\"`, `max_flow = N`, `max_flow_wait = \"50ms\"`, `unstable_network`, \
                 `inline`"
            }
            Place::Declare => "`name = \"...\"`, `crate = \"path\"`",
        }
    }
}

/// `key = value`, the only shape an option has.
struct KeyValue {
    key: Ident,
    value: Option<Expr>,
}

impl Parse for KeyValue {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // Any identifier, keywords included: `crate = "..."`.
        let key = Ident::parse_any(input)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(KeyValue { key, value })
    }
}

/// Read the options in `tokens` into `opts`, adding an error per wrong option to `errors`:
/// a wrong option is skipped, and the others still apply.
pub(crate) fn parse_options(
    tokens: TokenStream,
    place: Place,
    opts: &mut Options,
    errors: &mut Vec<syn::Error>,
) {
    let pairs = match Punctuated::<KeyValue, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(p) => p,
        Err(e) => {
            errors.push(syn::Error::new(
                e.span(),
                format!(
                    "{e}; options are written `key = value`, separated by commas: {}",
                    place.allowed()
                ),
            ));
            return;
        }
    };
    for KeyValue { key, value } in pairs {
        let name = key.to_string();
        let known = match (name.as_str(), place) {
            ("crate", Place::Register | Place::Declare) => {
                let path = match &value {
                    Some(v) => crate_option(v),
                    None => Err(syn::Error::new_spanned(
                        &key,
                        "`crate` needs a value, as in `crate = \"my_rpc\"`",
                    )),
                };
                if let Err(e) = path.and_then(|p| set(&mut opts.krate, p, &key)) {
                    errors.push(e);
                }
                continue;
            }
            ("crate", Place::Service) => {
                errors.push(syn::Error::new_spanned(
                    &key,
                    "`crate` applies to the whole service: set it on `#[service(crate = \"...\")]`",
                ));
                false
            }
            ("name", _) | ("max_flow" | "max_flow_wait", Place::Register | Place::Service) => true,
            ("unstable_network" | "inline", Place::Register | Place::Service) => {
                let on = match &value {
                    None => Ok(true),
                    Some(Expr::Lit(ExprLit {
                        lit: Lit::Bool(b), ..
                    })) => Ok(b.value),
                    Some(other) => Err(syn::Error::new_spanned(
                        other,
                        format!("`{name}` takes `true` or `false`, or no value (true)"),
                    )),
                };
                let result = match name.as_str() {
                    "inline" => on.and_then(|on| set(&mut opts.inline, (on, key.span()), &key)),
                    _ => on.and_then(|on| set(&mut opts.unstable_network, (on, key.span()), &key)),
                };
                if let Err(e) = result {
                    errors.push(e);
                }
                continue;
            }
            ("max_flow" | "max_flow_wait" | "unstable_network" | "inline", Place::Declare) => {
                errors.push(syn::Error::new_spanned(
                    &key,
                    format!(
                        "`{name}` configures the server: set it on the `#[register]` function, not \
                         in `declare!`; expected here: `name = \"...\"`"
                    ),
                ));
                false
            }
            (other, place) => {
                errors.push(syn::Error::new_spanned(
                    &key,
                    format!("unknown option `{other}`; expected one of: {}", place.allowed()),
                ));
                false
            }
        };
        if !known {
            continue;
        }
        let Some(value) = value else {
            let example = match name.as_str() {
                "name" => "name = \"math.add\"",
                "max_flow_wait" => "max_flow_wait = \"50ms\"",
                _ => "max_flow = 100",
            };
            errors.push(syn::Error::new_spanned(
                &key,
                format!("`{name}` needs a value, as in `{example}`"),
            ));
            continue;
        };
        let result = match name.as_str() {
            "name" => name_option(&value).and_then(|lit| set(&mut opts.name, lit, &key)),
            "max_flow_wait" => duration_option(&value).and_then(|d| set(&mut opts.max_flow_wait, d, &key)),
            _ => max_flow_option(&value).and_then(|lit| set(&mut opts.max_flow, lit, &key)),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if let (Some((_, span)), None) = (opts.max_flow_wait, &opts.max_flow) {
        errors.push(syn::Error::new(
            span,
            "`max_flow_wait` bounds the wait for a `max_flow` slot: add `max_flow = N` too",
        ));
    }
}

/// `inline` is for sync functions: an async one already runs in the connection's task.
pub(crate) fn check_inline(opts: &Options, sig: &syn::Signature, errors: &mut Vec<syn::Error>) {
    if let (Some((true, span)), Some(_)) = (opts.inline, &sig.asyncness) {
        errors.push(syn::Error::new(
            span,
            "`inline` is for sync functions: an async function already runs in the connection's task",
        ));
    }
}

/// What makes no sense for a streaming function (`stream` says how it streams): `inline`
/// (a stream waits for its caller's credit, which would stall the connection's task) and
/// `unstable_network` (items cannot be replayed from the dedup cache to a resent call).
/// `unstable_network = false` is allowed: the generated method of a streaming function sets
/// it in any case, over the server's default.
pub(crate) fn check_streams(opts: &Options, stream: Option<&str>, errors: &mut Vec<syn::Error>) {
    if stream.is_none() {
        return;
    }
    if let Some((true, span)) = opts.inline {
        errors.push(syn::Error::new(
            span,
            "`inline` cannot apply to a streaming function: its stream waits for the caller's \
             credit (or items), which would stall every call of the connection; it runs on the \
             blocking pool (sync) or in its own future (async)",
        ));
    }
    if let Some((true, span)) = opts.unstable_network {
        errors.push(syn::Error::new(
            span,
            "`unstable_network` cannot apply to a streaming function: its items cannot be \
             replayed from the dedup cache to a resent call",
        ));
    }
}

fn set<T>(slot: &mut Option<T>, value: T, key: &Ident) -> syn::Result<()> {
    if slot.replace(value).is_some() {
        return Err(syn::Error::new_spanned(key, format!("`{key}` is given twice")));
    }
    Ok(())
}

fn name_option(value: &Expr) -> syn::Result<LitStr> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = value
    else {
        return Err(syn::Error::new_spanned(
            value,
            "`name` takes a string literal, as in `name = \"math.add\"`",
        ));
    };
    let name = lit.value();
    if name.is_empty() {
        return Err(syn::Error::new_spanned(lit, "the name cannot be empty"));
    }
    if name.starts_with("rpc.") {
        return Err(syn::Error::new_spanned(
            lit,
            "names starting with `rpc.` are reserved for the protocol (`rpc.ping`)",
        ));
    }
    Ok(lit.clone())
}

/// `"50ms"`, `"2s"`, `"500us"`: a duration in microseconds.
fn duration_option(value: &Expr) -> syn::Result<(u64, proc_macro2::Span)> {
    let err = || {
        syn::Error::new_spanned(
            value,
            "`max_flow_wait` takes a duration string such as \"50ms\", \"2s\" or \"500us\"",
        )
    };
    let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = value
    else {
        return Err(err());
    };
    let text = lit.value();
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let per = match unit.trim() {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        _ => return Err(err()),
    };
    let us = n.checked_mul(per).ok_or_else(err)?;
    Ok((us, lit.span()))
}

/// `crate = "my_rpc"` or `crate = "::deps::easyrpc"`: a path, read from the string.
pub(crate) fn crate_option(value: &Expr) -> syn::Result<syn::Path> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => lit.parse::<syn::Path>().map_err(|_| {
            syn::Error::new_spanned(
                lit,
                "`crate` takes the path the framework is known by, as in `crate = \"my_rpc\"`",
            )
        }),
        other => Err(syn::Error::new_spanned(
            other,
            "`crate` takes a string, as in `crate = \"my_rpc\"`",
        )),
    }
}

fn max_flow_option(value: &Expr) -> syn::Result<LitInt> {
    let Expr::Lit(ExprLit {
        lit: Lit::Int(lit), ..
    }) = value
    else {
        return Err(syn::Error::new_spanned(
            value,
            "`max_flow` takes an integer literal, as in `max_flow = 100`",
        ));
    };
    let n: usize = lit.base10_parse()?;
    if n == 0 {
        return Err(syn::Error::new_spanned(
            lit,
            "`max_flow` must be at least 1: it is how many calls may run at once",
        ));
    }
    // Without the suffix, so that `max_flow = 4u8` still passes a `usize`.
    Ok(LitInt::new(&n.to_string(), lit.span()))
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

/// `declare!`'s input: an optional `crate = "path";` for every signature, then the
/// signatures.
pub(crate) struct Declarations {
    pub(crate) krate: Option<syn::Path>,
    pub(crate) fns: Vec<DeclaredFn>,
}

impl Parse for Declarations {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut krate = None;
        if input.peek(Token![crate]) && input.peek2(Token![=]) {
            input.parse::<Token![crate]>()?;
            input.parse::<Token![=]>()?;
            krate = Some(crate_option(&input.parse()?)?);
            input.parse::<Token![;]>()?;
        }
        let mut fns = Vec::new();
        while !input.is_empty() {
            fns.push(input.parse()?);
        }
        Ok(Declarations { krate, fns })
    }
}
