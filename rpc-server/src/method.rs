//! A registered function: its name, how it runs, and its limits.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use easyrpc_proto::{Args, Codec, EncodeError, EncodeValue, ErrorCode, FromArgs, ServerError};
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::context::{Call, Context as CallContext};
use crate::registry::Dispatch;
use crate::state::States;
use crate::stream::{StreamOut, Streaming};
use crate::BuildError;

/// What a handler produced: a value to encode, or a wire error.
///
/// The value is kept unencoded so the connection encodes it once, straight into its write
/// buffer, with whichever codec the connection uses; so is a typed error's data
/// ([`Reply::typed_err`]).
pub struct Reply(pub(crate) Result<Value, Box<Failure>>);

impl Reply {
    /// A successful result.
    pub fn ok<T: Serialize + Send + 'static>(value: T) -> Reply {
        Reply(Ok(Value::new(value)))
    }

    /// An error result.
    pub fn err(error: ServerError) -> Reply {
        Reply(Err(Box::new(Failure { error, data: None })))
    }

    /// `Ok(v)` as a result, `Err(e)` as a [`ErrorCode::HandlerError`] with `e`'s message.
    pub fn from_result<T: Serialize + Send + 'static, E: fmt::Display>(r: Result<T, E>) -> Reply {
        match r {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(ServerError::new(ErrorCode::HandlerError, e.to_string())),
        }
    }

    /// A function's own error `e`, as a [`ErrorCode::HandlerError`] with `e`'s message
    /// and, as the error's data, `e` itself, encoded with the connection's codec: the
    /// caller gets `[3, message, data]` and its typed stub decodes `e` back
    /// (`easyrpc::CallError::Handler`).
    ///
    /// ```
    /// use easyrpc_server::Reply;
    ///
    /// #[derive(Debug, serde::Serialize)]
    /// enum TodoError {
    ///     NotFound(u64),
    /// }
    ///
    /// impl std::fmt::Display for TodoError {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         match self {
    ///             TodoError::NotFound(id) => write!(f, "todo {id} not found"),
    ///         }
    ///     }
    /// }
    ///
    /// let reply = Reply::typed_err(TodoError::NotFound(42));
    /// assert_eq!(reply.error().unwrap().message, "todo 42 not found");
    /// ```
    pub fn typed_err<E: Serialize + fmt::Display + Send + 'static>(e: E) -> Reply {
        let error = ServerError::new(ErrorCode::HandlerError, e.to_string());
        Reply(Err(Box::new(Failure {
            error,
            data: Some(Box::new(e)),
        })))
    }

    /// `Ok(v)` as a result, `Err(e)` as [`Reply::typed_err`].
    pub fn from_typed_result<T, E>(r: Result<T, E>) -> Reply
    where
        T: Serialize + Send + 'static,
        E: Serialize + fmt::Display + Send + 'static,
    {
        match r {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::typed_err(e),
        }
    }

    /// The error, if this reply is one. A typed error's data is not encoded yet: it is
    /// not in the `ServerError` returned here.
    pub fn error(&self) -> Option<&ServerError> {
        self.0.as_ref().err().map(|f| &f.error)
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(_) => f.write_str("Reply(Ok(..))"),
            Err(e) => write!(f, "Reply(Err({:?}))", e.error),
        }
    }
}

/// An error reply: boxed in [`Reply`], which stays as small as a value on the success path.
pub(crate) struct Failure {
    pub(crate) error: ServerError,
    /// A typed error's value, to be encoded as the error's data with the connection's codec.
    pub(crate) data: Option<Box<dyn EncodeValue>>,
}

impl Failure {
    /// The error to write on a connection using `codec`, its data encoded. Data that cannot
    /// be encoded is left out (the message still says what went wrong).
    pub(crate) fn into_error(self, codec: Codec) -> ServerError {
        let Some(data) = self.data else {
            return self.error;
        };
        match self.error.clone().with_data(codec, &*data) {
            Ok(error) => error,
            Err(e) => {
                tracing::warn!(error = %e, "a handler's error could not be encoded as data; sent without it");
                self.error
            }
        }
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("error", &self.error)
            .field("data", &self.data.is_some())
            .finish()
    }
}

