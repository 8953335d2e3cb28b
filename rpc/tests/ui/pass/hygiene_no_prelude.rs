// The generated code names everything by absolute path: it compiles without the prelude,
// with the crate renamed, and next to user items named like the ones it uses.
#![no_implicit_prelude]

extern crate easyrpc as some_random_other_name;
extern crate std;

mod service {
    #[::easyrpc::register]
    pub fn add(a: i64, b: i64) -> i64 {
        a + b
    }

    #[::easyrpc::register(name = "div", max_flow = 2)]
    pub async fn checked_div(a: i64, b: i64) -> ::std::result::Result<i64, ::std::string::String> {
        if b == 0 {
            ::std::result::Result::Err(::std::borrow::ToOwned::to_owned("division by zero"))
        } else {
            ::std::result::Result::Ok(a / b)
        }
    }

    #[::easyrpc::register]
    pub fn nothing() {}

    #[::easyrpc::register]
    pub async fn countdown(n: u64) -> impl ::easyrpc::Stream<Item = ::std::result::Result<u64, ::std::string::String>> {
        ::easyrpc::stream::iter(::std::iter::Iterator::map(0..n, ::std::result::Result::Ok))
    }

    #[::easyrpc::register]
    pub fn lines(n: u32) -> impl ::std::iter::Iterator<Item = u32> {
        0..n
    }

    #[::easyrpc::register]
    pub fn sum(mut items: ::easyrpc::Streaming<i64>, ctx: ::easyrpc::Context) -> i64 {
        let _ = ctx;
        ::std::iter::Iterator::sum(::std::iter::Iterator::filter_map(items.blocking_iter(), ::std::result::Result::ok))
    }

    #[::easyrpc::register]
    pub async fn double(items: ::easyrpc::Streaming<i64>) -> impl ::easyrpc::Stream<Item = i64> {
        ::easyrpc::StreamExt::map(items, |n| ::std::result::Result::unwrap_or(n, 0) * 2)
    }

    ::easyrpc::declare! {
        pub fn remote_add(a: i64, b: i64) -> i64;
        pub async fn remote_div(a: i64, b: i64) -> ::std::result::Result<i64, ::std::string::String>;
    }
}

fn main() {
    let _: ::easyrpc::Method = service::add::method();
    let _: ::easyrpc::Method = service::checked_div::method();
    let _: ::easyrpc::Method = service::nothing::method();
    let _: ::easyrpc::Method = service::countdown::method();
    let _: ::easyrpc::Method = service::lines::method();
    let _: ::easyrpc::Method = service::sum::method();
    let _: ::easyrpc::Method = service::double::method();
    let _ = service::lines::call_blocking;
    let _: &str = service::remote_div::NAME;
    let _ = service::remote_add::call_blocking;
}
