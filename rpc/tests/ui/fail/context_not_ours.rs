#[derive(serde::Serialize, serde::Deserialize)]
pub struct Context {
    pub user: String,
}

#[easyrpc::register]
fn hello(ctx: Context) -> String {
    ctx.user
}

fn main() {}