/// A handler's value, waiting to be encoded.
///
/// The common small types are stored as they are, so a call returning one allocates
/// nothing for its result (a box and its free are a tenth of the server's CPU for a
/// pipelined `add`); any other type is boxed. Each is encoded with its own `Serialize`
/// implementation, exactly as if it were boxed.
pub(crate) enum Value {
    Unit,
    Bool(bool),
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F64(f64),
    String(String),
    Boxed(Box<dyn EncodeValue>),
}

impl Value {
    fn new<T: Serialize + Send + 'static>(value: T) -> Value {
        let mut slot = Some(value);
        let any: &mut dyn Any = &mut slot;
        if any.is::<Option<()>>() {
            return Value::Unit;
        }
        // The type tests are on constants: the compiler keeps only the branch for `T`.
        macro_rules! inline {
            ($($variant:ident($t:ty)),*) => {$(
                if let Some(v) = any.downcast_mut::<Option<$t>>().and_then(Option::take) {
                    return Value::$variant(v);
                }
            )*};
        }
        inline!(
            Bool(bool),
            I32(i32),
            I64(i64),
            U32(u32),
            U64(u64),
            F64(f64),
            String(String)
        );
        // Unwrap: `slot` was filled above and only a matching type above takes it.
        Value::Boxed(Box::new(slot.take().unwrap()))
    }
}

impl EncodeValue for Value {
    fn encode_value(&self, codec: Codec, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Value::Unit => codec.encode(out, &()),
            Value::Bool(v) => codec.encode(out, v),
            Value::I32(v) => codec.encode(out, v),
            Value::I64(v) => codec.encode(out, v),
            Value::U32(v) => codec.encode(out, v),
            Value::U64(v) => codec.encode(out, v),
            Value::F64(v) => codec.encode(out, v),
            Value::String(v) => codec.encode(out, v),
            Value::Boxed(v) => v.encode_value(codec, out),
        }
    }
}

/// The work of a sync call, with its arguments already decoded: run on the blocking pool.
pub type SyncJob = Box<dyn FnOnce() -> Reply + Send + 'static>;

/// The work of an async call, with its arguments already decoded.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send + 'static>>;

type SyncFn = dyn Fn(&mut Args<'_>, &Call<'_>) -> Result<SyncJob, ServerError> + Send + Sync;
type AsyncFn = dyn Fn(&mut Args<'_>, &Call<'_>) -> Result<ReplyFuture, ServerError> + Send + Sync;
/// Makes a method from the server's states, when it is built.
type BindFn = dyn Fn(&States) -> Result<Method, BuildError> + Send + Sync;

#[derive(Clone)]
pub(crate) enum Kind {
    Sync(Arc<SyncFn>),
    Async(Arc<AsyncFn>),
    /// An async function whose future type is known (`async_fn`, `try_async_fn`).
    TypedAsync(Arc<dyn TypedAsync>),
    /// A function taking states: made into one of the others when the server is built.
    Unbound(Arc<BindFn>),
}

/// The box a connection keeps for one method's calls (see [`TypedAsync`]).
pub(crate) type Slot = Option<Box<dyn Any + Send>>;

/// An async function whose future type is known, so that its calls can run in a box the
/// connection keeps from one call to the next: `Pin::set` puts each call's future in
/// place of the last one's. A call that finishes at its first poll, the common case,
/// then allocates nothing (a malloc and a free are a tenth of the server's CPU for a
/// pipelined `add`).
pub(crate) trait TypedAsync: Send + Sync {
    /// Decode the arguments and make the call's future, boxed on its own (the path for
    /// calls under `max_flow`, which are polled only once a slot is taken).
    fn boxed(&self, args: &mut Args<'_>, call: &Call<'_>) -> Result<ReplyFuture, ServerError>;

    /// Decode the arguments and poll the call once (with a no-op waker) in the box kept
    /// in `slot`, made on first use. A call still pending takes the box along.
    fn start_in(
        &self,
        args: &mut Args<'_>,
        call: &Call<'_>,
        slot: &mut Slot,
    ) -> Result<Dispatch, ServerError>;
}

