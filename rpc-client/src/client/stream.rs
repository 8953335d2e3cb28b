//! Streaming calls of the async client: a result that is a stream ([`ItemStream`]), an
//! argument stream sent under the server's credit, or both.
//!
//! A streaming call lives in one slot, as any call: the connection task puts each
//! `rpc.item` the server sends into the slot's queue and adds each `rpc.credit` to the
//! slot's credit, and wakes the caller. The caller's stream takes the items and grants
//! the server more credit once it has taken half the window, and sends the items of its
//! argument stream while it has credit. Nothing is spawned: the call progresses while its
//! stream (or its future, for an upload) is polled.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use easyrpc_proto::handshake::features::STREAMS;
use easyrpc_proto::stream::Window;
use easyrpc_proto::{EncodeValue, Params};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use super::state::SlotState;
use super::{Client, Core, Target};
use crate::foreign::foreign;
use crate::reply::decode;
use crate::Error;

/// What a streaming call brings next.
enum Raw<X> {
    /// An item.
    Item(X),
    /// The call's result (`nil` at a stream's end).
    End(Vec<u8>),
}

/// The items a streaming call sends to the server, each encoding itself.
type Upload = Pin<Box<dyn Stream<Item = Box<dyn EncodeValue>> + Send>>;

/// The stream of a call's result items: `Ok` items as the server sends them, then the end
/// (`None`), or one `Err` (the server's error ending the stream, a timeout covering the
/// whole call, a connection lost) and then the end.
///
/// The server sends items only as this stream grants it credit (64 items at first, then
/// about 1 MiB of items, between 16 and 4096 of them): reading slowly holds the server
/// back, and what waits here stays bounded. Dropping it
/// before its end cancels the call on the server (`rpc.cancel`). For a call that also
/// sends a stream ([`Client::call_bidi`]), that stream's items are sent while this one is
/// polled.
#[must_use = "a stream does nothing unless polled; dropping it cancels the call"]
pub struct ItemStream<T> {
    /// Keeps the client, and so its connection, alive while the stream is.
    _client: Client,
    core: Arc<Core>,
    slot: u32,
    msgid: u64,
    epoch: u64,
    /// The credit to grant as items are taken.
    window: Window,
    upload: Option<Upload>,
    timeout: Duration,
    done: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ItemStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemStream")
            .field("msgid", &self.msgid)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Call `method`, whose result is a stream (a function registered returning `impl
    /// Stream` or `impl Iterator`), and get its items as they come.
    ///
    /// The client's timeout covers the whole stream. Needs the extensions
    /// ([`Config::extensions`](crate::Config::extensions)) and a server of this framework.
    ///
    /// ```no_run
    /// # async fn demo(client: easyrpc_client::Client) -> Result<(), easyrpc_client::Error> {
    /// use futures_util::StreamExt;
    ///
    /// let mut ticks = client.call_stream::<_, u32>("countdown", (3,)).await?;
    /// while let Some(n) = ticks.next().await {
    ///     println!("{}", n?);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NeedsExtensions`] without the extensions; connection errors as for
    /// [`Client::call`]. The call's own errors come as the stream's items.
    pub async fn call_stream<P, T>(&self, method: &str, params: P) -> Result<ItemStream<T>, Error>
    where
        P: Params,
        T: DeserializeOwned,
    {
        self.start_stream(method, params, None).await
    }

    /// Call `method`, which takes a stream ([`Streaming`] on the server) besides `params`,
    /// sending `items` as the server grants credit, and get its one result.
    ///
    /// ```no_run
    /// # async fn demo(client: easyrpc_client::Client) -> Result<(), easyrpc_client::Error> {
    /// let numbers = futures_util::stream::iter(1..=100i64);
    /// let total: i64 = client.call_upload("sum", (), numbers).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Items can also be sent through a sender handle: a channel's receiving half is a
    /// stream (`tokio_stream::wrappers::ReceiverStream`, `futures::channel::mpsc`).
    ///
    /// [`Streaming`]: https://docs.rs/easyrpc-server/latest/easyrpc_server/struct.Streaming.html
    ///
    /// # Errors
    ///
    /// As [`Client::call_stream`], and the call's error.
    pub async fn call_upload<P, U, S, R>(&self, method: &str, params: P, items: S) -> Result<R, Error>
    where
        P: Params,
        U: Serialize + Send + 'static,
        S: Stream<Item = U> + Send + 'static,
        R: DeserializeOwned,
    {
        let mut stream = self
            .start_stream::<P, ()>(method, params, Some(upload(items)))
            .await?;
        std::future::poll_fn(|cx| stream.poll_result(cx)).await
    }

