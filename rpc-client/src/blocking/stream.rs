//! Streaming calls of the blocking client: an [`Iterator`] over a call's result items
//! ([`BlockingItems`]), and argument items sent from an iterator under the server's
//! credit. The call holds the client (one call at a time, as every blocking call does)
//! until its end, or until its iterator is dropped (which cancels it on the server).

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use easyrpc_proto::handshake::features::STREAMS;
use easyrpc_proto::stream::Window;
use easyrpc_proto::{ClientReply, Codec, EncodeValue, Params, Replies, StreamMessage};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{transport, BlockingClient, State};
use crate::foreign::decode_reply;
use crate::handlers::{Handlers, Incoming};
use crate::reply::Serde;
use crate::Error;

/// The argument items of a call, each encoding itself.
type Upload<'a> = Box<dyn Iterator<Item = Box<dyn EncodeValue>> + 'a>;

/// A blocking streaming call's result items, as an [`Iterator`]: `Ok` items as the server
/// sends them, then the end (`None`), or one `Err` (the server's error ending the
/// stream, the timeout covering the whole call, a connection lost) and then the end.
///
/// It reads only while it is asked for the next item, and grants the server credit as it
/// goes (64 items at first, then about 1 MiB of items, between 16 and 4096 of them): the
/// server waits for a slow reader. The client is held until the iterator ends or is dropped
/// (calls from other threads wait for it; a call on the same client from the thread that
/// holds the iterator would wait forever: use a second client there); dropping it before its
/// end cancels the call on the server.
#[must_use = "dropping it cancels the call"]
pub struct BlockingItems<'a, T> {
    client: &'a BlockingClient,
    st: MutexGuard<'a, Box<State>>,
    msgid: u64,
    deadline: Instant,
    timeout: Duration,
    items: VecDeque<Vec<u8>>,
    /// The credit to grant as items are taken.
    window: Window,
    /// Credit from the server for the argument items.
    credit: u64,
    upload: Option<Upload<'a>>,
    /// The call's end: its result's bytes, or its error.
    end: Option<Result<Vec<u8>, Error>>,
    done: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for BlockingItems<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingItems")
            .field("msgid", &self.msgid)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl BlockingClient {
    /// Call `method`, whose result is a stream, and iterate over its items as they come.
    /// The client's timeout covers the whole stream. Needs the extensions
    /// ([`Config::extensions`](crate::Config::extensions)).
    ///
    /// ```no_run
    /// # fn demo(client: easyrpc_client::BlockingClient) -> Result<(), easyrpc_client::Error> {
    /// for n in client.call_stream::<_, u32>("countdown", (3,))? {
    ///     println!("{}", n?);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NeedsExtensions`] without the extensions; connection errors. The call's own
    /// errors come as the iterator's items.
    pub fn call_stream<P: Params, T: DeserializeOwned>(
        &self,
        method: &str,
        params: P,
    ) -> Result<BlockingItems<'_, T>, Error> {
        self.start_stream(method, params, None)
    }

    /// Call `method`, which takes a stream besides `params`, sending `items` as the server
    /// grants credit, and return its one result.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call_stream`], and the call's error.
    pub fn call_upload<P, U, I, R>(&self, method: &str, params: P, items: I) -> Result<R, Error>
    where
        P: Params,
        U: Serialize + Send + 'static,
        I: IntoIterator<Item = U>,
        R: DeserializeOwned,
    {
        let upload: Upload<'_> = Box::new(items.into_iter().map(|u| Box::new(u) as Box<dyn EncodeValue>));
        let mut call = self.start_stream::<P, ()>(method, params, Some(upload))?;
        loop {
            match call.next_raw() {
                Some(Ok(Raw::Item(_))) => {}
                Some(Ok(Raw::End(bytes))) => {
                    return decode_reply::<R, Serde>(self.config.codec, true, Ok(&bytes))
                }
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Protocol("the call ended twice".into())),
            }
        }
    }

    /// Call `method`, which takes a stream and returns one: `items` are sent as the server
    /// grants credit, while the returned iterator is read.
    ///
    /// # Errors
    ///
    /// As [`BlockingClient::call_stream`].
    pub fn call_bidi<'a, P, U, I, T>(
        &'a self,
        method: &str,
        params: P,
        items: I,
    ) -> Result<BlockingItems<'a, T>, Error>
    where
        P: Params,
        U: Serialize + Send + 'static,
        I: IntoIterator<Item = U>,
        I::IntoIter: 'a,
        T: DeserializeOwned,
    {
        let upload: Upload<'a> = Box::new(items.into_iter().map(|u| Box::new(u) as Box<dyn EncodeValue>));
        self.start_stream(method, params, Some(upload))
    }

    fn start_stream<'a, P: Params, T>(
        &'a self,
        method: &str,
        params: P,
        upload: Option<Upload<'a>>,
    ) -> Result<BlockingItems<'a, T>, Error> {
        if !self.config.uses_hello() {
            return Err(Error::NeedsExtensions("a streaming call"));
        }
        let timeout = self.config.timeout;
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        st.ensure_connected(self).map_err(super::Failed::into_error)?;
        if st.proto.features() & STREAMS == 0 {
            return Err(Error::Protocol(
                "the server did not agree to streams in its hello (a server of this framework \
                 older than streams)"
                    .into(),
            ));
        }
        st.set_timeouts(timeout)?;
        let msgid = st.proto.send_request(
            None,
            method,
            &params,
            timeout,
            Some(deadline),
            self.metadata.as_deref(),
            (),
        )?;
        let window = Window::new();
        st.proto.send_credit(msgid, window.initial());
        if let Err(e) = st.flush() {
            st.stream = None;
            return Err(transport(e, timeout));
        }
        Ok(BlockingItems {
            client: self,
            st,
            msgid,
            deadline,
            timeout,
            items: VecDeque::new(),
            window,
            credit: 0,
            upload,
            end: None,
            done: false,
            _item: PhantomData,
        })
    }
}

