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

    ::easyrpc::declare! {
        pub fn remote_add(a: i64, b: i64) -> i64;
        pub async fn remote_div(a: i64, b: i64) -> ::std::result::Result<i64, ::std::string::String>;
    }
}

fn main() {
    let _: ::easyrpc::Method = service::add::method();
    let _: ::easyrpc::Method = service::checked_div::method();
    let _: ::easyrpc::Method = service::nothing::method();
    let _: &str = service::remote_div::NAME;
    let _ = service::remote_add::call_blocking;
}
