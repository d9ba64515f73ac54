use crate::coroutine_impl::{current_cancel_data, is_coroutine};
use crate::coroutine_impl::{CoroutineImpl, EventResult, EventSource, EventSubscriber};
use crate::likely::{likely, unlikely};
use crate::scheduler::get_scheduler;

use generator::{co_get_yield, co_set_para, co_yield_with};

struct Yield {}

impl EventSource for Yield {
    fn subscribe(&mut self, co: CoroutineImpl) {
        // just re-push the coroutine to the ready list
        get_scheduler().schedule(co);
    }
}

thread_local! {
    /// wamr-coro: why the coroutine running on this thread may not yield
    /// now, if it may not (see `forbid_yield`).
    static NO_YIELD: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// wamr-coro: while `why` is `Some`, the coroutine running on this thread
/// may not yield: any attempt (`yield_now`, `park`, `sleep`, a blocked I/O
/// or channel operation) panics with `why` before anything is changed, so
/// the panic can be caught and the operation failed cleanly. For code that
/// runs the coroutine, for a while, on a stack other than its own (a
/// worker's call stack): a coroutine suspended there would be resumed on
/// frames another coroutine has since overwritten, or on another thread.
/// Returns the previous value, to restore.
///
/// Never inlined, like every access to `NO_YIELD`: a coroutine can move to
/// another thread at any yield, but the compiler assumes a function stays
/// on one thread and may compute a thread-local's address once for the
/// whole function. Inlined into a coroutine's loop that yields (call, yield,
/// call), the address from the first thread was used on the next, so a
/// coroutine set and restored another worker's flag: that worker's
/// coroutines then panicked at their next yield, or ran a call unguarded
/// (`wamr-coro stress --coroutines 20000 --workers 2`: about 100 such panics
/// a run). A call computes the address on the thread it runs on.
#[inline(never)]
pub fn forbid_yield(why: Option<&'static str>) -> Option<&'static str> {
    NO_YIELD.with(|c| c.replace(why))
}

/// wamr-coro: the reason yielding is forbidden now, if it is (never
/// inlined: see `forbid_yield`).
#[inline(never)]
fn yield_forbidden_why() -> Option<&'static str> {
    NO_YIELD.with(|c| c.get())
}

/// wamr-coro: panics if the running coroutine may not yield now. Called
/// first by `yield_with` and `yield_with_io`, and by every blocking
/// primitive before it changes any state (registers a waiter, takes a park
/// token, unlocks a mutex for a condvar wait), so that the panic leaves
/// nothing half done.
#[inline]
pub(crate) fn check_yield_allowed() {
    if let Some(why) = yield_forbidden_why() {
        yield_forbidden(why);
    }
}

#[cold]
#[inline(never)]
fn yield_forbidden(why: &'static str) -> ! {
    panic!("coroutine may not block: {why}");
}

/// yield internal `EventSource` ref
/// it's ok to return a ref of object on the generator's stack
/// just like return the ref of a struct member
#[inline]
pub fn yield_with<T: EventSource>(resource: &T) {
    check_yield_allowed();
    let cancel = current_cancel_data();
    // if cancel detected in user space
    // no need to get into kernel any more
    if unlikely(cancel.is_canceled()) {
        co_set_para(std::io::Error::other("Canceled"));
        return resource.yield_back(cancel);
    }

    let r = unsafe {
        std::mem::transmute::<*const (dyn EventSource + '_), *mut (dyn EventSource + 'static)>(
            resource as &dyn EventSource,
        )
    };
    let es = EventSubscriber::new(r);
    co_yield_with(es);

    resource.yield_back(cancel);
    cancel.clear();
}

#[inline]
pub fn yield_with_io<T: EventSource>(resource: &T, is_coroutine: bool) {
    if likely(is_coroutine) {
        check_yield_allowed();
        #[cfg(feature = "io_cancel")]
        yield_with(resource);
        #[cfg(not(feature = "io_cancel"))]
        {
            let r = unsafe {
                std::mem::transmute::<*const (dyn EventSource + '_), *mut (dyn EventSource + 'static)>(
                    resource as &dyn EventSource,
                )
            };
            let es = EventSubscriber::new(r);
            co_yield_with(es);
        }
    } else {
        // for thread is only park the thread
        let r = unsafe {
            std::mem::transmute::<*const (dyn EventSource + '_), *mut (dyn EventSource + 'static)>(
                resource as &dyn EventSource,
            )
        };
        let es = EventSubscriber::new(r);
        crate::io::thread::PROXY_CO_SENDER.with(|tx| {
            tx.send(es).unwrap();
        });
        std::thread::park();
    }
}

/// set the coroutine para that passed into it
#[cold]
#[inline]
pub fn set_co_para(co: &mut CoroutineImpl, v: EventResult) {
    co.set_para(v);
}

/// get the coroutine para from the coroutine context
#[inline]
pub fn get_co_para() -> Option<EventResult> {
    co_get_yield::<EventResult>()
}

#[inline]
pub fn yield_now() {
    if unlikely(!is_coroutine()) {
        return std::thread::yield_now();
    }
    let y = Yield {};
    // it's safe to use the stack value here
    yield_with(&y);
}
