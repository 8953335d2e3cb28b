//! The table from method name to handler, and dispatch of one call.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a over method names. The table is built once from the server's own names and only
/// looked up afterwards, so a peer's chosen names cannot degrade it (no inserts), and
/// SipHash's protection would cost a fifth of dispatch for nothing.
pub(crate) struct NameHasher(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl Default for NameHasher {
    fn default() -> NameHasher {
        NameHasher(FNV_OFFSET)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
        }
    }

    /// The length that `[u8]` hashes ahead of its bytes: one step, not eight bytes' worth.
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(FNV_PRIME);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use easyrpc_proto::reserved::MethodDescription;
use easyrpc_proto::{Args, Codec, ServerError};

use crate::blocking::{panicked, BlockingPool, Guarded};
use crate::limits::{overloaded, Limit, LocalLimit, Permit};
use tokio_util::sync::CancellationToken;

use crate::context::{Call, CallParts, CancelOnDrop, ConnInfo};
use crate::layer::{CallRequest, LayerFn, Layered};
use crate::method::{Kind, Method, Reply, ReplyFuture, Slot, SyncJob};
use crate::state::States;
use crate::BuildError;

/// Reserved method answering `nil`: our clients' heartbeat.
pub(crate) const PING: &str = easyrpc_proto::reserved::PING;
/// Reserved notification `[msgid]`: the client gave up on that call.
pub(crate) const CANCEL: &[u8] = easyrpc_proto::reserved::CANCEL.as_bytes();
/// Reserved method answering `{"index": i, "pid": p}`: the worker process serving this
/// connection (the index the server was built with, `Shared::worker`), so tests and
/// users can see where a connection landed. One process answers index 0.
pub(crate) const WORKER: &str = easyrpc_proto::reserved::WORKER;

/// The answer of `rpc.worker`: which worker process serves the connection.
fn worker_info(index: usize) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([("index", index as u64), ("pid", u64::from(std::process::id()))])
}

/// Reserved method answering `"serving"` or `"draining"`.
pub(crate) const HEALTH: &str = easyrpc_proto::reserved::HEALTH;
/// Reserved method answering the methods' descriptions.
pub(crate) const METHODS: &str = easyrpc_proto::reserved::METHODS;