/// [`TypedAsync`] for `call`, which decodes the arguments and makes the future; its output
/// becomes a reply by `reply`.
struct TypedAsyncFn<C, Fut: Future> {
    call: C,
    reply: fn(Fut::Output) -> Reply,
}

/// A kept box: empty between calls.
type Kept<Fut> = Pin<Box<Option<Fut>>>;

/// A call that was still pending at its first poll, in the box it started in.
struct Resumed<Fut: Future> {
    fut: Kept<Fut>,
    reply: fn(Fut::Output) -> Reply,
}

impl<Fut: Future> Future for Resumed<Fut> {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let reply = self.reply;
        match self.fut.as_mut().as_pin_mut() {
            Some(fut) => fut.poll(cx).map(reply),
            None => panic!("a resumed call polled after it finished"),
        }
    }
}

impl<C, Fut> TypedAsync for TypedAsyncFn<C, Fut>
where
    C: Fn(&mut Args<'_>, &Call<'_>) -> Result<Fut, ServerError> + Send + Sync,
    Fut: Future + Send + 'static,
{
    fn boxed(&self, args: &mut Args<'_>, call: &Call<'_>) -> Result<ReplyFuture, ServerError> {
        let fut = (self.call)(args, call)?;
        let reply = self.reply;
        Ok(Box::pin(async move { reply(fut.await) }))
    }

    fn start_in(
        &self,
        args: &mut Args<'_>,
        call: &Call<'_>,
        slot: &mut Slot,
    ) -> Result<Dispatch, ServerError> {
        let fut = (self.call)(args, call)?;
        let kept = match slot.as_mut().and_then(|b| b.downcast_mut::<Kept<Fut>>()) {
            Some(kept) => kept,
            // Unwrap: the box was just made with this type.
            None => slot
                .insert(Box::new(Box::pin(None::<Fut>)))
                .downcast_mut::<Kept<Fut>>()
                .unwrap(),
        };
        kept.set(Some(fut));
        let mut cx = Context::from_waker(Waker::noop());
        // Unwrap: the future was put in just above.
        match kept.as_mut().as_pin_mut().unwrap().poll(&mut cx) {
            Poll::Ready(out) => {
                kept.set(None);
                Ok(Dispatch::Ready((self.reply)(out)))
            }
            Poll::Pending => {
                // Unwraps: the slot holds a `Kept<Fut>` (found or made above).
                let fut = *slot.take().unwrap().downcast::<Kept<Fut>>().unwrap();
                Ok(Dispatch::Pending(Box::pin(Resumed {
                    fut,
                    reply: self.reply,
                })))
            }
        }
    }
}

/// A set of methods served together, sharing one instance: what `#[easyrpc::service]`
/// implements for an impl block. Give one to [`Builder::service`](crate::Builder::service).
pub trait Service: Send + Sync + 'static {
    /// The methods, each holding a handle on the instance.
    fn methods(self: Arc<Self>) -> Vec<Method>;
}

/// A function to serve under a name.
///
/// `#[register]` generates one for each annotated function (`add::method()`); the
/// constructors here build one at run time from a closure, without the macro.
///
/// ```
/// use easyrpc_server::Method;
///
/// let add = Method::sync_fn("add", |(a, b): (i64, i64)| a + b);
/// let fib = Method::async_fn("fib", |(n,): (u64,)| async move { n * 2 }).max_flow(100);
/// assert_eq!(add.name(), "add");
/// ```
#[derive(Clone)]
pub struct Method {
    pub(crate) name: Cow<'static, str>,
    pub(crate) kind: Kind,
    pub(crate) max_flow: Option<usize>,
    pub(crate) max_flow_wait: Option<Duration>,
    pub(crate) unstable_network: Option<bool>,
    /// A sync function run in the connection's task, not on the blocking pool.
    pub(crate) inline: bool,
    /// The function takes a [`Context`](crate::Context): its calls get a cancellation
    /// token.
    pub(crate) context: bool,
    /// What `rpc.methods` says of it: wire arguments, return type, doc summary.
    pub(crate) signature: Option<Arc<Signature>>,
    /// How it streams (`""`: not at all).
    pub(crate) streaming: &'static str,
    /// A sync function's result stream, whose iterator runs on the blocking pool (the
    /// method itself is async): `rpc.methods` says `sync`.
    pub(crate) sync_items: bool,
}