    /// Call `method`, which takes a stream and returns one: `items` are sent as the server
    /// grants credit, while the returned stream is polled.
    ///
    /// # Errors
    ///
    /// As [`Client::call_stream`].
    pub async fn call_bidi<P, U, S, T>(
        &self,
        method: &str,
        params: P,
        items: S,
    ) -> Result<ItemStream<T>, Error>
    where
        P: Params,
        U: Serialize + Send + 'static,
        S: Stream<Item = U> + Send + 'static,
        T: DeserializeOwned,
    {
        self.start_stream(method, params, Some(upload(items))).await
    }

    /// Write the request of a streaming call and grant the server its first credit.
    async fn start_stream<P, T>(
        &self,
        method: &str,
        params: P,
        upload: Option<Upload>,
    ) -> Result<ItemStream<T>, Error>
    where
        P: Params,
    {
        let core = match &self.target {
            Target::One(handle) => handle.0.clone(),
            Target::Balanced(pool) => pool.pick_core()?,
        };
        if !core.config.uses_hello() {
            return Err(Error::NeedsExtensions("a streaming call"));
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            {
                let mut st = core.lock();
                if let Some(epoch) = st.live {
                    if st.proto.features() & STREAMS == 0 {
                        return Err(Error::Protocol(
                            "the server did not agree to streams in its hello (a server of this \
                             framework older than streams)"
                                .into(),
                        ));
                    }
                    let slot = st.take_slot(epoch, Waker::noop());
                    let sent = st.proto.send_request(
                        None,
                        method,
                        &params,
                        self.timeout,
                        None,
                        self.metadata.as_deref(),
                        slot,
                    );
                    let msgid = match sent {
                        Ok(msgid) => msgid,
                        Err(e) => {
                            st.free_slot(slot);
                            return Err(e.into());
                        }
                    };
                    st.slots[slot as usize].msgid = msgid;
                    let window = Window::new();
                    st.proto.send_credit(msgid, window.initial());
                    st.wake_writer();
                    drop(st);
                    return Ok(ItemStream {
                        _client: self.clone(),
                        core,
                        slot,
                        msgid,
                        epoch,
                        window,
                        upload,
                        timeout: self.timeout,
                        done: false,
                        _item: PhantomData,
                    });
                }
            }
            super::reconnect(&core, deadline, !core.config.wait_for_ready, self.timeout).await?;
        }
    }
}

fn upload<U, S>(items: S) -> Upload
where
    U: Serialize + Send + 'static,
    S: Stream<Item = U> + Send + 'static,
{
    Box::pin(items.map(|u| Box::new(u) as Box<dyn EncodeValue>))
}

impl<T> ItemStream<T> {
    /// Send argument items while the server has granted credit and `upload` has them.
    fn pump(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        let Some(upload) = &mut self.upload else {
            return Ok(());
        };
        loop {
            {
                let st = self.core.lock();
                let slot = &st.slots[self.slot as usize];
                if slot.credit == 0 || !matches!(slot.state, SlotState::Waiting) {
                    return Ok(());
                }
            }
            // Polled without the lock: the caller's stream may do anything.
            let next = upload.as_mut().poll_next(cx);
            let mut st = self.core.lock();
            let st = &mut *st;
            if st.live != Some(self.epoch) {
                return Ok(());
            }
            match next {
                Poll::Pending => return Ok(()),
                Poll::Ready(Some(item)) => {
                    st.slots[self.slot as usize].credit -= 1;
                    st.proto.send_item(self.msgid, &*item)?;
                }
                Poll::Ready(None) => {
                    st.proto.send_end(self.msgid, None);
                    self.upload = None;
                    st.wake_writer();
                    return Ok(());
                }
            }
            st.wake_writer();
        }
    }

