//! Wakers that say which part of a tunnel asked to be woken: one shared cell, three
//! wakers (client → backend, backend → client, idle timer) that each set their own bit
//! in it and then wake the task. The tunnel polls only the parts whose bit is set, and
//! the three wakers cost one allocation between them (`woken::PollWhenWoken` per part
//! cost three, and an `Arc` clone per poll).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{RawWaker, RawWakerVTable, Waker};

use futures_util::task::AtomicWaker;

/// Bit of the client → backend direction.
pub const UP: u8 = 1 << 0;
/// Bit of the backend → client direction.
pub const DOWN: u8 = 1 << 1;
/// Bit of the idle timer.
pub const TIMER: u8 = 1 << 2;
/// Every part: what the first poll looks at.
pub const ALL: u8 = UP | DOWN | TIMER;

/// What the three wakers share.
struct Shared {
    /// Bits of the parts woken since the last [`PartWakers::take_fired`].
    fired: AtomicU8,
    /// The task polling the tunnel.
    task: AtomicWaker,
}

/// A part's waker points at `Shared` with the part's index (0..=2) in the pointer's two
/// low bits, free because `Shared` is aligned to at least 4.
const TAG_MASK: usize = 0b11;
const _: () = assert!(std::mem::align_of::<Shared>() > TAG_MASK);

const VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);

fn untag(data: *const ()) -> (*const Shared, u8) {
    let addr = data as usize;
    ((addr & !TAG_MASK) as *const Shared, (addr & TAG_MASK) as u8)
}

// SAFETY (all four): `data` came from `part_waker`, which leaked one strong count of an
// `Arc<Shared>` into it; each clone leaks one more and each drop returns one, so the
// pointer stays valid for as long as any waker holds it.
unsafe fn clone(data: *const ()) -> RawWaker {
    let (shared, _) = untag(data);
    unsafe { Arc::increment_strong_count(shared) };
    RawWaker::new(data, &VTABLE)
}

unsafe fn wake(data: *const ()) {
    unsafe {
        wake_by_ref(data);
        drop_waker(data);
    }
}

unsafe fn wake_by_ref(data: *const ()) {
    let (shared, index) = untag(data);
    let shared = unsafe { &*shared };
    shared.fired.fetch_or(1 << index, Ordering::AcqRel);
    shared.task.wake();
}

unsafe fn drop_waker(data: *const ()) {
    let (shared, _) = untag(data);
    unsafe { Arc::decrement_strong_count(shared) };
}

fn part_waker(shared: &Arc<Shared>, index: u8) -> Waker {
    let data = Arc::into_raw(Arc::clone(shared)) as usize | usize::from(index);
    // SAFETY: VTABLE's functions keep the contract above for this pointer.
    unsafe { Waker::from_raw(RawWaker::new(data as *const (), &VTABLE)) }
}

/// The three parts' wakers and the cell they report to.
pub struct PartWakers {
    shared: Arc<Shared>,
    /// Client → backend.
    pub up: Waker,
    /// Backend → client.
    pub down: Waker,
    /// The idle timer.
    pub timer: Waker,
}

impl PartWakers {
    /// New wakers; every part counts as woken until the first [`PartWakers::take_fired`].
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            fired: AtomicU8::new(ALL),
            task: AtomicWaker::new(),
        });
        PartWakers {
            up: part_waker(&shared, 0),
            down: part_waker(&shared, 1),
            timer: part_waker(&shared, 2),
            shared,
        }
    }

    /// Registers the task to wake (`cx.waker()` of the current poll) and returns the
    /// bits of the parts woken since the last call, clearing them.
    pub fn take_fired(&self, task: &Waker) -> u8 {
        self.shared.task.register(task);
        self.shared.fired.swap(0, Ordering::AcqRel)
    }
}

impl Default for PartWakers {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn each_part_sets_its_own_bit_and_wakes_the_task() {
        let task = Arc::new(CountWakes(AtomicUsize::new(0)));
        let task_waker = Waker::from(Arc::clone(&task));
        let wakers = PartWakers::new();
        assert_eq!(wakers.take_fired(&task_waker), ALL);
        assert_eq!(wakers.take_fired(&task_waker), 0);

        wakers.down.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert_eq!(wakers.take_fired(&task_waker), DOWN);

        // A clone woken by value (as tokio's I/O driver does) reports the same part.
        // The task is woken once: a wake takes the registered task waker, and the next
        // `take_fired` registers it again.
        let (timer, up) = (wakers.timer.clone(), wakers.up.clone());
        timer.wake();
        up.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
        assert_eq!(wakers.take_fired(&task_waker), TIMER | UP);
    }

    #[test]
    fn clones_keep_the_shared_cell_alive_and_release_it() {
        let wakers = PartWakers::new();
        let shared = Arc::downgrade(&wakers.shared);
        let kept = wakers.up.clone();
        drop(wakers);
        assert!(shared.upgrade().is_some());
        assert!(kept.will_wake(&kept.clone()));
        drop(kept);
        assert!(shared.upgrade().is_none());
    }
}
