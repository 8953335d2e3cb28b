//! Streaming functions: each kind through `#[register]`, `#[service]` and `declare!`, with
//! the options that apply to them; the stubs' shapes.
use easyrpc::stream::{self, Stream, StreamExt};
use easyrpc::{Context, ItemStream, Server, State, Streaming};

pub struct Step(u64);

/// A result stream (async).
#[easyrpc::register(max_flow = 4)]
async fn countdown(n: u64) -> impl Stream<Item = u64> {
    stream::iter((0..n).rev())
}

/// Fallible items, with state and context anywhere.
#[easyrpc::register(name = "ticks")]
async fn tick(step: State<Step>, n: u64, _ctx: Context) -> impl Stream<Item = Result<u64, String>> {
    let step = step.0;
    stream::iter((0..n).map(move |i| if i < 3 { Ok(i * step) } else { Err("too far".to_owned()) }))
}

/// A result stream (sync): an iterator, driven on the blocking pool.
#[easyrpc::register]
fn lines(n: u32) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("line {i}"))
}

/// Fallible sync items.
#[easyrpc::register]
fn parse_all(words: Vec<String>) -> impl Iterator<Item = Result<i64, std::num::ParseIntError>> {
    words.into_iter().map(|w| w.parse())
}

/// An argument stream (async), anywhere in the list.
#[easyrpc::register]
async fn sum(mut numbers: Streaming<i64>, offset: i64) -> i64 {
    let mut total = offset;
    while let Some(Ok(n)) = numbers.next().await {
        total += n;
    }
    total
}

/// An argument stream (sync), with a typed error.
#[easyrpc::register(unstable_network = false)]
fn longest(mut lines: easyrpc::Streaming<String>) -> Result<usize, String> {
    lines
        .blocking_iter()
        .filter_map(Result::ok)
        .map(|l| l.len())
        .max()
        .ok_or_else(|| "no lines".to_owned())
}

/// Two-way (async).
#[easyrpc::register]
async fn double(items: Streaming<i64>) -> impl Stream<Item = i64> {
    items.filter_map(|n| async move { n.ok().map(|n| n * 2) })
}

/// Two-way (sync).
#[easyrpc::register]
fn echo(mut items: Streaming<String>) -> impl Iterator<Item = String> {
    std::iter::from_fn(move || items.blocking_next().and_then(Result::ok))
}

pub struct Feed;

#[easyrpc::service(prefix = "feed")]
impl Feed {
    pub async fn numbers(&self, n: u64) -> impl Stream<Item = u64> {
        stream::iter(0..n)
    }

    pub fn words(&self, n: usize) -> impl Iterator<Item = String> {
        std::iter::repeat_n("w".to_owned(), n)
    }

    #[rpc(max_flow = 2)]
    pub async fn count(&self, items: Streaming<String>) -> usize {
        items.count().await
    }

    pub async fn scale(&self, by: i64, items: Streaming<i64>) -> impl Stream<Item = i64> {
        items.filter_map(move |n| async move { n.ok().map(|n| n * by) })
    }
}

easyrpc::declare! {
    pub async fn remote_countdown(n: u64) -> impl Stream<Item = u64>;
    pub fn remote_sum(numbers: Streaming<i64>, offset: i64) -> i64;
}

#[allow(dead_code)]
async fn stubs(client: &easyrpc::Client) -> Result<(), easyrpc::Error> {
    let _: ItemStream<u64> = countdown::call(client, 3).await?;
    let _: ItemStream<u64> = tick::call(client, 3).await?;
    let _: ItemStream<String> = lines::call(client, 3).await?;
    let _: ItemStream<i64> = parse_all::call(client, vec![]).await?;
    let _: i64 = sum::call(client, stream::iter(vec![1, 2]), 10).await?;
    let _: Result<usize, easyrpc::CallError<String>> =
        longest::call(client, stream::iter(vec!["a".to_owned()])).await;
    let _: ItemStream<i64> = double::call(client, stream::iter(vec![1])).await?;
    let _: ItemStream<String> = echo::call(client, stream::iter(vec![String::new()])).await?;
    let feed = FeedClient::new(client.clone());
    let _: ItemStream<u64> = feed.numbers(2).await?;
    let _: ItemStream<String> = feed.words(2).await?;
    let _: usize = feed.count(stream::iter(vec!["a".to_owned()])).await?;
    let _: ItemStream<i64> = feed.scale(2, stream::iter(vec![1])).await?;
    let _: ItemStream<u64> = remote_countdown::call(client, 3).await?;
    let _: i64 = remote_sum::call(client, stream::iter(vec![1]), 0).await?;
    Ok(())
}

#[allow(dead_code)]
fn blocking_stubs(client: &easyrpc::BlockingClient) -> Result<(), easyrpc::Error> {
    let _: easyrpc::BlockingItems<'_, u64> = countdown::call_blocking(client, 3)?;
    let _: easyrpc::BlockingItems<'_, String> = lines::call_blocking(client, 3)?;
    let _: i64 = sum::call_blocking(client, vec![1, 2], 10)?;
    let _: easyrpc::BlockingItems<'_, i64> = double::call_blocking(client, [1, 2])?;
    let _: easyrpc::BlockingItems<'_, String> = echo::call_blocking(client, Vec::<String>::new())?;
    let _: easyrpc::BlockingItems<'_, u64> = remote_countdown::call_blocking(client, 3)?;
    Ok(())
}

fn main() {
    Server::builder()
        .state(Step(2))
        .register(countdown::method())
        .register(tick::method())
        .register(lines::method())
        .register(parse_all::method())
        .register(sum::method())
        .register(longest::method())
        .register(double::method())
        .register(echo::method())
        .service(Feed)
        .build()
        .unwrap();
}