/// What a streaming call brings next.
enum Raw {
    Item(Vec<u8>),
    End(Vec<u8>),
}

impl<T> BlockingItems<'_, T> {
    /// The next item's bytes, or the call's end.
    fn next_raw(&mut self) -> Option<Result<Raw, Error>> {
        if self.done {
            return None;
        }
        let r = self.step();
        if matches!(r, Some(Err(_)) | Some(Ok(Raw::End(_)))) {
            self.done = true;
        }
        r
    }

    fn step(&mut self) -> Option<Result<Raw, Error>> {
        loop {
            // Argument items, as far as the credit goes.
            if let Some(upload) = &mut self.upload {
                while self.credit > 0 {
                    match upload.next() {
                        Some(item) => {
                            self.credit -= 1;
                            if let Err(e) = self.st.proto.send_item(self.msgid, &*item) {
                                return Some(Err(self.fail(e.into())));
                            }
                        }
                        None => {
                            self.st.proto.send_end(self.msgid, None);
                            self.upload = None;
                            break;
                        }
                    }
                }
            }
            if let Some(item) = self.items.pop_front() {
                if let Some(n) = self.window.take(item.len()).filter(|_| self.end.is_none()) {
                    self.st.proto.send_credit(self.msgid, n);
                }
                if let Err(e) = self.flush() {
                    return Some(Err(e));
                }
                return Some(Ok(Raw::Item(item)));
            }
            if let Some(end) = self.end.take() {
                return Some(end.map(Raw::End));
            }
            if let Err(e) = self.flush() {
                return Some(Err(e));
            }
            if Instant::now() >= self.deadline {
                return Some(Err(self.fail(Error::Timeout(self.timeout))));
            }
            if let Err(e) = self.st.read_more() {
                let e = transport(e, self.timeout);
                return Some(Err(self.fail(e)));
            }
            let ours = self.st.proto.is_server_ours();
            let codec = self.client.config.codec;
            let mut sink = Sink {
                codec,
                ours,
                items: &mut self.items,
                credit: &mut self.credit,
                end: &mut self.end,
                handlers: &self.client.config.handlers,
                incoming: Vec::new(),
            };
            let st = &mut **self.st;
            if let Err(e) = st.proto.handle_input(&mut st.rbuf, &mut sink) {
                let e = Error::Protocol(e.to_string());
                return Some(Err(self.fail(e)));
            }
            let mut incoming = sink.incoming;
            if !incoming.is_empty() {
                self.st.serve(&mut incoming);
            }
        }
    }

    /// Write what the protocol queued (credit, items, answers to the server's requests).
    fn flush(&mut self) -> Result<(), Error> {
        if !self.st.proto.has_transmit() {
            return Ok(());
        }
        self.st.flush().map_err(|e| {
            let e = transport(e, self.timeout);
            self.st.stream = None;
            e
        })
    }

    /// The call failed: the connection may hold half a message, or the server may still be
    /// streaming; start afresh next time.
    fn fail(&mut self, e: Error) -> Error {
        self.st.proto.forget(self.msgid);
        self.st.stream = None;
        e
    }
}

impl<T: DeserializeOwned> Iterator for BlockingItems<'_, T> {
    type Item = Result<T, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_raw()? {
            Ok(Raw::Item(bytes)) => Some(self.client.config.codec.decode::<T>(&bytes).map_err(|e| {
                self.done = true;
                self.fail(Error::Decode(e))
            })),
            Ok(Raw::End(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl<T> Drop for BlockingItems<'_, T> {
    /// Dropped before its end: the server is told to stop (`rpc.cancel`); what it sent
    /// meanwhile is read and dropped by the next call.
    fn drop(&mut self) {
        if !self.done && self.st.proto.forget(self.msgid) && self.st.flush().is_err() {
            self.st.stream = None;
        }
    }
}

/// Collects a streaming call's items, credit and end as the protocol hands them over.
struct Sink<'a> {
    codec: Codec,
    ours: bool,
    items: &'a mut VecDeque<Vec<u8>>,
    credit: &'a mut u64,
    end: &'a mut Option<Result<Vec<u8>, Error>>,
    handlers: &'a Handlers,
    incoming: Vec<Incoming>,
}

impl Replies<()> for Sink<'_> {
    fn reply(&mut self, r: ClientReply<'_, ()>) {
        *self.end = Some(if r.ok {
            Ok(r.part.to_vec())
        } else {
            decode_reply::<(), Serde>(self.codec, self.ours, Err(r.part)).map(|()| Vec::new())
        });
    }

    fn stream(&mut self, (): (), message: StreamMessage<'_>) {
        match message {
            StreamMessage::Item { item, .. } => self.items.push_back(item.to_vec()),
            StreamMessage::Credit { n, .. } => *self.credit = self.credit.saturating_add(n),
            _ => {}
        }
    }

    fn request(&mut self, msgid: u64, method: &[u8], params: &[u8]) -> bool {
        self.handlers
            .request(self.codec, msgid, method, params, &mut self.incoming)
    }

    fn notification(&mut self, method: &[u8], params: &[u8]) {
        self.handlers
            .notification(self.codec, method, params, &mut self.incoming);
    }
}
