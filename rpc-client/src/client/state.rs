//! What every call of a client and its connection task share, behind one lock: the
//! protocol ([`ClientConnection`]) and the call slots its tokens point at.

use std::collections::VecDeque;
use std::mem;
use std::task::Waker;

use bytes::Bytes;
use easyrpc_proto::{ClientConnection, ClientReply, Codec, Replies, StreamMessage};
use tokio::time::Instant;

use crate::handlers::{Handlers, Incoming};
use crate::Error;

/// The state every call and the connection task share.
pub(super) struct State {
    /// The number of the live connection; `None` when there is none (the next call
    /// connects).
    pub(super) live: Option<u64>,
    /// The number the last connection got.
    pub(super) epoch: u64,
    /// The protocol: msgids, the in-flight table, deadlines, what is queued for the
    /// transport (callers encode their requests straight into it).
    pub(super) proto: ClientConnection<u32>,
    /// The connection task's waker.
    pub(super) task: Option<Waker>,
    /// The task has been woken since it last took the queued bytes: no need to wake it
    /// again.
    pub(super) task_notified: bool,
    /// Every handle is gone: the task flushes and ends.
    pub(super) abandoned: bool,
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<u32>,
}

pub(super) struct Slot {
    pub(super) msgid: u64,
    /// The connection the call was written on.
    pub(super) epoch: u64,
    /// The call's deadline, when it ended without an answer it can use (the connection was
    /// lost, or the server refused it): a call sent again keeps it.
    pub(super) deadline: Option<Instant>,
    pub(super) state: SlotState,
    /// The waker of the task waiting for the call. Kept when the slot is freed: the task
    /// whose call frees it usually takes it again at once for its next call (the free
    /// list is a stack), and then `clone_from` sees the same task and clones nothing, and
    /// the reply wakes it by reference. That is three atomic operations on the task's
    /// state fewer per call than a clone and a wake by value.
    pub(super) waker: Waker,
    /// A small reply's result (or error value), copied from the read buffer. The slot
    /// keeps the capacity for its next call.
    pub(super) buf: Vec<u8>,
    /// A streaming call's items received and not taken yet (at most the credit granted).
    pub(super) items: StreamItems,
    /// A streaming call's credit from the server for its argument stream, not used yet.
    pub(super) credit: u64,
}

pub(super) enum SlotState {
    Free,
    Waiting,
    /// The reply came: its result (`ok`) or error value, in `buf` or in `big`.
    Replied {
        ok: bool,
        big: Option<Bytes>,
    },
    Failed(Error),
}

impl State {
    pub(super) fn new(proto: ClientConnection<u32>) -> State {
        State {
            live: None,
            epoch: 0,
            proto,
            task: None,
            task_notified: false,
            abandoned: false,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Make sure the connection task will look at what is queued.
    pub(super) fn wake_writer(&mut self) {
        if !self.task_notified {
            self.task_notified = true;
            if let Some(task) = &self.task {
                task.wake_by_ref();
            }
        }
    }

    /// Calls open: in flight, or answered and not yet taken by their callers (every call
    /// holds a slot from the moment it is queued until its caller takes the outcome or
    /// drops it).
    pub(super) fn calls_open(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Take a slot for a call about to be queued on connection `epoch`.
    pub(super) fn take_slot(&mut self, epoch: u64, waker: &Waker) -> u32 {
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.epoch = epoch;
            slot.deadline = None;
            slot.state = SlotState::Waiting;
            slot.waker.clone_from(waker);
            slot.credit = 0;
            idx
        } else {
            self.slots.push(Slot {
                msgid: 0,
                epoch,
                deadline: None,
                state: SlotState::Waiting,
                waker: waker.clone(),
                buf: Vec::new(),
                items: StreamItems::default(),
                credit: 0,
            });
            // The table grows with the calls in flight; a u32 index is plenty.
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
        }
    }

    /// Give a slot back (its reply taken or abandoned).
    pub(super) fn free_slot(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        slot.state = SlotState::Free;
        if slot.buf.capacity() > easyrpc_proto::INLINE_REPLY * 4 {
            slot.buf = Vec::new();
        }
        slot.items.reset();
        self.free.push(idx);
    }
}

/// Puts each reply into its caller's slot and wakes the caller; queues what the server
/// sends of its own accord, when the client has a handler for it.
pub(super) struct Deliver<'a> {
    pub(super) slots: &'a mut [Slot],
    pub(super) codec: Codec,
    pub(super) handlers: &'a Handlers,
    /// Requests and notifications from the server to run once the lock is released.
    pub(super) incoming: &'a mut Vec<Incoming>,
}

impl Replies<u32> for Deliver<'_> {
    #[inline(always)]
    fn reply(&mut self, r: ClientReply<'_, u32>) {
        let slot = &mut self.slots[r.token as usize];
        let big = r.frame.map(|frame| frame.slice_ref(r.part));
        if big.is_none() {
            slot.buf.clear();
            slot.buf.extend_from_slice(r.part);
        }
        if !r.ok {
            slot.deadline = r.deadline.map(Instant::from_std);
        }
        if let SlotState::Waiting = mem::replace(&mut slot.state, SlotState::Replied { ok: r.ok, big }) {
            slot.waker.wake_by_ref();
        }
    }

