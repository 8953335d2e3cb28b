//! `crate = "path"`: the generated code names the framework by the path given, for a
//! dependency renamed in Cargo.toml (`my_rpc = { package = "easyrpc", .. }`). Here the
//! framework is reached through a module of this crate; `ui/fail/crate_path_wrong.rs`
//! shows that the path is the one used.

pub mod my_rpc {
    pub use ::easyrpc::*;
}

#[easyrpc::register(crate = "crate::my_rpc", max_flow = 2)]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[easyrpc::register(crate = "crate::my_rpc")]
async fn fails(n: u32) -> Result<u32, String> {
    Err(format!("no {n}"))
}

easyrpc::declare! {
    crate = "crate::my_rpc";
    pub fn remote(a: i64) -> i64;
    #[rpc(name = "other")]
    pub async fn remote_other() -> Result<(), String>;
}

pub struct Kv;

#[easyrpc::service(crate = "crate::my_rpc", prefix = "kv")]
impl Kv {
    pub fn get(&self, key: String, _ctx: my_rpc::Context) -> Option<String> {
        Some(key)
    }
}

#[allow(dead_code)]
async fn stubs(client: &easyrpc::Client) -> Result<(), my_rpc::Error> {
    let _: i64 = add::call(client, 1, 2).await?;
    let _: Result<u32, my_rpc::CallError<String>> = fails::call(client, 1).await;
    let _: i64 = remote::call(client, 1).await?;
    let _: Option<String> = KvClient::new(client.clone()).get("k".into()).await?;
    Ok(())
}

fn main() {
    let server = my_rpc::Server::builder()
        .register(add::method())
        .register(fails::method())
        .service(Kv)
        .build()
        .unwrap();
    drop(server);
    assert_eq!((add::NAME, remote::NAME, remote_other::NAME), ("add", "remote", "other"));
}
