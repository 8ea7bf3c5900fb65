//! Threads at the lowest CPU priority (nice 19) for speculative fills.
//!
//! Read-ahead pieces from local blobs that are read, decoded and written on one thread
//! (fanotify's sparse cache files, [`super::fill::WritePath::OnFillThread`]) run here. A reader
//! that wakes up, and the event thread that answers it, then preempt read-ahead at once instead
//! of queueing behind it: traced over one cold pass (docs/fanotify.md, "Conclusions that shaped
//! the design"), the reader waited 56-85 ms in all for a CPU, against 134-161 ms with read-ahead
//! at normal priority. On a busy machine read-ahead slows down, and the reader's own on-demand
//! fills, at normal priority on the blocking pool, take over.
//!
//! Nice 19 rather than `SCHED_IDLE`: a reader that reaches a group a read-ahead piece is filling
//! waits for that piece, and under full load an idle-policy thread gets about a fifth of the
//! CPU share a nice-19 one gets. Dedicated threads rather than a priority change around each
//! job: only `CAP_SYS_NICE` may lower a thread's nice value again.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::warn;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of low-priority threads, started on first use; they exit when the set is
/// dropped.
pub struct BackgroundThreads {
    threads: usize,
    jobs: OnceLock<mpsc::Sender<Job>>,
}

/// The job did not run to completion: it panicked, or no background thread could be started.
#[derive(Debug)]
pub struct JobLost;

impl std::fmt::Display for JobLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the background fill job was lost (it panicked, or no background thread runs)")
    }
}

impl BackgroundThreads {
    pub fn new(threads: usize) -> BackgroundThreads {
        BackgroundThreads { threads: threads.max(1), jobs: OnceLock::new() }
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
                let spawned = std::thread::Builder::new().name(format!("erofsd-bg-{i}")).spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock().expect("background job queue").recv() {
                            Ok(job) => job,
                            Err(_) => return, // the set was dropped
                        };
                        // A panicking job drops its result sender: its caller gets `JobLost`,
                        // and this thread stays for the next job.
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                });
                if let Err(e) = spawned {
                    warn!("starting background fill thread {i}: {e}");
                }
            }
            tx
        })
    }
}

/// Lowers the calling thread to nice 19; if that is refused it stays at normal priority
/// (read-ahead then only competes with the reader, as it did before).
fn lower_priority() {
    // SAFETY: setpriority on our own thread id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) } != 0 {
        warn!("nice 19 for a read-ahead thread: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_at_nice_19_and_a_panic_loses_only_its_job() {
        let pool = BackgroundThreads::new(2);
        // SAFETY: getpriority of the calling thread.
        let nice = pool.run(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }).await.unwrap();
        assert_eq!(nice, 19);
        assert!(pool.run(|| panic!("boom")).await.is_err());
        let results: Vec<u32> = futures_util::future::join_all((0..8u32).map(|i| pool.run(move || i * 2)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(results, (0..8).map(|i| i * 2).collect::<Vec<_>>(), "the threads outlive a panicking job");
    }
}
