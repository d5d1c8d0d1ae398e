//! The in-memory index of the embedded tier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Correction, Entry, NotReady, Ranked, Scope};

/// In-memory index: per board season, the sort keys in order and each owner's entry.
#[derive(Clone, Default)]
pub struct MemoryIndex {
    boards: Arc<Mutex<HashMap<(String, i64), MemoryBoard>>>,
}

#[derive(Default)]
pub(super) struct MemoryBoard {
    pub(super) ready: bool,
    pub(super) rebuilding: bool,
    /// Sorted ascending (best first). Inserts shift the tail: O(n), fine for the embedded tier's
    /// few thousand players; ranks are binary searches.
    pub(super) keys: Vec<String>,
    pub(super) owners: HashMap<String, Entry>,
}

impl MemoryIndex {
    /// Forgets every board season; how many there were.
    pub(super) fn forget_all(&self) -> usize {
        let mut boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = boards.len();
        boards.clear();
        dropped
    }

    /// Forgets one board season.
    pub(super) fn drop_season(&self, scope: Scope<'_>) {
        self.boards.lock().unwrap_or_else(|p| p.into_inner()).remove(&(scope.board.to_owned(), scope.season));
    }

    pub(super) fn with<R>(&self, scope: Scope<'_>, f: impl FnOnce(&mut MemoryBoard) -> R) -> R {
        let mut boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
        f(boards.entry((scope.board.to_owned(), scope.season)).or_default())
    }

    pub(super) fn with_ready<R>(&self, scope: Scope<'_>, f: impl FnOnce(&mut MemoryBoard) -> R) -> Result<R, NotReady> {
        self.with(scope, |b| if b.ready { Ok(f(b)) } else { Err(NotReady) })
    }
}

impl MemoryBoard {
    pub(super) fn position(&self, key: &str) -> Result<usize, usize> {
        self.keys.binary_search_by(|k| k.as_str().cmp(key))
    }

    pub(super) fn ranked(&self, index: usize) -> Option<Ranked> {
        let key = self.keys.get(index)?;
        let owner = key.rsplit('|').next().unwrap_or_default();
        let data = self.owners.get(owner).map(|e| e.data.clone()).unwrap_or_default();
        Some(Ranked { key: key.clone(), data, rank: index as u64 + 1 })
    }

    pub(super) fn upsert_all(&mut self, entries: &[Entry]) -> Vec<u64> {
        for entry in entries {
            if self.owners.get(&entry.owner_id).is_none_or(|current| entry.version > current.version) {
                self.put(entry);
            }
        }
        entries
            .iter()
            .map(|entry| {
                let current = &self.owners[&entry.owner_id].key;
                self.position(current).map_or(0, |at| at as u64 + 1)
            })
            .collect()
    }

    /// Makes `entry` the owner's, whatever it had.
    pub(super) fn put(&mut self, entry: &Entry) {
        if let Some(old) = self.owners.insert(entry.owner_id.clone(), entry.clone())
            && let Ok(at) = self.position(&old.key)
        {
            self.keys.remove(at);
        }
        let at = self.position(&entry.key).unwrap_or_else(|at| at);
        self.keys.insert(at, entry.key.clone());
    }

    /// One correction (see `RankIndex::correct`); false when the entry changed since it was seen.
    pub(super) fn correct(&mut self, c: &Correction<'_>) -> bool {
        let current = self.owners.get(c.owner_id).map(Entry::state);
        if current == c.target.map(Entry::state) {
            return true;
        }
        if current.as_deref() != c.seen {
            return false;
        }
        match c.target {
            Some(entry) => self.put(entry),
            None => self.remove(c.owner_id),
        }
        true
    }

    pub(super) fn rank_of(&self, owner_id: &str) -> Option<Ranked> {
        let entry = self.owners.get(owner_id)?;
        self.ranked(self.position(&entry.key).ok()?)
    }

    pub(super) fn page(&self, after: Option<&str>, limit: usize) -> Vec<Ranked> {
        let start = match after {
            None => 0,
            Some(after) => match self.position(after) {
                Ok(at) => at + 1,
                Err(at) => at,
            },
        };
        (start..self.keys.len().min(start + limit)).filter_map(|i| self.ranked(i)).collect()
    }

    pub(super) fn around(&self, owner_id: &str, limit: usize) -> Vec<Ranked> {
        let Some(at) = self.owners.get(owner_id).and_then(|e| self.position(&e.key).ok()) else { return Vec::new() };
        let (start, end) = window(at, self.keys.len(), limit);
        (start..end).filter_map(|i| self.ranked(i)).collect()
    }

    pub(super) fn remove(&mut self, owner_id: &str) {
        if let Some(old) = self.owners.remove(owner_id)
            && let Ok(at) = self.position(&old.key)
        {
            self.keys.remove(at);
        }
    }

    pub(super) fn install(&mut self, entries: Vec<Entry>) {
        self.keys = entries.iter().map(|e| e.key.clone()).collect();
        self.keys.sort();
        self.owners = entries.into_iter().map(|e| (e.owner_id.clone(), e)).collect();
        self.ready = true;
        self.rebuilding = false;
    }
}

/// The [start, end) window of `limit` positions around position `at` in a board of `len`.
pub(super) fn window(at: usize, len: usize, limit: usize) -> (usize, usize) {
    let limit = limit.min(len);
    let start = at.saturating_sub(limit / 2).min(len - limit);
    (start, start + limit)
}

#[cfg(test)]
mod tests {
    use super::{MemoryBoard, window};
    use crate::index::{Correction, Entry};

    fn entry(owner: &str, version: i64, key: &str) -> Entry {
        Entry { owner_id: owner.into(), key: format!("{key}|{owner}"), version, data: "{}".into() }
    }

    #[test]
    fn corrections_apply_only_over_the_entry_seen() {
        let mut board = MemoryBoard { ready: true, ..MemoryBoard::default() };
        board.put(&entry("a", 1, "5"));
        board.put(&entry("b", 2, "3"));
        let newer = entry("a", 2, "1");
        // Still the entry the repair saw: it becomes the record's.
        assert!(board.correct(&Correction { owner_id: "a", seen: Some("1:5|a"), target: Some(&newer) }));
        assert_eq!(board.rank_of("a").map(|r| r.rank), Some(1));
        // Changed since the repair saw it (a writer wrote another version): left for a later look.
        assert!(!board.correct(&Correction { owner_id: "b", seen: Some("1:9|b"), target: None }));
        assert!(board.owners.contains_key("b"));
        // Already what the record says.
        assert!(board.correct(&Correction { owner_id: "a", seen: None, target: Some(&newer) }));
        // No record: the entry goes.
        assert!(board.correct(&Correction { owner_id: "b", seen: Some("2:3|b"), target: None }));
        assert_eq!(board.keys, ["1|a"]);
        assert!(!board.owners.contains_key("b"));
    }

    #[test]
    fn windows_stay_full_at_the_edges() {
        assert_eq!(window(0, 100, 5), (0, 5));
        assert_eq!(window(50, 100, 5), (48, 53));
        assert_eq!(window(99, 100, 5), (95, 100));
        assert_eq!(window(1, 3, 10), (0, 3));
        assert_eq!(window(0, 1, 1), (0, 1));
    }
}
