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