/// A method's signature and doc summary, for `rpc.methods`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Signature {
    pub(crate) args: Vec<(String, String)>,
    pub(crate) returns: String,
    pub(crate) doc: String,
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.name)
            .field("sync", &(matches!(self.kind, Kind::Sync(_)) || self.sync_items))
            .field("context", &self.context)
            .field("signature", &self.signature)
            .field("max_flow", &self.max_flow)
            .field("max_flow_wait", &self.max_flow_wait)
            .field("unstable_network", &self.unstable_network)
            .finish()
    }
}

impl Method {
    /// A sync function taking raw [`Args`]: `f` decodes the arguments (on the connection's
    /// task) and returns the job to run on the blocking pool.
    pub fn sync_raw<F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        F: Fn(&mut Args<'_>) -> Result<SyncJob, ServerError> + Send + Sync + 'static,
    {
        Method::sync_parts(name, move |args, _| f(args))
    }

    /// [`Method::sync_raw`] whose `f` also sees the call (what `#[register]` generates).
    #[doc(hidden)]
    pub fn sync_parts<F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        F: Fn(&mut Args<'_>, &Call<'_>) -> Result<SyncJob, ServerError> + Send + Sync + 'static,
    {
        Method::of(name, Kind::Sync(Arc::new(f)))
    }

    fn of(name: impl Into<Cow<'static, str>>, kind: Kind) -> Method {
        Method {
            name: name.into(),
            kind,
            max_flow: None,
            max_flow_wait: None,
            unstable_network: None,
            inline: false,
            context: false,
            signature: None,
            streaming: "",
            sync_items: false,
        }
    }

    /// Describe the method for the reserved `rpc.methods` call: its wire arguments (name
    /// and Rust type as written), its return type and the summary of its doc (the first paragraph).
    /// `#[register]` and `#[easyrpc::service]` fill this in; for a method built from a closure,
    /// call it by hand, or `rpc.methods` shows its types as `?`.
    ///
    /// ```
    /// use easyrpc_server::Method;
    ///
    /// let add = Method::sync_fn("add", |(a, b): (i64, i64)| a + b)
    ///     .describe(&[("a", "i64"), ("b", "i64")], "i64", "Adds two numbers.");
    /// ```
    pub fn describe(mut self, args: &[(&str, &str)], returns: &str, doc: &str) -> Method {
        self.signature = Some(Arc::new(Signature {
            args: args
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
            returns: returns.to_owned(),
            doc: doc.lines().next().unwrap_or_default().trim().to_owned(),
        }));
        self
    }

    /// A method made when the server is built, from its states (what `#[register]`
    /// generates for a function taking `State<T>`): `bind` takes the states it needs, and
    /// fails with [`BuildError::MissingState`] when one is missing. The options set on the
    /// returned method (name aside) are replaced by the ones set on this one.
    #[doc(hidden)]
    pub fn bind<F>(name: impl Into<Cow<'static, str>>, bind: F) -> Method
    where
        F: Fn(&States) -> Result<Method, BuildError> + Send + Sync + 'static,
    {
        Method::of(name, Kind::Unbound(Arc::new(bind)))
    }

    /// Mark the function as taking a [`Context`](crate::Context) (what `#[register]`
    /// generates): its calls get a cancellation token.
    #[doc(hidden)]
    pub fn takes_context(mut self) -> Method {
        self.context = true;
        self
    }

    /// A sync closure taking the call's [`Context`](crate::Context) and its arguments as
    /// one tuple; it runs on the blocking pool.
    ///
    /// ```
    /// use easyrpc_server::{Context, Method};
    ///
    /// let whoami = Method::sync_context_fn("whoami", |ctx: Context, (): ()| ctx.peer().to_string());
    /// ```
    pub fn sync_context_fn<A, R, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(CallContext, A) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        Method::sync_parts(name, move |args, call| {
            let a = A::from_args(args)?;
            let (f, ctx) = (f.clone(), call.context());
            Ok(Box::new(move || Reply::ok(f(ctx, a))))
        })
        .takes_context()
    }

    /// An async closure taking the call's [`Context`](crate::Context) and its arguments as
    /// one tuple.
    pub fn async_context_fn<A, R, Fut, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs,
        R: Serialize + Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
        F: Fn(CallContext, A) -> Fut + Send + Sync + 'static,
    {
        let call = TypedAsyncFn {
            call: move |args: &mut Args<'_>, call: &Call<'_>| Ok(f(call.context(), A::from_args(args)?)),
            reply: Reply::ok::<R>,
        };
        Method::typed_async(name, call).takes_context()
    }

    /// An async function taking raw [`Args`]: `f` decodes the arguments and returns the
    /// future to run.
    pub fn async_raw<F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        F: Fn(&mut Args<'_>) -> Result<ReplyFuture, ServerError> + Send + Sync + 'static,
    {
        Method::of(
            name,
            Kind::Async(Arc::new(move |args: &mut Args<'_>, _: &Call<'_>| f(args))),
        )
    }

    /// A sync closure taking its arguments as one tuple; it runs on the blocking pool.
    pub fn sync_fn<A, R, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        Method::sync_raw(name, move |args| {
            let a = A::from_args(args)?;
            let f = f.clone();
            Ok(Box::new(move || Reply::ok(f(a))))
        })
    }

    /// Like [`Method::sync_fn`] for a closure returning `Result<T, E>`: an `Err` reaches the
    /// caller as [`ErrorCode::HandlerError`] with `E`'s message. For an `E` that is
    /// `Serialize`, [`Method::typed_sync_fn`] sends the error itself too.
    pub fn try_sync_fn<A, T, E, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs + Send + 'static,
        T: Serialize + Send + 'static,
        E: fmt::Display,
        F: Fn(A) -> Result<T, E> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        Method::sync_raw(name, move |args| {
            let a = A::from_args(args)?;
            let f = f.clone();
            Ok(Box::new(move || Reply::from_result(f(a))))
        })
    }