    // Out of line, as everything for what the server sends of its own accord: the reply
    // loop above is the per-call path.
    #[inline(never)]
    fn request(&mut self, msgid: u64, method: &[u8], params: &[u8]) -> bool {
        self.handlers
            .request(self.codec, msgid, method, params, self.incoming)
    }

    /// An item of a streaming call's result, or credit for its argument stream: kept in
    /// its slot, and its caller woken.
    #[inline(never)]
    fn stream(&mut self, token: u32, message: StreamMessage<'_>) {
        let slot = &mut self.slots[token as usize];
        if !matches!(slot.state, SlotState::Waiting) {
            return;
        }
        let wake = match message {
            // The caller is woken when the first item comes: it takes every item there is
            // before it waits again.
            StreamMessage::Item { item, .. } => slot.items.push(item),
            StreamMessage::Credit { n, .. } => {
                slot.credit = slot.credit.saturating_add(n);
                true
            }
            _ => false,
        };
        if wake {
            slot.waker.wake_by_ref();
        }
    }

    #[inline(never)]
    fn notification(&mut self, method: &[u8], params: &[u8]) {
        self.handlers
            .notification(self.codec, method, params, self.incoming);
    }
}

/// A streaming call's items, received and not taken yet: their bytes one after another in
/// one buffer (no allocation per item), taken from the front.
#[derive(Default)]
pub(super) struct StreamItems {
    buf: Vec<u8>,
    lens: VecDeque<usize>,
    /// Where the first item not taken starts in `buf`.
    head: usize,
}

impl StreamItems {
    /// Keep an item; returns whether there was none before.
    pub(super) fn push(&mut self, item: &[u8]) -> bool {
        let was_empty = self.lens.is_empty();
        self.buf.extend_from_slice(item);
        self.lens.push_back(item.len());
        was_empty
    }

    /// Take the first item, handing its bytes to `f`.
    pub(super) fn pop_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let len = self.lens.pop_front()?;
        let r = f(&self.buf[self.head..self.head + len]);
        self.head += len;
        if self.lens.is_empty() {
            self.buf.clear();
            self.head = 0;
        } else if self.head >= 64 * 1024 && self.head * 2 >= self.buf.len() {
            // A reader that never quite catches up: move the rest to the front now and
            // then, so the buffer holds what waits, not everything since it was empty.
            self.buf.drain(..self.head);
            self.head = 0;
        }
        Some(r)
    }

    /// Drop everything, and give large buffers back (the slot is free again).
    pub(super) fn reset(&mut self) {
        if self.buf.capacity() > 64 * 1024 || self.lens.capacity() > 1024 {
            *self = StreamItems::default();
        } else {
            self.buf.clear();
            self.lens.clear();
            self.head = 0;
        }
    }
}