/// The answer of `rpc.methods`: every user method, by name.
fn describe(methods: &[Method]) -> Vec<MethodDescription> {
    let mut out: Vec<MethodDescription> = methods
        .iter()
        .map(|m| {
            let mut d = MethodDescription::new(&*m.name);
            d.sync = matches!(m.kind, Kind::Sync(_)) || m.sync_items;
            d.max_flow = m.max_flow;
            m.streaming.clone_into(&mut d.streaming);
            match &m.signature {
                Some(s) => {
                    d.args.clone_from(&s.args);
                    d.returns.clone_from(&s.returns);
                    d.doc.clone_from(&s.doc);
                }
                None => d.args = vec![("?".into(), "?".into())],
            }
            d
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Makes the `max_flow` limit of a method, from its name and limit; see `Parts`.
pub(crate) type MakeLimit<'a> = &'a dyn Fn(&str, usize) -> Arc<dyn Limit>;

#[derive(Clone)]
struct Entry {
    kind: Kind,
    /// The `max_flow` limit, if any. Permits travel with the execution.
    flow: Option<Arc<dyn Limit>>,
    flow_wait: Option<Duration>,
    dedup: bool,
    /// A sync function run in the connection's task ([`Method::inline`]).
    inline: bool,
    /// The function takes a context: its calls get a cancellation token.
    context: bool,
    name: Arc<str>,
    /// Where this method's box is in a connection's [`Slots`].
    index: usize,
}

/// A connection's kept boxes for typed async calls, one per method (see `TypedAsync`),
/// and the method it called last.
#[derive(Default)]
pub(crate) struct Slots {
    boxes: Vec<Slot>,
    /// The index of the method dispatched last on this connection (0, `rpc.ping`, before
    /// the first call).
    last: usize,
}

impl Slots {
    fn get(&mut self, index: usize) -> &mut Slot {
        if index >= self.boxes.len() {
            self.boxes.resize_with(index + 1, || None);
        }
        &mut self.boxes[index]
    }
}

/// Every method of a server, immutable once built: dispatch takes no lock.
pub(crate) struct Registry {
    table: Table,
    /// What calls go through besides the table (per-method rules, layers), if anything.
    /// Tested once per call, as layers alone were before rules existed: a server without
    /// either takes the same path as then (one comparison with memory; callgrind counts
    /// the same instructions per call as before rules).
    guards: Option<Box<Guards>>,
}

/// What a server's calls go through before the table, when it has any of it.
struct Guards {
    /// The server's layers around dispatch, if it has any.
    layered: Option<Layered>,
    /// The server has per-method rules: a connection's refused methods
    /// (`ConnInfo::denied`) are answered "permission denied".
    rules: bool,
}

impl Registry {
    /// A call of a user method on a server with guards: refused (per-method rules), or
    /// through the layers, or straight to the table.
    ///
    /// It takes what the layers alone took (not the connection's kept boxes: passing
    /// them cost the common path 6 instructions a call, in register moves), so a call that
    /// is let through runs as on the layered path, its future boxed. Inlined (callgrind,
    /// server 1 x 64: 817 instructions per call without guards, against 827 before rules
    /// and 818 with this out of line; with one layer 3 710, against 3 690 and 3 733).
    #[inline(always)]
    fn dispatch_guarded(&self, method: &[u8], params: &[u8], codec: Codec, parts: CallParts<'_>) -> Dispatch {
        let (table, Some(guards)) = (&self.table, &self.guards) else {
            unreachable!("dispatch_guarded without guards")
        };
        if guards.rules {
            if let Some(refused) = table.refused(method, parts) {
                return refused;
            }
        }
        if let Some(layered) = &guards.layered {
            return layered.dispatch(table, method, params, codec, parts);
        }
        let Some(entry) = table.lookup(method) else {
            return Dispatch::Ready(Reply::err(ServerError::method_not_found(method)));
        };
        let token = entry.context.then(CancellationToken::new);
        let call = Call {
            method: &entry.name,
            parts,
            cancel: token.as_ref(),
            context: None,
        };
        match (table.run(entry, params, codec, None, &call), token) {
            (Dispatch::Pending(fut), Some(token)) => Dispatch::Pending(Box::pin(CancelOnDrop {
                fut,
                token: Some(token),
            })),
            (dispatch, _) => dispatch,
        }
    }
}

/// The methods, by name, and where sync ones run.
#[derive(Clone)]
pub(crate) struct Table {
    /// The methods, at their `index`.
    entries: Vec<Entry>,
    /// Each method's index in `entries`, by name.
    methods: HashMap<Box<[u8]>, usize, BuildHasherDefault<NameHasher>>,
    /// Where sync handlers run.
    blocking: BlockingPool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.table.entries.iter().map(|e| &*e.name).collect();
        names.sort_unstable();
        f.debug_struct("Registry")
            .field("methods", &names)
            .field(
                "layered",
                &self.guards.as_ref().is_some_and(|g| g.layered.is_some()),
            )
            .field("rules", &self.guards.as_ref().is_some_and(|g| g.rules))
            .finish()
    }
}

/// The outcome of dispatching one call.
pub(crate) enum Dispatch {
    /// Finished on the spot.
    Ready(Reply),
    /// Still running: poll it to completion.
    Pending(ReplyFuture),
}

/// A call with its arguments decoded, not yet started.
enum Work {
    Async(ReplyFuture),
    Sync(SyncJob),
    /// A sync function marked inline: run in the connection's task.
    Inline(SyncJob),
}

/// How a registry is built: besides the methods, what the builder and the deployment
/// mode supply.
pub(crate) struct Setup<'a> {
    pub(crate) blocking_threads: usize,
    pub(crate) unstable_network: bool,
    /// The index `rpc.worker` answers.
    pub(crate) worker: usize,
    /// Makes each `max_flow` limit (default: a semaphore).
    pub(crate) limit: Option<MakeLimit<'a>>,
    pub(crate) states: &'a States,
    pub(crate) layers: &'a [LayerFn],
    /// The server has per-method rules.
    pub(crate) method_rules: bool,
    /// Set when the server starts draining: `rpc.health` says so.
    pub(crate) draining: Arc<AtomicBool>,
}

impl Registry {
    /// The registry of `methods`, for tests: one process, semaphores for `max_flow`.
    #[cfg(test)]
    pub(crate) fn new(
        methods: Vec<Method>,
        blocking_threads: usize,
        unstable_network: bool,
    ) -> Result<Registry, BuildError> {
        Registry::build(
            methods,
            Setup {
                blocking_threads,
                unstable_network,
                worker: 0,
                limit: None,
                states: &States::empty(),
                layers: &[],
                method_rules: false,
                draining: Arc::default(),
            },
        )
    }

    /// The registry of `methods` plus the reserved ones. Methods taking states get them
    /// here.
    pub(crate) fn build(methods: Vec<Method>, setup: Setup<'_>) -> Result<Registry, BuildError> {
        let mut map = HashMap::with_capacity_and_hasher(methods.len() + 2, BuildHasherDefault::default());
        let mut entries = Vec::with_capacity(methods.len() + 2);
        let worker = setup.worker;
        let ping = Method::async_raw(PING, |_| Ok(Box::pin(std::future::ready(Reply::ok(())))));
        let worker = Method::async_raw(WORKER, move |_| {
            Ok(Box::pin(std::future::ready(Reply::ok(worker_info(worker)))))
        });
        let draining = setup.draining.clone();
        let health = Method::async_raw(HEALTH, move |_| {
            let state = if draining.load(Ordering::Relaxed) {
                "draining"
            } else {
                "serving"
            };
            Ok(Box::pin(std::future::ready(Reply::ok(state))))
        });
        // Methods taking states get them now: then each is sync or async, as `rpc.methods`
        // says.
        let mut methods = methods;
        for m in &mut methods {
            while let Kind::Unbound(bind) = &m.kind {
                let bound = bind(setup.states)?;
                m.kind = bound.kind;
                m.context |= bound.context;
                m.inline |= bound.inline;
                if m.streaming.is_empty() {
                    m.streaming = bound.streaming;
                }
                m.sync_items |= bound.sync_items;
            }
        }
        let descriptions = Arc::new(describe(&methods));
        let list = Method::async_raw(METHODS, move |_| {
            Ok(Box::pin(std::future::ready(Reply::ok((*descriptions).clone()))))
        });
        let reserved = [ping, worker, health, list];
        let reserved_count = reserved.len();
        for (index, m) in reserved.into_iter().chain(methods).enumerate() {
            let key: Box<[u8]> = m.name.as_bytes().into();
            if map.contains_key(&key) || *key == *CANCEL {
                return Err(BuildError::DuplicateMethod(m.name.into_owned()));
            }
            // Reserved methods answer about this process: never from the cache.
            let is_reserved = index < reserved_count;
            map.insert(key, index);
            entries.push(Entry {
                kind: m.kind,
                flow: m.max_flow.map(|n| match setup.limit {
                    Some(make) => make(&m.name, n),
                    None => Arc::new(LocalLimit::new(n)) as Arc<dyn Limit>,
                }),
                flow_wait: m.max_flow_wait,
                dedup: !is_reserved
                    && m.streaming.is_empty()
                    && m.unstable_network.unwrap_or(setup.unstable_network),
                inline: m.inline,
                context: m.context,
                name: Arc::from(&*m.name),
                index,
            });
        }
        let table = Table {
            entries,
            methods: map,
            blocking: BlockingPool::new(setup.blocking_threads),
        };
        let layers = (!setup.layers.is_empty()).then(|| Layered::new(Arc::new(table.clone()), setup.layers));
        let guards = (layers.is_some() || setup.method_rules).then(|| {
            Box::new(Guards {
                layered: layers,
                rules: setup.method_rules,
            })
        });
        Ok(Registry { table, guards })
    }

    /// Every method's index and name (the reserved ones included).
    pub(crate) fn names(&self) -> impl Iterator<Item = (usize, &str)> {
        self.table.entries.iter().map(|e| (e.index, &*e.name))
    }

    /// The index of `method` (as [`Registry::names`] numbers them), trying the calling
    /// connection's last method first, as dispatch does (which then finds it at once).
    #[inline]
    pub(crate) fn index(&self, method: &[u8], slots: &mut Slots) -> Option<usize> {
        self.table.entry(method, &mut slots.last).map(|e| e.index)
    }

    /// Whether any method goes through the dedup cache (prefork sets up its shared store
    /// only then).
    #[cfg_attr(not(all(unix, feature = "prefork")), allow(dead_code))]
    pub(crate) fn any_dedup(&self) -> bool {
        self.table.entries.iter().any(|e| e.dedup)
    }

    pub(crate) fn contains(&self, method: &[u8]) -> bool {
        self.table.methods.contains_key(method)
    }

    /// Whether calls of `method` from a session go through the dedup cache.
    pub(crate) fn dedup(&self, method: &[u8]) -> bool {
        self.table
            .methods
            .get(method)
            .is_some_and(|&i| self.table.entries[i].dedup)
    }

    /// Decode the arguments and start the call. An async handler is polled once here: if
    /// it finishes at once, no task or queue is involved. `slots` are the calling
    /// connection's.
    pub(crate) fn dispatch(
        &self,
        method: &[u8],
        params: &[u8],
        codec: Codec,
        slots: &mut Slots,
        parts: CallParts<'_>,
    ) -> Dispatch {
        if self.guards.is_some() && !method.starts_with(easyrpc_proto::RESERVED_PREFIX.as_bytes()) {
            return self.dispatch_guarded(method, params, codec, parts);
        }
        let Some(entry) = self.table.entry(method, &mut slots.last) else {
            return Dispatch::Ready(Reply::err(ServerError::method_not_found(method)));
        };
        if entry.context {
            return self.table.run_with_context(entry, params, codec, slots, parts);
        }
        let call = Call {
            method: &entry.name,
            parts,
            cancel: None,
            context: None,
        };
        self.table.run(entry, params, codec, Some(slots), &call)
    }

    /// [`Registry::dispatch`], also saying which method was called (its index; `None`:
    /// no such method), for metrics: the name is looked up once. A copy rather than the
    /// body of `dispatch`, so that a server without metrics runs the same code as before.
    pub(crate) fn dispatch_indexed(
        &self,
        method: &[u8],
        params: &[u8],
        codec: Codec,
        slots: &mut Slots,
        parts: CallParts<'_>,
    ) -> (Option<usize>, Dispatch) {
        if self.guards.is_some() && !method.starts_with(easyrpc_proto::RESERVED_PREFIX.as_bytes()) {
            let index = self.table.lookup(method).map(|e| e.index);
            return (index, self.dispatch_guarded(method, params, codec, parts));
        }
        let Some(entry) = self.table.entry(method, &mut slots.last) else {
            return (
                None,
                Dispatch::Ready(Reply::err(ServerError::method_not_found(method))),
            );
        };
        let index = Some(entry.index);
        if entry.context {
            return (
                index,
                self.table.run_with_context(entry, params, codec, slots, parts),
            );
        }
        let call = Call {
            method: &entry.name,
            parts,
            cancel: None,
            context: None,
        };
        (index, self.table.run(entry, params, codec, Some(slots), &call))
    }
}

impl Table {
    /// The entry for `method`. `last` is the calling connection's last method, tried
    /// first: a connection mostly calls one method many times in a row (a pipelined
    /// batch), and one comparison then replaces hashing the name and probing the table
    /// (50 instructions a call, a twentieth of the server's, for a pipelined `add`).
    /// Always inlined: with a second caller (metrics' `dispatch_indexed`) the compiler
    /// stopped inlining it into `dispatch`, 29 instructions a call more (callgrind).
    #[inline(always)]
    fn entry(&self, method: &[u8], last: &mut usize) -> Option<&Entry> {
        if let Some(entry) = self.entries.get(*last) {
            if entry.name.as_bytes() == method {
                return Some(entry);
            }
        }
        let &index = self.methods.get(method)?;
        *last = index;
        Some(&self.entries[index])
    }

    /// "Permission denied" when the server's rules refuse `method` on the calling
    /// connection; `None` to go on.
    fn refused(&self, method: &[u8], parts: CallParts<'_>) -> Option<Dispatch> {
        let denied = parts.conn.denied.as_ref()?;
        let entry = self.lookup(method)?;
        let refusal = denied.refusal(entry.index)?;
        tracing::info!(
            method = %entry.name,
            peer = %parts.conn.peer,
            listener = %parts.conn.listener,
            rule = %refusal,
            "call refused by a rule"
        );
        Some(Dispatch::Ready(Reply::err(ServerError::new(
            easyrpc_proto::ErrorCode::PermissionDenied,
            format!(
                "permission denied: {} may not be called on this connection",
                entry.name
            ),
        ))))
    }

    /// A call of a function that takes a context: with a cancellation token, cancelled
    /// when the call is dropped before it finishes (a cancel, a deadline, a reset).
    fn run_with_context(
        &self,
        entry: &Entry,
        params: &[u8],
        codec: Codec,
        slots: &mut Slots,
        parts: CallParts<'_>,
    ) -> Dispatch {
        let token = CancellationToken::new();
        let call = Call {
            method: &entry.name,
            parts,
            cancel: Some(&token),
            context: None,
        };
        match self.run(entry, params, codec, Some(slots), &call) {
            Dispatch::Pending(fut) => Dispatch::Pending(Box::pin(CancelOnDrop {
                fut,
                token: Some(token),
            })),
            ready => ready,
        }
    }

    /// The name of `method` as a shared string: its entry's, or a new one for a method
    /// that does not exist.
    pub(crate) fn name_of(&self, method: &[u8]) -> Arc<str> {
        match self.lookup(method) {
            Some(e) => e.name.clone(),
            None => Arc::from(String::from_utf8_lossy(method)),
        }
    }

    /// The entry for `method`, by name only.
    fn lookup(&self, method: &[u8]) -> Option<&Entry> {
        self.methods.get(method).map(|&i| &self.entries[i])
    }

    /// Decode the arguments of a call to `entry` and start it. `slots` are the calling
    /// connection's kept boxes (none on the layered path: each call is boxed). Always
    /// inlined: it is the body of every dispatch (callgrind: 12 instructions a call more
    /// as a function of its own).
    #[inline(always)]
    fn run(
        &self,
        entry: &Entry,
        params: &[u8],
        codec: Codec,
        slots: Option<&mut Slots>,
        call: &Call<'_>,
    ) -> Dispatch {
        let mut args = Args::new(codec, params);
        let work = match (&entry.kind, slots) {
            // Without `max_flow`, nothing stands between decoding and the first poll: the
            // call runs in the connection's kept box.
            (Kind::TypedAsync(f), Some(slots)) if entry.flow.is_none() => {
                let slot = slots.get(entry.index);
                return match catch_unwind(AssertUnwindSafe(|| f.start_in(&mut args, call, slot))) {
                    Ok(Ok(Dispatch::Ready(reply))) => Dispatch::Ready(reply),
                    Ok(Ok(Dispatch::Pending(fut))) => Dispatch::Pending(Box::pin(Guarded {
                        fut,
                        name: entry.name.clone(),
                        _flow: None,
                    })),
                    Ok(Err(e)) => Dispatch::Ready(Reply::err(e)),
                    Err(p) => {
                        // Drop whatever the panic left in the box.
                        *slot = None;
                        Dispatch::Ready(panicked(&entry.name, &*p))
                    }
                };
            }
            (Kind::TypedAsync(f), _) => match catch_unwind(AssertUnwindSafe(|| f.boxed(&mut args, call))) {
                Ok(Ok(fut)) => Work::Async(fut),
                Ok(Err(e)) => return Dispatch::Ready(Reply::err(e)),
                Err(p) => return Dispatch::Ready(panicked(&entry.name, &*p)),
            },
            (Kind::Async(f), _) => match catch_unwind(AssertUnwindSafe(|| f(&mut args, call))) {
                Ok(Ok(fut)) => Work::Async(fut),
                Ok(Err(e)) => return Dispatch::Ready(Reply::err(e)),
                Err(p) => return Dispatch::Ready(panicked(&entry.name, &*p)),
            },
            (Kind::Sync(f), _) => match catch_unwind(AssertUnwindSafe(|| f(&mut args, call))) {
                Ok(Ok(job)) if entry.inline => Work::Inline(job),
                Ok(Ok(job)) => Work::Sync(job),
                Ok(Err(e)) => return Dispatch::Ready(Reply::err(e)),
                Err(p) => return Dispatch::Ready(panicked(&entry.name, &*p)),
            },
            // Bound when the registry was built.
            (Kind::Unbound(_), _) => unreachable!("a method left unbound"),
        };
        let Some(flow) = &entry.flow else {
            return start(work, &entry.name, None, &self.blocking);
        };
        if let Some(permit) = flow.try_acquire() {
            return start(work, &entry.name, Some(permit), &self.blocking);
        }
        let Some(wait) = entry.flow_wait else {
            return Dispatch::Ready(overloaded(&entry.name));
        };
        // Wait for a slot, up to `wait`, without holding the connection up.
        let (flow, name, blocking) = (flow.clone(), entry.name.clone(), self.blocking.clone());
        Dispatch::Pending(Box::pin(async move {
            match flow.acquire_within(wait).await {
                Some(permit) => match start(work, &name, Some(permit), &blocking) {
                    Dispatch::Ready(r) => r,
                    Dispatch::Pending(f) => f.await,
                },
                None => overloaded(&name),
            }
        }))
    }

    /// A call on the layered path, once the layers let it through: the innermost service.
    pub(crate) fn call(&self, request: &CallRequest) -> Dispatch {
        let ctx = &request.context;
        let Some(entry) = self.lookup(ctx.method().as_bytes()) else {
            return Dispatch::Ready(Reply::err(ServerError::method_not_found(ctx.method().as_bytes())));
        };
        let conn = ConnInfo::unknown();
        let call = Call {
            method: &entry.name,
            parts: CallParts {
                request: None,
                conn: &conn,
            },
            cancel: None,
            context: Some(ctx),
        };
        self.run(entry, &request.params, request.codec, None, &call)
    }
}

/// Start a call whose arguments are decoded. The name is only cloned for a call that is
/// still running on return.
fn start(work: Work, name: &Arc<str>, flow: Option<Permit>, blocking: &BlockingPool) -> Dispatch {
    match work {
        Work::Async(mut fut) => {
            // A no-op waker is fine here: a future still pending is pushed into the
            // connection's queue, which polls new entries again with its own waker. The
            // `max_flow` permit, if any, is dropped with the call when it ends here.
            let mut cx = Context::from_waker(Waker::noop());
            match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
                Ok(Poll::Ready(reply)) => Dispatch::Ready(reply),
                Ok(Poll::Pending) => Dispatch::Pending(Box::pin(Guarded {
                    fut,
                    name: name.clone(),
                    _flow: flow,
                })),
                Err(p) => Dispatch::Ready(panicked(name, &*p)),
            }
        }
        Work::Sync(job) => Dispatch::Pending(blocking.run(job, name, flow)),
        // The `max_flow` permit, if any, is dropped when the call ends, here.
        Work::Inline(job) => match catch_unwind(AssertUnwindSafe(job)) {
            Ok(reply) => Dispatch::Ready(reply),
            Err(p) => Dispatch::Ready(panicked(name, &*p)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use easyrpc_proto::{EncodeValue, ErrorCode, Params, ParamsEncoder};
    use std::future::Future;
    use std::pin::Pin;

    fn params<P: Params>(p: P) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode_params(&mut ParamsEncoder::new(Codec::Msgpack, &mut out))
            .unwrap();
        out
    }

    fn encoded(reply: Reply) -> Vec<u8> {
        let mut out = Vec::new();
        reply.0.unwrap().encode_value(Codec::Msgpack, &mut out).unwrap();
        out
    }

    fn dispatch(
        registry: &Registry,
        method: &[u8],
        params: &[u8],
        codec: Codec,
        slots: &mut Slots,
    ) -> Dispatch {
        let conn = ConnInfo::unknown();
        let parts = CallParts {
            request: None,
            conn: &conn,
        };
        registry.dispatch(method, params, codec, slots, parts)
    }

    fn ready(d: Dispatch) -> Reply {
        match d {
            Dispatch::Ready(reply) => reply,
            Dispatch::Pending(_) => panic!("pending"),
        }
    }

    /// Where the kept box of the first user method is, if there is one.
    fn kept(slots: &Slots) -> Option<*const u8> {
        let slot = slots.boxes.get(4)?.as_ref()?;
        Some(&**slot as *const (dyn std::any::Any + Send) as *const u8)
    }

    /// Pending at its first poll, ready at the second.
    struct Yield(bool);

    impl Future for Yield {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    async fn boom(n: i64) -> i64 {
        if n < 0 {
            panic!("negative");
        }
        n
    }

    #[test]
    fn ready_calls_run_in_the_connection_s_kept_box() {
        let registry = Registry::new(
            vec![Method::async_fn("add", |(a, b): (i64, i64)| async move { a + b })],
            1,
            false,
        )
        .unwrap();
        let mut slots = Slots::default();
        let first = dispatch(&registry, b"add", &params((1, 2)), Codec::Msgpack, &mut slots);
        assert_eq!(encoded(ready(first)), [3]);
        let at = kept(&slots).expect("a kept box");
        for i in 0..3 {
            let d = dispatch(&registry, b"add", &params((i, 10)), Codec::Msgpack, &mut slots);
            assert_eq!(encoded(ready(d)), [10 + i as u8]);
            assert_eq!(kept(&slots), Some(at), "the same box every time");
        }
        // Bad arguments: an error, and the box stays.
        let d = dispatch(&registry, b"add", &params(("x", 1)), Codec::Msgpack, &mut slots);
        assert_eq!(ready(d).error().unwrap().kind(), ErrorCode::InvalidParams);
        assert_eq!(kept(&slots), Some(at));
    }

    #[test]
    fn the_last_method_is_tried_first_and_others_still_found() {
        let registry = Registry::new(
            vec![
                Method::async_fn("add", |(a, b): (i64, i64)| async move { a + b }),
                Method::async_fn("neg", |(n,): (i64,)| async move { -n }),
            ],
            1,
            false,
        )
        .unwrap();
        let mut slots = Slots::default();
        for i in 0..3 {
            let d = dispatch(&registry, b"add", &params((i, 1)), Codec::Msgpack, &mut slots);
            assert_eq!(encoded(ready(d)), [i as u8 + 1]);
            let d = dispatch(&registry, b"add", &params((i, 2)), Codec::Msgpack, &mut slots);
            assert_eq!(encoded(ready(d)), [i as u8 + 2]);
            let d = dispatch(&registry, b"neg", &params((1,)), Codec::Msgpack, &mut slots);
            assert_eq!(encoded(ready(d)), [0xff]);
            let d = dispatch(&registry, b"ad", &params((1, 1)), Codec::Msgpack, &mut slots);
            assert_eq!(ready(d).error().unwrap().kind(), ErrorCode::MethodNotFound);
            let d = dispatch(&registry, b"rpc.ping", &params(()), Codec::Msgpack, &mut slots);
            assert_eq!(encoded(ready(d)), [0xc0]);
        }
    }

    #[test]
    fn a_pending_call_takes_its_box_along() {
        let registry = Registry::new(
            vec![Method::async_fn("twice", |(n,): (i64,)| async move {
                Yield(false).await;
                n * 2
            })],
            1,
            false,
        )
        .unwrap();
        let mut slots = Slots::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut running = Vec::new();
        for n in 1..=3 {
            match dispatch(&registry, b"twice", &params((n,)), Codec::Msgpack, &mut slots) {
                Dispatch::Pending(fut) => running.push(fut),
                Dispatch::Ready(_) => panic!("ready at the first poll"),
            }
            assert_eq!(kept(&slots), None);
        }
        for (n, mut fut) in (1..=3).zip(running) {
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(reply) => assert_eq!(encoded(reply), [n * 2]),
                Poll::Pending => panic!("still pending"),
            }
        }
    }

    #[test]
    fn a_panic_at_the_first_poll_empties_the_box() {
        let registry =
            Registry::new(vec![Method::async_fn("boom", |(n,): (i64,)| boom(n))], 1, false).unwrap();
        let mut slots = Slots::default();
        let d = dispatch(&registry, b"boom", &params((-1,)), Codec::Msgpack, &mut slots);
        assert_eq!(ready(d).error().unwrap().kind(), ErrorCode::HandlerPanicked);
        assert_eq!(kept(&slots), None);
        let d = dispatch(&registry, b"boom", &params((7,)), Codec::Msgpack, &mut slots);
        assert_eq!(encoded(ready(d)), [7]);
        assert!(kept(&slots).is_some());
    }
}