    /// The next item, as `item` makes it of its bytes, or the call's end: its result's
    /// bytes, or its error.
    fn poll_raw<X>(
        &mut self,
        cx: &mut Context<'_>,
        item: impl FnOnce(&[u8]) -> X,
    ) -> Poll<Option<Result<Raw<X>, Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.upload.is_some() {
            if let Err(e) = self.pump(cx) {
                return Poll::Ready(Some(Err(self.end(e))));
            }
        }
        // Disjoint borrows of the fields: the lock guard borrows `core` only.
        let ItemStream {
            core,
            slot: idx,
            msgid,
            epoch,
            window,
            timeout,
            done,
            ..
        } = self;
        let mut st = core.lock();
        let st = &mut *st;
        let slot = &mut st.slots[*idx as usize];
        if let Some((x, len)) = slot.items.pop_with(|bytes| (item(bytes), bytes.len())) {
            let waiting = matches!(slot.state, SlotState::Waiting);
            if let Some(n) = window.take(len).filter(|_| waiting && st.live == Some(*epoch)) {
                st.proto.send_credit(*msgid, n);
                st.wake_writer();
            }
            return Poll::Ready(Some(Ok(Raw::Item(x))));
        }
        let end = match std::mem::replace(&mut slot.state, SlotState::Waiting) {
            SlotState::Waiting => {
                slot.waker.clone_from(cx.waker());
                return Poll::Pending;
            }
            SlotState::Replied { ok: true, big } => {
                Ok(Raw::End(big.as_deref().unwrap_or(&slot.buf).to_vec()))
            }
            SlotState::Replied { ok: false, big } => {
                let bytes = big.as_deref().unwrap_or(&slot.buf);
                Err(if st.proto.is_server_ours() {
                    decode::<()>(core.config.codec, Err(bytes)).unwrap_err()
                } else {
                    foreign(bytes)
                })
            }
            SlotState::Failed(Error::Timeout(_)) => Err(Error::Timeout(*timeout)),
            SlotState::Failed(e) => Err(e),
            SlotState::Free => Err(Error::Protocol("call slot lost".into())),
        };
        *done = true;
        st.free_slot(*idx);
        Poll::Ready(Some(end))
    }

    /// End the call with `e` (an argument that could not be encoded): cancel it.
    fn end(&mut self, e: Error) -> Error {
        let core = self.core.clone();
        let mut st = core.lock();
        self.forget(&mut st);
        e
    }

    fn forget(&mut self, st: &mut super::State) {
        if self.done {
            return;
        }
        self.done = true;
        let waiting = matches!(st.slots[self.slot as usize].state, SlotState::Waiting);
        st.free_slot(self.slot);
        if waiting && st.live == Some(self.epoch) && st.proto.forget(self.msgid) && st.proto.has_transmit() {
            st.wake_writer();
        }
    }

    /// For an upload: drive the call to its one result.
    fn poll_result<R: DeserializeOwned>(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, Error>> {
        loop {
            match self.poll_raw(cx, |_| ()) {
                Poll::Pending => return Poll::Pending,
                // Items of a call that returns one value: none are expected; skip them.
                Poll::Ready(Some(Ok(Raw::Item(_)))) => continue,
                Poll::Ready(Some(Ok(Raw::End(bytes)))) => {
                    return Poll::Ready(decode::<R>(self.core.config.codec, Ok(&bytes)))
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Err(Error::Protocol("the call ended twice".into()))),
            }
        }
    }
}

impl<T: DeserializeOwned> Stream for ItemStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let codec = this.core.config.codec;
        match this.poll_raw(cx, |bytes| codec.decode::<T>(bytes)) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None | Some(Ok(Raw::End(_)))) => Poll::Ready(None),
            Poll::Ready(Some(Ok(Raw::Item(Ok(item))))) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(Some(Ok(Raw::Item(Err(e))))) => {
                // The stream cannot go on in step: cancel the call.
                let core = this.core.clone();
                let mut st = core.lock();
                this.forget(&mut st);
                Poll::Ready(Some(Err(Error::Decode(e))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
        }
    }
}

impl<T> Drop for ItemStream<T> {
    /// Dropped before its end: the connection forgets the call and tells the server,
    /// which stops the stream.
    fn drop(&mut self) {
        if !self.done {
            let core = self.core.clone();
            let mut st = core.lock();
            self.forget(&mut st);
        }
    }
}
