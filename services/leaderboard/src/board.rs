//! Boards and the rules of a score: how a submission combines with the record (the operator),
//! which records rank higher (the sort order, then the earlier record), and the sort key that
//! encodes that order as a string, so that Redis and the in-memory index order records by plain
//! byte comparison.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which scores rank higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// Higher scores rank higher (points).
    Desc,
    /// Lower scores rank higher (lap times).
    Asc,
}

/// How a submission combines with the player's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operator {
    /// Keep the better of the record and the submission.
    Best,
    /// Replace the record.
    Set,
    /// Add the submission to the record.
    Incr,
    /// Subtract the submission from the record.
    Decr,
}

impl Sort {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Desc => "desc",
            Sort::Asc => "asc",
        }
    }

    /// From the stored form.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "desc" => Ok(Sort::Desc),
            "asc" => Ok(Sort::Asc),
            other => anyhow::bail!("unknown sort order {other:?} in the database"),
        }
    }

    /// Whether (score, subscore) `a` ranks strictly higher than `b`.
    pub fn better(self, a: (i64, i64), b: (i64, i64)) -> bool {
        match self {
            Sort::Desc => a > b,
            Sort::Asc => a < b,
        }
    }
}

impl Operator {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Best => "best",
            Operator::Set => "set",
            Operator::Incr => "incr",
            Operator::Decr => "decr",
        }
    }

    /// From the stored form.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "best" => Ok(Operator::Best),
            "set" => Ok(Operator::Set),
            "incr" => Ok(Operator::Incr),
            "decr" => Ok(Operator::Decr),
            other => anyhow::bail!("unknown operator {other:?} in the database"),
        }
    }
}

/// A leaderboard's configuration and its live season.
#[derive(Debug, Clone)]
pub struct Board {
    /// `[a-z0-9_-]`, 1 to 64 characters.
    pub id: String,
    /// Which scores rank higher.
    pub sort: Sort,
    /// How submissions combine.
    pub operator: Operator,
    /// Cron expression of the season reset.
    pub reset: Option<String>,
    /// Lowest accepted score (of the submission for best/set, of the result for incr/decr).
    pub min_score: Option<i64>,
    /// Highest accepted score.
    pub max_score: Option<i64>,
    /// Only the server key may submit.
    pub authoritative: bool,
    /// The live season's number, from 1.
    pub season: i64,
    /// Unix ms.
    pub season_started_at: i64,
    /// Unix ms, for a board that resets.
    pub season_ends_at: Option<i64>,
    /// Unix ms.
    pub created_at: i64,
}

/// What a submission changes, given the current record (`None` for a first submission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The record becomes (score, subscore).
    Write(i64, i64),
    /// The record stays as it is (a `best` submission that is not better).
    Keep,
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The resulting score is outside the board's bounds.
    OutOfBounds,
    /// The result does not fit in 64 bits.
    Overflow,
    /// The board was deleted after the submission was checked against it (by another instance,
    /// or while the submission waited for its batch).
    BoardGone,
}

impl Board {
    /// Applies the operator to a submission of (`score`, `subscore`) against `current`.
    pub fn apply(&self, current: Option<(i64, i64)>, score: i64, subscore: i64) -> Result<Outcome, Refusal> {
        let result = match (self.operator, current) {
            (Operator::Best, Some(current)) if !self.sort.better((score, subscore), current) => {
                self.check_bounds(score)?;
                return Ok(Outcome::Keep);
            }
            (Operator::Best | Operator::Set, _) | (Operator::Incr, None) => (score, subscore),
            (Operator::Decr, None) => (score.checked_neg().ok_or(Refusal::Overflow)?, subscore.checked_neg().ok_or(Refusal::Overflow)?),
            (Operator::Incr, Some((s, ss))) => {
                (s.checked_add(score).ok_or(Refusal::Overflow)?, ss.checked_add(subscore).ok_or(Refusal::Overflow)?)
            }
            (Operator::Decr, Some((s, ss))) => {
                (s.checked_sub(score).ok_or(Refusal::Overflow)?, ss.checked_sub(subscore).ok_or(Refusal::Overflow)?)
            }
        };
        self.check_bounds(result.0)?;
        Ok(Outcome::Write(result.0, result.1))
    }

    fn check_bounds(&self, score: i64) -> Result<(), Refusal> {
        if self.min_score.is_some_and(|min| score < min) || self.max_score.is_some_and(|max| score > max) {
            return Err(Refusal::OutOfBounds);
        }
        Ok(())
    }

    /// The sort key of a record: records of one board and season order by this string alone,
    /// best first. Fixed-width hex of the score and subscore (inverted for descending boards),
    /// then of the time the record reached its value (earlier first), then the owner id.
    pub fn sort_key(&self, score: i64, subscore: i64, updated_at: i64, owner_id: &str) -> String {
        let ordered = |v: i64| {
            // Flipping the sign bit maps i64 order onto u64 order.
            let biased = (v as u64) ^ (1 << 63);
            match self.sort {
                Sort::Asc => biased,
                Sort::Desc => u64::MAX - biased,
            }
        };
        format!("{:016x}{:016x}{:016x}|{owner_id}", ordered(score), ordered(subscore), (updated_at as u64) ^ (1 << 63))
    }
}

