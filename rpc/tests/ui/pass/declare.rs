#[derive(serde::Serialize, serde::Deserialize)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

pub mod api {
    use super::Point;

    easyrpc::declare! {
        /// Adds two numbers.
        pub fn add(a: i64, b: i64) -> i64;
        pub async fn mid(a: Point, b: Point) -> Point;
        fn fallible(s: String) -> Result<u8, String>;
        pub(crate) fn nothing();
    }

    /// The declared error type is kept: `CallError<String>`.
    pub(crate) async fn use_private(client: &easyrpc::Client) -> Result<u8, easyrpc::CallError<String>> {
        fallible::call(client, String::new()).await
    }

    /// And `?` still turns it into an `easyrpc::Error`.
    pub(crate) fn use_private_blocking(client: &easyrpc::BlockingClient) -> Result<u8, easyrpc::Error> {
        Ok(fallible::call_blocking(client, String::new())?)
    }
}

async fn use_stubs(client: &easyrpc::Client) -> Result<(), easyrpc::Error> {
    let _: i64 = api::add::call(client, 1, 2).await?;
    let _: Point = api::mid::call(client, Point { x: 0, y: 0 }, Point { x: 2, y: 2 }).await?;
    let () = api::nothing::call(client).await?;
    let _: u8 = api::use_private(client).await?;
    Ok(())
}

fn use_blocking(client: &easyrpc::BlockingClient) -> Result<Point, easyrpc::Error> {
    api::mid::call_blocking(client, Point { x: 0, y: 0 }, Point { x: 2, y: 2 })
}

fn main() {
    assert_eq!(api::add::NAME, "add");
    let _ = api::use_private_blocking;
    let _ = use_stubs;
    let _ = use_blocking;
}
