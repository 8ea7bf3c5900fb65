//! Threads at idle CPU priority (`SCHED_IDLE`) for speculative fills.
//!
//! Read-ahead pieces from local blobs that are read, decoded and written on one thread
//! (fanotify's sparse cache files, [`super::fill::WritePath::OnFillThread`]) run here. The
//! scheduler preempts an idle-policy thread as soon as any normal thread wakes up on its CPU, so
//! the reader, and the event thread that answers it, never wait behind read-ahead: it uses only
//! CPU time nobody else wants. On a busy machine read-ahead slows down and the reader's own
//! on-demand fills, at normal priority on the blocking pool, take over.
//!
//! Dedicated threads rather than a priority change around each job: a thread that leaves
//! `SCHED_IDLE` needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` allowance), and one that could not
//! would go on running on-demand fills at idle priority.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::warn;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of idle-priority threads, started on first use; they exit when the set is
/// dropped.
pub struct IdleThreads {
    threads: usize,
    jobs: OnceLock<mpsc::Sender<Job>>,
}

/// The job did not run to completion (it panicked).
#[derive(Debug)]
pub struct JobLost;

impl std::fmt::Display for JobLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the idle-priority fill thread's job panicked")
    }
}

impl IdleThreads {
    pub fn new(threads: usize) -> IdleThreads {
        IdleThreads { threads: threads.max(1), jobs: OnceLock::new() }
    }

    /// Runs `job` on one of the threads; resolves to its result.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, JobLost> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let boxed: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        // The threads live as long as the sender, which lives as long as `self`.
        self.sender().send(boxed).map_err(|_| JobLost)?;
        rx.await.map_err(|_| JobLost)
    }

    fn sender(&self) -> &mpsc::Sender<Job> {
        self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..self.threads {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new().name(format!("erofsd-idle-{i}")).spawn(move || {
                    set_idle_policy();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock().expect("idle job queue").recv() {
                            Ok(job) => job,
                            Err(_) => return, // the set was dropped
                        };
                        // A panicking job drops its result sender: its caller gets `JobLost`,
                        // and this thread stays for the next job.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                });
                if let Err(e) = spawned {
                    warn!("starting idle-priority fill thread {i}: {e}");
                }
            }
            tx
        })
    }
}

/// Puts the calling thread under `SCHED_IDLE`; if that is refused it stays at normal priority
/// (read-ahead then only competes with the reader, as it did before).
fn set_idle_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        warn!("SCHED_IDLE for a read-ahead thread: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_under_sched_idle_and_a_panic_loses_only_its_job() {
        let pool = IdleThreads::new(2);
        // SAFETY: sched_getscheduler on the calling thread.
        let policy = pool.run(|| unsafe { libc::sched_getscheduler(0) }).await.unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert!(pool.run(|| panic!("boom")).await.is_err());
        let results: Vec<u32> = futures_util::future::join_all((0..8u32).map(|i| pool.run(move || i * 2)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(results, (0..8).map(|i| i * 2).collect::<Vec<_>>(), "the threads outlive a panicking job");
    }
}
