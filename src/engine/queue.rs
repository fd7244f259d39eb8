//! The scheduler's queue of tokenized inputs and the packing rule.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::Pending;

/// How far past the oldest input the packer looks for inputs that fit the remaining budget.
const SCAN_WINDOW: usize = 4096;

/// One tokenized input waiting for a batch.
pub(super) struct Entry {
    pub pending: Arc<Pending>,
    /// Index of the input in its request.
    pub index: usize,
    pub ids: Vec<u32>,
    pub dimensions: usize,
    pub enqueued: Instant,
}

impl Entry {
    fn cancelled(&self) -> bool {
        self.pending.cancelled()
    }
}

#[derive(Default)]
pub(super) struct Queue {
    entries: VecDeque<Entry>,
    tokens: usize,
    /// No more inputs will come: drain and stop.
    pub closed: bool,
}

impl Queue {
    pub fn push(&mut self, entry: Entry) {
        self.tokens += entry.ids.len();
        self.entries.push_back(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn oldest_enqueued(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.enqueued)
    }

    /// The next batch, and the entries of dropped requests met on the way (removed too).
    ///
    /// The oldest live entry always goes first (alone if it is longer than `max_tokens`); then,
    /// within [`SCAN_WINDOW`], every following entry with the same `dimensions` that still fits
    /// both budgets, in queue order. The batch is empty only if every entry was cancelled.
    pub fn take_batch(
        &mut self,
        max_tokens: usize,
        max_sequences: usize,
    ) -> (Vec<Entry>, Vec<Entry>) {
        let mut batch: Vec<Entry> = Vec::new();
        let mut cancelled = Vec::new();
        let mut kept = Vec::new();
        let mut tokens = 0;
        let window = self.entries.len().min(SCAN_WINDOW);
        for entry in self.entries.drain(..window) {
            self.tokens -= entry.ids.len();
            if entry.cancelled() {
                cancelled.push(entry);
                continue;
            }
            let fits = match batch.first() {
                None => true,
                Some(first) => {
                    entry.dimensions == first.dimensions
                        && batch.len() < max_sequences
                        && tokens + entry.ids.len() <= max_tokens
                }
            };
            if fits {
                tokens += entry.ids.len();
                batch.push(entry);
            } else {
                kept.push(entry);
            }
        }
        for entry in kept.into_iter().rev() {
            self.tokens += entry.ids.len();
            self.entries.push_front(entry);
        }
        (batch, cancelled)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;

    fn pending() -> (
        Arc<Pending>,
        tokio::sync::oneshot::Receiver<super::super::Response>,
    ) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let pending = Pending {
            normalize: true,
            outputs: Mutex::new(Vec::new()),
            remaining: AtomicUsize::new(0),
            sender: Mutex::new(Some(sender)),
            times: Mutex::default(),
        };
        (Arc::new(pending), receiver)
    }

    fn queue_of(lengths: &[(usize, usize)], pending: &Arc<Pending>) -> Queue {
        let mut queue = Queue::default();
        for (index, &(len, dimensions)) in lengths.iter().enumerate() {
            queue.push(Entry {
                pending: Arc::clone(pending),
                index,
                ids: vec![7; len],
                dimensions,
                enqueued: Instant::now(),
            });
        }
        queue
    }

    fn indices(batch: &[Entry]) -> Vec<usize> {
        batch.iter().map(|e| e.index).collect()
    }

    #[test]
    fn the_oldest_input_always_goes_first_even_over_the_budget() {
        let (pending, _receiver) = pending();
        let mut queue = queue_of(&[(3, 8), (100, 8), (4, 8), (2, 8), (3, 8)], &pending);
        assert_eq!(queue.tokens(), 112);
        // Later inputs that fit fill the batch; the long one waits only until it is the oldest.
        assert_eq!(indices(&queue.take_batch(10, 8).0), [0, 2, 3]);
        assert_eq!(indices(&queue.take_batch(10, 8).0), [1]);
        assert_eq!(indices(&queue.take_batch(10, 8).0), [4]);
        assert_eq!((queue.len(), queue.tokens()), (0, 0));
    }

    #[test]
    fn batches_keep_one_dimension_and_the_sequence_cap() {
        let (pending, _receiver) = pending();
        let mut queue = queue_of(&[(1, 8), (1, 4), (1, 8), (1, 8), (1, 8)], &pending);
        assert_eq!(indices(&queue.take_batch(100, 2).0), [0, 2]);
        assert_eq!(indices(&queue.take_batch(100, 2).0), [1]);
        assert_eq!(indices(&queue.take_batch(100, 2).0), [3, 4]);
    }

    #[test]
    fn entries_of_dropped_requests_are_removed() {
        let (live, _receiver) = pending();
        let (dropped, receiver) = pending();
        let mut queue = queue_of(&[(2, 8)], &dropped);
        queue.push(Entry {
            pending: live,
            index: 9,
            ids: vec![1; 5],
            dimensions: 8,
            enqueued: Instant::now(),
        });
        drop(receiver);
        let (batch, cancelled) = queue.take_batch(100, 8);
        assert_eq!((indices(&batch), indices(&cancelled)), (vec![9], vec![0]));
        assert_eq!(queue.tokens(), 0);
    }
}
