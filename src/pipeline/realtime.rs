//! Real-time settings for the loop threads, where the system permits them: SCHED_FIFO priority,
//! CPU affinity, and locked memory. Each is best effort: without the capability (CAP_SYS_NICE,
//! CAP_IPC_LOCK) the loop runs as an ordinary thread, after a clear warning.

use crate::config::Realtime;

/// Applies priority and affinity to the calling thread.
pub fn apply_to_current_thread(rt: &Realtime, thread: &str) {
    let param = libc::sched_param { sched_priority: rt.priority };
    // SAFETY: plain syscalls on the calling thread with a valid parameter block.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::warn!(
            "{thread}: SCHED_FIFO priority {} not permitted ({}); running with normal scheduling",
            rt.priority,
            std::io::Error::from_raw_os_error(rc)
        );
    }
    if !rt.cpus.is_empty() {
        // SAFETY: cpu_set_t is plain data; CPU_SET only writes inside it.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &rt.cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            tracing::warn!(
                "{thread}: pinning to CPUs {:?} failed ({}); running unpinned",
                rt.cpus,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Marks the calling thread as batch work (SCHED_BATCH): the scheduler then does not let its
/// wake-ups preempt the loop. Needs no privilege; a failure only costs a little throughput.
pub fn batch_current_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain syscall on the calling thread with a valid parameter block.
    unsafe {
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_BATCH, &param);
    }
}

/// Locks current and future memory, so the loop never waits for a page to be faulted in.
pub fn lock_memory() {
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        tracing::warn!("mlockall failed ({}); memory may be paged", std::io::Error::last_os_error());
    }
}