impl Board {
    /// Reads score, subscore, time and owner back out of a sort key.
    pub fn decode_key<'k>(&self, key: &'k str) -> Option<(i64, i64, i64, &'k str)> {
        let (hex, owner) = key.split_once('|')?;
        if hex.len() != 48 {
            return None;
        }
        let field = |i: usize| u64::from_str_radix(hex.get(i * 16..(i + 1) * 16)?, 16).ok();
        let unordered = |u: u64| {
            let biased = match self.sort {
                Sort::Asc => u,
                Sort::Desc => u64::MAX - u,
            };
            (biased ^ (1 << 63)) as i64
        };
        Some((unordered(field(0)?), unordered(field(1)?), (field(2)? ^ (1 << 63)) as i64, owner))
    }
}

/// Board ids: 1 to 64 of `[a-z0-9_-]`.
pub fn valid_board_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(sort: Sort, operator: Operator) -> Board {
        Board {
            id: "b".into(),
            sort,
            operator,
            reset: None,
            min_score: Some(-1000),
            max_score: Some(1000),
            authoritative: false,
            season: 1,
            season_started_at: 0,
            season_ends_at: None,
            created_at: 0,
        }
    }

    #[test]
    fn operators_combine_as_documented() {
        let best = board(Sort::Desc, Operator::Best);
        assert_eq!(best.apply(None, 5, 0), Ok(Outcome::Write(5, 0)));
        assert_eq!(best.apply(Some((5, 0)), 4, 9), Ok(Outcome::Keep));
        assert_eq!(best.apply(Some((5, 0)), 5, 0), Ok(Outcome::Keep), "an equal score is not better");
        assert_eq!(best.apply(Some((5, 0)), 5, 1), Ok(Outcome::Write(5, 1)), "the subscore breaks ties");
        let best_asc = board(Sort::Asc, Operator::Best);
        assert_eq!(best_asc.apply(Some((5, 0)), 4, 9), Ok(Outcome::Write(4, 9)));
        let set = board(Sort::Desc, Operator::Set);
        assert_eq!(set.apply(Some((500, 0)), 1, 2), Ok(Outcome::Write(1, 2)));
        let incr = board(Sort::Desc, Operator::Incr);
        assert_eq!(incr.apply(None, 5, 1), Ok(Outcome::Write(5, 1)));
        assert_eq!(incr.apply(Some((5, 1)), 5, 1), Ok(Outcome::Write(10, 2)));
        assert_eq!(incr.apply(Some((999, 0)), 5, 0), Err(Refusal::OutOfBounds));
        let decr = board(Sort::Desc, Operator::Decr);
        assert_eq!(decr.apply(None, 5, 0), Ok(Outcome::Write(-5, 0)));
        assert_eq!(decr.apply(Some((10, 0)), 3, 0), Ok(Outcome::Write(7, 0)));
        assert_eq!(best.apply(None, 1001, 0), Err(Refusal::OutOfBounds));
        assert_eq!(best.apply(Some((5, 0)), -1001, 0), Err(Refusal::OutOfBounds), "bounds hold even when nothing changes");
        let mut unbounded = board(Sort::Desc, Operator::Incr);
        unbounded.max_score = None;
        assert_eq!(unbounded.apply(Some((i64::MAX, 0)), 1, 0), Err(Refusal::Overflow));
    }

    #[test]
    fn sort_keys_order_best_first_then_earlier_then_owner() {
        let desc = board(Sort::Desc, Operator::Best);
        let mut keys = [
            desc.sort_key(-5, 0, 10, "a"),
            desc.sort_key(i64::MAX, 0, 10, "a"),
            desc.sort_key(7, 1, 30, "b"),
            desc.sort_key(7, 1, 20, "c"),
            desc.sort_key(7, 0, 5, "d"),
            desc.sort_key(i64::MIN, 0, 1, "e"),
            desc.sort_key(0, 0, 1, "f"),
        ];
        keys.sort();
        let owners: Vec<&str> = keys.iter().map(|k| k.rsplit('|').next().unwrap_or("")).collect();
        assert_eq!(owners, ["a", "c", "b", "d", "f", "a", "e"]);

        let asc = board(Sort::Asc, Operator::Best);
        let mut keys = [asc.sort_key(3, 0, 1, "x"), asc.sort_key(-3, 0, 9, "y"), asc.sort_key(-3, 0, 2, "z")];
        keys.sort();
        let owners: Vec<&str> = keys.iter().map(|k| k.rsplit('|').next().unwrap_or("")).collect();
        assert_eq!(owners, ["z", "y", "x"]);
    }

    #[test]
    fn sort_keys_decode_to_what_they_encode() {
        for sort in [Sort::Desc, Sort::Asc] {
            let b = board(sort, Operator::Best);
            for (score, sub, at) in [(0, 0, 0), (i64::MIN, i64::MAX, 1_795_426_867_123), (-42, 7, 1), (i64::MAX, i64::MIN, i64::MAX)] {
                let key = b.sort_key(score, sub, at, "owner-1");
                assert_eq!(b.decode_key(&key), Some((score, sub, at, "owner-1")));
            }
            assert_eq!(b.decode_key("zz|x"), None);
        }
    }

    #[test]
    fn board_ids() {
        assert!(valid_board_id("weekly-kills_2"));
        assert!(!valid_board_id("") && !valid_board_id("Weekly") && !valid_board_id("a/b") && !valid_board_id(&"a".repeat(65)));
    }
}