    /// An async closure taking its arguments as one tuple.
    pub fn async_fn<A, R, Fut, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs,
        R: Serialize + Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
    {
        let call = TypedAsyncFn {
            call: move |args: &mut Args<'_>, _: &Call<'_>| Ok(f(A::from_args(args)?)),
            reply: Reply::ok::<R>,
        };
        Method::typed_async(name, call)
    }

    /// Like [`Method::async_fn`] for a future resolving to `Result<T, E>`. For an `E` that is
    /// `Serialize`, [`Method::typed_async_fn`] sends the error itself too.
    pub fn try_async_fn<A, T, E, Fut, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs,
        T: Serialize + Send + 'static,
        E: fmt::Display,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
    {
        let call = TypedAsyncFn {
            call: move |args: &mut Args<'_>, _: &Call<'_>| Ok(f(A::from_args(args)?)),
            reply: Reply::from_result::<T, E>,
        };
        Method::typed_async(name, call)
    }

    /// Like [`Method::try_sync_fn`] for an error type that is also `Serialize`: an `Err(e)`
    /// reaches the caller as [`ErrorCode::HandlerError`] with `e`'s message and `e` itself
    /// as the error's data ([`Reply::typed_err`]), which a typed stub decodes back into
    /// `easyrpc::CallError::Handler(e)`.
    ///
    /// ```
    /// use easyrpc_server::Method;
    ///
    /// let get = Method::typed_sync_fn("get", |(id,): (u64,)| -> Result<String, String> {
    ///     Err(format!("todo {id} not found"))
    /// });
    /// assert_eq!(get.name(), "get");
    /// ```
    pub fn typed_sync_fn<A, T, E, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs + Send + 'static,
        T: Serialize + Send + 'static,
        E: Serialize + fmt::Display + Send + 'static,
        F: Fn(A) -> Result<T, E> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        Method::sync_raw(name, move |args| {
            let a = A::from_args(args)?;
            let f = f.clone();
            Ok(Box::new(move || Reply::from_typed_result(f(a))))
        })
    }

    /// Like [`Method::try_async_fn`] for an error type that is also `Serialize`, as
    /// [`Method::typed_sync_fn`].
    ///
    /// ```
    /// use easyrpc_server::Method;
    ///
    /// let get = Method::typed_async_fn("get", |(id,): (u64,)| async move {
    ///     if id == 1 { Ok("write the tests".to_owned()) } else { Err(format!("todo {id} not found")) }
    /// });
    /// assert_eq!(get.name(), "get");
    /// ```
    pub fn typed_async_fn<A, T, E, Fut, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs,
        T: Serialize + Send + 'static,
        E: Serialize + fmt::Display + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
    {
        let call = TypedAsyncFn {
            call: move |args: &mut Args<'_>, _: &Call<'_>| Ok(f(A::from_args(args)?)),
            reply: Reply::from_typed_result::<T, E>,
        };
        Method::typed_async(name, call)
    }

    /// A function whose result is a stream: each item reaches the caller as it is produced,
    /// under the caller's credit (a slow reader holds the stream back, nothing else), and
    /// the call ends with the stream. `f` takes the arguments as one tuple and returns the
    /// stream. `#[register]` makes one of an `async fn` returning `impl Stream<Item = T>`.
    /// Only for callers whose hello agreed streams (easyrpc's clients); a plain
    /// MessagePack-RPC call gets [`ErrorCode::StreamingMethod`](crate::ErrorCode::StreamingMethod).
    ///
    /// ```
    /// use easyrpc_server::Method;
    ///
    /// let countdown = Method::stream_fn("countdown", |(n,): (u32,)| {
    ///     futures_util::stream::iter((0..n).rev())
    /// });
    /// ```
    pub fn stream_fn<A, T, S, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs,
        T: Serialize + Send + 'static,
        S: Stream<Item = T> + Send + 'static,
        F: Fn(A) -> S + Send + Sync + 'static,
    {
        Method::async_parts(
            name,
            move |args: &mut Args<'_>, call: &Call<'_>| {
                let a = A::from_args(args)?;
                let out = StreamOut::open(call)?;
                Ok(out.send(crate::stream::ok_items(f(a))))
            },
            std::convert::identity,
        )
        .streams("result")
    }

    /// Like [`Method::stream_fn`] for a stream of `Result<T, E>`: an `Err` item ends the
    /// stream, and the call, with [`ErrorCode::HandlerError`] and `E`'s message.
    pub fn try_stream_fn<A, T, E, S, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs,
        T: Serialize + Send + 'static,
        E: fmt::Display + Send + 'static,
        S: Stream<Item = Result<T, E>> + Send + 'static,
        F: Fn(A) -> S + Send + Sync + 'static,
    {
        Method::async_parts(
            name,
            move |args: &mut Args<'_>, call: &Call<'_>| {
                let a = A::from_args(args)?;
                let out = StreamOut::open(call)?;
                Ok(out.send(crate::stream::try_items(f(a))))
            },
            std::convert::identity,
        )
        .streams("result")
    }

    /// A sync function whose result is a stream: `f` returns an iterator, and both run on
    /// the blocking pool, which the call holds until the iterator ends (it waits there
    /// while the caller reads slowly). `#[register]` makes one of a `fn` returning
    /// `impl Iterator<Item = T>`.
    ///
    /// ```
    /// use easyrpc_server::Method;
    ///
    /// let lines = Method::sync_stream_fn("lines", |(n,): (u32,)| (0..n).map(|i| format!("line {i}")));
    /// ```
    pub fn sync_stream_fn<A, T, I, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs + Send + 'static,
        T: Serialize + Send + 'static,
        I: IntoIterator<Item = T> + 'static,
        F: Fn(A) -> I + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let name: Cow<'static, str> = name.into();
        let label: Arc<str> = Arc::from(&*name);
        Method::async_parts(
            name,
            move |args: &mut Args<'_>, call: &Call<'_>| {
                let a = A::from_args(args)?;
                let out = StreamOut::open(call)?;
                let f = f.clone();
                let items = crate::stream::from_iter(label.clone(), move || f(a).into_iter().map(Ok));
                Ok(out.send(items))
            },
            std::convert::identity,
        )
        .streams("result")
        .sync_items()
    }

    /// A function that takes a stream from its caller ([`Streaming`]) besides its
    /// arguments, and answers one value: an upload. `#[register]` makes one of an
    /// `async fn` taking a `Streaming<T>` argument.
    ///
    /// ```
    /// use easyrpc_server::{Method, Streaming};
    /// use futures_util::StreamExt;
    ///
    /// let count = Method::upload_fn("count", |(): (), items: Streaming<String>| async move {
    ///     items.count().await
    /// });
    /// ```
    pub fn upload_fn<A, U, R, Fut, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs,
        U: DeserializeOwned + 'static,
        R: Serialize + Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
        F: Fn(A, Streaming<U>) -> Fut + Send + Sync + 'static,
    {
        Method::async_parts(
            name,
            move |args: &mut Args<'_>, call: &Call<'_>| {
                let a = A::from_args(args)?;
                Ok(f(a, Streaming::open(call)?))
            },
            Reply::ok::<R>,
        )
        .streams("args")
    }

    /// Like [`Method::upload_fn`] for a sync function: it runs on the blocking pool and
    /// reads its items with [`Streaming::blocking_iter`].
    ///
    /// ```
    /// use easyrpc_server::{Method, Streaming};
    ///
    /// let longest = Method::sync_upload_fn("longest", |(): (), mut lines: Streaming<String>| {
    ///     lines.blocking_iter().filter_map(Result::ok).map(|l| l.len()).max().unwrap_or(0)
    /// });
    /// ```
    pub fn sync_upload_fn<A, U, R, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs + Send + 'static,
        U: DeserializeOwned + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A, Streaming<U>) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        Method::sync_parts(name, move |args, call| {
            let a = A::from_args(args)?;
            let items = Streaming::open(call)?;
            let f = f.clone();
            Ok(Box::new(move || Reply::ok(f(a, items))))
        })
        .streams("args")
    }

    /// A two-way stream: the function takes a stream from its caller ([`Streaming`]) and
    /// returns one, each flowing under its receiver's credit.
    ///
    /// ```
    /// use easyrpc_server::{Method, Streaming};
    /// use futures_util::StreamExt;
    ///
    /// // Each number sent back doubled, as it comes.
    /// let double = Method::bidi_fn("double", |(): (), items: Streaming<i64>| {
    ///     items.filter_map(|n| async move { n.ok().map(|n| n * 2) })
    /// });
    /// ```
    pub fn bidi_fn<A, U, T, S, F>(name: impl Into<Cow<'static, str>>, f: F) -> Method
    where
        A: FromArgs,
        U: DeserializeOwned + 'static,
        T: Serialize + Send + 'static,
        S: Stream<Item = T> + Send + 'static,
        F: Fn(A, Streaming<U>) -> S + Send + Sync + 'static,
    {
        Method::async_parts(
            name,
            move |args: &mut Args<'_>, call: &Call<'_>| {
                let a = A::from_args(args)?;
                let items = Streaming::open(call)?;
                let out = StreamOut::open(call)?;
                Ok(out.send(crate::stream::ok_items(f(a, items))))
            },
            std::convert::identity,
        )
        .streams("both")
    }

    /// Say how the method streams, for `rpc.methods`: `"result"`, `"args"` or `"both"`
    /// (what `#[register]` generates). Streaming methods never use the dedup cache.
    #[doc(hidden)]
    pub fn streams(mut self, how: &'static str) -> Method {
        self.streaming = how;
        // A stream is not an answer the dedup cache could keep and replay: streaming
        // functions are out of a server-wide `unstable_network`.
        self.unstable_network = Some(false);
        self
    }

    /// Say that the function is sync, its result stream's iterator running on the blocking
    /// pool, for `rpc.methods` (what `#[register]` generates for a sync function returning
    /// `impl Iterator`).
    #[doc(hidden)]
    pub fn sync_items(mut self) -> Method {
        self.sync_items = true;
        self
    }

    /// An async method from its two halves: `call` decodes the arguments and makes the
    /// future, `reply` turns the future's output into the reply. This is what
    /// `#[register]` generates for an `async fn`; like [`Method::async_fn`], a call that
    /// finishes at its first poll allocates nothing.
    #[doc(hidden)]
    pub fn async_parts<Fut, C>(
        name: impl Into<Cow<'static, str>>,
        call: C,
        reply: fn(Fut::Output) -> Reply,
    ) -> Method
    where
        C: Fn(&mut Args<'_>, &Call<'_>) -> Result<Fut, ServerError> + Send + Sync + 'static,
        Fut: Future + Send + 'static,
    {
        Method::typed_async(name, TypedAsyncFn { call, reply })
    }

    fn typed_async(name: impl Into<Cow<'static, str>>, call: impl TypedAsync + 'static) -> Method {
        Method::of(name, Kind::TypedAsync(Arc::new(call)))
    }

    /// At most `n` executions of this function run at once; call `n + 1` is answered
    /// [`ErrorCode::Overloaded`] at once and does not run.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn max_flow(mut self, n: usize) -> Method {
        assert!(n > 0, "max_flow must be at least 1");
        self.max_flow = Some(n.min(Semaphore::MAX_PERMITS));
        self
    }

    /// With [`Method::max_flow`]: a call beyond the limit waits up to `wait` for a slot
    /// before it is answered [`ErrorCode::Overloaded`].
    pub fn max_flow_wait(mut self, wait: Duration) -> Method {
        self.max_flow_wait = Some(wait);
        self
    }

    /// Turn the dedup cache on (or off) for this function whatever the server's
    /// `unstable_network` setting: calls from a client session then run at most once per
    /// msgid, and a retry gets the first answer.
    pub fn unstable_network(mut self, on: bool) -> Method {
        self.unstable_network = Some(on);
        self
    }

    /// Run this sync function in the connection's task, as an async function that
    /// answers at once is, instead of on the blocking pool: no hand-off to another thread,
    /// so a call costs what an async one does (about 2.4 times less sequential latency for
    /// a small function, client and server on one core). **Only for functions that never
    /// block**: no I/O, no sleeping, no lock held for long, short CPU work. While an
    /// inline function runs, nothing else runs on that runtime thread: every connection
    /// it serves waits. No effect on async functions (they always run in the task).
    /// `#[register(inline)]` sets it.
    pub fn inline(mut self, on: bool) -> Method {
        self.inline = on;
        self
    }

    /// The name the function is served under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded<T: Serialize + Clone + Send + 'static>(codec: Codec, v: T) -> (Vec<u8>, bool) {
        let value = Value::new(v.clone());
        let boxed = matches!(value, Value::Boxed(_));
        let mut inline = Vec::new();
        value.encode_value(codec, &mut inline).unwrap();
        let mut direct = Vec::new();
        codec.encode(&mut direct, &v).unwrap();
        assert_eq!(inline, direct, "{}", std::any::type_name::<T>());
        (inline, boxed)
    }

    #[test]
    fn small_values_are_inline_and_encode_as_themselves() {
        for codec in [Codec::Msgpack, Codec::Bincode] {
            assert!(!encoded(codec, ()).1);
            assert!(!encoded(codec, true).1);
            assert!(!encoded(codec, false).1);
            for v in [0, 1, 127, 128, -1, -32, -33, -129, i32::MIN, i32::MAX] {
                assert!(!encoded(codec, v).1);
            }
            for v in [
                0,
                5,
                -5,
                255,
                65_536,
                -40_000,
                i64::from(i32::MIN) - 1,
                i64::MIN,
                i64::MAX,
            ] {
                assert!(!encoded(codec, v).1);
            }
            for v in [0, 127, 128, 255, 256, 65_535, 65_536, u32::MAX] {
                assert!(!encoded(codec, v).1);
            }
            for v in [0, 300, u64::from(u32::MAX) + 1, u64::MAX] {
                assert!(!encoded(codec, v).1);
            }
            for v in [0.0, -1.5, f64::MAX, f64::INFINITY] {
                assert!(!encoded(codec, v).1);
            }
            for n in [0, 1, 31, 32, 255, 256, 65_536] {
                assert!(!encoded(codec, "é".repeat(n)).1);
            }
            // Anything else is boxed, and encodes the same.
            assert!(encoded(codec, 7u8).1);
            assert!(encoded(codec, 1.5f32).1);
            assert!(encoded(codec, vec![1i64, 2]).1);
            assert!(encoded(codec, Some(3i64)).1);
        }
    }
}
