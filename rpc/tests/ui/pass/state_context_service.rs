//! `State<T>` and `Context` anywhere in the arguments, by any path; an impl-block service
//! with a prefix and per-method options; the stubs see wire arguments only.
use easyrpc::{Context, Server, State};

#[derive(Default)]
pub struct Db(std::sync::Mutex<Vec<String>>);

#[easyrpc::register]
fn push(db: State<Db>, item: String) -> usize {
    let mut v = db.0.lock().unwrap();
    v.push(item);
    v.len()
}

#[easyrpc::register]
async fn peek(index: usize, ctx: easyrpc::Context, db: easyrpc::State<self::Db>) -> Option<String> {
    let _ = ctx.method();
    db.0.lock().unwrap().get(index).cloned()
}

#[easyrpc::register]
fn only_context(ctx: Context) -> String {
    ctx.peer().to_string()
}

pub mod inner {
    #[derive(Default)]
    pub struct Counter(std::sync::atomic::AtomicU64);

    #[easyrpc::service(prefix = "counter")]
    impl Counter {
        pub fn bump(&self, by: u64) -> u64 {
            self.0.fetch_add(by, std::sync::atomic::Ordering::SeqCst) + by
        }

        #[rpc(name = "counter_now", max_flow = 4)]
        pub async fn now(&self, _ctx: easyrpc::Context) -> u64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }
}

#[allow(dead_code)]
async fn stubs(client: &easyrpc::Client) -> Result<(), easyrpc::Error> {
    let _: usize = push::call(client, "a".into()).await?;
    let _: Option<String> = peek::call(client, 0).await?;
    let _: String = only_context::call(client).await?;
    let counter = inner::CounterClient::new(client.clone());
    let _: u64 = counter.bump(2).await?;
    let _: u64 = counter.now().await?;
    Ok(())
}

fn main() {
    Server::builder()
        .state(Db::default())
        .register(push::method())
        .register(peek::method())
        .register(only_context::method())
        .service(inner::Counter::default())
        .build()
        .unwrap();
}
