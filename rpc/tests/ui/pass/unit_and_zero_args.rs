#[easyrpc::register]
fn ping() {}

#[easyrpc::register]
async fn tick() -> () {}

#[easyrpc::register]
fn answer() -> u32 {
    42
}

#[easyrpc::register]
fn log(line: String) {
    let _ = line;
}

async fn use_stubs(client: &easyrpc::Client) -> Result<(), easyrpc::Error> {
    let () = ping::call(client).await?;
    let () = tick::call(client).await?;
    let _: u32 = answer::call(client).await?;
    let () = log::call(client, String::new()).await?;
    Ok(())
}

fn main() {
    ping();
    assert_eq!(answer(), 42);
    let _ = [ping::method(), tick::method(), answer::method(), log::method()];
    let _ = use_stubs;
}
