use easyrpc::register;

#[register]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[register]
pub async fn double(n: u64) -> u64 {
    n * 2
}

async fn use_stubs(client: &easyrpc::Client) -> Result<(), easyrpc::Error> {
    let sum: i64 = add::call(client, 1, 2).await?;
    let twice: u64 = double::call(client, 4).await?;
    let _ = (sum, twice);
    Ok(())
}

fn use_blocking(client: &easyrpc::BlockingClient) -> Result<i64, easyrpc::Error> {
    add::call_blocking(client, 1, 2)
}

fn main() {
    // Still plain functions.
    assert_eq!(add(2, 3), 5);
    let _ = double(4);
    let _: easyrpc::Method = add::method();
    let _: easyrpc::Method = double::method();
    assert_eq!(add::NAME, "add");
    assert_eq!(double::NAME, "double");
    let _ = use_stubs;
    let _ = use_blocking;
}
